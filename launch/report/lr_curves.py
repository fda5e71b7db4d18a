"""Final eval loss against the LR, and LR sensitivity, per group of a sweep (Wortsman et al. 2023, "Small-scale
proxies for large-scale Transformer training instabilities", §2 and Fig. 1; spec optimizers-and-metrics §4).

A group is every trial with the same overrides except the LR and `train.seed`; its seeds are the trials that
differ only in `train.seed`. LR sensitivity is the paper's: for one seed's curve over the group's LR grid,

    E_η[min(ℓ(η), ℓ0) − ℓ*],   ℓ* = min over the same grid after capping,

with ℓ(η) the FINAL eval loss of the trial at LR η and ℓ0 the seed's measured initial eval loss. A diverged
trial (its row says `diverged`) counts as ℓ0: capped, never dropped. A trial that spiked and recovered is not
diverged (whether the loop stops a trial early is the loop's rule, launch/loop.py; the report only reads rows):
its row holds a real final loss and is used as such, capped at ℓ0 if it ended above it.

With several seeds the group's sensitivity is the mean of the per-seed sensitivities, reported with their min,
max and sample std (ddof = 1). A group with missing trials (listed in DIR/sweep.json, absent from results.jsonl;
without sweep.json, holes in the group's LR × seed grid) is flagged and gets no sensitivity: it is never computed
over fewer points. `seed_verdicts` says when two groups' sensitivities differ by less than their seed spread.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from launch.report import common


def lr_sensitivity(final_losses: Sequence[float | None], initial_loss: float) -> float:
    """E_η[min(ℓ(η), ℓ0) − ℓ*] over the grid, ℓ* = min over the same grid after capping (Wortsman et al. §2).

    A diverged run (NaN, inf or None) counts as ℓ0: capped, never dropped. [3.5, 3.3, 3.2, 3.3, 3.9, NaN, 7.8]
    with ℓ0 = 10 gives 1.8 (dropping the NaN would give 0.967).
    """
    losses = common.capped(final_losses, initial_loss)
    return float(np.mean([x - min(losses) for x in losses]))


@dataclasses.dataclass
class Group:
    """One LR curve per seed of one group. Arrays are [seed, LR] over `seeds` × `lrs` (the LRs of its finished
    trials); a cell without a result row is NaN in `loss_SxL` and False in `present_SxL`."""

    items: common.Items  # the overrides without LR and seed
    lrs: list[float]
    seeds: list  # `train.seed` overrides; None = the base config's seed
    loss_SxL: np.ndarray  # final eval loss (common.trial_loss): NaN where diverged or missing
    diverged_SxL: np.ndarray
    present_SxL: np.ndarray
    l0_S: np.ndarray  # ℓ0 per seed: the mean measured initial eval loss of its trials (they share the init)
    n_params: float
    missing: list[str]  # trial ids from sweep.json, or `lr=…, seed=…` holes of the grid without it
    sensitivity_S: np.ndarray | None  # per-seed LR sensitivity; None when not computed (see `note`)
    note: str  # why the sensitivity is None, "" otherwise

    @property
    def label(self) -> str:
        return common.label(self.items)

    @property
    def l0(self) -> float:
        return float(np.mean(self.l0_S)) if len(self.l0_S) else math.nan

    @property
    def capped_SxL(self) -> np.ndarray:
        """min(loss, ℓ0 of the seed), ℓ0 where diverged, NaN where missing."""
        with np.errstate(invalid="ignore"):
            y = np.where(self.diverged_SxL, self.l0_S[:, None], np.minimum(self.loss_SxL, self.l0_S[:, None]))
        return np.where(self.present_SxL, y, np.nan)

    def over_seeds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean, min, max) over the present seeds of the capped loss at every LR."""
        y = self.capped_SxL
        return np.nanmean(y, axis=0), np.nanmin(y, axis=0), np.nanmax(y, axis=0)

    @property
    def n_finished(self) -> int:
        return int((self.present_SxL & ~self.diverged_SxL).sum())

    @property
    def n_diverged(self) -> int:
        return int((self.present_SxL & self.diverged_SxL).sum())

    @property
    def best(self) -> tuple[float | None, float | None]:
        """(lowest mean capped loss, its LR among the LRs where no seed diverged, or None)."""
        if not self.lrs:
            return None, None
        mean_L = self.over_seeds()[0]
        ok = [i for i in range(len(self.lrs)) if not self.diverged_SxL[:, i].any()]
        return float(np.nanmin(mean_L)), (self.lrs[min(ok, key=lambda i: mean_L[i])] if ok else None)

    def sensitivity(self) -> dict[str, float | None]:
        """mean, min, max and sample std (ddof = 1; None for one seed) of the per-seed sensitivities."""
        s = self.sensitivity_S
        if s is None:
            return dict(mean=None, min=None, max=None, std=None)
        return dict(mean=float(s.mean()), min=float(s.min()), max=float(s.max()),
                    std=float(s.std(ddof=1)) if len(s) > 1 else None)


def _seed_order(seed) -> tuple:
    return (seed is not None, seed if seed is not None else 0)


def make_group(items: common.Items, rows: list[dict], expected: list[dict] | None) -> Group:
    """The group of `rows` (all with point items `items`); `expected`: its trials in sweep.json, None without it."""
    lrs = sorted({r["lr"] for r in rows})
    seeds = sorted({common.seed_of(r["overrides"]) for r in rows}, key=_seed_order)
    shape = (len(seeds), len(lrs))
    loss, diverged, present = np.full(shape, np.nan), np.zeros(shape, bool), np.zeros(shape, bool)
    for r in rows:
        cell = seeds.index(common.seed_of(r["overrides"])), lrs.index(r["lr"])
        loss[cell], diverged[cell], present[cell] = common.trial_loss(r), bool(r["diverged"]), True
    l0_S = np.array([np.mean([r["initial_loss"] for r in rows if common.seed_of(r["overrides"]) == s]) for s in seeds])
    if expected is not None:
        done = {r["id"] for r in rows}
        missing = [t["id"] for t in expected if t["id"] not in done]
    else:
        missing = [f"lr={lrs[j]:g}, seed={seeds[i]}" for i, j in zip(*np.nonzero(~present))]
    if not rows:
        sensitivity, note = None, "no finished trial"
    elif missing:
        sensitivity = None
        note = f"{len(missing)} of {len(missing) + len(rows)} trials missing: not computed over fewer points"
    else:
        sensitivity, note = np.array([lr_sensitivity(loss[i], l0_S[i]) for i in range(len(seeds))]), ""
    n_params = float(np.mean([r["n_params"] for r in rows])) if rows else math.nan
    return Group(items, lrs, seeds, loss, diverged, present, l0_S, n_params, missing, sensitivity, note)


def sensitivity_table(rows: list[dict], definition: list[dict] | None = None) -> list[Group]:
    """The groups of `rows` (results.jsonl), in order of first appearance; with `definition` (sweep.json's
    trials) the missing trials of each group, and the groups of which no trial finished, at the end."""
    by_key: dict[str, tuple[common.Items, list[dict], list[dict]]] = {}

    def entry(overrides):
        items = common.point_items(overrides)
        return by_key.setdefault(json.dumps(items, default=str), (items, [], []))

    for row in rows:
        entry(row["overrides"])[1].append(row)
    for trial in definition or []:
        entry(trial["overrides"])[2].append(trial)
    return [make_group(items, g, e if definition is not None else None) for items, g, e in by_key.values()]


# ---- panels and verdicts --------------------------------------------------------------------------------------------


def size_keys(groups: Sequence[Group]) -> tuple[str, ...]:
    """The size keys whose values vary across the groups (they make the panels)."""
    return tuple(k for k in common.SIZE_KEYS if len({json.dumps(dict(g.items).get(k)) for g in groups}) > 1)


def panels(groups: Sequence[Group]) -> tuple[tuple[str, ...], dict[common.Items, list[Group]]]:
    """(size keys, {size items: the groups of that model size}), panels sorted by size."""
    sizes = size_keys(groups)
    out: dict[common.Items, list[Group]] = {}
    for g in groups:
        out.setdefault(tuple((k, v) for k, v in g.items if k in sizes), []).append(g)
    return sizes, dict(sorted(out.items(), key=lambda p: json.dumps(p[0], default=str)))


def curve_label(group: Group, hide: Sequence[str]) -> str:
    """The intervention: the group's items without the keys in `hide` (the size keys, or `hidden_keys`)."""
    return common.label([(k, v) for k, v in group.items if k not in hide]) or group.label


def hidden_keys(groups: Sequence[Group], sizes: Sequence[str]) -> tuple[str, ...]:
    """The size keys and, among two or more groups, every key with the same value in all of them: a legend then
    names only what tells its curves apart (z_loss=1e-4 on every curve is no label)."""
    values: dict[str, set] = {}
    for g in groups:
        for k, v in g.items:
            values.setdefault(k, set()).add(json.dumps(v, default=str))
    same = [k for k, vs in values.items() if len(vs) == 1 and all(k in dict(g.items) for g in groups)]
    return (*sizes, *(same if len(groups) > 1 else ()))


def seed_verdicts(groups: Sequence[Group]) -> list[str]:
    """A sentence per pair of multi-seed groups of the same size: is the difference of their LR sensitivities
    larger than the seed spread (the larger of the two groups' max − min of per-seed sensitivity)?"""
    sizes, by_size = panels(groups)
    sizes = hidden_keys(groups, sizes)
    out = []
    for size, members in by_size.items():
        where = f"{common.label(size)}: " if size else ""
        for a, b in itertools.combinations([g for g in members if len(g.seeds) > 1], 2):
            name = f"{where}{curve_label(a, sizes)} vs {curve_label(b, sizes)}"
            sa, sb = a.sensitivity(), b.sensitivity()
            if len(a.lrs) < 2 or len(b.lrs) < 2:  # over one LR the sensitivity is 0 by definition
                out.append(f"{name}: {_loss_verdict(a, b, sizes)}")
                continue
            if sa["mean"] is None or sb["mean"] is None:
                out.append(f"{name}: not compared ({a.note or b.note}).")
                continue
            lower = curve_label(a if sa["mean"] < sb["mean"] else b, sizes)
            line = f"{name}: " + _against_spread(
                "LR sensitivity", abs(sa["mean"] - sb["mean"]), max(sa["max"] - sa["min"], sb["max"] - sb["min"]),
                f"{lower} is the less LR-sensitive")
            if a.seeds == b.seeds:  # a seed fixes init and data order: the per-seed differences
                line += " " + _paired(b.sensitivity_S - a.sensitivity_S, curve_label(b, sizes), curve_label(a, sizes))
            out.append(line)
    return out


def _against_spread(what: str, diff: float, spread: float, winner: str) -> str:
    """The seed verdict: is the difference in `what` larger than the seed spread? (`winner`: said when it is.)"""
    if diff <= spread:
        return (f"the difference in {what} ({diff:.4f}) is smaller than the seed spread ({spread:.4f}); these seeds "
                "do not tell the two apart.")
    return f"the difference in {what} ({diff:.4f}) exceeds the seed spread ({spread:.4f}); {winner}."


def _paired(d: np.ndarray, b: str, a: str) -> str:
    """`Paired by seed (b − a): +0.1, +0.2; mean +0.15, the same sign for every seed.`"""
    same = (d > 0).all() or (d < 0).all()
    return (f"Paired by seed ({b} − {a}): " + ", ".join(f"{x:+.4f}" for x in d) + f"; mean {d.mean():+.4f}, "
            + ("the same sign for every seed." if same else "of mixed sign."))


def _loss_verdict(a: Group, b: Group, sizes: Sequence[str]) -> str:
    """Two groups of one LR each (an LR sensitivity is 0 there): their final eval losses, the difference of the
    seed means against the seed spread (the larger of the two groups' max − min over seeds)."""
    if a.lrs != b.lrs:
        return "not compared (an LR sensitivity needs at least two learning rates, and their one LRs differ)."
    ya, yb = a.capped_SxL[:, 0], b.capped_SxL[:, 0]
    if np.isnan(ya).all() or np.isnan(yb).all():
        return "not compared (no finished trial in one of them)."
    lower = curve_label(a if np.nanmean(ya) < np.nanmean(yb) else b, sizes)
    verdict = f"one LR ({common.fmt(a.lrs[0], 'g')}), no LR sensitivity; " + _against_spread(
        "final eval loss", abs(np.nanmean(ya) - np.nanmean(yb)),
        max(np.nanmax(ya) - np.nanmin(ya), np.nanmax(yb) - np.nanmin(yb)), f"{lower} has the lower loss")
    paired = ~np.isnan(ya) & ~np.isnan(yb)
    if a.seeds == b.seeds and paired.sum() > 1:  # a seed fixes init and data order: per-seed differences
        verdict += " " + _paired(yb[paired] - ya[paired], curve_label(b, sizes), curve_label(a, sizes))
    return verdict


# ---- lr_sensitivity.csv ---------------------------------------------------------------------------------------------

CSV_COLUMNS = ("n_seeds", "n_lrs", "lr_min", "lr_max", "l0", "best_loss", "best_lr", "lr_sensitivity",
               "lr_sensitivity_min", "lr_sensitivity_max", "lr_sensitivity_std", "n_finished", "n_diverged",
               "n_missing", "note")


def _cell(x) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(x) if isinstance(x, float) else str(x)


def write_sensitivity_csv(groups: Sequence[Group], path: Path, with_definition: bool) -> None:
    keys = sorted({k for g in groups for k, _ in g.items})
    with path.open("w", newline="") as f:
        f.write(
            "# LR sensitivity (Wortsman et al. 2023, §2), per seed: mean over the group's LR grid of min(loss, l0) -\n"
            "# best_loss, best_loss = min over the same grid after capping. loss = the final EVAL loss (the paper's\n"
            "# choice; the final training loss for a trial without eval). Diverged trials count as l0 (capped, never\n"
            "# dropped). l0 = the seed's mean measured initial eval loss; the l0 column is the mean over seeds.\n"
            "# lr_sensitivity = mean over seeds, with min, max and sample std (ddof=1, empty for one seed).\n"
            "# best_loss / best_lr: the seed-mean capped loss, at an LR where no seed diverged.\n"
            "# A group with n_missing > 0 gets no lr_sensitivity (note says why). Missing: "
            + ("in sweep.json, not in results.jsonl.\n" if with_definition else
               "no sweep.json, so only holes in a group's LR x seed grid are known.\n")
        )
        w = csv.writer(f)
        w.writerow(["group", *keys, *CSV_COLUMNS])
        for g in groups:
            values, s, (best_loss, best_lr) = dict(g.items), g.sensitivity(), g.best
            w.writerow([g.label, *(values.get(k, "") for k in keys), *map(_cell, (
                len(g.seeds), len(g.lrs), min(g.lrs, default=None), max(g.lrs, default=None), g.l0, best_loss,
                best_lr, s["mean"], s["min"], s["max"], s["std"], g.n_finished, g.n_diverged, len(g.missing),
                g.note))])


def read_sensitivity_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


# ---- loss_vs_lr.png -------------------------------------------------------------------------------------------------


def plot_loss_vs_lr(groups: Sequence[Group], path: Path, title: str):
    """Figure 1 of Wortsman et al.: final eval loss (capped at ℓ0) vs LR per intervention, a panel per model size.

    One seed: the curve, as in the paper. Several: the mean over seeds, a min–max band and each seed's points.
    Diverged trials are drawn at ℓ0 with an 'x'. Returns the (closed) figure; artists carry gids
    `<group>/mean`, `<group>/band`, `<group>/seeds`, `<group>/diverged`.
    """
    plt = common.pyplot()
    sizes, by_size = panels([g for g in groups if g.lrs])
    sizes = hidden_keys([g for g in groups if g.lrs], sizes)
    styles = {  # one colour, line style and marker per intervention in every panel: coinciding curves stay visible
        c: dict(color=plt.cm.tab10(i % 10), linestyle=common.LINESTYLES[i % 4], marker="osD^"[i % 4])
        for i, c in enumerate(sorted({curve_label(g, sizes) for gs in by_size.values() for g in gs}))
    }
    fig, axes = common.axes_grid(plt, max(len(by_size), 1))
    for ax, (size, members) in zip(axes, by_size.items()):
        for g in members:
            name, style = curve_label(g, sizes), styles[curve_label(g, sizes)]
            y_SxL, (mean_L, lo_L, hi_L) = g.capped_SxL, g.over_seeds()
            lrs = np.array(g.lrs)
            suffix = (f" (mean of {len(g.seeds)} seeds)" if len(g.seeds) > 1 else "") + (
                f" ({len(g.missing)} missing)" if g.missing else "")
            ax.plot(lrs, mean_L, label=name + suffix, markersize=5, gid=f"{g.label}/mean", **style)
            if len(g.seeds) > 1:
                ax.fill_between(lrs, lo_L, hi_L, color=style["color"], alpha=0.18, linewidth=0, gid=f"{g.label}/band")
                seeds_x = np.broadcast_to(lrs, y_SxL.shape)[g.present_SxL]
                ax.plot(seeds_x, y_SxL[g.present_SxL], linestyle="none", marker=style["marker"], markersize=3,
                        color=style["color"], alpha=0.6, gid=f"{g.label}/seeds")
            bad = g.present_SxL & g.diverged_SxL
            ax.plot(np.broadcast_to(lrs, bad.shape)[bad], y_SxL[bad], common.DIVERGED_MARKER, color=style["color"],
                    markersize=11, markeredgewidth=2.5, gid=f"{g.label}/diverged")
        if any(g.n_diverged for g in members):
            ax.plot([], [], common.DIVERGED_MARKER, color="black", markersize=9, markeredgewidth=2,
                    label="diverged (drawn at ℓ0)")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final eval loss (capped at ℓ0)")
        n_params = np.mean([g.n_params for g in members])
        ax.set_title(f"{common.label(size) if size else title} ({n_params / 1e6:.3g}M params)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    banded = any(len(g.seeds) > 1 for g in groups)
    fig.suptitle((f"final eval loss vs learning rate — {title}" if sizes else "final eval loss vs learning rate")
                 + (" (band: min–max over seeds; dots: seeds)" if banded else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long titles and legends stay inside the image
    plt.close(fig)
    return fig


# ---- summary.md section ---------------------------------------------------------------------------------------------


def _sensitivity_cell(g: Group) -> str:
    s = g.sensitivity()
    if s["mean"] is None:
        return f"⚠ – ({g.note})"
    if len(g.lrs) < 2:
        return "– (one LR)"
    if len(g.seeds) == 1:
        return common.fmt(s["mean"])
    return f"{s['mean']:.4f} [{s['min']:.4f}, {s['max']:.4f}] ± {s['std']:.4f}"


def summary_section(groups: Sequence[Group], with_definition: bool) -> str:
    """Markdown: the sensitivity table (trials finished / diverged / missing per group), the seed verdicts and the
    missing trials."""
    multi = any(len(g.seeds) > 1 for g in groups)
    out = ["## LR sensitivity per group\n"]
    if multi:
        out.append("With several seeds: the mean of the per-seed sensitivities [min, max] ± sample std.\n")
    out.append(common.md_table(
        ["group", "LRs", "seeds", "ℓ0", "best loss", "best LR", "LR sensitivity", "finished / diverged / missing"],
        [[g.label, " ".join(f"{x:g}" for x in g.lrs), str(len(g.seeds)), common.fmt(g.l0),
          common.fmt(g.best[0]), common.fmt(g.best[1], "g"), _sensitivity_cell(g),
          f"{g.n_finished} / {g.n_diverged} / {len(g.missing)}" + (" ⚠" if g.missing else "")] for g in groups]))
    if multi:
        verdicts = seed_verdicts(groups)
        out.append("\n## Differences against seed noise\n")
        out.append("".join(f"- {v}\n" for v in verdicts) or "no two multi-seed groups of one size to compare\n")
    out.append("\n## Missing trials\n")
    if not with_definition:
        out.append("No sweep.json in this directory: trials that never started are not known; only holes in a "
                   "group's LR × seed grid are listed.\n")
    flagged = [g for g in groups if g.missing]
    out.append("".join(f"- {g.label}: {', '.join(f'`{m}`' for m in g.missing)}\n" for g in flagged) or "none\n")
    return "\n".join(out)
