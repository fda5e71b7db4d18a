"""benchmarks/sweep_cost.py: a sweep's model FLOPs over its programs' device time, against a hand count."""

from __future__ import annotations

import json

import pytest

from benchmarks import results_table, sweep_cost
from experiments import base
from launch import configs


def write_sweep(root, walls):
    """A finished sweep of the tiny config: trials with lr/seed overrides (one program group, max_members 2, so
    programs of two members in results order) and the given wall seconds."""
    cfg = base.get_config("tiny")
    cfg.train.max_members = 2
    rows = []
    for i, wall in enumerate(walls):
        overrides = {"optim.lr": 10.0 ** -(i + 2)}
        trial = configs.apply_overrides(cfg, overrides)
        tid = f"lr={overrides['optim.lr']}"
        (root / "trials" / tid).mkdir(parents=True)
        (root / "trials" / tid / "config.json").write_text(json.dumps(configs.flatten(trial), default=str))
        rows.append({"id": tid, "overrides": overrides, "tokens": 1000 * (i + 1), "wall_seconds": wall,
                     "diverged": False, "eval_loss": 5.0, "final_loss": 5.0, "initial_loss": 6.3,
                     "lr": overrides["optim.lr"], "n_params": 1})
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_flops_and_program_seconds_equal_a_hand_count(tmp_path):
    rows = write_sweep(tmp_path, walls=[10.0, 12.0, 7.0])  # programs {10, 12} and {7}
    # tiny: d 64, 2 layers, GELU MLP of 4d, vocab 512 (untied head), seq 64: 6 N_matmul + 12 L d (T + 1) / 2
    d, L, V, T = 64, 2, 512, 64
    per_token = 6 * (L * (4 * d * d + 2 * d * 4 * d) + d * V) + 12 * L * d * (T + 1) / 2
    got = sweep_cost.sweep_cost(tmp_path)
    assert got["programs"] == 2 and got["trials"] == 3
    assert got["program_seconds"] == pytest.approx(12.0 + 7.0)
    assert got["model_pflops"] * 1e15 == pytest.approx(per_token * sum(r["tokens"] for r in rows))
    assert got["sweep_mfu"] == pytest.approx(per_token * 6000 / 19.0 / 989e12)
    assert got["status_wall_seconds"] is None  # no status.json
    table = results_table.render_sweep_cost([got])
    assert f"| `{tmp_path.name}` | 3 | 2 |" in table


def test_status_wall_and_empty_sweep(tmp_path):
    write_sweep(tmp_path, walls=[5.0])
    (tmp_path / "status.json").write_text(json.dumps({"started": 100.0, "updated": 160.0, "total": 1}))
    assert sweep_cost.sweep_cost(tmp_path)["status_wall_seconds"] == pytest.approx(60.0)
    (tmp_path / "results.jsonl").write_text("")
    with pytest.raises(configs.ConfigError, match="no finished trials"):
        sweep_cost.sweep_cost(tmp_path)


def test_recorded_programs_of_slices_run_apart(tmp_path):
    """Two slices into one directory, one program each (groups/*/group.json), count as two programs even where
    group_trials would put all three trials in one; status.json is the last slice's, so no sweep wall."""
    rows = write_sweep(tmp_path, walls=[10.0, 12.0, 7.0])
    for name, members in [("a", rows[:1]), ("b", rows[1:])]:
        (tmp_path / "groups" / name).mkdir(parents=True)
        (tmp_path / "groups" / name / "group.json").write_text(json.dumps({"members": [r["id"] for r in members]}))
    (tmp_path / "status.json").write_text(json.dumps({"started": 100.0, "updated": 160.0, "total": 2}))
    got = sweep_cost.sweep_cost(tmp_path)
    assert got["programs"] == 2 and got["program_seconds"] == pytest.approx(10.0 + 12.0)
    assert got["status_wall_seconds"] is None
    # lr=1e-4 left out of the record: the record no longer covers every trial
    (tmp_path / "groups" / "b" / "group.json").write_text(json.dumps({"members": [rows[1]["id"]]}))
    assert sweep_cost.sweep_cost(tmp_path)["program_seconds"] == pytest.approx(12.0 + 7.0)  # regrouped
