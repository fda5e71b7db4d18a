"""Weights & Biases tracking in W&B's offline mode (no network): a batched sweep of two trials makes one W&B run per
trial, grouped by the sweep, with the flat config and summary.json attached and the metrics rows logged; tracking
off (the default) creates nothing; a bad mode is a one-line config error."""

from __future__ import annotations

import json
import struct

import pytest

from experiments import base
from launch import configs, sweep

wandb = pytest.importorskip("wandb", reason="the [wandb] extra: pip install -e '.[wandb]' (tasks.sh test installs it)")

STUDY = {
    "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.vocab_size": 128, "model.dtype": "float32",
    "data.source": "synthetic", "data.synthetic_tokens": 20_000, "data.seq_len": 32, "data.batch_size": 4,
    "optim.warmup_steps": 2, "train.steps": 10, "train.log_every": 5, "train.eval_every": 10, "train.eval_batches": 1,
    "train.ckpt_every": 0, "train.progress": False,
}
SWEEP = [{"optim.lr": 1e-3}, {"optim.lr": 1e-2}]


def wandb_records(path):
    """The protobuf records of a W&B transaction log (run-<id>.wandb): a 7-byte header (`:W&B`, 0xBEE1, version 0),
    then LevelDB-log framing: 32 KiB blocks of chunks, each `<crc32 uint32, length uint16, type uint8>` + data,
    type 1 a whole record, 2/3/4 its first/middle/last part; a block's tail shorter than a chunk header is padding."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:7] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(parts)
            yield rec
            parts = b""


def offline_runs(root):
    """{run name: (group, config, summary, history rows)} of the offline runs under WANDB_DIR, from W&B's own log."""

    def items(updates):
        return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in updates}

    out = {}
    for path in (root / "wandb").glob("offline-run-*/run-*.wandb"):
        name, group, config, summary, history = None, None, {}, {}, []
        for rec in wandb_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                name, group = rec.run.display_name, rec.run.run_group
                config.update(items(rec.run.config.update))
            elif kind == "config":
                config.update(items(rec.config.update))
            elif kind == "summary":
                summary.update(items(rec.summary.update))
            elif kind == "history":
                history.append(items(rec.history.item))
        out[name] = (group, config, summary, history)
    return out


def test_one_offline_run_per_trial_grouped_by_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    cfg = configs.apply_overrides(base.get_config("tiny"), {**STUDY, "train.wandb.project": "proxylab-test"})
    rows = sweep.run_sweep(cfg, SWEEP, tmp_path / "mysweep", "batched")
    runs = offline_runs(tmp_path)
    assert sorted(runs) == sorted(r["id"] for r in rows) == ["lr=0.001", "lr=0.01"]
    for r in rows:
        group, config, summary, history = runs[r["id"]]
        assert group == "mysweep"
        assert config["optim.lr"] == r["lr"] and config["model.d_model"] == 32
        assert config["train.wandb.project"] == "proxylab-test"
        on_disk = json.loads((tmp_path / "mysweep" / "trials" / r["id"] / "summary.json").read_text())
        assert summary["eval_loss"] == pytest.approx(on_disk["eval_loss"]) and summary["diverged"] is False
        assert summary["n_params"] == on_disk["n_params"]
        logged = [h["loss"] for h in history if "loss" in h]
        jsonl = [json.loads(x) for x in (tmp_path / "mysweep" / "trials" / r["id"] / "metrics.jsonl").read_text().splitlines()]
        assert logged == pytest.approx([x["loss"] for x in jsonl if "loss" in x]) and len(logged) == 2


def test_tracking_is_off_by_default_and_a_bad_mode_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = configs.apply_overrides(base.get_config("tiny"), STUDY)
    assert cfg.train.wandb.project == ""
    sweep.run_sweep(cfg, SWEEP[:1], tmp_path / "off", "local")
    assert not (tmp_path / "wandb").exists() and not list((tmp_path / "off").rglob("wandb"))
    bad = configs.apply_overrides(cfg, {"train.wandb.project": "p", "train.wandb.mode": "cloud"})
    with pytest.raises(configs.ConfigError, match=r"^train.wandb.mode='cloud' is not one of offline \| online$"):
        configs.validate(bad, n_devices=1)
