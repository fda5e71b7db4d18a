"""Attention-logit growth on CPU (Wortsman et al. 2023, Fig. 2; spec model-variants §6(d)2): the diagnostics'
defining effect in a forced-instability run.

At a too-high LR (0.3, 20 warmup steps, then held: `wsd`), the tiny model without qk-layernorm grows its max
pre-softmax attention logit by orders of magnitude within a few dozen steps and its attention entropy collapses to
~0; with qk-layernorm the logits stay bounded and entropy stays away from 0. Measured (max over layers of the max
logit / min over layers of the entropy, steps 2 -> 20 -> 200): without qk-LN 4.5 -> 2.5e3 -> 8.5e5 and
2.76 -> 0.028 -> 0.000; with qk-LN 3.6 -> 15 -> 86 and 2.79 -> 1.65 -> 0.19. In this tiny setting the collapsed
run's loss stalls (eval 5.14 vs 4.11 with qk-LN) instead of diverging; at LR >= 0.7 both runs diverge, so the
tiny model does not reproduce "qk-LN prevents the divergence", only the logit growth and entropy collapse.

Preset `tiny` (CPU, ~1 minute per run): the base tiny model on `classics`, no qk-layernorm, LR 0.3, 200 steps,
diagnostics every 2 steps. `get_sweep` puts qk_norm False / True side by side.

The committed plot experiments/results/attention_logit_growth.png was produced by

    python -m experiments.attention_logit_growth runs/attention_logit_growth experiments/results/attention_logit_growth.png

which trains (or resumes) the two runs runs/attention_logit_growth/{no_qk_norm,qk_norm} and plots their
metrics.jsonl: max attention logit and attention entropy per layer, and the training loss, over steps.
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments import base

ARMS = {"no_qk_norm": {"model.qk_norm": False}, "qk_norm": {"model.qk_norm": True}}


def get_config(arg: str | None = None):
    base.preset_name(arg, ("tiny",))
    c = base.get_config("tiny")
    c.model.update(qk_norm=False, dtype="float32")  # float32 matmuls: faster than bf16 on CPU
    c.optim.update(lr=0.3, warmup_steps=20, schedule="wsd")
    c.train.update(steps=200, log_every=2, diag_every=2, eval_every=100, ckpt_every=100, progress=False)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    return [dict(arm) for arm in ARMS.values()]


def read_series(workdir: Path, key: str) -> tuple[list[int], list[float]]:
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot(runs: dict[str, Path], out_png: Path, n_layers: int) -> None:
    """Max attention logit (log scale) and attention entropy per layer, and the loss, of each run over steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"no_qk_norm": "tab:red", "qk_norm": "tab:blue"}
    for name, workdir in runs.items():
        for layer, style in zip(range(n_layers), ("-", "--", ":", "-.")):
            for ax, key in zip(axes[:2], ("attn_max_logit", "attn_entropy")):
                steps, values = read_series(workdir, f"{key}/layer_{layer}")
                ax.plot(steps, values, style, color=colors[name], label=f"{name}, layer {layer}")
        steps, values = read_series(workdir, "loss")
        axes[2].plot(steps, values, color=colors[name], label=name)
    axes[0].set(yscale="log", title="max pre-softmax attention logit", xlabel="step")
    axes[1].set(title="attention entropy (mean over batch, heads, queries)", xlabel="step")
    axes[2].set(title="training loss", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("tiny model, LR 0.3: without qk-layernorm the attention logits explode and entropy collapses")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv) -> None:
    """`python -m experiments.attention_logit_growth RUNS_DIR OUT_PNG`: both arms' runs, then the figure."""
    from absl import logging

    from launch import configs, loop

    if len(argv) != 3:
        raise configs.ConfigError("usage: python -m experiments.attention_logit_growth RUNS_DIR OUT_PNG")
    workdir, out_png = argv[1], argv[2]
    runs = {}
    for name, overrides in ARMS.items():
        cfg = configs.apply_overrides(get_config("tiny"), overrides)
        runs[name] = Path(workdir) / name
        summary = loop.train(cfg, runs[name])
        logging.info("%s: diverged=%s eval_loss=%s", name, summary["diverged"], summary["eval_loss"])
    plot(runs, Path(out_png), get_config("tiny").model.n_layers)
    logging.info("wrote %s", out_png)


if __name__ == "__main__":
    from launch import cli

    cli.run(main)
