"""Eval loss per token-frequency bucket in a sweep report: the plots of the weight-decay study (Pinto et al., "The
Fair Language Model Paradox"; spec optimizers-and-metrics §2) and of the Adam vs SGD study (Kunstner et al. 2024,
"Heavy-tailed class imbalance"; §5).

`launch.report.write_report` calls `write_bucket_report` for every sweep; it does something only when the trials
logged the `train.freq_buckets` metrics (`eval_loss_rank_bucket`, `eval_loss_mass_bucket`: vectors, bucket 0 =
the most frequent tokens by training-split count). Into DIR/report/:

    buckets_vs_<key>.png         the §2(a) headline plot. Top: the final eval loss of each bucket against the swept
                                 key(s) (a numeric axis for one numeric key, symlog when it spans decades from 0;
                                 categorical otherwise, e.g. optim.name), one curve per bucket, viridis from the
                                 most frequent (dark) to the rarest (yellow), the overall eval loss dashed black;
                                 rank buckets left, equal-mass groups right. Middle: the same losses against the
                                 bucket, one curve per point. Bottom: each bucket's change from the first point
                                 (e.g. λ = 0), the overall eval loss's change dashed.
    bucket_loss_over_steps.png   the layout of Kunstner et al.'s Fig. 1 (§5(a)): the overall eval loss of every
                                 trial in one panel, then one panel per trial with one line per equal-mass group
                                 over the eval steps, and ln V (the loss of a uniform prediction) dotted.
    summary.md                   the section returned here: the final per-bucket losses, a row per trial, and
                                 with several seeds a row per point (the mean over its seeds) and the changes
                                 from the first point, mean [min, max] over seeds.

A point is a setting of the swept keys other than `train.seed`. With several seeds the plots and tables show the
mean over a point's seeds, and a change from the first point is taken within each seed first (the same seed's
trial at the first point: the same initialisation and, since the eval windows are drawn from the seed, the same
held-out text), then averaged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from launch import metrics as metrics_lib
from launch.report import common

# The metrics of `launch.train.BUCKET_METRICS` (the on-disk names) and how the plots name their bucketing.
VIEWS = {
    "eval_loss_rank_bucket": "rank buckets (equal numbers of token types)",
    "eval_loss_mass_bucket": "equal-mass groups (~equal shares of the training targets)",
}
MASS = "eval_loss_mass_bucket"
SEED = "train.seed"


def as_array(values) -> np.ndarray:
    """A JSON bucket vector (null for a bucket without eval targets) as float[K] with NaN."""
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def swept_keys(rows: list[dict]) -> list[str]:
    """The override keys whose values differ between the trials of `rows`: categorical ones (e.g. optim.name)
    first, so that trials sort by them and then by the numeric ones (optim.lr); alphabetical within each kind."""
    keys = sorted({k for r in rows for k in r["overrides"]})
    swept = [k for k in keys if len({json.dumps(r["overrides"].get(k), default=str) for r in rows}) > 1]
    return sorted(swept, key=lambda k: all(_is_number(r["overrides"].get(k)) for r in rows))


def _sort_key(row: dict, keys: list[str]) -> tuple:
    return tuple((0, v, "") if _is_number(v) else (1, 0, str(v)) for v in (row["overrides"].get(k) for k in keys))


def trial_label(row: dict, keys: list[str]) -> str:
    """The trial's values of the swept keys, e.g. `name=sgd, lr=0.1`."""
    return common.label([(k, row["overrides"].get(k)) for k in keys])


def sweep_axis(rows: list[dict], keys: list[str]) -> tuple[np.ndarray, list[str] | None, str]:
    """(x per row, tick labels or None, x scale) for `rows` sorted by `_sort_key`.

    One numeric key: its values, on a symlog scale when it includes 0 and its positive values span 10x or more (a
    weight-decay grid), log when all are positive and span 10x (an LR grid), else linear. Otherwise the trials are
    categories at 0, 1, ... labelled with their swept values."""
    values = [r["overrides"].get(keys[0]) for r in rows] if len(keys) == 1 else []
    if values and all(_is_number(v) for v in values):
        x = np.array(values, dtype=float)
        positive = x[x > 0]
        wide = len(positive) > 1 and positive.max() >= 10 * positive.min()
        scale = ("log" if positive.size == x.size else "symlog") if wide else "linear"
        return x, None, scale
    return np.arange(len(rows), dtype=float), [trial_label(r, keys) for r in rows], "linear"


def _set_x(ax, x: np.ndarray, ticks: list[str] | None, scale: str, keys: list[str]) -> None:
    if scale == "symlog":
        ax.set_xscale("symlog", linthresh=x[x > 0].min())
    elif scale == "log":
        ax.set_xscale("log")
    if ticks is not None:
        ax.set_xticks(x, ticks, rotation=30, ha="right", fontsize=7)
    else:
        ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel(", ".join(keys) or "trial")


def _bucket_colorbar(plt, fig, ax, n_buckets: int, what: str = "bucket") -> None:
    """The viridis key of the per-bucket curves, for one axis or a list of axes."""
    norm = plt.Normalize(-0.5, n_buckets - 0.5)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=plt.cm.viridis)
    bar = fig.colorbar(mappable, ax=ax, ticks=range(n_buckets), fraction=0.04, pad=0.02, aspect=30)
    bar.set_label(f"{what} (0 = most frequent)")


def _per_bucket_curves(ax, y_RxK: np.ndarray, rows: list[dict], keys: list[str], colors, ylabel: str, title: str):
    """One curve per trial of a per-bucket quantity against the bucket index."""
    for y_K, row, color in zip(y_RxK, rows, colors):
        ax.plot(np.arange(y_K.size), y_K, "o-", color=color, label=trial_label(row, keys), markersize=4)
    ax.set_xticks(range(y_RxK.shape[1]))
    ax.set_xlabel("bucket (0 = most frequent)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def points_of(final: list[dict], keys: list[str]) -> list[list[dict]]:
    """The finished rows grouped by point (their values of `keys`, which leave out the seed), in sweep order."""
    points: dict[str, list[dict]] = {}
    for r in sorted(final, key=lambda r: _sort_key(r, keys)):
        points.setdefault(json.dumps([r["overrides"].get(k) for k in keys], default=str), []).append(r)
    return list(points.values())


def _values(row: dict, metric: str) -> np.ndarray:
    """float[1 + K]: the overall eval loss, then the bucket losses of `metric` (NaN where null)."""
    return as_array([row["eval_loss"], *row[metric]])


def point_stats(points: list[list[dict]], metric: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """(mean_Px(1+K) over each point's seeds, [per point: float[S', 1 + K] changes from the first point, one row per
    seed present at both]): column 0 the overall eval loss, then the buckets of `metric`."""
    mean = np.stack([np.mean([_values(r, metric) for r in rs], axis=0) for rs in points])
    first = {r["overrides"].get(SEED): _values(r, metric) for r in points[0]}
    deltas = [np.array([_values(r, metric) - first[r["overrides"].get(SEED)] for r in rs
                        if r["overrides"].get(SEED) in first]).reshape(-1, mean.shape[1]) for rs in points]
    return mean, deltas


def plot_buckets_vs_sweep(points: list[list[dict]], keys: list[str], path: Path, title: str) -> None:
    """`buckets_vs_<key>.png` (module docstring) for the bucket-logging rows grouped by `points_of`; a third row
    shows each bucket's change from the first point (e.g. λ = 0), where a disproportionate rise of the rare
    buckets (spec §2(c)) is easiest to see."""
    plt = common.pyplot()
    rows = [rs[0] for rs in points]  # a point's labels and x come from any of its seeds
    n_seeds = sorted({len(rs) for rs in points})
    over = "" if n_seeds == [1] else f" (mean over {'–'.join(map(str, n_seeds))} seeds)"
    x, ticks, scale = sweep_axis(rows, keys)
    trial_colors = plt.cm.plasma(np.linspace(0, 0.85, len(rows)))
    fig, axes = plt.subplots(3, len(VIEWS), figsize=(6.0 * len(VIEWS), 4.2 * 3), squeeze=False)
    for col, (metric, view) in enumerate(VIEWS.items()):
        mean, deltas = point_stats(points, metric)
        overall, loss_RxK = mean[:, 0], mean[:, 1:]
        delta_RxK1 = np.stack([d.mean(axis=0) if len(d) else np.full(mean.shape[1], np.nan) for d in deltas])
        top = axes[0, col]
        for b, color in enumerate(plt.cm.viridis(np.linspace(0, 1, loss_RxK.shape[1]))):
            top.plot(x, loss_RxK[:, b], "o-", color=color, markersize=4)
        top.plot(x, overall, "k--", linewidth=2, label="overall eval loss")
        _set_x(top, x, ticks, scale, keys)
        top.set_ylabel("final eval loss" + over)
        top.set_title(view, fontsize=10)
        top.legend(fontsize=8)
        _bucket_colorbar(plt, fig, top, loss_RxK.shape[1])
        _per_bucket_curves(axes[1, col], loss_RxK, rows, keys, trial_colors, "final eval loss" + over,
                           "one curve per point")
        first = trial_label(rows[0], keys)
        _per_bucket_curves(axes[2, col], delta_RxK1[:, 1:], rows, keys, trial_colors, f"loss − loss of {first}",
                           f"change from {first}" + (", paired by seed" if over else "") + " (overall: dashed)")
        for delta, color in zip(delta_RxK1[:, 0], trial_colors):
            axes[2, col].axhline(delta, color=color, linestyle="--", linewidth=1)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"final eval loss per token-frequency bucket — {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bucket_series(run_dir: Path, metric: str = MASS) -> tuple[np.ndarray, np.ndarray]:
    """(steps, float[steps, K] losses) of the bucket vector `metric` at every eval in run_dir/metrics.jsonl."""
    evals = [r for r in metrics_lib.read_jsonl(run_dir / "metrics.jsonl") if r.get(metric) is not None]
    losses = np.stack([as_array(r[metric]) for r in evals]) if evals else np.zeros((0, 0))
    return np.array([r["step"] for r in evals]), losses


def _log_vocab(run_dir: Path) -> float:
    return math.log(common.run_config(run_dir)["model.vocab_size"])


def plot_bucket_loss_over_steps(runs: list[tuple[str, Path, bool]], path: Path) -> bool:
    """`bucket_loss_over_steps.png` for (label, run_dir, diverged) runs; False when none logged bucket losses."""
    plt = common.pyplot()
    series = [(label, d, bad, *bucket_series(d)) for label, d, bad in runs]
    series = [s for s in series if len(s[3])]
    if not series:
        return False
    fig, axes = common.axes_grid(plt, 1 + len(series), sharey=True, width=4.6, height=3.6)
    trial_colors = plt.cm.plasma(np.linspace(0, 0.85, len(series)))
    for (label, run_dir, bad, steps, loss_SxK), color, ax in zip(series, trial_colors, axes[1:]):
        axes[0].plot(*common.metric_series(run_dir, "eval_loss"), "o-", color=color, markersize=3,
                     label=label + (" (diverged)" if bad else ""))
        for b, group_color in enumerate(plt.cm.viridis(np.linspace(0, 1, loss_SxK.shape[1]))):
            ax.plot(steps, loss_SxK[:, b], color=group_color, linewidth=1.3)
        ax.axhline(_log_vocab(run_dir), color="grey", linestyle=":")
        ax.set_title(label + (" (diverged)" if bad else ""), fontsize=9)
    axes[0].set_title("overall eval loss", fontsize=9)
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("eval loss")
        ax.grid(True, alpha=0.3)
    fig.suptitle("eval loss per equal-mass frequency group over steps (dotted: ln V, a uniform prediction's loss)")
    fig.tight_layout()
    _bucket_colorbar(plt, fig, axes, max(s[4].shape[1] for s in series), "group")
    fig.savefig(path, dpi=110, bbox_inches="tight")  # the colour bar, added after the layout, included
    plt.close(fig)
    return True


def bucket_tables(points: list[list[dict]], keys: list[str]) -> str:
    """Markdown per bucketing: the final per-bucket eval losses, a row per trial; with several seeds also a row per
    point (the mean over its seeds) and each point's change from the first point, paired by seed, mean [min, max]
    over the seeds."""
    out, seeded = [], any(len(rs) > 1 for rs in points)
    first = trial_label(points[0][0], keys)
    trial_keys = keys + [SEED] if seeded else keys
    for metric, view in VIEWS.items():
        n_buckets = len(points[0][0][metric])
        mean, deltas = point_stats(points, metric)
        head = ["eval loss", *(str(b) for b in range(n_buckets))]
        out.append(f"\n**{view}** (`{metric}`)\n")
        out.append(common.md_table(
            ["trial", *head],
            [[trial_label(r, trial_keys), common.fmt(r["eval_loss"]),
              *(common.fmt(v, ".3f") for v in as_array(r[metric]))] for rs in points for r in rs]))
        if not seeded:
            continue
        out.append("\nThe mean over each point's seeds:\n")
        out.append(common.md_table(
            ["point", "seeds", *head],
            [[trial_label(rs[0], keys), str(len(rs)),
              *(common.fmt(v, ".4f" if i == 0 else ".3f") for i, v in enumerate(m))] for rs, m in zip(points, mean)]))
        out.append(f"\nChange from {first}, within each seed, then mean [min, max] over the seeds:\n")
        out.append(common.md_table(
            ["point", "seeds", *head],
            [[trial_label(rs[0], keys), str(len(d)),
              *(f"{d[:, i].mean():+.3f} [{d[:, i].min():+.3f}, {d[:, i].max():+.3f}]" for i in range(d.shape[1]))]
             for rs, d in zip(points[1:], deltas[1:]) if len(d)]))
    return "".join(out)


def write_bucket_report(workdir: Path, rows: list[dict], out: Path) -> str:
    """Writes the plots of the module docstring into `out` when finished trials of the sweep (`rows`, from
    results.jsonl) logged bucket losses; returns the summary.md section, "" when none did (then no trial's
    metrics.jsonl is read). bucket_loss_over_steps.png is left to launch.report's summary, which embeds every
    *_over_steps.png; it includes the diverged trials up to their divergence."""
    final = [r for r in rows if all(r.get(m) is not None for m in VIEWS)]  # diverged trials have no final values
    if not final:
        return ""
    keys = swept_keys(rows)
    rows = sorted(rows, key=lambda r: _sort_key(r, keys))
    runs = [(trial_label(r, keys), workdir / "trials" / r["id"], bool(r["diverged"])) for r in rows]
    plot_bucket_loss_over_steps(runs, out / "bucket_loss_over_steps.png")
    keys = [k for k in keys if k != SEED]
    points = points_of(final, keys)
    name = f"buckets_vs_{'+'.join(common.leaf(k) for k in keys) or 'trial'}.png"
    plot_buckets_vs_sweep(points, keys, out / name, workdir.name)
    return (
        "\n## Loss per token-frequency bucket\n\n"
        "Final eval loss per bucket of target tokens, bucket 0 the most frequent by training-split count (spec "
        "optimizers-and-metrics §2(a), §5(a)): rank buckets hold equal numbers of token types, equal-mass groups "
        "~equal shares of the training targets; a bucket without eval targets is `–`. "
        "bucket_loss_over_steps.png (Kunstner et al.'s Fig. 1 layout) is among the plots above.\n\n"
        f"![final eval loss per bucket]({name})\n" + bucket_tables(points, keys)
    )
