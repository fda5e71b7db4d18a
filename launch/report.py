"""`python -m launch.report DIR [--metric=loss] [--log_y]`: plots and tables of a sweep or of one run.

For a sweep directory (one with results.jsonl; launch.sweep also calls this at its end), into DIR/report/:

    loss_vs_lr.png           final eval loss against the peak LR (log x): one curve per intervention group (every
                             override key but the LR), one panel per model size (the shape keys d_model, n_layers,
                             ... that vary); a diverged trial is drawn at ℓ0 with an 'x'
    lr_sensitivity.csv       LR sensitivity per group (Wortsman et al. 2023 §2; spec optimizers-and-metrics §4)
    <metric>_over_steps.png  one metric of metrics.jsonl over steps for every trial (default `loss`)
    summary.md               trials, LR sensitivity and best LR per group, diverged trials
    buckets_vs_<key>.png, bucket_loss_over_steps.png   with train.freq_buckets: launch/bucket_report.py
    loss_over_tokens.png     with several budgets, schedules, optimizers or an injected spike: launch/curves_report.py

For a run directory (metrics.jsonl, summary.json) only the metric plot and summary.md. Plots use matplotlib's
Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from launch import cli, metrics as metrics_lib, records

LR_KEY = "optim.lr"
SIZE_KEYS = ("model.d_model", "model.n_layers", "model.n_heads", "model.head_dim", "model.d_ff")  # model shape
DIVERGED_MARKER = "x"
LINESTYLES = ("-", "--", ":", "-.")


def lr_sensitivity(final_losses: Sequence[float], initial_loss: float) -> float:
    """E_η[min(ℓ(η), ℓ0) − ℓ*] over the grid, ℓ* = min over the same grid after capping (Wortsman et al. §2).

    A diverged run (NaN, inf or None) counts as ℓ0: capped, never dropped. [3.5, 3.3, 3.2, 3.3, 3.9, NaN, 7.8]
    with ℓ0 = 10 gives 1.8 (dropping the NaN would give 0.967).
    """
    losses = capped(final_losses, initial_loss)
    return float(np.mean([x - min(losses) for x in losses]))


def capped(losses: Sequence[float | None], initial_loss: float) -> list[float]:
    """min(loss, ℓ0), with ℓ0 for a diverged run (NaN, inf or None)."""
    return [min(x, initial_loss) if x is not None and math.isfinite(x) else initial_loss for x in losses]


def trial_loss(row: dict) -> float:
    """The loss LR sensitivity uses: the final eval loss (the paper's choice), NaN when the trial diverged.

    A trial without an eval (train.eval_every=0) falls back to its final training loss.
    """
    if row["diverged"]:
        return math.nan
    loss = row["eval_loss"] if row["eval_loss"] is not None else row["final_loss"]
    return math.nan if loss is None else float(loss)


def _leaf(key: str) -> str:
    return key.rpartition(".")[2]


def _label(items: Sequence[tuple[str, object]]) -> str:
    return ", ".join(f"{_leaf(k)}={v}" for k, v in items) or "base"


def _group_items(row: dict) -> tuple[tuple[str, object], ...]:
    """The overrides of a trial without the LR: what identifies its intervention group (and size)."""
    hashable = lambda v: tuple(v) if isinstance(v, list) else v  # a tuple override comes back from JSON as a list
    return tuple(sorted((k, hashable(v)) for k, v in row["overrides"].items() if k != LR_KEY))


def group_rows(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Result rows grouped by every override key except the LR, each group sorted by LR."""
    groups: dict[str, tuple[tuple, list[dict]]] = {}
    for row in rows:
        items = _group_items(row)
        groups.setdefault(json.dumps(items, default=str), (items, []))[1].append(row)
    return {items: sorted(g, key=lambda r: r["lr"]) for items, g in groups.values()}


def size_keys(groups: list[tuple]) -> tuple[str, ...]:
    """The size keys whose values vary across the groups' override items (they make the panels)."""
    return tuple(k for k in SIZE_KEYS if len({json.dumps(dict(items).get(k)) for items in groups}) > 1)


def sensitivity_table(rows: list[dict]) -> list[dict]:
    """One dict per group: override items, LR grid, capped losses, ℓ0, best loss and LR, LR sensitivity, ...

    ℓ0 is the group's mean measured initial eval loss (`initial_loss` of its trials; equal within a group, since
    its trials share the initialisation).
    """
    table = []
    for items, group in group_rows(rows).items():
        losses = [trial_loss(r) for r in group]
        l0 = float(np.mean([r["initial_loss"] for r in group]))
        y = capped(losses, l0)
        finite = [i for i, x in enumerate(losses) if math.isfinite(x)]
        best = min(finite, key=lambda i: y[i]) if finite else None
        table.append(
            dict(
                items=items,
                group=_label(items),
                lrs=[r["lr"] for r in group],
                capped=y,
                diverged=[not math.isfinite(x) for x in losses],
                l0=l0,
                best_loss=min(y),
                best_lr=group[best]["lr"] if best is not None else None,
                lr_sensitivity=lr_sensitivity(losses, l0),
                n_diverged=sum(bool(r["diverged"]) for r in group),
                n_params=float(np.mean([r["n_params"] for r in group])),
            )
        )
    return table


def write_sensitivity_csv(table: list[dict], path: Path) -> None:
    keys = sorted({k for t in table for k, _ in t["items"]})
    with path.open("w", newline="") as f:
        f.write(
            "# LR sensitivity (Wortsman et al. 2023, §2): mean over the group's LR grid of min(loss, l0) - best_loss,\n"
            "# best_loss = min over the same grid after capping. loss = the final EVAL loss (the paper's choice; the\n"
            "# final training loss for a trial without eval). Diverged trials count as l0 (capped, never dropped).\n"
            "# l0 = the group's mean measured initial eval loss (per-trial initial_loss).\n"
        )
        w = csv.writer(f)
        w.writerow(
            ["group", *keys, "n_lrs", "lr_min", "lr_max", "l0", "best_loss", "best_lr", "lr_sensitivity", "n_diverged"]
        )
        for t in table:
            values = dict(t["items"])
            w.writerow(
                [t["group"], *(values.get(k, "") for k in keys), len(t["lrs"]), min(t["lrs"]), max(t["lrs"]),
                 repr(t["l0"]), repr(t["best_loss"]), t["best_lr"] if t["best_lr"] is not None else "",
                 repr(t["lr_sensitivity"]), t["n_diverged"]]
            )


def read_sensitivity_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


# ---- plots --------------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes_grid(plt, n: int, sharey: bool = False, width: float = 5.0, height: float = 3.8):
    cols = n if n <= 3 else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, sharey=sharey)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def plot_loss_vs_lr(table: list[dict], path: Path, title: str) -> None:
    """Figure 1 of Wortsman et al.: final eval loss vs LR per intervention, a panel per model size."""
    plt = _pyplot()
    sizes = size_keys([t["items"] for t in table])
    panels: dict[tuple, list[dict]] = {}
    for t in table:
        panels.setdefault(tuple((k, v) for k, v in t["items"] if k in sizes), []).append(t)

    def curve(t):  # the intervention: the group's items without the size keys
        return _label([(k, v) for k, v in t["items"] if k not in sizes])

    styles = {  # one colour, line style and marker per intervention in every panel: coinciding curves stay visible
        c: dict(color=plt.cm.tab10(i % 10), linestyle=LINESTYLES[i % 4], marker="osD^"[i % 4])
        for i, c in enumerate(sorted({curve(t) for t in table}))
    }

    fig, axes = _axes_grid(plt, len(panels))
    for ax, (size, groups) in zip(axes, sorted(panels.items(), key=lambda p: json.dumps(p[0], default=str))):
        for t in groups:
            style = styles[curve(t)]
            ax.plot(t["lrs"], t["capped"], label=curve(t), markersize=5, **style)
            bad = [i for i, d in enumerate(t["diverged"]) if d]
            ax.plot([t["lrs"][i] for i in bad], [t["capped"][i] for i in bad], DIVERGED_MARKER,
                    color=style["color"], markersize=11, markeredgewidth=2.5)
        if any(any(t["diverged"]) for t in groups):
            ax.plot([], [], DIVERGED_MARKER, color="black", markersize=9, markeredgewidth=2,
                    label="diverged (drawn at ℓ0)")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final eval loss (capped at ℓ0)")
        n_params = np.mean([t["n_params"] for t in groups])
        ax.set_title(f"{_label(size) if size else title} ({n_params / 1e6:.3g}M params)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"final eval loss vs learning rate — {title}" if sizes else "final eval loss vs learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def metric_filename(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", metric) + "_over_steps.png"


def plot_metric(panels: dict[str, list[tuple[str, Path, bool]]], metric: str, log_y: bool, path: Path) -> bool:
    """`metric` over steps: a panel per group, a line per (label, run_dir, diverged); False when no run logs it."""
    plt = _pyplot()
    labels = list(dict.fromkeys(label for runs in panels.values() for label, _, _ in runs))
    colors = dict(zip(labels, plt.cm.viridis(np.linspace(0, 0.9, len(labels)))))  # the same in every panel
    series = {name: [(label, *metric_series(d, metric), bad) for label, d, bad in runs] for name, runs in panels.items()}
    series = {name: kept for name, runs in series.items() if (kept := [s for s in runs if len(s[1])])}
    if not series:
        return False
    fig, axes = _axes_grid(plt, len(series), sharey=True)
    for ax, (name, runs) in zip(axes, series.items()):
        for label, steps, values, bad in runs:
            color = colors[label]
            ax.plot(steps, values, color=color, label=label + (" (diverged)" if bad else ""), linewidth=1.2)
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- summary.md ---------------------------------------------------------------------------------------------------


def _fmt(x, spec: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _plots(out: Path) -> str:
    """Markdown images of every metric-over-steps plot in `out` (several --metric runs accumulate)."""
    return "\n".join(f"![{p.stem}]({p.name})\n" for p in sorted(out.glob("*_over_steps.png")))


def sweep_summary(workdir: Path, rows: list[dict], table: list[dict]) -> str:
    diverged = [r for r in rows if r["diverged"]]
    unfinished = sorted(
        {p.name for p in (workdir / "trials").iterdir() if p.is_dir()} - {r["id"] for r in rows}
    ) if (workdir / "trials").is_dir() else []
    out = [f"# Sweep report: {workdir.name}\n",
           f"{len(rows)} trials finished, {len(diverged)} diverged"
           + (f"; {len(unfinished)} trial directories without a result (in flight or killed)" if unfinished else "")
           + ".\n",
           "LR sensitivity (Wortsman et al. 2023 §2) uses the final **eval** loss, the paper's choice; diverged "
           "trials count as ℓ0, the group's mean measured initial eval loss (capped, never dropped).\n",
           "![final eval loss vs LR](loss_vs_lr.png)\n",
           _plots(workdir / "report")]
    out.append("## LR sensitivity per group\n")
    out.append(_md_table(
        ["group", "LRs", "ℓ0", "best loss", "best LR", "LR sensitivity", "diverged"],
        [[t["group"], " ".join(f"{x:g}" for x in t["lrs"]), _fmt(t["l0"]), _fmt(t["best_loss"]),
          _fmt(t["best_lr"], "g"), _fmt(t["lr_sensitivity"]), f"{t['n_diverged']}/{len(t['lrs'])}"] for t in table]))
    out.append("\n## Trials\n")
    out.append(_md_table(
        ["trial", "lr", "eval loss", "final train loss", "initial loss", "diverged at", "wall s"],
        [[r["id"], f"{r['lr']:g}", _fmt(r["eval_loss"]), _fmt(r["final_loss"]), _fmt(r["initial_loss"]),
          _fmt(r["diverged_at_step"], "d"), _fmt(r["wall_seconds"], ".1f")] for r in rows]))
    out.append("\n## Diverged trials\n")
    out.append("".join(f"- `{r['id']}` at step {r['diverged_at_step']}\n" for r in diverged) or "none\n")
    return "\n".join(out)


def run_summary(run_dir: Path, summary: dict) -> str:
    out = [f"# Run report: {run_dir.name}\n", _plots(run_dir / "report")]
    out.append(_md_table(["field", "value"], [[k, str(v)] for k, v in sorted(summary.items())]) if summary
               else "no summary.json yet (unfinished run)\n")
    return "\n".join(out)


# ---- entry points -------------------------------------------------------------------------------------------------


def write_report(path: str | Path, metric: str = "loss", log_y: bool = False) -> Path:
    """Writes DIR/report/ for a sweep directory (results.jsonl) or a run directory (metrics.jsonl); returns it."""
    path = Path(path)
    out = path / "report"
    png = metric_filename(metric)
    if (path / "results.jsonl").exists():
        rows = records.read_results(path / "results.jsonl")
        out.mkdir(exist_ok=True)
        table = sensitivity_table(rows)
        write_sensitivity_csv(table, out / "lr_sensitivity.csv")
        plot_loss_vs_lr(table, out / "loss_vs_lr.png", path.name)
        panels = {
            _label(items): [(f"lr={r['lr']:g}", path / "trials" / r["id"], bool(r["diverged"])) for r in group]
            for items, group in group_rows(rows).items()
        }
        drawn = plot_metric(panels, metric, log_y, out / png)
        from launch import bucket_report, curves_report  # imported here: they use this module's helpers

        buckets = bucket_report.write_bucket_report(path, rows, out)  # train.freq_buckets plots; "" without them
        curves = curves_report.write_curves_report(path, rows, out)  # schedules, budgets, spikes; "" without them
        (out / "summary.md").write_text(sweep_summary(path, rows, table) + curves + buckets)
    elif (path / "metrics.jsonl").exists():
        out.mkdir(exist_ok=True)
        summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
        drawn = plot_metric({path.name: [(path.name, path, bool(summary.get("diverged")))]}, metric, log_y, out / png)
        (out / "summary.md").write_text(run_summary(path, summary))
    else:
        raise FileNotFoundError(
            f"{path} is neither a sweep directory (results.jsonl) nor a run directory (metrics.jsonl)"
        )
    if not drawn:
        print(f"warning: no run in {path} logged {metric!r}; no {png}", file=sys.stderr)
    return out


def main(argv) -> None:
    from absl import flags

    dirs = argv[1:]
    if len(dirs) != 1:
        raise FileNotFoundError("give one sweep directory (results.jsonl) or run directory (metrics.jsonl)")
    out = write_report(dirs[0], flags.FLAGS.metric, flags.FLAGS.log_y)
    print(f"report: {out}/summary.md")


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_string("metric", "loss", "metrics.jsonl key to plot over steps, e.g. attn_max_logit/layer_0")
    flags.DEFINE_bool("log_y", False, "log scale for the metric plot")
    cli.run(main)
