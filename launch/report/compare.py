"""`python -m launch.report DIR_A DIR_B [...] [--out=OUT] [--label=a,b]`: several sweeps on one figure and one table
(baseline vs an intervention, two code versions, two datasets).

Into OUT (default: `<parent of DIR_A>/compare-<A>-vs-<B>...`):

    loss_vs_lr.<fmt>          the loss-vs-LR figure of lr_curves.plot_loss_vs_lr over every sweep's groups: a curve
                              per sweep × group (the sweep's label first), a panel per model size, seed bands where
                              a group has several seeds
    lr_sensitivity.csv        one row per sweep × group: LR sensitivity (Wortsman et al. 2023 §2), best loss and LR,
                              and their differences against the same group of the FIRST sweep (the baseline)
    <metric>_over_steps.<fmt> the metric over steps of every trial, a panel per group, a line per sweep × LR
    summary.md                the labels, the config differences, the table
    index.html                all of it in one page (html.py)

A sweep's label is what its base config (DIR/config.json) sets differently from the other sweeps',
e.g. `qk_norm=True`; sweeps whose configs are equal are told apart by their directory names, and `--label` names
them outright. A sweep compared with itself has the same groups, the same numbers and zero differences.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Sequence

from launch import records
from launch.report import common, lr_curves

SWEEP_KEY = "sweep"  # the item a comparison prepends to each group's items: the sweep's label


@dataclasses.dataclass
class Sweep:
    """One sweep directory of a comparison: its label, base config, result rows and LR-sensitivity groups."""

    path: Path
    label: str
    config: dict
    rows: list[dict]
    groups: list[lr_curves.Group]


def config_differences(configs: Sequence[dict]) -> dict[str, list]:
    """{dotted key: its value in each config} for every key whose value is not the same in all of them."""
    keys = sorted({k for c in configs for k in c})
    return {k: [c.get(k) for c in configs] for k in keys if len({json.dumps(c.get(k)) for c in configs}) > 1}


def sweep_labels(paths: Sequence[Path], configs: Sequence[dict], given: Sequence[str]) -> list[str]:
    """`given` where set, else the keys the sweep's config sets differently (`qk_norm=True`); the directory name when
    that is empty or not unique (a sweep compared with itself: `A`, `A (2)`)."""
    diffs = config_differences(configs)
    labels = []
    for i, path in enumerate(paths):
        if i < len(given) and given[i]:
            labels.append(given[i])
            continue
        auto = common.label([(k, values[i]) for k, values in diffs.items()]) if diffs else ""
        labels.append(auto if auto and auto != "base" else path.name)
    out = []
    for lbl in labels:  # equal labels get a running number, so every curve of the figure is its own
        n = out.count(lbl) + sum(1 for o in out if o.startswith(f"{lbl} ("))
        out.append(lbl if n == 0 else f"{lbl} ({n + 1})")
    return out


def load_sweeps(paths: Sequence[Path], given_labels: Sequence[str]) -> list[Sweep]:
    for p in paths:
        if not (p / "results.jsonl").is_file():
            raise FileNotFoundError(f"{p} is not a sweep directory (no results.jsonl): a comparison needs sweeps")
    cfgs = [json.loads((p / "config.json").read_text()) if (p / "config.json").is_file() else {} for p in paths]
    labels = sweep_labels(paths, cfgs, given_labels)
    sweeps = []
    for path, label, cfg in zip(paths, labels, cfgs):
        rows = records.read_results(path / "results.jsonl")
        groups = lr_curves.sensitivity_table(rows, common.read_sweep_definition(path))
        sweeps.append(Sweep(path, label, cfg, rows, groups))
    return sweeps


def tagged_groups(sweeps: Sequence[Sweep]) -> list[lr_curves.Group]:
    """Every sweep's groups with the sweep's label as their first item: one curve per sweep × group."""
    return [dataclasses.replace(g, items=((SWEEP_KEY, s.label), *g.items)) for s in sweeps for g in s.groups]


COLUMNS = ("sweep", "group", "lr_sensitivity", "d_lr_sensitivity", "best_loss", "d_best_loss", "best_lr", "n_seeds",
           "n_finished", "n_diverged", "n_missing", "note")


def comparison_rows(sweeps: Sequence[Sweep]) -> list[dict]:
    """A row per sweep × group; the d_ columns are this value minus the first sweep's for the same group (the same
    items), None where the baseline lacks the group or either value is not computed."""
    base = {g.label: g for g in sweeps[0].groups}
    out = []
    for s in sweeps:
        for g in s.groups:
            sens, best = g.sensitivity()["mean"], g.best[0]
            ref = base.get(g.label)
            ref_sens, ref_best = (ref.sensitivity()["mean"], ref.best[0]) if ref is not None else (None, None)
            out.append(dict(
                sweep=s.label, group=g.label, lr_sensitivity=sens,
                d_lr_sensitivity=None if sens is None or ref_sens is None else sens - ref_sens,
                best_loss=best, d_best_loss=None if best is None or ref_best is None else best - ref_best,
                best_lr=g.best[1], n_seeds=len(g.seeds), n_finished=g.n_finished, n_diverged=g.n_diverged,
                n_missing=len(g.missing), note=g.note,
            ))
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        f.write("# LR sensitivity per sweep x group (Wortsman et al. 2023 §2; see the single-sweep\n"
                "# lr_sensitivity.csv for its definition). d_lr_sensitivity, d_best_loss: this value minus the\n"
                "# first sweep's for the same group.\n")
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_cell(r[c]) for c in COLUMNS])


def _cell(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(x) if isinstance(x, float) else str(x)


def _signed(x) -> str:
    return "–" if x is None else f"{x:+.4f}"


def summary_markdown(sweeps: Sequence[Sweep], rows: list[dict], figures: Sequence[str]) -> str:
    diffs = config_differences([s.config for s in sweeps])
    out = [f"# Comparison: {' vs '.join(s.label for s in sweeps)}\n",
           "LR sensitivity (Wortsman et al. 2023 §2) of every group of every sweep, and its difference against the "
           f"same group of the first sweep (`{sweeps[0].label}`, the baseline).\n"]
    out += [f"![{Path(f).stem}]({f})\n" for f in figures]
    out.append("## Sweeps\n")
    out.append(common.md_table(
        ["label", "directory", "trials", "diverged"],
        [[s.label, f"`{s.path}`", str(len(s.rows)), str(sum(bool(r["diverged"]) for r in s.rows))] for s in sweeps]))
    out.append("\n## Config differences\n")
    out.append(common.md_table(["key", *(s.label for s in sweeps)], [[k, *map(str, v)] for k, v in diffs.items()])
               if diffs else "none: the sweeps' base configs are equal\n")
    out.append("\n## LR sensitivity per sweep and group\n")
    out.append(common.md_table(
        ["sweep", "group", "LR sensitivity", "Δ vs baseline", "best loss", "Δ best loss", "best LR",
         "finished / diverged / missing"],
        [[r["sweep"], r["group"], common.fmt(r["lr_sensitivity"]), _signed(r["d_lr_sensitivity"]),
          common.fmt(r["best_loss"]), _signed(r["d_best_loss"]), common.fmt(r["best_lr"], "g"),
          f"{r['n_finished']} / {r['n_diverged']} / {r['n_missing']}"] for r in rows]))
    return "\n".join(out)


def metric_panels(sweeps: Sequence[Sweep]) -> dict[str, list[tuple[str, Path, bool]]]:
    """{group label: [(`<sweep>: lr=…`, trial dir, diverged)]}: a panel per group, every sweep's trials in it."""
    panels: dict[str, list[tuple[str, Path, bool]]] = {}
    for s in sweeps:
        for r in sorted(s.rows, key=lambda r: (r["lr"], str(common.seed_of(r["overrides"])))):
            seed = common.seed_of(r["overrides"])
            name = f"{s.label}: lr={r['lr']:g}" + (f", seed={seed}" if seed is not None else "")
            panels.setdefault(common.label(common.point_items(r["overrides"])), []).append(
                (name, s.path / "trials" / r["id"], bool(r["diverged"])))
    return panels


def default_out(paths: Sequence[Path]) -> Path:
    return paths[0].resolve().parent / ("compare-" + "-vs-".join(p.resolve().name for p in paths))
