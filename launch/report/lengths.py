"""Eval loss against the evaluation length in a sweep report: the length-extrapolation claim of softplus attention
(Gao & Spratling 2025, LSSA / LSSAR; spec model-variants §4(d)), from `launch.eval_length`'s per-trial
length_eval.json (`{"step", "train_seq_len", "batch_size", "batches", "eval_loss": {"512": 2.9, ...}}`).

`launch.report.write_report` calls `write_lengths_report` for every sweep; it does something only when finished
trials (rows of results.jsonl) have a trials/<id>/length_eval.json. Into DIR/report/:

    loss_vs_length.png   eval loss against the evaluation length (log2 x, ticks at the evaluated lengths), one line
                         per group and LR (lr_curves' groups: the overrides without the LR and train.seed): the mean
                         over its seeds, the min–max band and every seed's points; a dashed line at the training
                         length (each trial's train_seq_len)
    loss_vs_length.md    the numbers behind it: per group and LR, the eval loss at each length as the mean over
                         seeds [min, max], and each trial's rise from the training length to the longest length
                         (mean [min, max]); also the summary.md section

A trial's non-finite loss at a length (a diverged trial) is left out of that cell's statistics and counted.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from launch.report import common, lr_curves

FILE = "length_eval.json"  # what launch.eval_length writes into a run directory
FIGURE, TABLE = "loss_vs_length.png", "loss_vs_length.md"


def read_length_evals(workdir: Path, rows: list[dict]) -> dict[str, dict]:
    """{trial id: its length_eval.json} for the rows whose run directory has one."""
    paths = {r["id"]: workdir / "trials" / r["id"] / FILE for r in rows}
    return {tid: json.loads(p.read_text()) for tid, p in paths.items() if p.is_file()}


def length_lines(groups: Sequence[lr_curves.Group], rows: list[dict], evals: dict[str, dict]) -> list[dict]:
    """One line per group and LR with a length evaluation: {"group", "lr", "label" (the group, as the legends of
    loss_vs_lr name it), "legend" (with the LR when the lines' LRs differ), "seeds", "train_lens",
    "steps" (the checkpoints' steps), "loss_SxN" (seed × length, NaN where a seed lacks that length or its loss is
    not finite)} over `lengths(evals)`."""
    lens = lengths(evals)
    hide = lr_curves.hidden_keys(groups, ())
    several_lrs = len({r["lr"] for r in rows if r["id"] in evals}) > 1
    out = []
    for g in groups:
        for lr in g.lrs:
            trials = {common.seed_of(r["overrides"]): r["id"] for r in rows if r["id"] in evals and r["lr"] == lr
                      and common.point_items(r["overrides"]) == g.items}
            seeds = [s for s in g.seeds if s in trials]
            if not seeds:
                continue
            loss_SxN = np.array([[_finite(evals[trials[s]]["eval_loss"].get(str(n))) for n in lens] for s in seeds])
            name = lr_curves.curve_label(g, hide)
            out.append(dict(group=g.label, lr=lr, seeds=seeds, loss_SxN=loss_SxN.reshape(len(seeds), len(lens)),
                            label=name, legend=name + (f", lr={lr:g}" if several_lrs else ""),
                            train_lens=sorted({int(evals[trials[s]]["train_seq_len"]) for s in seeds}),
                            steps=sorted({int(evals[trials[s]]["step"]) for s in seeds})))
    return out


def lengths(evals: dict[str, dict]) -> list[int]:
    """Every evaluated length of any trial, ascending."""
    return sorted({int(n) for e in evals.values() for n in e["eval_loss"]})


def _finite(x) -> float:
    return float(x) if x is not None and math.isfinite(x) else math.nan


def stat(xs: np.ndarray) -> str:
    """`mean [min, max]` of the finite values (`mean` alone for one, `–` for none)."""
    xs = xs[np.isfinite(xs)]
    if not len(xs):
        return "–"
    return f"{np.mean(xs):.4f}" + (f" [{np.min(xs):.4f}, {np.max(xs):.4f}]" if len(xs) > 1 else "")


def rise_S(line: dict, lens: list[int]) -> np.ndarray:
    """Per seed: loss at the longest evaluated length minus loss at the training length (NaN without both)."""
    if len(line["train_lens"]) != 1 or line["train_lens"][0] not in lens:
        return np.full(len(line["seeds"]), math.nan)
    y = line["loss_SxN"]
    return y[:, -1] - y[:, lens.index(line["train_lens"][0])]


def length_table(lines: list[dict], lens: list[int]) -> str:
    """Markdown: a row per group and LR, a column per evaluated length (mean over seeds [min, max]), the rise."""
    train = {n for line in lines for n in line["train_lens"]}
    ratio = lambda n: f" ({n / next(iter(train)):g}×)" if len(train) == 1 else ""
    header = ["group", "lr", "seeds", *(f"{n}{ratio(n)}" for n in lens), f"rise to {lens[-1]}"]
    body = [[line["label"], f"{line['lr']:g}", str(len(line["seeds"])),
             *(stat(line["loss_SxN"][:, j]) for j in range(len(lens))), stat(rise_S(line, lens))] for line in lines]
    dropped = sum(int((~np.isfinite(line["loss_SxN"])).sum()) for line in lines)
    steps = sorted({n for line in lines for n in line["steps"]})
    return ("Eval loss (mean next-token CE over held-out windows of each length, `launch.eval_length`) of each "
            "trial's newest checkpoint (step " + ", ".join(map(str, steps)) + "): the mean over seeds [min, max]; "
            "trained at length " + ", ".join(map(str, sorted(train))) + ". Rise: each seed's loss at the longest "
            "length minus its loss at the training length, mean [min, max]."
            + (f" {dropped} seed × length cells without a finite loss are left out." if dropped else "") + "\n\n"
            + common.md_table(header, body))


def plot_loss_vs_length(lines: list[dict], lens: list[int], path: Path, title: str):
    """loss_vs_length.png (module docstring); returns the (closed) figure; artists carry gids `<legend>/mean`,
    `<legend>/band`, `<legend>/seeds`, and `train_len/<n>` for the training-length marks."""
    plt = common.pyplot()
    fig, (ax,) = common.axes_grid(plt, 1, width=6.5, height=4.5)
    x = np.array(lens, dtype=float)
    colors = {g: plt.cm.tab10(i % 10) for i, g in enumerate(dict.fromkeys(line["group"] for line in lines))}
    lrs = sorted({line["lr"] for line in lines})  # one colour per group, a line style and marker per LR
    for line in lines:
        j = lrs.index(line["lr"]) if len(lrs) > 1 else list(colors).index(line["group"])
        style = dict(color=colors[line["group"]], linestyle=common.LINESTYLES[j % 4], marker="osD^"[j % 4])
        y_SxN = line["loss_SxN"]
        n_seeds = len(line["seeds"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (no finite loss): a gap in the line
            mean, lo, hi = np.nanmean(y_SxN, 0), np.nanmin(y_SxN, 0), np.nanmax(y_SxN, 0)
        ax.plot(x, mean, label=line["legend"] + (f" (mean of {n_seeds} seeds)" if n_seeds > 1 else ""),
                markersize=5, gid=f"{line['legend']}/mean", **style)
        if n_seeds > 1:
            ax.fill_between(x, lo, hi, color=style["color"], alpha=0.18, linewidth=0, gid=f"{line['legend']}/band")
            ax.plot(np.broadcast_to(x, y_SxN.shape).ravel(), y_SxN.ravel(), linestyle="none", marker=style["marker"],
                    markersize=3, color=style["color"], alpha=0.6, gid=f"{line['legend']}/seeds")
    for n in sorted({n for line in lines for n in line["train_lens"]}):
        ax.axvline(n, color="grey", linestyle="--", linewidth=1, gid=f"train_len/{n}", label=f"training length {n}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(n) for n in lens])
    ax.minorticks_off()
    ax.set_xlabel("evaluation length (tokens, log2)")
    ax.set_ylabel("eval loss")
    ax.set_title(f"eval loss vs evaluation length — {title}" + (" (band: min–max over seeds)" if any(
        len(line["seeds"]) > 1 for line in lines) else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()  # before the legend, which goes beside the axes (the lines stay visible) ...
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")  # ... and widens the image instead of narrowing the axes
    plt.close(fig)
    return fig


def write_lengths_report(workdir: Path, rows: list[dict], groups: Sequence[lr_curves.Group], out: Path) -> str:
    """Writes loss_vs_length.png and .md into `out` when trials of `rows` have a length_eval.json; returns the
    summary.md section, "" (and writes nothing) when none has."""
    evals = read_length_evals(workdir, rows)
    lines = length_lines(groups, rows, evals) if evals else []
    if not lines:
        return ""
    lens = lengths(evals)
    plot_loss_vs_length(lines, lens, out / FIGURE, workdir.name)
    table = length_table(lines, lens)
    (out / TABLE).write_text(f"# Eval loss vs evaluation length: {workdir.name}\n\n![loss vs length]({FIGURE})\n\n"
                             + table)
    return f"\n## Eval loss vs evaluation length\n\n![eval loss vs evaluation length]({FIGURE})\n\n" + table
