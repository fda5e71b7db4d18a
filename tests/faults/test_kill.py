"""SIGKILL of `launch.train` and `launch.sweep` at the fault points of launch/faults.py (during a step, during a
checkpoint write, during an eval, before a summary), at occurrences drawn with a fixed seed: the rerun ends bitwise
equal to an uninterrupted run; a sweep has every trial exactly once in results.jsonl with identical numbers."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

import faultkit
from launch import records, sweep

RNG_SEED = 13


def kill(module: str, args: list[str], fault: str) -> None:
    r = faultkit.run(module, *args, fault=fault)
    assert r.returncode == -signal.SIGKILL, f"{fault} never fired (rc {r.returncode}):\n{r.stderr[-3000:]}"
    faultkit.INJECTED[f"SIGKILL {module} at {fault.split(':')[1]}"] += 1


def test_train_killed_at_each_point_resumes_bitwise(reference_run, tmp_path):
    """One run killed four times, once at each point (the n-th time the attempt reaches it, n drawn with a fixed
    seed; each attempt resumes the previous one), then run to the end: it equals the uninterrupted run bitwise."""
    _, ref = reference_run
    rng = np.random.default_rng(RNG_SEED)
    run = tmp_path / "run"
    args = faultkit.train_args(run)
    # a fresh attempt trains 20 steps (saves at 5..20, evals at 10, 20); later ones resume past earlier kills
    for fault in (f"kill_at:step:{rng.integers(2, 9)}", f"kill_at:ckpt_write:{rng.integers(1, 3)}",
                  "kill_at:eval:1", "kill_at:summary:1"):
        kill("launch.train", args, fault)
    assert not (run / "summary.json").exists()
    r = faultkit.run("launch.train", *args)
    assert r.returncode == 0, r.stderr
    assert "resuming from step 20" in r.stderr  # the summary kill came after the final checkpoint
    faultkit.assert_same_run(faultkit.outputs(run, faultkit.config()), ref)


def sweep_outputs(workdir):
    cfg = faultkit.config()
    rows = records.read_results(workdir / "results.jsonl")
    return {r["id"]: dict(row=faultkit.untimed(r), **faultkit.outputs(workdir / "trials" / r["id"], cfg)) for r in rows}


@pytest.mark.parametrize("executor", ["local", "batched"])
def test_sweep_killed_twice_records_every_trial_once(executor, reference_sweeps, tmp_path):
    """`launch.sweep` killed during a step and then at another point (both drawn with a fixed seed), then rerun:
    every trial is in results.jsonl exactly once, and rows, metrics and final parameters equal an uninterrupted
    sweep's bitwise."""
    rng = np.random.default_rng([RNG_SEED, len(executor)])
    workdir = tmp_path / "sweep"
    args = [f"--config={faultkit.study_file(tmp_path)}", f"--executor={executor}", f"--workdir={workdir}"]
    total_steps = 20 * (len(faultkit.LRS) if executor == "local" else 1)  # steps the sweep process runs
    second = rng.choice(["ckpt_write:1", "eval:1", "summary:1"])  # points every resumed attempt reaches
    for fault in (f"kill_at:step:{rng.integers(3, total_steps)}", f"kill_at:{second}"):
        kill("launch.sweep", args, fault)
    r = faultkit.run("launch.sweep", *args)
    assert r.returncode == 0, r.stderr

    ids = [json.loads(line)["id"] for line in (workdir / "results.jsonl").read_text().splitlines()]
    expected = sorted(sweep.trial_id({"optim.lr": lr}) for lr in faultkit.LRS)
    faultkit.LOST[executor] += len(set(expected) - set(ids))
    assert sorted(ids) == expected  # each exactly once
    want, got = sweep_outputs(reference_sweeps(executor)), sweep_outputs(workdir)
    assert sorted(want) == sorted(got)
    for tid in want:
        assert want[tid]["row"] == got[tid]["row"], tid
        faultkit.assert_same_run(want[tid], got[tid])
