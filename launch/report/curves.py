"""Loss-over-tokens curves and the per-budget table of a sweep whose trials differ in schedule, budget, optimizer
or injected spikes (experiments/wsd_s.py, experiments/spam.py); called by launch.report.write_report.

    report/loss_over_tokens.png   training loss (thin) and eval loss (markers) against tokens: one colour per
                                  method (the trial's overrides without the LR and train.steps, so the per-budget
                                  runs of one method share a colour), one panel per peak LR; dashed lines at the
                                  budgets, a dotted red line at an injected spike (train.spike_at_step)
    summary.md section            "Eval loss at each budget": per method, the eval loss of the model that was
                                  decayed for budget B (Wen et al. 2024, spec optimizers §3(c)): the final eval of a
                                  run with train.steps = B, or the eval at step B of a wsd_s / cyclic_cosine run
                                  with B among its cycle ends. Needs an eval at every budget (train.eval_every
                                  dividing them; the studies set it).

Both are written only for sweeps that need them: several budgets, an injected spike, or different optimizers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from launch.report import common

STEPS_KEY = "train.steps"
CYCLIC_SCHEDULES = ("wsd_s", "cyclic_cosine")  # schedules whose cycle ends (optim.wsd.cycles) are decayed models


def method_label(row: dict) -> str:
    """The trial's overrides without the LR and the budget: what one colour means."""
    return common.label(sorted((k, v) for k, v in row["overrides"].items() if k not in (common.LR_KEY, STEPS_KEY)))


def decayed_budgets(cfg: dict) -> list[int]:
    """The steps at which this trial's LR has just finished a decay: train.steps, and the cycle ends of a
    wsd_s / cyclic_cosine schedule."""
    cycles = list(cfg["optim.wsd.cycles"]) if cfg["optim.schedule"] in CYCLIC_SCHEDULES else []
    return sorted({int(c) for c in cycles} | {int(cfg[STEPS_KEY])})


def wanted(configs: list[dict]) -> bool:
    budgets = {b for c in configs for b in decayed_budgets(c)}
    return (
        len(budgets) > 1
        or any(c["train.spike_at_step"] for c in configs)
        or len({c["optim.name"] for c in configs}) > 1
    )


def eval_at(run_dir: Path, step: int) -> float | None:
    steps, values = common.metric_series(run_dir, "eval_loss")
    hit = values[steps == step]
    return float(hit[-1]) if len(hit) and math.isfinite(hit[-1]) else None


def plot_loss_over_tokens(workdir: Path, rows: list[dict], configs: list[dict], path: Path) -> None:
    plt = common.pyplot()
    methods = sorted({method_label(r) for r in rows})
    colors = dict(zip(methods, plt.cm.tab10(np.arange(len(methods)) % 10)))
    styles = dict(zip(methods, (common.LINESTYLES * len(methods))[: len(methods)]))
    lrs = sorted({r["lr"] for r in rows})
    fig, axes = common.axes_grid(plt, len(lrs), sharey=True, width=6.5, height=4.2)
    budgets = sorted({b for c in configs for b in decayed_budgets(c)})
    spikes = sorted({c["train.spike_at_step"] for c in configs} - {0})
    for ax, lr in zip(axes, lrs):
        labelled = set()
        for row, cfg in zip(rows, configs):
            if row["lr"] != lr:
                continue
            run_dir, per_step = workdir / "trials" / row["id"], cfg["data.batch_size"] * cfg["data.seq_len"]
            method = method_label(row)
            label = None if method in labelled else method
            labelled.add(method)
            steps, loss = common.metric_series(run_dir, "loss")
            ax.plot(steps * per_step, loss, color=colors[method], linewidth=0.8, alpha=0.5)
            steps, ev = common.metric_series(run_dir, "eval_loss")
            ax.plot(steps * per_step, ev, marker="o", linestyle=styles[method], color=colors[method], markersize=3.5,
                    linewidth=1.6, label=label, zorder=3 if len(decayed_budgets(cfg)) > 1 else 2)
            if row["diverged"]:
                ax.plot(steps[-1:] * per_step, ev[-1:], common.DIVERGED_MARKER, color=colors[method], markersize=10)
        per_step = configs[0]["data.batch_size"] * configs[0]["data.seq_len"]
        for b in budgets if len(budgets) > 1 else []:
            ax.axvline(b * per_step, color="grey", linestyle="--", linewidth=0.8)
        for s in spikes:
            ax.axvline(s * per_step, color="red", linestyle=":", linewidth=1.2)
        ax.set_xlabel("tokens" + (" (dashed: budgets)" if len(budgets) > 1 else "") + (" (dotted: spike)" if spikes else ""))
        ax.set_ylabel("loss (thin: train, markers: eval)")
        ax.set_title(f"peak lr {lr:g}")
        finite = [v for r, c in zip(rows, configs) if r["lr"] == lr for v in [common.trial_loss(r)] if math.isfinite(v)]
        if finite:  # the interesting range: from below the best final loss to well above the worst
            ax.set_ylim(min(finite) - 0.2, max(finite) + 1.5)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"loss over tokens — {workdir.name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def budget_table(workdir: Path, rows: list[dict], configs: list[dict]) -> str:
    """Markdown: eval loss of each method's decayed model at each budget (one column per budget)."""
    budgets = sorted({b for c in configs for b in decayed_budgets(c)})
    table: dict[tuple[str, float], dict[int, float | None]] = {}
    for row, cfg in zip(rows, configs):
        cells = table.setdefault((method_label(row), row["lr"]), {})
        for b in decayed_budgets(cfg):
            cells[b] = eval_at(workdir / "trials" / row["id"], b)
    header = ["method", "lr", *(f"{b} steps" for b in budgets)]
    body = [[m, f"{lr:g}", *(common.fmt(cells.get(b)) for b in budgets)] for (m, lr), cells in sorted(table.items())]
    return (
        "\n## Eval loss at each budget\n\nThe eval loss of the model decayed for each budget: the final eval of a run "
        "with train.steps = B, or the eval at step B of a wsd_s / cyclic_cosine run whose cycle ends at B "
        "(– : the method has no decayed model there).\n\n" + common.md_table(header, body)
    )


def write_curves_report(workdir: Path, rows: list[dict], out: Path) -> str:
    """Writes out/loss_over_tokens.png when the sweep wants it (`wanted`); returns the summary.md section."""
    if not rows or not all((workdir / "trials" / r["id"] / "config.json").is_file() for r in rows):
        return ""  # results without their run directories (copied rows): nothing to plot from
    configs = [common.run_config(workdir / "trials" / r["id"]) for r in rows]
    if not wanted(configs):
        return ""
    plot_loss_over_tokens(workdir, rows, configs, out / "loss_over_tokens.png")
    section = "\n## Loss over tokens\n\n![loss over tokens](loss_over_tokens.png)\n"
    if len({b for c in configs for b in decayed_budgets(c)}) > 1:
        section += budget_table(workdir, rows, configs)
    return section
