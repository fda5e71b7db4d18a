"""`launch.sweep --executor=ray` on a private local Ray instance (this machine's 2 CPUs).

A killed driver and its rerun record every trial exactly once with the local executor's numbers, and the instance
listens on loopback only; an injected task failure is retried, then recorded as failed, and the sweep completes.
Skipped without the `ray` extra. Slow: Ray's start-up alone takes ~10 s here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("ray")

from helpers import REPO, run_module  # noqa: E402
from launch import checkpoint, metrics as metrics_lib, records, sweep  # noqa: E402

STUDY = """
from experiments import base, sweeps

def get_config(arg=None):
    c = base.get_config("tiny")
    c.data.source = "synthetic"
    c.train.update(steps=10, ckpt_every=5, log_every=5, eval_every=10, eval_batches=1, progress=False)
    c.model.d_model = 32
    c.data.seq_len = 32
    return c

def get_sweep(arg=None):
    # two program groups: a short one, and a long one still in flight when the short one is recorded
    # (60 steps: 6x the short group, checkpoints at 5..60, so the kill lands with the long group past a checkpoint;
    # with 30 an idle machine could finish the long group before the short one was recorded)
    return sweeps.product(**{"train.steps": [10, 60]}, lr=[3e-3, 1e-2])
"""


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")


def descendants(pid: int) -> set[int]:
    """pid and every process below it (Ray's GCS, raylet, agents and workers are children of the driver)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        r = subprocess.run(["ps", "-o", "pid=", "--ppid", str(p)], capture_output=True, text=True)
        todo += [int(x) for x in r.stdout.split()]
    return out


class Listeners(threading.Thread):
    """Polls `ss -ltnp` while a driver runs; keeps the listening addresses of the driver's process tree."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.seen, self.stop = pid, set(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            pids = descendants(self.pid)
            for line in subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout.splitlines()[1:]:
                owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
                if owners & pids:
                    self.seen.add((line.split()[3], ",".join(re.findall(r'\("([^"]+)"', line))))
            time.sleep(0.5)


def loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1") or host.startswith("::ffff:127.")


def test_killed_ray_sweep_reruns_every_trial_once_with_the_local_numbers(tmp_path):
    study = tmp_path / "study.py"
    study.write_text(STUDY)
    work = tmp_path / "ray"
    args = [f"--config={study}", f"--workdir={work}", "--executor=ray"]
    results = work / "results.jsonl"
    driver = subprocess.Popen([sys.executable, "-m", "launch.sweep", *args], cwd=REPO, env=env(),
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "driver.log", "w"))
    ports = Listeners(driver.pid)
    ports.start()
    deadline = time.time() + 400
    # the short group recorded and the long one past a complete checkpoint (its manifest written): the moment the
    # assertions below need; waiting for the short group alone raced the long group's compile (a cold cache)
    def long_group_manifests():  # the short group checkpoints too (and deletes them when done): not those
        return [m for m in work.glob(f"groups/*/checkpoints/*/{checkpoint.MANIFEST}")
                if (m.parents[2] / "group.json").exists()
                and "train.steps=60" in (m.parents[2] / "group.json").read_text(errors="replace")]

    checkpointed = lambda: bool(long_group_manifests())
    while not (results.exists() and results.read_text().count("\n") >= 2 and checkpointed()) \
            and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert driver.poll() is None, "the sweep ended before the kill point (the long group finished too soon)\n" + \
        (tmp_path / "driver.log").read_text()[-2000:]
    os.kill(driver.pid, signal.SIGKILL)  # the short group is recorded, the long one in flight
    driver.wait(timeout=60)
    ports.stop.set()
    ports.join()
    n_before = len(records.read_results(results))
    assert n_before == 2, (tmp_path / "driver.log").read_text()[-3000:]
    assert any(work.glob("groups/*/checkpoints/*")), "the long group left no checkpoint to resume from"
    assert ports.seen and all(loopback(a) for a, _ in ports.seen), sorted(ports.seen)
    # the rows up to the newest complete checkpoint, timings included: a resume keeps them as they are, a restart
    # from step 0 would rewrite them (Ray forwards the task's "resuming from step" line unreliably: not asserted)
    saved = max(int(m.parent.name) for m in long_group_manifests())
    long_runs = sorted(work.glob("trials/*train.steps=60*"))
    kept = {d: [r for r in metrics_lib.read_jsonl(d / "metrics.jsonl") if r["step"] <= saved] for d in long_runs}
    assert saved > 0 and len(long_runs) == 2 and all(len(rows) > 1 for rows in kept.values()), (saved, kept)

    rerun = run_module("launch.sweep", *args, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 already finished" in rerun.stderr
    for d, rows in kept.items():  # resumed from `saved`, not retrained from 0
        assert [r for r in metrics_lib.read_jsonl(d / "metrics.jsonl") if r["step"] <= saved] == rows, d.name
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    trials = sweep.load_sweep(str(study))
    assert sorted(ids) == sorted(sweep.trial_id(o) for o in trials)  # every trial exactly once

    # the local executor's numbers, computed in this process (the study file's config and sweep): one interpreter
    # start-up fewer than `python -m launch.sweep --executor=local`, the same trials and executor
    spec = importlib.util.spec_from_file_location("ray_study", study)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    local = sweep.run_sweep(module.get_config(), trials, tmp_path / "local", "local")
    want = {r["id"]: r for r in local}
    assert want.keys() == {r["id"] for r in records.read_results(tmp_path / "local" / "results.jsonl")}
    got = {r["id"]: r for r in records.read_results(results)}
    assert got.keys() == want.keys()
    for tid, row in got.items():
        assert set(row) == set(want[tid]), tid
        # a Ray task trains the group vmapped, the local executor one run at a time: float32 order only; measured
        # 2e-5 relative on the 60-step trials at lr 1e-2 (the drift grows with steps; a
        # wrong member, batch or resume is off by ~1e-2)
        for k in ("initial_loss", "final_loss", "eval_loss"):
            assert row[k] == pytest.approx(want[tid][k], rel=1e-4), (tid, k)


FLAKY = r"""
import sys
from pathlib import Path
from absl import logging
from launch import sweep

def flaky(payload, workdir, results):
    # counts its attempts per group; the long group always fails, the short one fails on its first attempt only
    ids = [tid for tid, _, _ in payload]
    marks = Path(workdir) / "attempts"
    marks.mkdir(exist_ok=True)
    n = len(list(marks.glob(f"{ids[0]}*")))
    (marks / f"{ids[0]}.{n}").touch()
    if "steps=60" in ids[0] or n == 0:
        raise RuntimeError(f"injected failure of {ids[0]} (attempt {n + 1})")
    return sweep.ray_group_task(payload, workdir, results)

import study

logging.set_verbosity(logging.INFO)
rows = sweep.run_sweep(study.get_config(), sweep.load_sweep(sys.argv[1]), sys.argv[2], "ray",
                       executor_options=dict(retries=1, task=flaky))
print("ROWS", len(rows))
"""


def test_a_failing_group_task_is_retried_then_recorded_and_the_sweep_completes(tmp_path):
    (tmp_path / "study.py").write_text(STUDY)
    work = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-c", FLAKY, str(tmp_path / "study.py"), str(work)], cwd=REPO,
                       env=dict(env(), PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}"), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "ROWS 4" in r.stdout, r.stdout + r.stderr[-4000:]
    rows = {row["id"]: row for row in records.read_results(work / "results.jsonl")}
    attempts = sorted(p.name for p in (work / "attempts").iterdir())
    assert len(rows) == 4
    for tid, row in rows.items():
        if "steps=60" in tid:  # failed twice (retries=1): recorded with its error, no numbers
            assert row["failed"] and row["attempts"] == 2 and row["final_loss"] is None
            assert row["error"].startswith("RuntimeError: injected failure of") and "attempt 2" in row["error"]
        else:  # failed once, then trained
            assert "failed" not in row and row["eval_loss"] is not None
    assert len([a for a in attempts if "steps=60" in a]) == 2 and len([a for a in attempts if "steps=10" in a]) == 2
