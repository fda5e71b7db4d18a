"""End-to-end training: learning, divergence handling, exact resume after kill -9, CLI errors, sharding."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import base
from helpers import REPO, final_params, run_module
from launch import configs, loop


def synthetic_cfg(**train_overrides):
    cfg = base.get_config("tiny")
    cfg.data.source = "synthetic"
    cfg.data.synthetic_tokens = 200_000
    cfg.train.update(steps=60, log_every=10, eval_every=30, ckpt_every=20, progress=False, **train_overrides)
    cfg.optim.lr = 3e-3
    return cfg


def run_cli(*args, timeout=240):
    return run_module("launch.train", *args, timeout=timeout)


def test_tiny_run_learns_on_synthetic(tmp_path):
    cfg = synthetic_cfg()
    summary = loop.train(cfg, tmp_path)
    assert not summary["diverged"]
    assert summary["initial_loss"] == pytest.approx(math.log(cfg.model.vocab_size), abs=0.6)
    assert summary["eval_loss"] < summary["initial_loss"] - 0.5
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [10, 20, 30, 40, 50, 60]
    for f in ("config.json", "summary.json"):
        assert (tmp_path / f).exists()
    assert list((tmp_path / "tb").iterdir()), "no TensorBoard event file"
    # rerunning a finished run does nothing and returns the same summary
    assert loop.train(cfg, tmp_path)["eval_loss"] == summary["eval_loss"]
    # a kill between the final checkpoint and summary.json: the rerun recovers the same end numbers
    (tmp_path / "summary.json").unlink()
    again = loop.train(cfg, tmp_path)
    assert (again["final_loss"], again["eval_loss"]) == (summary["final_loss"], summary["eval_loss"])


def test_too_high_lr_is_recorded_as_diverged(tmp_path):
    cfg = synthetic_cfg(divergence_margin=1.0)  # the early-stopping rule (CE above l0 + 1); off by default
    cfg.optim.update(lr=30.0, warmup_steps=0, clip=0.0)
    cfg.loss.z_loss = 0.0
    summary = loop.train(cfg, tmp_path)
    assert summary["diverged"] is True
    assert 1 <= summary["diverged_at_step"] <= cfg.train.steps
    assert json.loads((tmp_path / "summary.json").read_text())["diverged"] is True


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    """DESIGN §8: kill -9 mid-run, rerun: the final parameters equal an uninterrupted run's, bitwise on CPU."""
    args = [
        "--config=experiments/base.py:tiny",
        "--config.data.source=synthetic",
        "--config.data.synthetic_tokens=200000",
        "--config.train.steps=40",  # checkpoints at 10..40: the kill (past step 25) resumes from step 20
        "--config.train.ckpt_every=10",
        "--config.train.log_every=5",
        "--config.train.eval_every=20",
        "--config.train.progress=True",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_cli(*args, f"--workdir={full}").returncode == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.train", *args, f"--workdir={killed}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in proc.stdout:  # kill once training is past its second checkpoint (progress: absl INFO on stderr)
        progress = re.search(r"\] step\s+(\d+)/", line)
        if progress and int(progress[1]) >= 25:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()

    resumed = run_cli(*args, f"--workdir={killed}")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step" in resumed.stderr

    cfg = configs.apply_overrides(
        base.get_config("tiny"), {"data.source": "synthetic", "data.synthetic_tokens": 200000, "train.steps": 40}
    )
    step_a, params_a = final_params(full, cfg)
    step_b, params_b = final_params(killed, cfg)
    assert step_a == step_b == 40
    jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
    rows = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert rows(full) == rows(killed)


@pytest.mark.parametrize(
    "override, needle",
    [
        ("--config.model.no_such_field=1", "no_such_field"),
        ("--config.model.d_model=abc", "d_model"),
        ("--config.model.n_heads=3", "n_heads"),
        ("--config.model.attention=nope", "attention"),
        ("--config.optim.schedule=nope", "schedule"),
    ],
)
def test_bad_config_is_one_line_error(tmp_path, override, needle):
    r = run_cli("--config=experiments/base.py:tiny", "--config.data.source=synthetic", override, f"--workdir={tmp_path / 'r'}")
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_unknown_preset_is_one_line_error(tmp_path):
    r = run_cli("--config=experiments/base.py:nope", f"--workdir={tmp_path}")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "nope" in r.stderr


MESH_SCRIPT = r"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax, numpy as np
from experiments import base
from launch import mesh as mesh_lib, step as step_lib
from data_free import batch_for

cfg = base.get_config("tiny")
cfg.model.update(dtype="float32", qk_norm=True, vocab_size=128, n_layers=1)  # one layer: the same sharding rules
cfg.data.update(batch_size=8, seq_len=16)
results = {}
for name, shape in {"single": (1, 1, 1), "sharded": (2, 2, 2)}.items():
    cfg.mesh.update(data=shape[0], fsdp=shape[1], tensor=shape[2])
    devices = jax.devices()[: shape[0] * shape[1] * shape[2]]
    mesh = mesh_lib.make_mesh(cfg.mesh, devices)
    prog = step_lib.build_program(cfg, mesh)
    group = step_lib.compile_group(prog, 1)
    states = group.init(np.zeros([1], np.int32))
    batch = mesh_lib.global_batch(mesh, batch_for(cfg))
    states, m = group.step(states, batch, step_lib.stacked_hparams(group, [cfg]))
    state = group.member(states, 0)  # one member, placed as the program's state shardings
    results[name] = (float(m["loss"][0]), jax.tree.map(np.asarray, state["params"]))
    kernel = state["params"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    print(name, kernel.sharding.spec, flush=True)
(l1, p1), (l8, p8) = results["single"], results["sharded"]
assert abs(l1 - l8) < 1e-5, (l1, l8)
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), p1, p8)
print("OK", l1, l8)
"""


def test_sharded_step_matches_single_device(tmp_path):
    """8 fake CPU devices, data x fsdp x tensor = 2 x 2 x 2: one step gives the single-device loss and params."""
    (tmp_path / "data_free.py").write_text(
        "import numpy as np\n"
        "def batch_for(cfg):\n"
        "    rng = np.random.default_rng(0)\n"
        "    return rng.integers(0, cfg.model.vocab_size, (cfg.data.batch_size, cfg.data.seq_len + 1)).astype(np.int32)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}")
    r = subprocess.run([sys.executable, "-c", MESH_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "sharded P('fsdp', 'tensor')" in r.stdout
    assert "OK" in r.stdout
