"""What every report module shares: reading result rows, run directories and the sweep definition; the loss LR
sensitivity uses; plotting set-up; markdown helpers.

A result row is one line of a sweep's results.jsonl (launch/records.py): `id`, `overrides` (the trial's dotted-key
overrides), `lr`, `initial_loss`, `diverged`, `eval_loss`, `final_loss`, ... Rows that differ only in the LR are
the points of one LR curve; rows that differ only in `train.seed` are seeds of one point.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from launch import metrics as metrics_lib

LR_KEY = "optim.lr"
SEED_KEY = "train.seed"
SIZE_KEYS = ("model.d_model", "model.n_layers", "model.n_heads", "model.head_dim", "model.d_ff")  # model shape
DIVERGED_MARKER = "x"
LINESTYLES = ("-", "--", ":", "-.")
SWEEP_DEFINITION = "sweep.json"  # written by launch.sweep: every trial of the sweep, all shards

Items = tuple[tuple[str, object], ...]


# ---- rows, runs and the sweep definition ----------------------------------------------------------------------------


def capped(losses: Sequence[float | None], initial_loss: float) -> list[float]:
    """min(loss, ℓ0), with ℓ0 for a diverged run (NaN, inf or None)."""
    return [min(x, initial_loss) if x is not None and math.isfinite(x) else initial_loss for x in losses]


def trial_loss(row: dict) -> float:
    """The loss LR sensitivity uses: the final eval loss (the paper's choice), NaN when the trial diverged.

    A trial without an eval (train.eval_every=0) falls back to its final training loss. A trial that spiked and
    recovered is not diverged: its row holds a real final loss, used as such.
    """
    if row["diverged"]:
        return math.nan
    loss = row["eval_loss"] if row["eval_loss"] is not None else row["final_loss"]
    return math.nan if loss is None else float(loss)


def point_items(overrides: dict) -> Items:
    """The overrides without the LR and the seed, sorted: what identifies a trial's curve (intervention and size)."""
    hashable = lambda v: tuple(v) if isinstance(v, list) else v  # a tuple override comes back from JSON as a list
    return tuple(sorted((k, hashable(v)) for k, v in overrides.items() if k not in (LR_KEY, SEED_KEY)))


def seed_of(overrides: dict):
    """The trial's `train.seed` override, None for the base config's seed."""
    return overrides.get(SEED_KEY)


def read_sweep_definition(workdir: Path) -> list[dict] | None:
    """The trials ({"id", "overrides"}) of DIR/sweep.json, every shard's; None when the sweep wrote none."""
    path = Path(workdir) / SWEEP_DEFINITION
    return json.loads(path.read_text())["trials"] if path.is_file() else None


def run_config(run_dir: Path) -> dict:
    """The flat config ({"model.d_model": 64, ...}) a run directory's config.json records."""
    return json.loads((run_dir / "config.json").read_text())


def metric_series(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `metric` in run_dir/metrics.jsonl; non-finite values are NaN, vector values skipped."""
    points = [
        (r["step"], math.nan if r[metric] is None else r[metric])
        for r in metrics_lib.read_jsonl(run_dir / "metrics.jsonl")
        if metric in r and not isinstance(r[metric], list)
    ]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points], dtype=float)


# ---- labels and markdown --------------------------------------------------------------------------------------------


def leaf(key: str) -> str:
    return key.rpartition(".")[2]


def label(items: Sequence[tuple[str, object]]) -> str:
    """`qk_norm=True, d_model=64`; `base` for no items."""
    return ", ".join(f"{leaf(k)}={v}" for k, v in items) or "base"


def fmt(x, spec: str = ".4f") -> str:
    """`x` formatted, `–` for None and non-finite floats."""
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


# ---- plots ----------------------------------------------------------------------------------------------------------


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def axes_grid(plt, n: int, sharey: bool = False, width: float = 5.0, height: float = 3.8):
    """(figure, n axes) in a near-square grid; the unused cells hidden."""
    cols = n if n <= 3 else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


FORMATS = ("png", "svg", "pdf")  # figure formats of --format (matplotlib infers the format from the name)


def metric_filename(metric: str, fmt: str = "png") -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", metric) + f"_over_steps.{fmt}"


def plot_metric(panels: dict[str, list[tuple[str, Path, bool]]], metric: str, log_y: bool, path: Path) -> bool:
    """`metric` over steps: a panel per group, a line per (label, run_dir, diverged); False when no run logs it."""
    plt = pyplot()
    labels = list(dict.fromkeys(name for runs in panels.values() for name, _, _ in runs))
    colors = dict(zip(labels, plt.cm.viridis(np.linspace(0, 0.9, len(labels)))))  # the same in every panel
    series = {name: [(lbl, *metric_series(d, metric), bad) for lbl, d, bad in runs] for name, runs in panels.items()}
    series = {name: kept for name, runs in series.items() if (kept := [s for s in runs if len(s[1])])}
    if not series:
        return False
    fig, axes = axes_grid(plt, len(series), sharey=True)
    for ax, (name, runs) in zip(axes, series.items()):
        for lbl, steps, values, bad in runs:
            color = colors[lbl]
            ax.plot(steps, values, color=color, label=lbl + (" (diverged)" if bad else ""), linewidth=1.2)
            if bad:
                ax.plot(steps[-1:], values[-1:], DIVERGED_MARKER, color=color, markersize=10, markeredgewidth=2)
        if log_y:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(name, fontsize=8)  # group labels are long: keep neighbouring panels' titles apart
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long titles and legends stay inside the image
    plt.close(fig)
    return True
