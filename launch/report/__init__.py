"""`python -m launch.report DIR [--metric=loss] [--log_y] [--seeds]`: plots and tables of a sweep or of one run.

For a sweep directory (one with results.jsonl; launch.sweep also calls `write_report` at its end), into
DIR/report/:

    loss_vs_lr.png           final eval loss (capped at ℓ0) against the peak LR (log x): one curve per group (every
                             override key but the LR and train.seed), one panel per model size (the shape keys
                             d_model, n_layers, ... that vary); with several seeds the mean, a min–max band and
                             every seed's points; a diverged trial is drawn at ℓ0 with an 'x' (lr_curves.py)
    lr_sensitivity.csv       LR sensitivity per group, the paper's (Wortsman et al. 2023 §2; spec
                             optimizers-and-metrics §4), per seed and with its seed spread; trials finished,
                             diverged and missing per group (lr_curves.py)
    <metric>_over_steps.png  one metric of metrics.jsonl over steps for every trial (default `loss`)
    summary.md               trials, LR sensitivity and best LR per group, seed verdicts, missing and diverged
                             trials
    buckets_vs_<key>.png, bucket_loss_over_steps.png   with train.freq_buckets (buckets.py)
    loss_over_tokens.png     with several budgets, schedules, optimizers or an injected spike (curves.py)
    seeds.md, seeds.png      with --seeds: how far apart the seeds are, outlier seeds marked (seeds.py)
    early_warning.csv        with diverged trials: lead time vs false alarms of each logged signal (early_warning.py)

Missing trials are those DIR/sweep.json (launch.sweep's list of every trial, all shards) has and results.jsonl
lacks. For a run directory (metrics.jsonl, summary.json) only the metric plot and summary.md. Plots use
matplotlib's Agg backend (no display needed).

Modules: common (rows, runs, plotting and markdown helpers) ← lr_curves ← seeds; common ← buckets, curves; this
module composes them. No module uses another's underscore names.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launch import records
from launch.report.common import capped, metric_series, run_config, trial_loss
from launch.report.lr_curves import Group, lr_sensitivity, read_sensitivity_csv, seed_verdicts, sensitivity_table
from launch.report import buckets, common, curves, early_warning, lr_curves, seeds as seeds_lib

__all__ = ["write_report", "lr_sensitivity", "capped", "metric_series", "run_config", "trial_loss", "Group",
           "sensitivity_table", "seed_verdicts", "read_sensitivity_csv"]


def _plots(out: Path) -> str:
    """Markdown images of every metric-over-steps plot in `out` (several --metric runs accumulate)."""
    return "\n".join(f"![{p.stem}]({p.name})\n" for p in sorted(out.glob("*_over_steps.png")))


def sweep_summary(workdir: Path, rows: list[dict], groups: list[Group], with_definition: bool) -> str:
    diverged = [r for r in rows if r["diverged"]]
    unfinished = sorted(
        {p.name for p in (workdir / "trials").iterdir() if p.is_dir()} - {r["id"] for r in rows}
    ) if (workdir / "trials").is_dir() else []
    n_missing = sum(len(g.missing) for g in groups)
    out = [f"# Sweep report: {workdir.name}\n",
           f"{len(rows)} trials finished, {len(diverged)} diverged"
           + (f", {n_missing} missing (⚠ their groups get no LR sensitivity)" if n_missing else "")
           + (f"; {len(unfinished)} trial directories without a result (in flight or killed)" if unfinished else "")
           + ".\n",
           "LR sensitivity (Wortsman et al. 2023 §2) uses the final **eval** loss, the paper's choice; diverged "
           "trials count as ℓ0, the seed's measured initial eval loss (capped, never dropped).\n",
           "![final eval loss vs LR](loss_vs_lr.png)\n",
           _plots(workdir / "report"),
           lr_curves.summary_section(groups, with_definition)]
    out.append("\n## Trials\n")
    out.append(common.md_table(
        ["trial", "lr", "eval loss", "final train loss", "initial loss", "diverged at", "wall s"],
        [[r["id"], f"{r['lr']:g}", common.fmt(r["eval_loss"]), common.fmt(r["final_loss"]),
          common.fmt(r["initial_loss"]), common.fmt(r["diverged_at_step"], "d"), common.fmt(r["wall_seconds"], ".1f")]
         for r in rows]))
    out.append("\n## Diverged trials\n")
    out.append("".join(f"- `{r['id']}` at step {r['diverged_at_step']}\n" for r in diverged) or "none\n")
    return "\n".join(out)


def run_summary(run_dir: Path, summary: dict) -> str:
    out = [f"# Run report: {run_dir.name}\n", _plots(run_dir / "report")]
    out.append(common.md_table(["field", "value"], [[k, str(v)] for k, v in sorted(summary.items())]) if summary
               else "no summary.json yet (unfinished run)\n")
    return "\n".join(out)


def metric_panels(workdir: Path, groups: list[Group], rows: list[dict]) -> dict[str, list[tuple[str, Path, bool]]]:
    """{group label: [(lr (and seed) label, trial dir, diverged)]} for `common.plot_metric`."""
    by_label: dict[str, list[dict]] = {}
    for r in rows:
        by_label.setdefault(common.label(common.point_items(r["overrides"])), []).append(r)
    seeded = {g.label for g in groups if len(g.seeds) > 1}

    def name(r, group):
        return f"lr={r['lr']:g}" + (f", seed={common.seed_of(r['overrides'])}" if group in seeded else "")

    return {
        group: [(name(r, group), workdir / "trials" / r["id"], bool(r["diverged"]))
                for r in sorted(rs, key=lambda r: (r["lr"], str(common.seed_of(r["overrides"]))))]
        for group, rs in by_label.items()
    }


def write_report(path: str | Path, metric: str = "loss", log_y: bool = False, seeds: bool = False) -> Path:
    """Writes DIR/report/ for a sweep directory (results.jsonl) or a run directory (metrics.jsonl); returns it.
    `seeds`: also seeds.md and seeds.png (sweeps only)."""
    path = Path(path)
    out = path / "report"
    png = common.metric_filename(metric)
    if (path / "results.jsonl").exists():
        rows = records.read_results(path / "results.jsonl")
        definition = common.read_sweep_definition(path)
        out.mkdir(exist_ok=True)
        groups = sensitivity_table(rows, definition)
        lr_curves.write_sensitivity_csv(groups, out / "lr_sensitivity.csv", definition is not None)
        lr_curves.plot_loss_vs_lr(groups, out / "loss_vs_lr.png", path.name)
        drawn = common.plot_metric(metric_panels(path, groups, rows), metric, log_y, out / png)
        if seeds:
            seeds_lib.write_seeds_report(groups, out, path.name)
        sections = (
            curves.write_curves_report(path, rows, out)  # schedules, budgets, spikes; "" without them
            + buckets.write_bucket_report(path, rows, out)  # train.freq_buckets plots; "" without them
            + early_warning.write_early_warning_report(path, rows, out)  # "" without diverged trials
        )
        (out / "summary.md").write_text(sweep_summary(path, rows, groups, definition is not None) + sections)
    elif (path / "metrics.jsonl").exists():
        out.mkdir(exist_ok=True)
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
        drawn = common.plot_metric({path.name: [(path.name, path, bool(summary.get("diverged")))]}, metric, log_y,
                                   out / png)
        (out / "summary.md").write_text(run_summary(path, summary))
    else:
        raise FileNotFoundError(
            f"{path} is neither a sweep directory (results.jsonl) nor a run directory (metrics.jsonl)"
        )
    if not drawn:
        print(f"warning: no run in {path} logged {metric!r}; no {png}", file=sys.stderr)
    return out
