"""Loss spikes and gradient-norm spikes per trial of a sweep: how many logged rows jump above a multiple of their
running EMA, and the largest such ratio. The counts several studies quote (Spike No More, SPAM, MLRA, WSD-S).

The rule is the spec's small-scale one for Spike No More (model-variants §7(d): "count spikes as loss > 1.2× its
100-step EMA", tagged [D] there). Over the logged rows of a trial's metrics.jsonl that carry the value, in step order:

    ema_0 = x_0                                       (the EMA starts at the first logged row)
    row i > 0 is a spike when  x_i > FACTOR × ema_{i-1}  (each row against the EMA before it)
    ema_i = b × ema_{i-1} + (1 − b) × x_i,   b = EMA_DECAY ** (step_i − step_{i-1})

EMA_DECAY = 1 − 1/EMA_HORIZON, i.e. 0.99 per training step, applied per logged row as 0.99 ** (step gap), so
irregular logging keeps the 100-step horizon. Early in training the EMA sits above a falling loss, so the fall
cannot trigger the rule. Rows are what the loop logged (every train.log_every steps): a spike between two logged
rows is not seen.

    loss       `loss` > LOSS_FACTOR (1.2) × its EMA, over every logged row: the spec's rule; its threshold and the
               100-step horizon are the spec's [D] choices
    grad_norm  `grad_norm` (the global norm before clipping) > GRAD_FACTOR (3) × its EMA, the same EMA. The spec
               has no grad-norm rule: 3 is this module's [D] choice. Counted two ways: after the warmup (rows with
               step > optim.warmup_steps of the trial's config.json; the EMA still runs from the first row), since
               the warmup's early spikes are a different thing, and over every row

The largest ratio x / EMA (and its step) is reported beside each count, so a near miss is visible. Per trial also:
the largest grad_norm after the warmup and the share of post-warmup rows above the clip threshold (optim.clip).

Non-finite values (a diverged trial: metrics.jsonl writes NaN and inf as null) are skipped: they are neither
spikes nor part of the EMA, which carries over them (the next finite row decays by the whole gap), and each trial's
count of skipped rows is shown with its divergence step. A trial without config.json gets "–" after the warmup.

`launch.report.write_report` calls `write_spikes_report` for every sweep (it reads two keys of each trial's
metrics.jsonl); into DIR/report/ it writes `spikes.md` (per group and LR: the mean [min, max] over seeds of each
count and largest ratio; then a row per trial) and returns the summary.md section (the per-group table). It writes
nothing, and returns "", when no finished trial logged `loss` or `grad_norm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from launch.report import common, lr_curves

EMA_HORIZON = 100  # steps: the spec's "100-step EMA" [D]
EMA_DECAY = 1.0 - 1.0 / EMA_HORIZON  # 0.99 per training step
LOSS_FACTOR = 1.2  # loss > 1.2 × EMA: spec model-variants §7(d) [D]
GRAD_FACTOR = 3.0  # grad_norm > 3 × EMA: this module's choice [D]; the spec gives no grad-norm rule
WARMUP_KEY = "optim.warmup_steps"
CLIP_KEY = "optim.clip"
FILE = "spikes.md"


@dataclass(frozen=True)
class Spikes:
    """Spikes of one series: `count` rows above factor × EMA, the largest x / EMA (`max_ratio`, NaN without a
    compared row) at `max_step`, over `compared` rows (those after the first finite one, in the counted range);
    `skipped`: non-finite rows in the counted range."""

    count: int
    max_ratio: float
    max_step: int | None
    compared: int
    skipped: int


def ema_spikes(steps: np.ndarray, values: np.ndarray, factor: float, after: float = -math.inf,
               decay: float = EMA_DECAY) -> Spikes:
    """The spikes of (steps, values) by the module's rule; only rows with step > `after` are counted and enter the
    maximum, the EMA runs over every finite row from the first."""
    count, compared, skipped, top, top_step, ema, last = 0, 0, 0, -math.inf, None, None, None
    pairs = zip(np.asarray(steps).tolist(), np.asarray(values, dtype=float).tolist())
    for step, x in sorted(pairs, key=lambda p: p[0]):
        counted = step > after
        if not math.isfinite(x):
            skipped += counted
            continue
        if ema is not None:
            if counted:
                compared += 1
                count += x > factor * ema
                ratio = x / ema if ema != 0 else (math.inf if x > 0 else 1.0)
                if ratio > top:
                    top, top_step = ratio, int(step)
            b = decay ** (step - last)
            ema = b * ema + (1.0 - b) * x
        else:
            ema = x
        last = step
    return Spikes(count, top if compared else math.nan, top_step, compared, skipped)


@dataclass(frozen=True)
class TrialSpikes:
    row: dict  # the trial's results row
    label: str  # its group, as the legends name it
    seed: object
    warmup: int | None  # optim.warmup_steps; None without config.json
    loss: Spikes | None  # None: no `loss` rows
    grad: Spikes | None  # every row; None: no `grad_norm` rows
    grad_after: Spikes | None  # after the warmup; None without grad_norm rows or a known warmup
    grad_max_after: float  # the largest finite grad_norm after the warmup (NaN without one)
    grad_max_after_step: int | None
    above_clip: float  # share of finite post-warmup grad_norm rows above optim.clip (NaN: no clip or no rows)


def trial_spikes(run_dir: Path, row: dict, label: str) -> TrialSpikes | None:
    """The spikes of one trial's run directory; None when it logged neither `loss` nor `grad_norm`."""
    cfg = common.run_config(run_dir) if (run_dir / "config.json").is_file() else {}
    warmup = int(cfg[WARMUP_KEY]) if WARMUP_KEY in cfg else None
    series = {k: common.metric_series(run_dir, k) if (run_dir / "metrics.jsonl").is_file() else ([], [])
              for k in ("loss", "grad_norm")}
    if not any(len(v) for _, v in series.values()):
        return None
    loss_steps, loss = series["loss"]
    steps, grad = np.asarray(series["grad_norm"][0]), np.asarray(series["grad_norm"][1], dtype=float)
    has_grad = len(grad) > 0
    grad_after = ema_spikes(steps, grad, GRAD_FACTOR, after=warmup) if has_grad and warmup is not None else None
    after = (steps > warmup) & np.isfinite(grad) if has_grad and warmup is not None else np.zeros(len(grad), bool)
    g_max = float(np.max(grad[after])) if after.any() else math.nan
    g_step = int(steps[after][np.argmax(grad[after])]) if after.any() else None
    clip = float(cfg.get(CLIP_KEY) or 0.0)
    above = float(np.mean(grad[after] > clip)) if after.any() and clip > 0 else math.nan
    return TrialSpikes(row, label, common.seed_of(row["overrides"]), warmup,
                       ema_spikes(loss_steps, loss, LOSS_FACTOR) if len(loss) else None,
                       ema_spikes(steps, grad, GRAD_FACTOR) if has_grad else None,
                       grad_after, g_max, g_step, above)


def collect(workdir: Path, rows: list[dict], groups: Sequence[lr_curves.Group]) -> list[TrialSpikes]:
    """Every finished trial's spikes, in the groups' order, by LR and then seed; trials without rows left out."""
    hide = lr_curves.hidden_keys(groups, ())
    out = []
    for g in groups:
        name = lr_curves.curve_label(g, hide)
        for lr in g.lrs:
            trials = {common.seed_of(r["overrides"]): r for r in rows
                      if r["lr"] == lr and common.point_items(r["overrides"]) == g.items}
            for s in (s for s in g.seeds if s in trials):
                t = trial_spikes(workdir / "trials" / trials[s]["id"], trials[s], name)
                if t is not None:
                    out.append(t)
    return out


def stat(xs: Sequence[float], spec: str) -> str:
    """`mean [min, max]` of the finite values (the mean alone for one, `–` for none); a count's mean with up to two
    decimals (2.33, 8)."""
    xs = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=float)
    if not len(xs):
        return "–"
    mean = f"{np.mean(xs):.2f}".rstrip("0").rstrip(".") if spec == "d" else format(float(np.mean(xs)), spec)
    lo, hi = (format(int(v) if spec == "d" else float(v), spec) for v in (np.min(xs), np.max(xs)))
    return mean + (f" [{lo}, {hi}]" if len(xs) > 1 else "")


# (column, how a trial gives it, format) of the per-group table
COLUMNS = (
    ("loss spikes", lambda t: t.loss and t.loss.count, "d"),
    ("max loss / EMA", lambda t: t.loss and t.loss.max_ratio, ".3f"),
    ("grad spikes after warmup", lambda t: t.grad_after and t.grad_after.count, "d"),
    ("max grad / EMA after warmup", lambda t: t.grad_after and t.grad_after.max_ratio, ".2f"),
    ("grad spikes, all rows", lambda t: t.grad and t.grad.count, "d"),
    ("max grad / EMA, all rows", lambda t: t.grad and t.grad.max_ratio, ".2f"),
)


def group_table(trials: list[TrialSpikes]) -> str:
    """Markdown: a row per group and LR, each column of `COLUMNS` the mean [min, max] over its trials (seeds)."""
    cells: dict[tuple[str, float], list[TrialSpikes]] = {}
    for t in trials:
        cells.setdefault((t.label, t.row["lr"]), []).append(t)
    body = [[label, f"{lr:g}", str(len(ts)), *(stat([get(t) for t in ts], spec) for _, get, spec in COLUMNS)]
            for (label, lr), ts in cells.items()]
    return common.md_table(["group", "lr", "trials", *(c for c, _, _ in COLUMNS)], body)


def _at(s: Spikes | None, spec: str) -> str:
    if s is None or not s.compared:
        return "–"
    return f"{s.count} ({s.max_ratio:{spec}} at {s.max_step})"


def trial_table(trials: list[TrialSpikes]) -> str:
    """Markdown: a row per trial: each count with its largest ratio and that ratio's step, the post-warmup
    grad_norm level, skipped (non-finite) rows and the divergence step."""
    body = [[t.row["id"], t.label, f"{t.row['lr']:g}", str(t.seed), common.fmt(t.warmup, "d"),
             _at(t.loss, ".3f"), _at(t.grad_after, ".2f"), _at(t.grad, ".2f"),
             common.fmt(t.grad_max_after, ".4g") + (f" at {t.grad_max_after_step}"
                                                     if t.grad_max_after_step is not None else ""),
             common.fmt(t.above_clip, ".2f"),
             str(sum(s.skipped for s in (t.loss, t.grad) if s is not None)),
             common.fmt(t.row.get("diverged_at_step") if t.row.get("diverged") else None, "d")]
            for t in trials]
    return common.md_table(
        ["trial", "group", "lr", "seed", "warmup", "loss spikes (max / EMA at step)",
         "grad spikes after warmup (max / EMA at step)", "grad spikes, all rows (max / EMA at step)",
         "max grad_norm after warmup (step)", f"share > {CLIP_KEY} after warmup", "non-finite rows", "diverged at"],
        body)


RULE = (f"A spike is a logged row above a multiple of the EMA before it: loss > {LOSS_FACTOR:g} × its EMA (spec "
        f"model-variants §7(d), [D]) and grad_norm > {GRAD_FACTOR:g} × its EMA (a [D] choice of launch/report/"
        f"spikes.py); the EMA has a {EMA_HORIZON}-step horizon ({EMA_DECAY:g} a training step, "
        f"{EMA_DECAY:g}^(step gap) per logged row) and starts at the first logged row. Grad spikes after warmup: "
        f"rows with step > {WARMUP_KEY}. Non-finite rows (diverged) are skipped. Mean over the trials (seeds) "
        "[min, max].")


def write_spikes_report(workdir: Path, rows: list[dict], groups: Sequence[lr_curves.Group], out: Path) -> str:
    """Writes out/spikes.md and returns the summary.md section; "" (and writes nothing) when no finished trial
    logged `loss` or `grad_norm`."""
    trials = collect(workdir, rows, groups)
    if not trials:
        return ""
    table = group_table(trials)
    (out / FILE).write_text(f"# Loss and gradient-norm spikes: {workdir.name}\n\n{RULE}\n\n{table}\n"
                            f"## Per trial\n\n{trial_table(trials)}")
    return f"\n## Loss and gradient-norm spikes\n\n{RULE} Per trial: [{FILE}]({FILE}).\n\n{table}"
