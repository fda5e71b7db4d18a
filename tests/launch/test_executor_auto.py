"""`--executor=auto` (launch/sweep.py `auto_executor`, `run_auto`): the measured rule, and a sweep that runs each
program group with the executor the rule picks and logs why."""

from __future__ import annotations

import logging

from experiments import base, sweeps
from launch import configs, sweep

HALF = (  # a hypothetical measurement: batched took half local's time at 2.4m with 7 members on the GPU
    sweep.ExecutorTiming("gpu", "H200", 18_800_000, 7, 0.5, "test"),
    sweep.ExecutorTiming("gpu", "H200", 42_300_000, 7, 1.34, "test"),
)


def test_measured_table_picks_local_everywhere_today():
    assert sweep.auto_executor("cpu", 57_504, 4)[0] == "local"
    for n_params in (1e6, 18.8e6, 42.3e6, 1e9):
        name, why = sweep.auto_executor("gpu", int(n_params), 7)
        assert name == "local" and "H200" in why
    assert sweep.auto_executor("gpu", 18_800_000, 1) == ("local", "a group of one trial")
    assert sweep.auto_executor("tpu", 18_800_000, 7) == ("local", "no executor timing measured on tpu")


def test_rule_follows_the_nearest_measurement_with_enough_members():
    name, why = sweep.auto_executor("gpu", 18_800_000, 7, HALF)
    assert name == "batched" and "0.50x local's wall time at 18.8M params, 7 members" in why
    assert sweep.auto_executor("gpu", 5_000_000, 8, HALF)[0] == "batched"  # nearer 18.8M than 42.3M
    assert sweep.auto_executor("gpu", 30_000_000, 7, HALF)[0] == "local"  # nearer 42.3M (log scale)
    assert sweep.auto_executor("gpu", 18_800_000, 3, HALF)[0] == "local"  # fewer members than measured
    assert sweep.auto_executor("cpu", 18_800_000, 7, HALF)[0] == "local"  # no CPU row in this table


def _study():
    return configs.apply_overrides(base.get_config("tiny"), {
        "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.vocab_size": 128,
        "model.dtype": "float32", "data.source": "synthetic", "data.synthetic_tokens": 20_000, "data.seq_len": 16,
        "data.batch_size": 4, "train.steps": 4, "train.log_every": 2, "train.eval_every": 4, "train.eval_batches": 1,
        "train.ckpt_every": 4, "train.progress": False,
    })


def test_auto_sweep_runs_each_group_as_picked_and_logs_why(tmp_path, monkeypatch, caplog):
    """One program group of 2 LRs: the real table runs it locally (no group directory); a table in which CPU
    batching pays for groups of >= 2 runs it batched (its group directory)."""
    trials = sweeps.product(lr=[1e-3, 1e-2])
    caplog.set_level(logging.INFO)
    rows = sweep.run_sweep(_study(), trials, tmp_path / "measured")
    assert len(rows) == 2 and not (tmp_path / "measured" / "groups").exists()
    assert "executor auto: group 1/1 (2 trials): local (batched took 1.09x" in caplog.text

    pays = (sweep.ExecutorTiming("cpu", "test", 57_504, 2, 0.5, "test"),)
    monkeypatch.setattr(sweep, "EXECUTOR_TIMINGS", pays)
    caplog.clear()
    rows = sweep.run_sweep(_study(), trials, tmp_path / "pays")
    assert len(rows) == 2 and len(list((tmp_path / "pays" / "groups").iterdir())) == 1
    assert "executor auto: group 1/1 (2 trials): batched (batched took 0.50x" in caplog.text
