"""A NaN or Inf in the loss, the gradients or the parameters at a chosen step (PROXYLAB_FAULT's nan_at / inf_at,
launch/faults.py): the run is diverged at that step (a non-finite gradient shows in the next step's loss), its rows
before the fault are those of a clean run, a sweep goes on, and a batched group's other members are unaffected
bitwise."""

from __future__ import annotations

import pytest

import faultkit
from launch import faults, loop, records, sweep


@pytest.mark.parametrize("target, value, step, diverged_at", [
    ("loss", "nan_at", 7, 7),
    ("grads", "inf_at", 12, 13),  # the loss of step 12 is finite; the update it makes is not
    ("params", "inf_at", 16, 16),
])
def test_single_run_diverges_at_the_injected_step(target, value, step, diverged_at, reference_run, tmp_path,
                                                  monkeypatch):
    _, ref = reference_run
    cfg = faultkit.config()
    monkeypatch.setattr(faults, "FAULT", faults.parse(f"{value}:{target}:{step}"))
    rt = loop.Runtime(cfg)  # the program reads the fault when it is built (loss, grads)
    summary = loop.train(cfg, tmp_path / "run", rt=rt, verbose=False)
    faultkit.INJECTED[f"{value.split('_')[0]} in {target}"] += 1
    assert summary["diverged"] and summary["diverged_at_step"] == diverged_at
    rows = faultkit.outputs(tmp_path / "run", cfg)["rows"]
    last_clean = (step - 1) // cfg.train.log_every * cfg.train.log_every  # the log step before the fault
    assert [r for r in rows if r["step"] <= last_clean] == [r for r in ref["rows"] if r["step"] <= last_clean]


def test_batched_member_poisoned_the_others_bitwise(reference_sweeps, tmp_path, monkeypatch):
    """`launch.sweep --executor=batched` with member 1's parameters set to NaN before step 7: that trial is
    diverged at step 7, the sweep records every trial, and the other member equals an uninterrupted sweep's."""
    reference = reference_sweeps("batched")
    monkeypatch.setattr(faults, "FAULT", faults.parse("nan_at:params:7:1"))
    rows = sweep.run_sweep(faultkit.config(), [{"optim.lr": lr} for lr in faultkit.LRS], tmp_path, "batched")
    faultkit.INJECTED["nan in params (one member of a batched group)"] += 1
    ids = [sweep.trial_id({"optim.lr": lr}) for lr in faultkit.LRS]
    faultkit.LOST["nonfinite"] += len(set(ids) - {r["id"] for r in rows})
    assert sorted(r["id"] for r in rows) == sorted(ids)
    by_id = {r["id"]: r for r in rows}
    assert by_id[ids[1]]["diverged"] and by_id[ids[1]]["diverged_at_step"] == 7
    ref_rows = {r["id"]: r for r in records.read_results(reference / "results.jsonl")}
    cfg = faultkit.config()
    for tid in ids[:1]:
        assert faultkit.untimed(by_id[tid]) == faultkit.untimed(ref_rows[tid])
        faultkit.assert_same_run(faultkit.outputs(tmp_path / "trials" / tid, cfg),
                                 faultkit.outputs(reference / "trials" / tid, cfg))
