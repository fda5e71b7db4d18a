"""PaLM-style rewind on a loss spike (train.rewind; spec optimizers §10(a)): detection, restore, data skip, the
max_rewinds limit, exact resume after kill -9, and the spike test on the spec's §10(d) numbers.

The spike: `train.spike_at_step` multiplies the gradient of the step that reads that batch ("a bad batch") by
`train.spike_scale`. Adam normalises such a gradient away (its update stays ~lr per coordinate, and the CE does
not move), so these tests train with plain SGD (optim.name=sgd, b1=0, lr 1, no clipping): the 300x gradient of
batch 51 throws the parameters off, and the CE of the next step (52) is ~10 against ~4.8 before, z ~ 200 over the
previous 16 steps. Skipping 20 batches past it, the rewound run never reads batch 51 again and finishes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import base
from helpers import REPO, run_module
from launch import configs, loop, mesh as mesh_lib, rewind, step as step_lib

OVERRIDES = {
    "model.vocab_size": 128,
    "model.d_model": 32,
    "model.n_heads": 2,
    "model.dtype": "float32",
    "data.source": "synthetic",
    "data.synthetic_tokens": 50_000,
    "data.seq_len": 32,
    "data.batch_size": 8,
    "optim.name": "sgd",
    "optim.b1": 0.0,
    "optim.lr": 1.0,
    "optim.clip": 0.0,
    "optim.warmup_steps": 5,
    "train.steps": 70,
    "train.log_every": 5,
    "train.eval_every": 0,
    "train.ckpt_every": 10,
    "train.keep_ckpts": 3,
    "train.progress": True,
    "train.spike_at_step": 51,
    "train.spike_scale": 300.0,
    "train.rewind.enabled": True,
    "train.rewind.window": 16,
    "train.rewind.steps_back": 10,
    "train.rewind.skip_batches": 20,
}


def rewind_cfg(**overrides):
    return configs.apply_overrides(base.get_config("tiny"), {**OVERRIDES, **overrides})


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def newest_state(workdir, cfg):
    step, state = loop.restore_newest(step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh)), workdir)
    return step, jax.device_get(state)


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_spike_rewinds_to_an_earlier_checkpoint_and_skips_the_bad_batches(tmp_path):
    cfg = rewind_cfg(**{"train.progress": False})
    rt = loop.Runtime(cfg)
    summary = loop.train(cfg, tmp_path, rt=rt, verbose=False)

    # the CE of step 52 (after batch 51) spikes, seen at log step 55; the newest checkpoint <= 52 - 10 is step 40
    assert not summary["diverged"] and summary["steps"] == 70
    assert summary["rewinds"] == [{"detected_at": 52, "restored_step": 40, "data_offset": 20}]
    logged = rows(tmp_path)
    assert [r["step"] for r in logged if "loss" in r] == list(range(5, 75, 5))  # the abandoned rows are superseded
    assert [r for r in logged if "rewind_data_offset" in r] == [
        {"step": 40, "rewind_data_offset": 20, "rewind_detected_at": 52, "rewind_restored_step": 40}
    ]
    assert not any(r["spike"] for r in logged if "spike" in r)
    step, final = newest_state(tmp_path, cfg)
    assert step == 70 and int(final["data_offset"]) == 20

    # the same steps by hand: batches 0..39, then batch t + 20 for step t from the restored step 40 on
    group, gdata = rt.group(1, shared_batch=True), loop.GroupData(rt, [cfg.train.seed])
    hparams, states = step_lib.stacked_hparams(group, [cfg]), loop.fresh_states(group, gdata, [cfg])
    for t in range(70):
        if t == 40:
            states = dict(states, data_offset=jax.device_put(np.array([20], np.int32), group.member_sharding))
        offset = int(jax.device_get(states["data_offset"])[0])
        states, _ = group.step(states, gdata.train_batch(t + offset), hparams)
    assert_trees_equal(jax.device_get(group.member(states, 0)), final)


def test_a_run_that_keeps_spiking_stops_rewinding_after_max_rewinds_and_then_diverges(tmp_path):
    """Skipping only 3 batches, step t + 3 (then t + 6) reads the bad batch 51 again, before the restored step."""
    cfg = rewind_cfg(**{"train.progress": False, "train.rewind.skip_batches": 3, "train.rewind.max_rewinds": 2,
                        "train.divergence_margin": 1.0})  # the early-stopping rule (CE above l0 + 1); off by default
    summary = loop.train(cfg, tmp_path, verbose=False)
    assert summary["rewinds"] == [
        {"detected_at": 52, "restored_step": 40, "data_offset": 3},
        {"detected_at": 49, "restored_step": 30, "data_offset": 6},  # 30: the newest checkpoint <= 49 - 10
    ]
    assert summary["diverged"] and summary["diverged_at_step"] == 46  # the divergence rule (margin 1)


def _run_until(args, workdir, prefix: str):
    """Starts `launch.train args --workdir`, kills it (-9) at the first log line (absl, on stderr) whose message
    starts with `prefix`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.train", *args, f"--workdir={workdir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in proc.stdout:
        if line.partition("] ")[2].startswith(prefix):  # the message after absl's "I... file.py:N] " prefix
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"never printed {prefix!r}"


def test_kill_after_a_rewind_and_resume_equals_the_uninterrupted_run(tmp_path):
    """DESIGN §8 with a rewind: killed right after it (the restored checkpoint still holds the old data offset, so
    the resume replays the spike and the rewind), then again later; the end is bitwise the uninterrupted run's."""
    cfg = rewind_cfg()
    full, killed = tmp_path / "full", tmp_path / "killed"
    expected = loop.train(cfg, full, verbose=False)

    args = ["--config=experiments/base.py:tiny", *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]
    _run_until(args, killed, "rewind")
    _run_until(args, killed, "step      60/70")
    resumed = run_module("launch.train", *args, f"--workdir={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stderr

    step_a, state_a = newest_state(full, cfg)
    step_b, state_b = newest_state(killed, cfg)
    assert step_a == step_b == 70
    assert_trees_equal(state_a, state_b)
    untimed = lambda d: [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in rows(d)]
    assert untimed(full) == untimed(killed)
    assert json.loads((killed / "summary.json").read_text())["rewinds"] == expected["rewinds"]


def feed(values, window=128):
    """The rewind's spike test after `values` (optim.skip_step's statistic on the CE alone)."""
    detector = step_lib.spike_detector(ml_collections.ConfigDict(dict(window=window, sigma=6.0)))
    update = jax.jit(lambda state, ce: detector.update((), state, loss=ce)[1])
    state = detector.init(())
    for v in values:
        state = update(state, jnp.float32(v))
    return state


def test_spike_test_matches_the_spec_numbers():
    """Spec optimizers §10(d): after 128 values alternating 3.0/3.2 the Bessel threshold is 3.70236, so 3.701 is
    no spike (OLMo-core and MaxText; Levanter's population std would say 3.7000); the test is armed once 63
    values are known (OLMo-core's warm-up rule for a window of 128)."""
    history = [3.0, 3.2] * 64
    assert not bool(feed([*history, 3.701]).skipped)
    assert float(feed([*history, 3.701]).loss_threshold) == pytest.approx(3.70236, abs=1e-5)
    assert bool(feed([*history, 3.703]).skipped)
    assert bool(feed([3.0] * 63 + [100.0]).skipped)
    assert not bool(feed([3.0] * 62 + [100.0]).skipped)
    assert bool(feed([3.0] * 63 + [float("nan")]).skipped)  # a non-finite CE spikes once the test is armed


@pytest.mark.parametrize(
    "steps, spike, back, expected",
    [
        ([30, 40, 50], 52, 10, 40),  # the newest at or before 42
        ([0, 10], 12, 100, 0),  # before steps_back steps: the step-0 checkpoint
        ([40, 50], 43, 10, 40),  # all newer than 33 (a rewind deleted the rest): the oldest
    ],
)
def test_rewind_step(steps, spike, back, expected):
    assert rewind.rewind_step(steps, spike, back) == expected


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"train.ckpt_every": 12}, "multiple of train.log_every"),
        ({"train.keep_ckpts": 2, "train.rewind.steps_back": 15}, "train.keep_ckpts >= 3"),
        ({"train.rewind.skip_batches": 0}, "skip_batches"),
    ],
)
def test_rewind_config_errors(overrides, needle):
    with pytest.raises(configs.ConfigError, match=needle):
        configs.validate(rewind_cfg(**overrides), n_devices=1)
