"""`python -m launch.branch --from=MAIN --budget=B --workdir=DIR [--config.optim.wsd.decay_shape=...]`: WSD branching.

WSD serves several budgets with one main run (spec optimizers §3(a); Wen et al. 2024, arXiv 2410.05192): the main
run trains at its stable LR and saves checkpoints; the branch for budget B forks the main run's checkpoint at
b = B − T_d(B) with its params, optimizer state (Adam's m, v and step count) and data position, and trains only
the decay, with optim.schedule = wsd and train.steps = B. Its LR at every step is the one of a WSD run of B steps,
and the main run's LR before b must already be that run's (checked, to float32 rounding: same peak, warmup in
whole steps, a stable phase reaching b), so a branch equals an independent WSD run of B steps step for step
(bitwise on CPU when the main run is a `wsd` run with a later decay).

The branch directory is a run like any other (rerunning the same command resumes it): its config is the main
run's config.json with schedule wsd, steps B and the --config overrides, which may change only what the first b
steps do not depend on (`BRANCH_FIELDS`); branch.json records the main run, the branch step and the budget; its
metrics.jsonl starts with the main run's rows up to b, so it reads as one run from step 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

import optim
from absl import logging

from launch import cli, configs, data, loop, metrics as metrics_lib
from optim.schedules import frac_or_steps  # Levanter's fraction-or-steps rule, shared with the wsd schedule

# Override prefixes a branch may change: the decay, the mesh, and train fields but those of `BRANCH_FIXED`.
BRANCH_FIELDS = ("optim.wsd.", "mesh.", "train.")
BRANCH_FIXED = ("train.seed", "train.steps")


def branch_config(main_cfg, budget: int, overrides: dict):
    """The config of the budget-`budget` branch of the run with config `main_cfg`."""
    for key in overrides:
        if not key.startswith(BRANCH_FIELDS) or key in BRANCH_FIXED:
            raise configs.ConfigError(
                f"--config.{key}: a branch continues the main run; only optim.wsd.*, mesh.* and train.* "
                f"(not {', '.join(BRANCH_FIXED)}) may differ"
            )
    return configs.apply_overrides(main_cfg, {"optim.schedule": "wsd", "train.steps": budget, **overrides})


def branch_step(cfg) -> int:
    """b = B − T_d: the steps before the decay of the WSD schedule of `cfg` (B = train.steps) begins."""
    budget = int(cfg.train.steps)
    return budget - frac_or_steps(cfg.optim.wsd.decay, budget, "optim.wsd.decay")


def check_lr_history(main_dir: Path, main_cfg, cfg, step: int) -> None:
    """Raises unless the main run's LR at steps [0, step) equals the branch schedule's (to float32 rounding)."""
    t = np.arange(step)
    main_lr = np.broadcast_to(optim.make_schedule(main_cfg.optim, int(main_cfg.train.steps))(t), t.shape)
    want_lr = np.broadcast_to(optim.make_schedule(cfg.optim, int(cfg.train.steps))(t), t.shape)
    bad = np.flatnonzero(~np.isclose(main_lr, want_lr, rtol=1e-6, atol=0.0))
    if bad.size:
        s = int(bad[0])
        raise configs.ConfigError(
            f"{main_dir}'s LR at step {s} ({main_lr[s]:.6g}) differs from the {cfg.train.steps}-step wsd schedule's "
            f"({want_lr[s]:.6g}); a branch needs the same optim.lr, optim.warmup_steps in whole steps (> 1) and a "
            f"stable phase up to step {step}"
        )


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps saved in `run_dir/checkpoints` (orbax names each finished step's directory by its number)."""
    directory = run_dir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def claim_branch(workdir: Path, record: dict) -> None:
    """Writes `workdir/branch.json`; refuses a workdir that holds a branch of another run, step or budget."""
    path = workdir / "branch.json"
    if path.exists() and json.loads(path.read_text()) != record:
        raise configs.ConfigError(f"{workdir} holds another branch ({path.read_text().strip()}); use a new --workdir")
    if jax.process_index() == 0:
        metrics_lib.write_json_atomic(path, record)


def branch(main_dir: str | Path, budget: int, workdir: str | Path, overrides: dict | None = None, verbose=True) -> dict:
    """Trains (or resumes) the budget-`budget` WSD branch of the run in `main_dir` in `workdir`; returns its summary."""
    main_dir, workdir = Path(main_dir), Path(workdir)
    main_cfg = configs.load_run_config(main_dir)
    cfg = branch_config(main_cfg, budget, overrides or {})
    configs.validate(cfg, n_devices=jax.device_count(), n_processes=jax.process_count())
    step = branch_step(cfg)
    check_lr_history(main_dir, main_cfg, cfg, step)
    if not checkpoint_steps(workdir) and step not in checkpoint_steps(main_dir):
        raise configs.ConfigError(
            f"{main_dir} has no checkpoint at step {step}, where the decay of budget {budget} begins (it has steps "
            f"{checkpoint_steps(main_dir)}); set the main run's train.ckpt_every to divide {step} and "
            "train.keep_ckpts to keep it"
        )
    data.check_sources([cfg])  # a data or checkpoint error writes nothing into the branch directory
    configs.claim_workdir(cfg, workdir, write=jax.process_index() == 0)
    claim_branch(workdir, dict(main=str(main_dir.resolve()), step=step, budget=budget))
    if verbose and not checkpoint_steps(workdir):
        logging.info("%s: branching %s at step %d to decay until %d", workdir, main_dir, step, budget)
    return loop.train(cfg, workdir, verbose=verbose, start_from=(main_dir, step))


def main(argv) -> None:
    del argv
    from absl import flags

    f = flags.FLAGS
    branch(f["from"].value, f.budget, f.workdir, cli.config_overrides())


def main_run_config(argv: list[str]):
    """The config.json of the `--from` run: what `--config.a.b=v` overrides (read before absl parses the flags)."""
    import ml_collections

    for arg in argv:
        if arg.startswith("--from="):
            try:
                return configs.load_run_config(Path(arg.partition("=")[2]))
            except configs.ConfigError as e:
                cli.fail(str(e))
    return ml_collections.ConfigDict()  # absl then reports the missing --from


if __name__ == "__main__":
    import sys

    from absl import flags

    flags.DEFINE_string("from", None, "the main run's directory (launch.train with checkpoints at the branch steps)")
    flags.DEFINE_integer("budget", None, "the branch's total steps B; it forks the main run at B - decay steps")
    flags.mark_flags_as_required(["from", "budget"])
    cli.run(main, config="dict", default_config=main_run_config(sys.argv[1:]), workdir=True)
