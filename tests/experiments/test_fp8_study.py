"""experiments/fp8_smooth_swiglu.py:tiny end to end (issue 11): the four arms as a batched sweep on the synthetic
language, then the report of loss, max |h| into W3 and the w1/w2 alignment over steps; the FP8 arms learn."""

from __future__ import annotations

import json

from experiments import fp8_smooth_swiglu as study
from launch import configs, report, sweep


def test_tiny_study_sweep_learns_and_reports(tmp_path):
    base = configs.apply_overrides(study.get_config("tiny"), {
        "data.source": "synthetic", "data.synthetic_tokens": 200_000, "train.steps": 40, "train.eval_every": 40,
        "train.ckpt_every": 0, "train.eval_batches": 2,
    })
    # 40 steps (the 20-step warmup, then the cosine), diagnostics at 20 and 40: every arm drops by ~0.53 (measured),
    # the FP8 arms within 1e-3 of SwiGLU without FP8; 60 steps added a third diagnostic row, not another property
    rows = sweep.run_sweep(base, study.get_sweep("tiny"), tmp_path, executor="batched")
    assert len(rows) == len(study.ARMS) == 4 and not any(r["diverged"] for r in rows)
    by_arm = {(r["overrides"]["model.mlp"], r["overrides"]["model.fp8.enabled"]): r for r in rows}
    for arm in (("swiglu", True), ("smooth_swiglu", True)):  # the FP8 arms learn, and track SwiGLU without FP8
        r = by_arm[arm]
        assert r["eval_loss"] < r["initial_loss"] - 0.4, (arm, r["initial_loss"], r["eval_loss"])
        assert abs(r["eval_loss"] - by_arm[("swiglu", False)]["eval_loss"]) < 0.1, arm
    for metric in ("swiglu_down_absmax/blocks/1/mlp", "swiglu_cos_abs_p999/blocks/1/mlp"):
        report.write_report(tmp_path, metric=metric)
    out = tmp_path / "report"
    for png in ("loss_over_steps.png", "swiglu_down_absmax_blocks_1_mlp_over_steps.png",
                "swiglu_cos_abs_p999_blocks_1_mlp_over_steps.png"):
        assert (out / png).stat().st_size > 10_000, png
    # the diagnostics the plots read: one row every diag_every steps, with the FP8 and SwiGLU names
    smooth = [json.loads(line) for line in (tmp_path / "trials" / by_arm[("smooth_swiglu", True)]["id"] /
                                            "metrics.jsonl").read_text().splitlines()]
    diag = [r for r in smooth if "swiglu_down_absmax/blocks/1/mlp" in r]
    assert [r["step"] for r in diag] == [20, 40]
    assert all(abs(r["fp8_amax/blocks/1/mlp/w3/x"] - 1.0) < 1e-6 for r in diag)  # Smooth-SwiGLU: W3's input amax 1
    assert all(0.0 <= r["fp8_saturated/blocks/1/mlp/w3/x"] <= 1.0 for r in diag)
