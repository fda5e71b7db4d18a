"""Seed outliers (PolyPythias; spec optimizers §9(b)-(d), launch/report/seeds.py): the per-step z-score against a
float64 reference, the spec's check (10 equal seeds and one 3σ lower: that seed alone is flagged), and the marker in
seeds.md of a hand-made sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import test_report  # tests/launch/report/test_report.py: make_row, write_sweep

from launch import report
from launch.report import seeds as seeds_lib


def test_z_scores_match_float64_and_use_the_common_finite_steps():
    rng = np.random.default_rng(0)
    steps = np.arange(5, 55, 5)
    y = rng.normal(size=(4, len(steps)))
    y[2, -2:] = np.nan  # a seed that diverged at step 45
    got_steps, z = seeds_lib.seed_z_scores([(steps, row) for row in y])
    keep = np.isfinite(y).all(axis=0)
    ref = (y[:, keep] - y[:, keep].mean(0)) / y[:, keep].std(0)
    np.testing.assert_array_equal(got_steps, steps[keep])
    np.testing.assert_allclose(z, ref, rtol=1e-12)


def test_spec_check_one_low_seed_among_ten_is_the_only_outlier():
    """|z| of the odd seed = √10 ≈ 3.16 (std including it), the others 1/√10."""
    steps = np.arange(1, 11)
    series = [(steps, np.full(10, 3.0)) for _ in range(10)] + [(steps, np.full(10, 2.0))]
    _, z = seeds_lib.seed_z_scores(series)
    assert np.abs(z[-1]) == pytest.approx(np.full(10, np.sqrt(10)))
    assert seeds_lib.longest_run(np.abs(z[-1]) > seeds_lib.OUTLIER_Z) == 10
    assert not (np.abs(z[:-1]) > seeds_lib.OUTLIER_Z).any()


def test_seeds_md_marks_the_outlier_seed(tmp_path):
    rows, n_seeds, steps = [], 7, range(10, 110, 10)
    rng = np.random.default_rng(1)
    for seed in range(n_seeds):
        overrides = {"optim.lr": 1e-2, "train.seed": seed}
        row = test_report.make_row(overrides, 3.0 + 0.01 * seed, 6.0)
        rows.append(row)
        trial = tmp_path / "trials" / row["id"]
        trial.mkdir(parents=True)
        # seed 5 runs 0.5 above the others from step 40 on (7 logged steps), the others within ±0.01
        loss = [4.0 - 0.01 * t + 0.01 * rng.standard_normal() + (0.5 if seed == 5 and t >= 40 else 0.0) for t in steps]
        (trial / "metrics.jsonl").write_text("".join(json.dumps({"step": t, "loss": v}) + "\n"
                                                     for t, v in zip(steps, loss)))
    test_report.write_sweep(tmp_path, rows)
    out = report.write_report(tmp_path, seeds=True)
    text = (out / "seeds.md").read_text()
    loss_row = [line for line in text.splitlines() if line.startswith("| 0.01 |")][0]
    cells = [c.strip() for c in loss_row.strip("|").split("|")][1:1 + n_seeds]
    assert cells[5] == "3.0500 ⚠" and all("⚠" not in c for i, c in enumerate(cells) if i != 5)
    z_row = [line for line in text.splitlines() if line.startswith("| 0.01 |")][-1]
    cells = [c.strip() for c in z_row.strip("|").split("|")][1:]
    assert cells[5].endswith("(7) ⚠") and all("⚠" not in c for i, c in enumerate(cells) if i != 5)


def test_three_seeds_reach_the_bound_and_seeds_md_says_none_can_be_flagged(tmp_path):
    """One seed apart from two equal ones: |z| = √(S − 1) = √2, the largest three seeds allow, below OUTLIER_Z."""
    steps = np.arange(1, 6)
    _, z = seeds_lib.seed_z_scores([(steps, np.full(5, 3.0)), (steps, np.full(5, 3.0)), (steps, np.full(5, 9.0))])
    assert np.abs(z[-1]) == pytest.approx(np.full(5, np.sqrt(2)))
    rows = []
    for seed in range(3):
        row = test_report.make_row({"optim.lr": 1e-2, "train.seed": seed}, 3.0 + 0.01 * seed, 6.0)
        rows.append(row)
        (tmp_path / "trials" / row["id"]).mkdir(parents=True)
        (tmp_path / "trials" / row["id"] / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": int(t), "loss": 3.0 + (6.0 if seed == 2 else 0.0)}) + "\n" for t in steps))
    test_report.write_sweep(tmp_path, rows)
    text = (report.write_report(tmp_path, seeds=True) / "seeds.md").read_text()
    assert "with 3 seeds |z| cannot exceed √2 = 1.41, so no seed can be flagged" in text
    assert "⚠" not in text.split("#")[-1]  # no cell marked
