"""Early-warning signals of divergence in a sweep report: which logged signal warns first, and how often falsely.

`launch.report.write_report` calls `write_early_warning_report` for every sweep; it does something only when some
finished trial diverged. For each signal of `SIGNALS` (read from each trial's metrics.jsonl; a per-layer or
per-tensor family reduced per row to its worst member):

    threshold   fitted on the trials that did NOT diverge: a "high is bad" signal crosses above MARGIN × the largest
                value any of them logged over the whole run; a "low is bad" one below (the smallest) / MARGIN [D]
    lead        per diverged trial: diverged_at_step − the first logged step (<= the divergence step) at which the
                signal crossed the threshold fitted on all non-diverged trials; "–" if it never crossed before
                (a miss). A signal logged only on diagnostic steps has a lead quantised by train.diag_every.
    false alarm per non-diverged trial: whether it crossed the threshold fitted on the OTHER non-diverged trials
                (leave-one-out: a threshold fitted on a trial itself can never fire on it)

Thresholds are sweep-wide (every group, size and LR together) [D]: the question is which signal to watch in a new
run, not within a group. Non-finite values are no crossing except +inf for a "high is bad" signal. Into
DIR/report/: `early_warning.csv` (a row per diverged trial and signal) and a summary.md section with the table of
lead time vs false alarms per signal and each diverged trial's leads.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from launch import metrics as metrics_lib
from launch.report import common

MARGIN = 1.5  # the threshold's factor beyond the non-diverged trials' extreme [D]


@dataclass(frozen=True)
class Signal:
    prefix: str  # a metrics.jsonl key, or the stem of a family "<prefix>/..." (per layer / module / tensor)
    high_is_bad: bool
    meaning: str


# signal name -> how it is read; the names are the diagnostics of models/probes.py and launch/step.py
SIGNALS = {
    "max attention logit": Signal("attn_max_logit", True, "max over layers of attn_max_logit (diagnostic steps)"),
    "attention entropy": Signal("attn_entropy", False, "min over layers of attn_entropy (diagnostic steps)"),
    "output log Z drift": Signal("logz_sq_mean", True, "mean log² Z of the output logits (diagnostic steps)"),
    "grad-norm spike": Signal("grad_norm", True, "global gradient norm before clipping (every logged step)"),
    "spectral alignment": Signal("sa_sign_diversity", False,
                                 "min over input projections of the SA sign diversity (diagnostic steps)"),
    "update RMS": Signal("update_rms", True, "max over tensors of the update RMS (diagnostic steps)"),
}


def _value(row: dict, signal: Signal) -> float | None:
    """The signal in one metrics row (worst member of a family), None when the row lacks it."""
    values = [v for k, v in row.items() if (k == signal.prefix or k.startswith(signal.prefix + "/"))
              and not isinstance(v, list)]
    if not values:
        return None
    values = [math.nan if v is None else float(v) for v in values]
    return max(values) if signal.high_is_bad else min(values)


def series(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{signal name: (steps, values)} of a trial's metrics.jsonl, for the signals it logged."""
    rows = metrics_lib.read_jsonl(run_dir / "metrics.jsonl")
    out = {}
    for name, signal in SIGNALS.items():
        points = [(r["step"], v) for r in rows if "step" in r for v in [_value(r, signal)] if v is not None]
        if points:
            out[name] = (np.array([p[0] for p in points]), np.array([p[1] for p in points], float))
    return out


def threshold(signal: Signal, stable: list[np.ndarray]) -> float | None:
    """The module docstring's threshold from the stable trials' values; None without a finite value."""
    values = np.concatenate(stable) if stable else np.array([])
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    return MARGIN * values.max() if signal.high_is_bad else values.min() / MARGIN


def crossed(signal: Signal, values: np.ndarray, thr: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return values > thr if signal.high_is_bad else values < thr  # NaN compares False


def first_crossing(signal: Signal, steps, values, thr: float, until: int | None = None) -> int | None:
    """The first step (<= `until`) at which the signal crossed `thr`, or None."""
    hit = crossed(signal, values, thr) & (steps <= (until if until is not None else np.inf))
    return int(steps[np.argmax(hit)]) if hit.any() else None


@dataclass
class SignalResult:
    name: str
    threshold: float | None
    leads: dict[str, int | None]  # diverged trial id -> lead in steps (None: no warning before the divergence)
    false_alarms: int
    n_stable: int  # non-diverged trials that logged the signal


def evaluate(diverged: dict[str, tuple[int, dict]], stable: dict[str, dict]) -> list[SignalResult]:
    """Per signal: thresholds, leads and leave-one-out false alarms. `diverged`: {id: (divergence step, series)},
    `stable`: {id: series} (`series` of each trial)."""
    results = []
    for name, signal in SIGNALS.items():
        logged = {i: s[name] for i, s in stable.items() if name in s}
        thr = threshold(signal, [v for _, v in logged.values()])
        if thr is None:
            continue
        leads = {}
        for i, (at, s) in diverged.items():
            first = first_crossing(signal, *s[name], thr, until=at) if name in s else None
            leads[i] = None if first is None else at - first
        false = 0
        for i, (steps, values) in logged.items():
            others = threshold(signal, [v for j, (_, v) in logged.items() if j != i])
            false += others is not None and first_crossing(signal, steps, values, others) is not None
        results.append(SignalResult(name, thr, leads, false, len(logged)))
    return results


def write_early_warning_report(workdir: Path, rows: list[dict], out: Path) -> str:
    """early_warning.csv and the summary.md section for a sweep with diverged trials (rows: results.jsonl);
    "" when no trial diverged or no signal can be fitted (no metrics.jsonl is read without a diverged trial)."""
    div_rows = [r for r in rows if r["diverged"] and r.get("diverged_at_step") is not None]
    if not div_rows:
        return ""
    diverged = {r["id"]: (int(r["diverged_at_step"]), series(workdir / "trials" / r["id"])) for r in div_rows}
    stable = {r["id"]: series(workdir / "trials" / r["id"]) for r in rows if not r["diverged"]}
    results = evaluate(diverged, stable)
    if not results:
        return ""
    with open(out / "early_warning.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["signal", "threshold", "trial", "diverged_at_step", "lead_steps"])
        for res in results:
            for i, lead in res.leads.items():
                w.writerow([res.name, res.threshold, i, diverged[i][0], "" if lead is None else lead])

    def summary_cells(res: SignalResult) -> list[str]:
        warned = [x for x in res.leads.values() if x is not None]
        rule = ("> " if SIGNALS[res.name].high_is_bad else "< ") + common.fmt(res.threshold, ".4g")
        return [res.name, rule, f"{len(warned)}/{len(res.leads)}",
                common.fmt(float(np.median(warned)) if warned else None, ".0f"),
                common.fmt(min(warned) if warned else None, "d"), f"{res.false_alarms}/{res.n_stable}"]

    text = [
        "\n## Early warning of divergence\n\n",
        f"For each signal, a threshold fitted on the {len(stable)} trials that did not diverge (high-is-bad: "
        f"{MARGIN:g} × their largest value; low-is-bad: their smallest / {MARGIN:g}); lead = steps from its first "
        "crossing to the divergence step; false alarms = non-diverged trials that cross a threshold fitted on the "
        "others (leave-one-out). `launch/report/early_warning.py`; per-trial rows in early_warning.csv.\n\n",
        common.md_table(["signal", "threshold", "diverged trials warned", "median lead (steps)", "min lead",
                         "false alarms"], [summary_cells(res) for res in results]),
        "\nLead (steps) per diverged trial (– = no warning before the divergence):\n\n",
        common.md_table(["trial", "diverged at", *(res.name for res in results)],
                        [[i, str(at), *(common.fmt(res.leads[i], "d") for res in results)]
                         for i, (at, _) in diverged.items()]),
        "\n" + "".join(f"- {n}: {s.meaning}\n" for n, s in SIGNALS.items() if n in {r.name for r in results}),
    ]
    return "".join(text)
