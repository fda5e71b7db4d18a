"""`launch.report DIR --seeds`: how far apart the seeds of a sweep are (issue "Trustworthy numbers").

Into DIR/report/:

    seeds.png   per group, against the LR (log x): the spread (max − min) over seeds of the final eval loss as LR
                sensitivity sees it (capped at ℓ0, a diverged seed at ℓ0), a panel per model size
    seeds.md    per group: every seed's capped loss at every LR with mean, spread and sample std (ddof = 1), and
                every seed's LR sensitivity

A difference between two curves smaller than this spread is not a finding at these seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from launch.report import common, lr_curves


def spread_over_seeds(group: lr_curves.Group) -> tuple[np.ndarray, np.ndarray]:
    """(max − min, sample std) over the present seeds of the capped loss at every LR; NaN with fewer than two."""
    columns = [y_S[ok_S] for y_S, ok_S in zip(group.capped_SxL.T, group.present_SxL.T)]
    spread = np.array([np.ptp(y) if len(y) > 1 else np.nan for y in columns])
    std = np.array([np.std(y, ddof=1) if len(y) > 1 else np.nan for y in columns])
    return spread, std


def plot_seed_spread(groups: Sequence[lr_curves.Group], path: Path, title: str):
    """seeds.png (module docstring); returns the (closed) figure, a line with gid `<group>/spread` per group."""
    plt = common.pyplot()
    sizes, by_size = lr_curves.panels([g for g in groups if len(g.seeds) > 1])
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def seeds_markdown(groups: Sequence[lr_curves.Group], title: str) -> str:
    out = [f"# Seed spread: {title}\n",
           "Final eval loss capped at ℓ0 (a diverged seed at ℓ0, `x`), per seed and LR; spread = max − min over "
           "seeds, std = sample std (ddof = 1).\n", "![seed spread](seeds.png)\n"]
    multi = [g for g in groups if len(g.seeds) > 1]
    for g in multi:
        y_SxL, (mean_L, _, _), (spread_L, std_L) = g.capped_SxL, g.over_seeds(), spread_over_seeds(g)

        def cell(i, j):
            return "missing" if not g.present_SxL[i, j] else common.fmt(y_SxL[i, j]) + (
                " x" if g.diverged_SxL[i, j] else "")

        out.append(f"\n## {g.label}\n")
        out.append(common.md_table(
            ["lr", *(f"seed {s}" for s in g.seeds), "mean", "spread", "std"],
            [[f"{lr:g}", *(cell(i, j) for i in range(len(g.seeds))), common.fmt(mean_L[j]),
              common.fmt(spread_L[j]), common.fmt(std_L[j])] for j, lr in enumerate(g.lrs)]))
        per_seed = (", ".join(f"seed {s}: {v:.4f}" for s, v in zip(g.seeds, g.sensitivity_S))
                    if g.sensitivity_S is not None else f"not computed ({g.note})")
        out.append(f"\nLR sensitivity per seed: {per_seed}\n")
    if not multi:
        out.append("\nEvery group has one seed: nothing to compare.\n")
    return "\n".join(out)


def write_seeds_report(groups: Sequence[lr_curves.Group], out: Path, title: str) -> None:
    plot_seed_spread(groups, out / "seeds.png", title)
    (out / "seeds.md").write_text(seeds_markdown(groups, title))
