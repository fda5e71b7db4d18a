"""`launch.report DIR --seeds`: how far apart the seeds of a sweep are (issue "Trustworthy numbers").

Into DIR/report/:

    seeds.png   per group, against the LR (log x): the spread (max − min) over seeds of the final eval loss as LR
                sensitivity sees it (capped at ℓ0, a diverged seed at ℓ0), a panel per model size
    seeds.md    per group: every seed's capped loss at every LR with mean, spread and sample std (ddof = 1), an
                outlier seed's cell marked ⚠ (`seed_outliers`), and every seed's LR sensitivity; a table of each seed's
                largest per-step loss z-score

Seed outliers (PolyPythias, van der Wal et al. 2025; spec optimizers §9(b) [inferred]): at every logged step where
all seeds of a point (group and LR) have a finite training loss, z_s = (loss_s − mean) / std over the seeds, the
std (ddof = 0) including seed s itself, as the spec's check says. A seed is an outlier when |z| > `OUTLIER_Z` on at
least `OUTLIER_RUN` consecutive such steps [D]. That std bounds |z| by √(S − 1) (one seed apart, the others equal),
so with the 2σ rule only S >= 6 seeds can flag one; seeds.md says so for fewer and still shows max |z|.

A difference between two curves smaller than this spread is not a finding at these seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from launch import records
from launch.report import common, lr_curves

OUTLIER_Z = 2.0  # |z| above this ...
OUTLIER_RUN = 3  # ... on at least this many consecutive logged steps marks an outlier seed [D]


def spread_over_seeds(group: lr_curves.Group) -> tuple[np.ndarray, np.ndarray]:
    """(max − min, sample std) over the present seeds of the capped loss at every LR; NaN with fewer than two."""
    columns = [y_S[ok_S] for y_S, ok_S in zip(group.capped_SxL.T, group.present_SxL.T)]
    spread = np.array([np.ptp(y) if len(y) > 1 else np.nan for y in columns])
    std = np.array([np.std(y, ddof=1) if len(y) > 1 else np.nan for y in columns])
    return spread, std


def seed_z_scores(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, z_SxT): the per-step z-score of each seed's (steps, values) against all seeds (ddof = 0), on the
    steps every seed logged with a finite value; an all-equal step has z = 0."""
    common_steps = sorted(set.intersection(*[{int(t) for t, v in zip(*sv) if np.isfinite(v)} for sv in series]))
    y_SxT = np.array([[dict(zip(steps.tolist(), values))[t] for t in common_steps] for steps, values in series])
    y_SxT = y_SxT.reshape(len(series), len(common_steps))
    std_T = y_SxT.std(axis=0)
    dev = y_SxT - y_SxT.mean(axis=0)
    return np.array(common_steps), np.divide(dev, std_T, out=np.zeros_like(dev), where=std_T > 0)


def longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def seed_outliers(group: lr_curves.Group, rows: list[dict], workdir: Path, metric: str = "loss") -> dict:
    """{lr: {seed: (max |z|, longest run of |z| > OUTLIER_Z, outlier)}} for every LR with >= 2 seeds' trials."""
    out = {}
    for lr in group.lrs:
        trials = {common.seed_of(r["overrides"]): r for r in rows if r["lr"] == lr
                  and common.point_items(r["overrides"]) == group.items}
        seeds = [s for s in group.seeds if s in trials]
        if len(seeds) < 2:
            continue
        _, z_SxT = seed_z_scores([common.metric_series(workdir / "trials" / trials[s]["id"], metric) for s in seeds])
        if not z_SxT.shape[1]:  # no step logged by every seed (e.g. trials without metrics.jsonl)
            continue
        out[lr] = {}
        for s, z in zip(seeds, z_SxT):
            run = longest_run(np.abs(z) > OUTLIER_Z)
            out[lr][s] = (float(np.max(np.abs(z), initial=0.0)), run, run >= OUTLIER_RUN)
    return out


def plot_seed_spread(groups: Sequence[lr_curves.Group], path: Path, title: str):
    """seeds.png (module docstring); returns the (closed) figure, a line with gid `<group>/spread` per group."""
    plt = common.pyplot()
    sizes, by_size = lr_curves.panels([g for g in groups if len(g.seeds) > 1])
    sizes = lr_curves.hidden_keys([g for g in groups if len(g.seeds) > 1], sizes)
    fig, axes = common.axes_grid(plt, max(len(by_size), 1))
    for ax, (size, members) in zip(axes, by_size.items()):
        for i, g in enumerate(members):
            ax.plot(g.lrs, spread_over_seeds(g)[0], marker="osD^"[i % 4], linestyle=common.LINESTYLES[i % 4],
                    label=f"{lr_curves.curve_label(g, sizes)} ({len(g.seeds)} seeds)", gid=f"{g.label}/spread")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("max − min over seeds of final eval loss")
        ax.set_title(common.label(size) if size else title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("seed spread of the final eval loss (capped at ℓ0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long titles and legends stay inside the image
    plt.close(fig)
    return fig


def seeds_markdown(groups: Sequence[lr_curves.Group], title: str, outliers: dict | None = None) -> str:
    """seeds.md; `outliers`: {group label: `seed_outliers`}: an outlier seed's cell gets ⚠, and a z table."""
    out = [f"# Seed spread: {title}\n",
           "Final eval loss capped at ℓ0 (a diverged seed at ℓ0, `x`), per seed and LR; spread = max − min over "
           "seeds, std = sample std (ddof = 1); ⚠ = an outlier seed by its per-step training-loss z-score "
           f"(|z| > {OUTLIER_Z:g} on >= {OUTLIER_RUN} consecutive logged steps; PolyPythias).\n",
           "![seed spread](seeds.png)\n"]
    multi = [g for g in groups if len(g.seeds) > 1]
    for g in multi:
        y_SxL, (mean_L, _, _), (spread_L, std_L) = g.capped_SxL, g.over_seeds(), spread_over_seeds(g)

        z = (outliers or {}).get(g.label, {})

        def cell(i, j):
            outlier = z.get(g.lrs[j], {}).get(g.seeds[i], (0, 0, False))[2]
            return "missing" if not g.present_SxL[i, j] else common.fmt(y_SxL[i, j]) + (
                " x" if g.diverged_SxL[i, j] else "") + (" ⚠" if outlier else "")

        out.append(f"\n## {g.label}\n")
        out.append(common.md_table(
            ["lr", *(f"seed {s}" for s in g.seeds), "mean", "spread", "std"],
            [[f"{lr:g}", *(cell(i, j) for i in range(len(g.seeds))), common.fmt(mean_L[j]),
              common.fmt(spread_L[j]), common.fmt(std_L[j])] for j, lr in enumerate(g.lrs)]))
        if z:
            out.append(f"\nPer-step training-loss z-score across seeds: max |z| (longest run of |z| > {OUTLIER_Z:g}, "
                       f"an outlier from {OUTLIER_RUN} steps on)" + (
                           f"; with {len(g.seeds)} seeds |z| cannot exceed √{len(g.seeds) - 1} = "
                           f"{np.sqrt(len(g.seeds) - 1):.2f}, so no seed can be flagged"
                           if np.sqrt(len(g.seeds) - 1) <= OUTLIER_Z else "") + "\n")
            out.append(common.md_table(
                ["lr", *(f"seed {s}" for s in g.seeds)],
                [[f"{lr:g}", *(f"{z[lr][s][0]:.2f} ({z[lr][s][1]})" + (" ⚠" if z[lr][s][2] else "")
                               if s in z[lr] else "" for s in g.seeds)] for lr in g.lrs if lr in z]))
        per_seed = (", ".join(f"seed {s}: {v:.4f}" for s, v in zip(g.seeds, g.sensitivity_S))
                    if g.sensitivity_S is not None else f"not computed ({g.note})")
        if len(g.lrs) > 1:  # over one LR it is 0 by definition
            out.append(f"\nLR sensitivity per seed: {per_seed}\n")
    if not multi:
        out.append("\nEvery group has one seed: nothing to compare.\n")
    return "\n".join(out)


def write_seeds_report(groups: Sequence[lr_curves.Group], out: Path, title: str) -> None:
    """seeds.png and seeds.md of the sweep whose report directory is `out` (its trials in out.parent/trials)."""
    plot_seed_spread(groups, out / "seeds.png", title)
    workdir = out.parent
    rows = records.read_results(workdir / "results.jsonl")
    outliers = {g.label: seed_outliers(g, rows, workdir) for g in groups if len(g.seeds) > 1}
    (out / "seeds.md").write_text(seeds_markdown(groups, title, outliers))
