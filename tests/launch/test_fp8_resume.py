"""FP8 state in the one loop (issue 11): the scale/amax state lives in the model state (`rest`), is updated in the
jitted step, checkpointed, and a run resumed from a mid-run checkpoint ends bitwise equal to an uninterrupted one."""

from __future__ import annotations

import shutil

import jax
import numpy as np

import helpers
from experiments import base
from launch import configs, loop


def test_fp8_run_resumes_bitwise(tmp_path):
    cfg = configs.apply_overrides(base.get_config("tiny"), {
        "data.source": "synthetic", "train.steps": 20, "train.log_every": 5, "train.eval_every": 20,
        "train.ckpt_every": 10, "train.eval_batches": 2, "model.mlp": "smooth_swiglu", "model.fp8.enabled": True,
        "model.fp8.amax_history": 4,
    })
    full, killed = tmp_path / "full", tmp_path / "killed"
    rt = loop.Runtime(cfg)
    loop.train(cfg, full, rt=rt)
    shutil.copytree(full, killed)  # as if killed after the step-10 checkpoint
    shutil.rmtree(killed / "checkpoints" / "20")
    (killed / "summary.json").unlink()
    loop.train(cfg, killed, rt=rt)

    a, b = helpers.restore(full / "checkpoints", 20, cfg), helpers.restore(killed / "checkpoints", 20, cfg)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    start = helpers.restore(full / "checkpoints", 10, cfg)
    history = [x for p, x in jax.tree_util.tree_flatten_with_path(a["rest"])[0] if "amax_history" in str(p)]
    before = [x for p, x in jax.tree_util.tree_flatten_with_path(start["rest"])[0] if "amax_history" in str(p)]
    assert history and any(not np.array_equal(x, y) for x, y in zip(history, before))  # the state moved in the step
    assert all(np.all(np.isfinite(x)) and np.any(x > 0) for x in history)
    grad = [x for p, x in jax.tree_util.tree_flatten_with_path(a["rest"])[0] if "grad_amax_history" in str(p)]
    assert grad and all(np.any(x > 0) for x in grad)  # the backward's amax reaches the state (step.py's meta grads)
