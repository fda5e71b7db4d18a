"""Multi-controller runs: 2 JAX processes on localhost (CPU collectives, gloo; 4 fake devices each) train as one job.

Each process runs the same `launch.train` / `launch.sweep` command with the explicit coordinator flags. The
numbers are compared with a single process that has all 8 devices and the same mesh: the same program, with the
cross-process all-reduces done by gloo instead of in-process, so only float32 reduction order may differ, and
Adam (sign-like on small gradients) turns last-bit gradient differences into parameter differences of up to a
couple of lr-sized steps on single entries (rare tokens' embedding rows, whose gradients are mostly zero). Measured
here, with or without the kill: 1.5e-5 relative on the final loss, parameter leaves 5.5e-3 apart in relative norm
(lr 1e-2, 30 steps; the test runs 20, checkpoints at 10 and 20, killed after the first, so the differences are at
most those). Tolerances: the whole loss curve within rtol 2e-4, each parameter leaf within 2e-2 relative
norm; the resume itself is bitwise on one process (test_loop.py). A wrong row slice, a missing reduction, or a
resume from the wrong step or data position moves the loss curve by ~1e-2 or more.
These are the slowest tests of the suite (a process start-up and a compile per process and launch).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from helpers import REPO
from launch import checkpoint, configs, metrics as metrics_lib, records

RUN = [
    "--config=experiments/base.py:tiny", "--config.data.source=synthetic", "--config.train.steps=20",
    "--config.train.ckpt_every=10", "--config.train.log_every=5", "--config.train.eval_every=0",
    "--config.model.d_model=32", "--config.data.seq_len=32",
]
FSDP = ["--config.mesh.data=1", "--config.mesh.fsdp=-1"]  # fsdp over the 8 devices of both processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int) -> dict:
    return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
                PYTHONPATH=str(REPO))


def start(module: str, args: list[str], tmp: Path, tag: str, processes: int = 2) -> list[subprocess.Popen]:
    """`processes` processes of `python -m module args` joined through a coordinator on 127.0.0.1."""
    if processes == 1:
        cmds = [[sys.executable, "-m", module, *args]]
    else:
        port = free_port()
        cmds = [[sys.executable, "-m", module, *args, f"--coordinator_address=127.0.0.1:{port}",
                 f"--num_processes={processes}", f"--process_id={i}"] for i in range(processes)]
    devices = 8 // processes
    return [subprocess.Popen(c, cwd=REPO, env=env(devices), stdout=open(tmp / f"{tag}{i}.log", "w"),
                             stderr=subprocess.STDOUT) for i, c in enumerate(cmds)]


def finish(procs, tmp: Path, tag: str, timeout=400) -> None:
    for i, p in enumerate(procs):
        rc = p.wait(timeout=timeout)
        assert rc == 0, (tmp / f"{tag}{i}.log").read_text()[-4000:]


def params_of(workdir: Path):
    from helpers import final_params

    cfg = configs.unflatten(json.loads((workdir / "config.json").read_text()))
    cfg.mesh.update(members=1, data=1, fsdp=1, tensor=1)  # restored onto this test's one device
    return final_params(workdir, cfg)


def test_two_processes_fsdp_killed_and_resumed_equal_one_process(tmp_path):
    """The slowest test: fsdp across 2 processes, both SIGKILLed after a checkpoint, restarted, equal to 1 process."""
    single = start("launch.train", [*RUN, *FSDP, f"--workdir={tmp_path / 'single'}"], tmp_path, "single", 1)
    finish(single, tmp_path, "single")

    work = tmp_path / "multi"
    args = [*RUN, *FSDP, f"--workdir={work}"]
    procs = start("launch.train", args, tmp_path, "multi")
    deadline = time.time() + 300
    done = work / "checkpoints" / "10" / checkpoint.MANIFEST  # a step is complete once its manifest is written
    while not done.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
    assert done.exists() and not (work / "summary.json").exists(), "the kill did not land mid-run"

    procs = start("launch.train", args, tmp_path, "resumed")
    finish(procs, tmp_path, "resumed")
    log = (tmp_path / "resumed0.log").read_text()
    assert "resuming from step" in log
    got, want = (json.loads((d / "summary.json").read_text()) for d in (work, tmp_path / "single"))
    assert got["final_loss"] == pytest.approx(want["final_loss"], rel=2e-4)
    rows = {d: [r for r in metrics_lib.read_jsonl(tmp_path / d / "metrics.jsonl") if "loss" in r] for d in ("multi", "single")}
    assert [r["step"] for r in rows["multi"]] == [r["step"] for r in rows["single"]] == list(range(5, 21, 5)), \
        "metrics rows missing or written twice"
    np.testing.assert_allclose([r["loss"] for r in rows["multi"]], [r["loss"] for r in rows["single"]], rtol=2e-4)
    (s1, p1), (s2, p2) = params_of(work), params_of(tmp_path / "single")
    assert s1 == s2 == 20
    gaps = jax.tree.map(lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b)), p1, p2)
    assert max(jax.tree.leaves(gaps)) < 2e-2, gaps


STUDY = """
from experiments import base, sweeps

def get_config(arg=None):
    c = base.get_config("tiny")
    c.data.source = "synthetic"
    c.train.update(steps=20, ckpt_every=10, log_every=5, eval_every=20, eval_batches=1)
    c.model.d_model = 32
    c.data.seq_len = 32
    c.mesh.update(data=2, fsdp=4)  # 2 members over `data`: one member per process, fsdp within it
    return c

def get_sweep(arg=None):
    return sweeps.product(lr=[3e-3, 1e-2])
"""


def test_batched_group_members_span_both_processes(tmp_path):
    """A batched group of 2 members, one on each process's 4 devices: the results equal one process's."""
    study = tmp_path / "study.py"
    study.write_text(STUDY)
    rows = {}
    for tag, n in (("one", 1), ("two", 2)):
        procs = start("launch.sweep", [f"--config={study}", f"--workdir={tmp_path / tag}", "--executor=batched"],
                      tmp_path, tag, n)
        finish(procs, tmp_path, tag)
        rows[tag] = {r["id"]: r for r in records.read_results(tmp_path / tag / "results.jsonl")}
    assert len(rows["two"]) == 2 and rows["two"].keys() == rows["one"].keys()
    assert "2 trials in one batched program" in (tmp_path / "two0.log").read_text()
    for tid, row in rows["two"].items():
        for k in ("initial_loss", "final_loss", "eval_loss"):
            assert row[k] == pytest.approx(rows["one"][tid][k], rel=2e-4), (tid, k)


def test_processes_that_disagree_about_the_config_stop_with_one_line(tmp_path):
    port = free_port()
    logs = [tmp_path / f"p{i}.log" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "launch.train", *RUN, f"--workdir={tmp_path / 'w'}", f"--config.optim.lr={lr}",
             f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
            cwd=REPO, env=env(4), stdout=subprocess.DEVNULL, stderr=open(logs[i], "w"),
        )
        for i, lr in enumerate((1e-3, 2e-3))
    ]
    for p, log in zip(procs, logs):
        assert p.wait(timeout=300) == 2, log.read_text()[-3000:]
        err = log.read_text()
        lines = [l for l in err.splitlines() if l.startswith("error:")]
        assert len(lines) == 1 and "processes [1] run a different config" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "w" / "checkpoints").exists()
