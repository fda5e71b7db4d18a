"""`python -m launch.report DIR [DIR ...] [--out=OUT] [--label=...] [--metric=loss] [--log_y] [--seeds]
[--format=png|svg|pdf]`: plots and tables of a sweep or of one run, or a comparison of several sweeps.

For a sweep directory (one with results.jsonl; launch.sweep also calls `write_report` at its end), into
DIR/report/:

    loss_vs_lr.png           final eval loss (capped at ℓ0) against the peak LR (log x): one curve per group (every
                             override key but the LR and train.seed), one panel per model size (the shape keys
                             d_model, n_layers, ... that vary); with several seeds the mean, a min–max band and
                             every seed's points; a diverged trial is drawn at ℓ0 with an 'x' (lr_curves.py)
    lr_sensitivity.csv       LR sensitivity per group, the paper's (Wortsman et al. 2023 §2; spec
                             optimizers-and-metrics §4), per seed and with its seed spread; trials finished,
                             diverged and missing per group (lr_curves.py)
    <metric>_over_steps.png  one metric of metrics.jsonl over steps for every trial (default `loss`); beside it
                             <metric>_over_steps.md, its first, max and final value per group and LR (mean over
                             seeds [min, max]) for pages to quote
    summary.md               trials, LR sensitivity and best LR per group, seed verdicts, missing and diverged
                             trials
    buckets_vs_<key>.png, bucket_loss_over_steps.png   with train.freq_buckets (buckets.py)
    loss_over_tokens.png     with several budgets, schedules, optimizers or an injected spike (curves.py)
    seeds.md, seeds.png      with --seeds: how far apart the seeds are, outlier seeds marked (seeds.py)
    loss_vs_length.png, .md  with trials' length_eval.json (launch.eval_length): eval loss against the evaluation
                             length per group, mean over seeds [min, max] (lengths.py)
    spikes.md                loss and gradient-norm spikes per trial (x > 1.2 or 3 × its 100-step EMA), per group
                             and LR mean over seeds [min, max], with the largest x / EMA; also a summary.md section
                             (spikes.py; written whenever trials log loss or grad_norm)
    early_warning.csv        with diverged trials: lead time vs false alarms of each logged signal (early_warning.py)
    index.html               all of the above in one static page, with the trial table and links to every trial's
                             run directory and TensorBoard logdir (html.py)

loss_vs_lr and the metric plot in --format (png, svg or pdf); the other figures are PNG. With several sweep
directories, a comparison instead (compare.py): one figure, one table with the differences against the first
sweep, summary.md and index.html, into --out.

Missing trials are those DIR/sweep.json (launch.sweep's list of every trial, all shards) has and results.jsonl
lacks. For a run directory (metrics.jsonl, summary.json) only the metric plot, summary.md and index.html. Plots use
matplotlib's Agg backend (no display needed).

Modules: common (rows, runs, plotting and markdown helpers) ← lr_curves ← seeds, compare, lengths, spikes;
common ← buckets, curves; html (the page) on its own; this module composes them. No module uses another's
underscore names.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from launch import records
from launch.report.common import capped, metric_series, run_config, trial_loss
from launch.report.lr_curves import Group, lr_sensitivity, read_sensitivity_csv, seed_verdicts, sensitivity_table
from launch.report import buckets, common, compare, curves, early_warning, html, lengths, lr_curves, spikes
from launch.report import seeds as seeds_lib

__all__ = ["write_report", "write_comparison", "lr_sensitivity", "capped", "metric_series", "run_config", "trial_loss",
           "Group",
           "sensitivity_table", "seed_verdicts", "read_sensitivity_csv"]


def _plots(out: Path) -> str:
    """Markdown images of every metric-over-steps plot in `out` (several --metric runs accumulate)."""
    return "\n".join(f"![{p.stem}]({p.name})\n" for p in sorted(out.glob("*_over_steps.*"))
                     if p.suffix[1:] in common.FORMATS)


def outcome(row_or_summary: dict) -> str:
    """`diverged at step 7`, `eval 3.2100`, `train 3.3000` or `unfinished`: a trial's or run's end in words."""
    if row_or_summary.get("diverged"):
        return f"diverged at step {row_or_summary.get('diverged_at_step')}"
    for key, name in (("eval_loss", "eval"), ("final_loss", "train")):
        if row_or_summary.get(key) is not None:
            return f"{name} {row_or_summary[key]:.4f}"
    return "unfinished"


def sweep_summary(workdir: Path, rows: list[dict], groups: list[Group], with_definition: bool, out: Path,
                  fmt: str = "png") -> str:
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
           f"![final eval loss vs LR](loss_vs_lr.{fmt})\n",
           _plots(out),
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


def run_summary(run_dir: Path, summary: dict, out_dir: Path) -> str:
    out = [f"# Run report: {run_dir.name}\n", _plots(out_dir)]
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


def metric_table(workdir: Path, rows: list[dict], metric: str) -> str:
    """Markdown: per group and LR, `metric` at its first logged step, its maximum and its final value, each the mean
    over the group's seeds [min, max]; the numbers behind `<metric>_over_steps.png`, for pages to quote."""
    cells: dict[str, dict[float, list[tuple[float, float, float]]]] = {}
    for r in rows:
        steps, values = common.metric_series(workdir / "trials" / r["id"], metric)
        if len(values) and not np.isnan(values).all():
            per_lr = cells.setdefault(common.label(common.point_items(r["overrides"])), {})
            per_lr.setdefault(r["lr"], []).append((values[0], np.nanmax(values), values[-1]))
    if not cells:
        return ""

    def stat(xs) -> str:
        xs = np.asarray(xs, dtype=float)
        return common.fmt(float(np.mean(xs)), ".4g") + (
            f" [{np.min(xs):.4g}, {np.max(xs):.4g}]" if len(xs) > 1 else "")

    body = [[group, f"{lr:g}", str(len(v)), *(stat([x[i] for x in v]) for i in range(3))]
            for group, per_lr in cells.items() for lr, v in sorted(per_lr.items())]
    return (f"# `{metric}` per group and LR: {workdir.name}\n\nMean over the trials (seeds) [min, max]; a diverged "
            "trial's values end where it stopped; NaN values are skipped in the maximum.\n\n"
            + common.md_table(["group", "lr", "trials", "first logged", "max", "final"], body))


def write_report(path: str | Path, metric: str = "loss", log_y: bool = False, seeds: bool = False,
                 fmt: str = "png", out: str | Path | None = None) -> Path:
    """Writes DIR/report/ (or `out`) for a sweep directory (results.jsonl) or a run directory (metrics.jsonl);
    returns it. `seeds`: also seeds.md and seeds.png (sweeps only); `fmt`: loss_vs_lr's and the metric plot's."""
    path = Path(path)
    out = Path(out) if out else path / "report"
    png = common.metric_filename(metric, fmt)
    if (path / "results.jsonl").exists():
        # a trial whose task failed (launch.sweep --executor=ray) has no numbers: reported like a missing one
        rows = [r for r in records.read_results(path / "results.jsonl") if not r.get("failed")]
        definition = common.read_sweep_definition(path)
        out.mkdir(parents=True, exist_ok=True)
        groups = sensitivity_table(rows, definition)
        lr_curves.write_sensitivity_csv(groups, out / "lr_sensitivity.csv", definition is not None)
        lr_curves.plot_loss_vs_lr(groups, out / f"loss_vs_lr.{fmt}", path.name)
        drawn = common.plot_metric(metric_panels(path, groups, rows), metric, log_y, out / png)
        if drawn:
            (out / png).with_suffix(".md").write_text(metric_table(path, rows, metric))
        if seeds:
            seeds_lib.write_seeds_report(groups, out, path.name)
        sections = (
            curves.write_curves_report(path, rows, out)  # schedules, budgets, spikes; "" without them
            + buckets.write_bucket_report(path, rows, out)  # train.freq_buckets plots; "" without them
            + early_warning.write_early_warning_report(path, rows, out)  # "" without diverged trials
            + lengths.write_lengths_report(path, rows, groups, out)  # "" without length_eval.json
            + spikes.write_spikes_report(path, rows, groups, out)  # "" without loss / grad_norm rows
        )
        summary_md = sweep_summary(path, rows, groups, definition is not None, out, fmt) + sections
        (out / "summary.md").write_text(summary_md)
        if seeds:  # the page shows seeds.md too, a level down
            summary_md += "\n#" + (out / "seeds.md").read_text()
        trials = [(path.name, r["id"], path / "trials" / r["id"], outcome(r)) for r in rows]
        html.write_index(out, f"Sweep report: {path.name}", summary_md, trials)
    elif (path / "metrics.jsonl").exists():
        out.mkdir(parents=True, exist_ok=True)
        summary = records.read_summary(path) or {}
        drawn = common.plot_metric({path.name: [(path.name, path, bool(summary.get("diverged")))]}, metric, log_y,
                                   out / png)
        summary_md = run_summary(path, summary, out)
        (out / "summary.md").write_text(summary_md)
        html.write_index(out, f"Run report: {path.name}", summary_md, [("", path.name, path, outcome(summary))])
    else:
        raise FileNotFoundError(
            f"{path} is neither a sweep directory (results.jsonl) nor a run directory (metrics.jsonl)"
        )
    if not drawn:
        print(f"warning: no run in {path} logged {metric!r}; no {png}", file=sys.stderr)
    return out


def write_comparison(paths, out: str | Path | None = None, labels=(), metric: str = "loss", log_y: bool = False,
                     fmt: str = "png") -> Path:
    """Writes the comparison of the sweep directories `paths` into `out` (compare.py says what); returns `out`.
    `labels`: a label per sweep ("" or missing: from the config differences)."""
    paths = [Path(p) for p in paths]
    out = Path(out) if out else compare.default_out(paths)
    sweeps = compare.load_sweeps(paths, list(labels))
    out.mkdir(parents=True, exist_ok=True)
    lr_curves.plot_loss_vs_lr(compare.tagged_groups(sweeps), out / f"loss_vs_lr.{fmt}", "comparison")
    png = common.metric_filename(metric, fmt)
    figures = [f"loss_vs_lr.{fmt}"]
    if common.plot_metric(compare.metric_panels(sweeps), metric, log_y, out / png):
        figures.append(png)
    else:
        print(f"warning: no trial of {', '.join(map(str, paths))} logged {metric!r}; no {png}", file=sys.stderr)
    rows = compare.comparison_rows(sweeps)
    compare.write_csv(rows, out / "lr_sensitivity.csv")
    summary_md = compare.summary_markdown(sweeps, rows, figures)
    (out / "summary.md").write_text(summary_md)
    trials = [(s.label, r["id"], s.path / "trials" / r["id"], outcome(r)) for s in sweeps for r in s.rows]
    html.write_index(out, f"Comparison: {' vs '.join(s.label for s in sweeps)}", summary_md, trials)
    return out
