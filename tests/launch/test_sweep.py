"""launch.sweep: trial ids and grouping, both executors end to end, divergence, batched == local, kill and rerun."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import base, small_scale_proxies, sweeps
from helpers import REPO, final_params, run_module
from launch import configs, loop, records, step as step_lib, sweep


# A study small enough for seconds per trial on CPU; float32 so batched members equal standalone runs.
STUDY = {
    "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.vocab_size": 128, "model.dtype": "float32",
    "data.source": "synthetic", "data.synthetic_tokens": 50_000, "data.seq_len": 32, "data.batch_size": 8,
    "optim.warmup_steps": 5,
    "train.steps": 20, "train.log_every": 5, "train.eval_every": 10, "train.eval_batches": 2, "train.ckpt_every": 10,
    "train.diag_every": 10, "train.progress": False,
    "train.divergence_margin": 1.0,  # the early-stopping rule (CE above l0 + 1; off by default): TOO_HIGH_LR diverges
}
TOO_HIGH_LR = 30.0
SWEEP = sweeps.product(**{"model.qk_norm": [False, True]}, lr=[1e-3, 1e-2, TOO_HIGH_LR])

STUDY_FILE = """
from experiments import base
from launch import configs
from experiments.sweeps import product

def get_config(arg=None):
    return configs.apply_overrides(base.get_config("tiny"), {study!r})

def get_sweep(arg=None):
    return {sweep!r}
"""


def study_config():
    return configs.apply_overrides(base.get_config("tiny"), STUDY)


def write_study(path: Path, sweep_overrides: list[dict], **study_overrides) -> Path:
    path.write_text(STUDY_FILE.format(study={**STUDY, **study_overrides}, sweep=sweep_overrides))
    return path


def run_cli(*args, timeout=240):
    return run_module("launch.sweep", *args, timeout=timeout)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local")
    return workdir, sweep.run_sweep(study_config(), SWEEP, workdir, "local")


@pytest.fixture(scope="module")
def batched_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("batched")
    return workdir, sweep.run_sweep(study_config(), SWEEP, workdir, "batched")


def by_id(rows):
    return {r["id"]: r for r in rows}


# ---- definitions ------------------------------------------------------------------------------------------------


def test_product_expands_axes_in_order():
    got = sweeps.product(lr=[1e-3, 1e-2], **{"model.qk_norm": [False, True]})
    assert got == [
        {"optim.lr": 1e-3, "model.qk_norm": False}, {"optim.lr": 1e-3, "model.qk_norm": True},
        {"optim.lr": 1e-2, "model.qk_norm": False}, {"optim.lr": 1e-2, "model.qk_norm": True},
    ]
    sizes = sweeps.product(size=[{"model.d_model": 32, "model.n_layers": 1}, {"model.d_model": 64, "model.n_layers": 2}], eps=[1e-8])
    assert sizes[1] == {"model.d_model": 64, "model.n_layers": 2, "optim.eps": 1e-8}


def test_trial_ids_are_readable_deterministic_and_safe():
    assert sweep.trial_id({"model.qk_norm": True, "optim.lr": 0.003}) == "model.qk_norm=True,lr=0.003"
    assert sweep.trial_id({"optim.lr": 0.003, "model.qk_norm": True}) == "model.qk_norm=True,lr=0.003"  # order-free
    assert sweep.trial_id({}) == "base"
    odd = sweep.trial_id({"data.text_paths": "/data/*.txt"})
    assert "/" not in odd and "*" not in odd and odd.startswith("data.text_paths=_data_")
    assert odd != sweep.trial_id({"data.text_paths": "_data_.txt"})  # sanitised slugs carry a hash
    long = sweep.trial_id({f"model.k{i}": i for i in range(40)})
    assert len(long) <= sweep.MAX_SLUG + 9 and long != sweep.trial_id({f"model.k{i}": i + 1 for i in range(40)})


def test_trials_group_by_everything_but_optimizer_scalars():
    trials = sweep.make_trials(study_config(), SWEEP + [{"optim.lr": 1e-3, "optim.weight_decay": 0.0, "model.qk_norm": True}])
    groups = sweep.group_trials(trials)
    assert [len(g) for g in groups] == [3, 4]
    assert {t.overrides["model.qk_norm"] for t in groups[1]} == {True}


def test_shards_partition_the_sweep_into_whole_groups():
    trials = sweep.make_trials(study_config(), SWEEP + sweeps.product(**{"model.d_model": [64]}, lr=[1e-3, 1e-2]))
    shards = [sweep.shard_trials(trials, i, 2) for i in range(2)]
    assert sorted(t.id for s in shards for t in s) == sorted(t.id for t in trials)  # every trial exactly once
    assert [len(s) for s in shards] == [3 + 2, 3]  # groups 0 and 2, group 1
    assert sweep.shard_trials(trials, 0, 1) == trials
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(configs.ConfigError, match="--shard"):
            sweep.parse_shard(bad)


@pytest.mark.parametrize("preset", small_scale_proxies.PRESETS)
def test_small_scale_proxies_presets_are_valid_sweeps(preset):
    trials = sweep.make_trials(small_scale_proxies.get_config(preset), small_scale_proxies.get_sweep(preset))
    trials = [t for t in trials if t.cfg.train.seed == 0]  # one seed (the seed axis: tests/experiments)
    lrs = {t.cfg.optim.lr for t in trials}
    assert len(trials) == len(lrs) * len(sweep.group_trials(trials))  # every intervention x size sees every LR
    assert (len(lrs) == 7) == (preset != "tiny")


def test_unknown_override_key_is_a_config_error():
    with pytest.raises(configs.ConfigError, match="no_such_field"):
        sweep.make_trials(study_config(), [{"optim.lr": 1e-3}, {"model.no_such_field": 1}])


# ---- end to end ---------------------------------------------------------------------------------------------------


def test_diverging_trial_is_recorded_and_the_sweep_completes(local_sweep):
    workdir, rows = local_sweep
    assert sorted(r["id"] for r in rows) == sorted(sweep.trial_id(o) for o in SWEEP)
    for r in rows:
        assert r["diverged"] == (r["lr"] == TOO_HIGH_LR), r
        if r["diverged"]:
            assert 1 <= r["diverged_at_step"] <= STUDY["train.steps"] and r["eval_loss"] is None
        else:
            assert r["eval_loss"] < r["initial_loss"] and r["steps"] == STUDY["train.steps"]
        for f in ("config.json", "metrics.jsonl", "summary.json"):
            assert (workdir / "trials" / r["id"] / f).exists()
    assert (workdir / "report" / "loss_vs_lr.png").exists()


def test_batched_executor_equals_local(local_sweep, batched_sweep):
    """Members share the batches and the init: per-trial results equal the standalone runs (float32 on CPU)."""
    (local_dir, local_rows), (batched_dir, batched_rows) = local_sweep, batched_sweep
    local, batched = by_id(local_rows), by_id(batched_rows)
    assert local.keys() == batched.keys()
    for tid, a in local.items():
        b = batched[tid]
        assert set(a) == set(b)
        assert (a["diverged"], a["diverged_at_step"], a["steps"]) == (b["diverged"], b["diverged_at_step"], b["steps"])
        for k in ("initial_loss", "final_loss", "eval_loss"):
            if a[k] is None:
                assert b[k] is None
            else:
                assert b[k] == pytest.approx(a[k], rel=1e-5), (tid, k)
    trial = sweep.trial_id({"model.qk_norm": True, "optim.lr": 1e-2})
    cfg = configs.apply_overrides(study_config(), {"model.qk_norm": True, "optim.lr": 1e-2})
    step_a, params_a = final_params(local_dir / "trials" / trial, cfg)
    step_b, params_b = final_params(batched_dir / "trials" / trial, cfg)
    assert step_a == step_b == STUDY["train.steps"]
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), params_a, params_b)
    # the member's run directory follows launch.train's contract, diagnostics rows included
    rows = lambda d: [json.loads(l) for l in (d / "trials" / trial / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows(local_dir)] == [r["step"] for r in rows(batched_dir)]
    assert any("attn_max_logit/layer_0" in r for r in rows(batched_dir))


def test_a_diverged_member_is_frozen():
    """A dead member keeps its state exactly while the others train; the divergence rule kills members in-program."""
    cfg = study_config()
    rt = loop.Runtime(cfg)
    group, gdata = rt.group(2, shared_batch=True), loop.GroupData(rt, [cfg.train.seed] * 2)
    on_members = lambda x: jax.device_put(np.asarray(x), group.member_sharding)
    host = lambda tree: jax.tree.map(np.array, jax.device_get(tree))  # copies: the step donates its input
    states = group.freeze(loop.fresh_states(group, gdata, [cfg, cfg]), on_members([True, False]))
    start = host(states)
    hparams = step_lib.stacked_hparams(group, [cfg, cfg])
    batches = [gdata.train_batch(step) for step in range(3)]
    for batch in batches:
        states, _ = group.step(states, batch, hparams)
    assert host(states["alive"]).tolist() == [True, False]
    moved = jax.tree.map(lambda a, b: bool((a[0] != b[0]).any()), start["params"], host(states["params"]))
    assert any(jax.tree.leaves(moved))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[1], b[1]), start, host(states))
    # a CE above the threshold (here: any CE, with l0 + margin = -9) kills the member in the step that sees it,
    # before it updates
    states = group.set_initial_loss(states, on_members(np.full([2], -10.0, np.float32)))
    after = host(states)
    states, _ = group.step(states, batches[0], hparams)
    got = host(states)
    assert not got["alive"].any()
    jax.tree.map(np.testing.assert_array_equal, after, dict(got, alive=after["alive"]))


SHARDED_SCRIPT = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
sys.path[:0] = ["tests", "tests/launch"]
import test_sweep as ts
from launch import loop, sweep

cfg = ts.study_config()  # mesh.data = -1: both devices; 2 members shard over `data`
group = loop.Runtime(cfg).group(2, shared_batch=True)
print("MEMBER", group.member_sharding.spec)
rows = sweep.run_sweep(cfg, json.loads(sys.argv[1]), sys.argv[2], "batched")
print("ROWS", json.dumps(rows))
"""


def test_member_axis_sharded_over_devices_gives_the_same_results(batched_sweep, tmp_path):
    """2 fake CPU devices: the members of a group are split over the `data` axis; results match one device."""
    calm = [o for o in SWEEP if o["optim.lr"] != TOO_HIGH_LR and not o["model.qk_norm"]]
    r = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, json.dumps(calm), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "MEMBER P('data',)" in r.stdout
    sharded = by_id(json.loads(r.stdout.split("ROWS ")[1]))
    single = by_id(batched_sweep[1])
    for tid, row in sharded.items():
        for k in ("initial_loss", "final_loss", "eval_loss"):
            assert row[k] == pytest.approx(single[tid][k], rel=2e-5), (tid, k)


@pytest.mark.parametrize("executor", ["local", "batched"])
def test_killed_sweep_reruns_every_trial_exactly_once(tmp_path, executor):
    if executor == "local":  # a trial in flight resumes from its checkpoints
        trials = sweeps.product(lr=[1e-3, 3e-3, 1e-2])
    else:  # two groups: a kill loses the group in flight, or the rows of a finished group not yet appended
        trials = sweeps.product(**{"model.qk_norm": [False, True]}, lr=[1e-3, 1e-2])
    study = write_study(tmp_path / "study.py", trials, **{"train.steps": 30, "train.diag_every": 0})
    args = [f"--config={study}", f"--workdir={tmp_path / 'sweep'}", f"--executor={executor}"]
    results = tmp_path / "sweep" / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "launch.sweep", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (results.exists() and results.read_text().count("\n") >= 1) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    n_before = len(records.read_results(results))
    assert 1 <= n_before < len(trials), "the kill did not land mid-sweep"

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n_before} already finished" in rerun.stderr  # absl logging
    ids = [json.loads(l)["id"] for l in results.read_text().splitlines()]
    assert sorted(ids) == sorted(sweep.trial_id(o) for o in trials)
    assert all(not r["diverged"] and math.isfinite(r["eval_loss"]) for r in records.read_results(results))


def test_two_shards_started_together_share_one_sweep_directory(tmp_path):
    trials = sweeps.product(**{"model.qk_norm": [False, True]}, lr=[1e-3, 1e-2])
    study = write_study(tmp_path / "study.py", trials, **{"train.steps": 10, "train.diag_every": 0})
    args = [f"--config={study}", f"--workdir={tmp_path / 'sweep'}", "--executor=batched"]
    procs = [
        subprocess.Popen([sys.executable, "-m", "launch.sweep", *args, f"--shard={i}/2"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    assert all("2 trials (shard" in e for _, e in outs)  # absl logging on stderr
    ids = [json.loads(l)["id"] for l in (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(sweep.trial_id(o) for o in trials)


def test_slices_run_into_one_directory_extend_its_listing(tmp_path):
    """Two slices of one study in one workdir: sweep.json lists both slices' trials, each once, in run order."""
    base_cfg = base.get_config("tiny")
    first = sweep.make_trials(base_cfg, sweeps.product(lr=[1e-3, 1e-2]))
    second = sweep.make_trials(base_cfg, sweeps.product(lr=[1e-2, 3e-2]))  # 1e-2 in both
    sweep.write_listing(tmp_path, first)
    sweep.write_listing(tmp_path, second)
    listed = json.loads((tmp_path / "sweep.json").read_text())["trials"]
    assert [t["id"] for t in listed] == [t.id for t in first] + [second[1].id]
    assert listed[-1]["overrides"] == {"optim.lr": 3e-2}


@pytest.mark.parametrize(
    "bad, needle",
    [({"model.no_such_field": 1}, "no_such_field"), ({"model.d_model": "wide"}, "model.d_model")],
)
def test_bad_sweep_definition_is_one_line_error(tmp_path, bad, needle):
    study = write_study(tmp_path / "study.py", [{"optim.lr": 1e-3}, bad])
    r = run_cli(f"--config={study}", f"--workdir={tmp_path / 'sweep'}")
    assert r.returncode == 2
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "sweep" / "trials").exists()
