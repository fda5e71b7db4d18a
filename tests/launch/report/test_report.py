"""launch.report on hand-made sweep and run directories: LR sensitivity, the CSV, plots, summary.md, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import helpers
from launch import records, report, sweep

LRS = (1e-3, 1e-2, 1e-1)
# (size, qk_norm) -> final eval losses over LRS; None = diverged. ℓ0 differs per size (and per trial, see below).
LOSSES = {
    (32, False): (4.0, 3.5, None),
    (32, True): (4.0, 3.4, 3.6),
    (64, False): (3.8, 3.2, None),
    (64, True): (3.9, 3.1, 9.9),  # a final loss above ℓ0 is capped at ℓ0
}
L0 = {32: 6.0, 64: 6.2}


def test_lr_sensitivity_spec_check():
    """Spec optimizers-and-metrics §4(d): 1.800; dropping the NaN run would give 0.967, which is wrong."""
    losses = [3.5, 3.3, 3.2, 3.3, 3.9, math.nan, 7.8]
    assert report.lr_sensitivity(losses, 10.0) == pytest.approx(1.8, abs=1e-9)
    assert report.lr_sensitivity([x for x in losses if math.isfinite(x)], 10.0) == pytest.approx(0.9667, abs=1e-4)
    assert report.lr_sensitivity([3.0] * 7, 10.0) == 0.0
    # a diverged run (NaN, inf or None) contributes exactly ℓ0 − ℓ*; losses above ℓ0 are capped
    assert report.lr_sensitivity([2.0, None], 5.0) == pytest.approx(1.5)
    assert report.lr_sensitivity([2.0, math.inf], 5.0) == report.lr_sensitivity([2.0, 7.0], 5.0) == pytest.approx(1.5)


def make_sweep_dir(root: Path) -> list[dict]:
    """A sweep directory as launch.sweep leaves it: results.jsonl and trials/<id>/metrics.jsonl."""
    rows = []
    for (size, qk), losses in LOSSES.items():
        for i, (lr, loss) in enumerate(zip(LRS, losses)):
            overrides = {"model.d_model": size, "model.qk_norm": qk, "optim.lr": lr}
            tid = sweep.trial_id(overrides)
            diverged = loss is None
            initial = L0[size] + 0.01 * i  # per-trial measured ℓ0: the group uses the mean
            rows.append(dict(
                id=tid, overrides=overrides, lr=lr, initial_loss=initial, diverged=diverged,
                diverged_at_step=7 if diverged else None, eval_loss=loss, final_loss=None if diverged else loss + 0.05,
                steps=7 if diverged else 20, wall_seconds=1.0, n_params=size * 1000, tokens_per_second=1e4,
            ))
            run = root / "trials" / tid
            run.mkdir(parents=True)
            steps = range(1, 8 if diverged else 21)
            metric_rows = [{"step": s, "loss": initial - 0.1 * s * lr * 100, "attn_max_logit/layer_0": 10.0 * s} for s in steps]
            if diverged:
                metric_rows[-1]["loss"] = None
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metric_rows))
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_sweep_report_files_and_csv(tmp_path):
    rows = make_sweep_dir(tmp_path)
    out = report.write_report(tmp_path)
    for name in ("loss_vs_lr.png", "lr_sensitivity.csv", "summary.md", "loss_over_steps.png"):
        assert (out / name).stat().st_size > 1000 or name.endswith((".csv", ".md")), name
    assert (out / "loss_vs_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    csv_text = (out / "lr_sensitivity.csv").read_text()
    assert "final EVAL loss" in csv_text and "mean measured initial eval loss" in csv_text  # says what it uses
    table = {(int(r["model.d_model"]), r["model.qk_norm"] == "True"): r for r in report.read_sensitivity_csv(out / "lr_sensitivity.csv")}
    assert table.keys() == LOSSES.keys()
    for (size, qk), losses in LOSSES.items():
        l0 = np.mean([L0[size] + 0.01 * i for i in range(len(LRS))])
        capped = [l0 if x is None else min(x, l0) for x in losses]
        expected = np.mean([c - min(capped) for c in capped])
        got = table[size, qk]
        assert float(got["l0"]) == pytest.approx(l0)
        assert float(got["lr_sensitivity"]) == pytest.approx(expected, abs=1e-12)
        assert float(got["best_loss"]) == pytest.approx(min(capped))
        assert float(got["best_lr"]) == LRS[int(np.argmin(capped))]
        assert int(got["n_diverged"]) == sum(x is None for x in losses)

    summary = (out / "summary.md").read_text()
    assert "eval** loss" in summary and "loss_vs_lr.png" in summary and "loss_over_steps.png" in summary
    diverged = [r["id"] for r in rows if r["diverged"]]
    assert all(f"`{tid}` at step 7" in summary for tid in diverged)
    assert len(summary.split("## Trials")[1].split("## Diverged")[0].strip().splitlines()) == len(rows) + 2


def test_metric_option_log_y_and_missing_metric(tmp_path, capsys):
    make_sweep_dir(tmp_path)
    report.write_report(tmp_path, "attn_max_logit/layer_0", log_y=True)
    assert (tmp_path / "report" / "attn_max_logit_layer_0_over_steps.png").exists()
    assert "attn_max_logit_layer_0_over_steps.png" in (tmp_path / "report" / "summary.md").read_text()
    report.write_report(tmp_path, "no_such_metric")
    assert not (tmp_path / "report" / "no_such_metric_over_steps.png").exists()
    assert "no_such_metric" in capsys.readouterr().err


def test_single_run_directory(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n" for s in range(1, 11)))
    (tmp_path / "summary.json").write_text(json.dumps({"finished": True, "diverged": False, "eval_loss": 0.6}))
    out = report.write_report(tmp_path)
    assert (out / "loss_over_steps.png").exists() and not (out / "loss_vs_lr.png").exists()
    assert "eval_loss" in (out / "summary.md").read_text()


def test_torn_last_line_of_results_is_ignored(tmp_path):
    rows = make_sweep_dir(tmp_path)
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"id": "half a ro')
    assert [r["id"] for r in records.read_results(tmp_path / "results.jsonl")] == [r["id"] for r in rows]
    records.drop_torn_tail(tmp_path / "results.jsonl")  # what a rerun does before appending
    assert (tmp_path / "results.jsonl").read_text().endswith("}\n")


def test_not_a_run_or_sweep_directory_is_one_line_error(tmp_path, capsys):
    r = helpers.run_module("launch.report", str(tmp_path))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "neither" in err[0]
