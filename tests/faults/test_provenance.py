"""Run-directory integrity: config.json records the code a run was started under (launch/provenance.py); a rerun
under other code warns and says what differs, keeping the record; a rerun with another config is still refused."""

from __future__ import annotations

import json
import logging

import pytest

import faultkit
from launch import configs, provenance


def test_rerun_under_other_code_warns_what_differs(tmp_path, caplog):
    cfg = faultkit.config()
    configs.claim_workdir(cfg, tmp_path)
    recorded = json.loads((tmp_path / "config.json").read_text())[configs.PROVENANCE]
    assert recorded == provenance.current()
    assert {"jax", "flax", "optax", "orbax-checkpoint"} <= set(recorded)
    assert {"git_commit", "git_dirty"} <= set(recorded) or "version" in recorded
    assert configs.PROVENANCE not in configs.flatten(configs.load_run_config(tmp_path))

    with caplog.at_level(logging.WARNING):
        configs.claim_workdir(cfg, tmp_path)  # the same code: no word
    assert not caplog.records

    stamped = json.loads((tmp_path / "config.json").read_text())
    stamped[configs.PROVENANCE] = dict(recorded, jax="0.0.1", git_commit="0" * 40)
    (tmp_path / "config.json").write_text(json.dumps(stamped))
    faultkit.INJECTED["rerun under other code"] += 1
    with caplog.at_level(logging.WARNING):
        configs.claim_workdir(cfg, tmp_path)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "started under other code" in warning and f"jax 0.0.1 -> {recorded['jax']}" in warning
    assert "git_commit" in warning or "version" in recorded
    assert json.loads((tmp_path / "config.json").read_text())[configs.PROVENANCE]["jax"] == "0.0.1"  # kept

    with pytest.raises(configs.ConfigError, match="different config"):
        configs.claim_workdir(faultkit.config(**{"optim.lr": 0.5}), tmp_path)
