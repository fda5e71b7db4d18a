"""`launch.report DIR_A DIR_B`: a comparison of two real tiny sweeps (qk_norm off vs on). The table against
numbers recomputed from results.jsonl (float64), labels from the config difference, a sweep compared with itself
has zero differences, --label and --format, the CLI's one-line errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

import helpers
from launch import records, report
from launch.report import compare


def np_sensitivity(rows, seed) -> float:
    """Float64 reference of Wortsman et al. §2 for one seed's LR curve: diverged = ℓ0, losses capped at ℓ0."""
    mine = [r for r in rows if r["overrides"]["train.seed"] == seed]
    l0 = np.mean([r["initial_loss"] for r in mine])
    y = np.array([l0 if r["diverged"] else min(r["eval_loss"], l0) for r in mine], np.float64)
    return float(np.mean(y - y.min()))


def csv_rows(out):
    import csv

    with (out / "lr_sensitivity.csv").open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_two_sweeps_one_figure_one_table(two_sweeps, tmp_path):
    a, b = two_sweeps
    out = report.write_comparison([a, b], tmp_path / "cmp")
    assert (out / "loss_vs_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "loss_over_steps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = csv_rows(out)
    assert [(r["sweep"], r["group"]) for r in rows] == [("qk_norm=False", "base"), ("qk_norm=True", "base")]
    sens = {}
    for r, d in zip(rows, (a, b)):
        results = records.read_results(d / "results.jsonl")
        expect = np.mean([np_sensitivity(results, s) for s in (0, 1)])
        assert float(r["lr_sensitivity"]) == pytest.approx(expect, abs=1e-9)
        assert r["n_seeds"] == "2" and r["n_finished"] == "4" and r["n_missing"] == "0"
        sens[d.name] = expect
    assert float(rows[0]["d_lr_sensitivity"]) == 0.0
    assert float(rows[1]["d_lr_sensitivity"]) == pytest.approx(sens["qknorm"] - sens["baseline"], abs=1e-9)
    assert sens["qknorm"] != sens["baseline"]  # the two sweeps are different runs: a real difference to report
    summary = (out / "summary.md").read_text()
    assert "| model.qk_norm | False | True |" in summary  # the config differences
    page = (out / "index.html").read_text()
    assert "qk_norm=False" in page and "qk_norm=True" in page and 'src="loss_vs_lr.png"' in page
    for d in (a, b):  # links to every trial's run directory and TensorBoard logdir, relative to the page
        for r in records.read_results(d / "results.jsonl"):
            rel = os.path.relpath(d / "trials" / r["id"], out)
            assert f'href="{rel}/"' in page and f'href="{rel}/tb/"' in page
            assert (d / "trials" / r["id"] / "tb").is_dir()


def test_a_sweep_compared_with_itself_shows_zero_differences(two_sweeps, tmp_path):
    a, _ = two_sweeps
    out = report.write_comparison([a, a], tmp_path / "self")
    rows = csv_rows(out)
    assert [r["sweep"] for r in rows] == ["baseline", "baseline (2)"]  # equal configs: the directory name, numbered
    assert [float(r["d_lr_sensitivity"]) for r in rows] == [0.0, 0.0]
    assert [float(r["d_best_loss"]) for r in rows] == [0.0, 0.0]
    assert "none: the sweeps' base configs are equal" in (out / "summary.md").read_text()


def test_labels_and_format_from_the_command_line(two_sweeps, tmp_path):
    a, b = two_sweeps
    out = tmp_path / "cli"
    proc = helpers.run_module("launch.report", str(a), str(b), f"--out={out}", "--label=off,qk-layernorm",
                              "--format=svg", "--metric=eval_loss")
    assert proc.returncode == 0, proc.stderr
    assert [r["sweep"] for r in csv_rows(out)] == ["off", "qk-layernorm"]
    assert (out / "loss_vs_lr.svg").read_text().lstrip().startswith("<?xml")
    assert (out / "eval_loss_over_steps.svg").exists() and not (out / "loss_vs_lr.png").exists()
    page = (out / "index.html").read_text()
    assert "off" in page and "qk-layernorm" in page and 'src="loss_vs_lr.svg"' in page


def test_default_out_and_label_errors(two_sweeps, tmp_path):
    a, b = two_sweeps
    assert compare.default_out([a, b]) == a.parent / "compare-baseline-vs-qknorm"
    proc = helpers.run_module("launch.report", str(a), str(b), "--label=x,y,z")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --label: 3 labels")
    proc = helpers.run_module("launch.report", str(a), str(tmp_path))
    assert proc.returncode == 2 and "is not a sweep directory" in proc.stderr.strip().splitlines()[-1]


def test_config_differences_and_labels():
    diffs = compare.config_differences([{"a.x": 1, "a.y": [1, 2]}, {"a.x": 2, "a.y": [1, 2]}, {"a.x": 1}])
    assert diffs == {"a.x": [1, 2, 1], "a.y": [[1, 2], [1, 2], None]}
    from pathlib import Path

    labels = compare.sweep_labels([Path("r/p"), Path("r/q")], [{"m.qk": False}, {"m.qk": True}], ["", "mine"])
    assert labels == ["qk=False", "mine"]
