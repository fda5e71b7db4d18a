"""`python -m launch.deviation --config=STUDY.py:PRESET --workdir=DIR`: the numeric-deviation study of
experiments/numeric_deviation.py (Golden et al. 2024; spec model-variants §8.1).

Three runs of one seed in lockstep on the same batches: the baseline (the config with the study's baseline
overrides), the variant (its variant overrides, same init) and the baseline from its init moved by one ULP
(`one_ulp`). Every `train.log_every` steps (and at the last) a row of DIR/deviation.jsonl holds, for the pairs
variant − baseline (`variant_*`) and 1-ULP − baseline (`ulp_*`), `parameter_difference`'s statistics, and
`variant_over_ulp`, the ratio of their RMS. DIR/deviation.json records the arms. No checkpoints: a rerun starts
over. A run that diverges leaves non-finite differences and stops.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from launch import cli, configs, loop, metrics as metrics_lib, records, step as step_lib


def load_arms(config_name: str) -> tuple[dict, dict]:
    """`get_arms(arg)` of the study file `path[:arg]`: (baseline overrides, variant overrides)."""
    path, _, arg = config_name.partition(":")
    spec = importlib.util.spec_from_file_location("proxylab_deviation_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_arms"):
        raise configs.ConfigError(f"{path} defines no get_arms(arg): it is not a numeric-deviation study file")
    return module.get_arms(arg or None)


def one_ulp(params):
    """Every floating parameter element moved by one unit in the last place towards +inf."""
    return jax.tree.map(lambda x: jnp.nextafter(x, jnp.asarray(jnp.inf, x.dtype)), params)


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between the empirical distributions of two equal-size samples: mean |sort(a) − sort(b)|."""
    return float(np.mean(np.abs(np.sort(a, axis=None) - np.sort(b, axis=None))))


def parameter_difference(a, b) -> dict:
    """rms (over every element of every tensor), max |Δ| (over tensors) and mean over tensors of the
    Wasserstein distance, of two parameter trees, in float64."""
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in leaves]
    squares = sum(float(np.sum((x - y) ** 2)) for x, y in pairs)
    return dict(
        rms=float(np.sqrt(squares / sum(x.size for x, _ in pairs))),
        max=max(float(np.max(np.abs(x - y))) for x, y in pairs),
        wasserstein=float(np.mean([wasserstein_1d(x, y) for x, y in pairs])),
    )


class Arm:
    """One member run stepped by hand (the loop's program and data, no records)."""

    def __init__(self, cfg, rt: loop.Runtime | None = None, perturb=None):
        self.rt = rt or loop.Runtime(cfg)
        self.group = self.rt.group(1, True)
        self.data = loop.GroupData(self.rt, [int(cfg.train.seed)])
        self.hparams = step_lib.stacked_hparams(self.group, [cfg])
        self.states = loop.fresh_states(self.group, self.data, [cfg])
        if perturb is not None:
            self.states = dict(self.states, params=perturb(self.states["params"]))

    def step(self, step: int) -> float:
        self.states, metrics = self.group.step(self.states, self.data.train_batch(step), self.hparams)
        return float(metrics["loss"][0])

    def params(self):
        return jax.device_get(self.states["params"])


def run(cfg, arms: tuple[dict, dict], workdir) -> list[dict]:
    """The study (module docstring); returns the rows it wrote."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base_overrides, variant_overrides = arms
    cfg_base = configs.apply_overrides(cfg, base_overrides)
    cfg_variant = configs.apply_overrides(cfg, variant_overrides)
    for c in (cfg_base, cfg_variant):
        configs.validate(c, n_devices=jax.device_count(), n_processes=jax.process_count())
    baseline = Arm(cfg_base)
    ulp = Arm(cfg_base, baseline.rt, perturb=one_ulp)
    variant = Arm(cfg_variant)
    metrics_lib.write_json_atomic(workdir / "deviation.json", dict(baseline=base_overrides, variant=variant_overrides))
    total, every, rows = int(cfg.train.steps), int(cfg.train.log_every), []
    with open(workdir / "deviation.jsonl", "w") as f:
        for step in range(total):
            losses = [arm.step(step) for arm in (baseline, variant, ulp)]
            if not records.due(every, step + 1, total) and np.isfinite(losses).all():
                continue
            ref = baseline.params()
            row = dict(step=step + 1, loss=losses[0], variant_loss=losses[1], ulp_loss=losses[2])
            for name, arm in (("variant", variant), ("ulp", ulp)):
                row.update({f"{name}_{k}": v for k, v in parameter_difference(arm.params(), ref).items()})
            row["variant_over_ulp"] = row["variant_rms"] / row["ulp_rms"] if row["ulp_rms"] > 0 else None
            rows.append(row)
            f.write(json.dumps({k: None if v is None else metrics_lib.to_json_value(v) for k, v in row.items()}) + "\n")
            f.flush()
            logging.info("step %d: variant rms %.3g, 1-ULP rms %.3g", row["step"], row["variant_rms"], row["ulp_rms"])
            if not np.isfinite(losses).all():
                break
    return rows


def main(argv) -> None:
    del argv
    from absl import flags

    run(flags.FLAGS.config, load_arms(flags.FLAGS["config"].config_filename), flags.FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main, config="file", workdir=True)
