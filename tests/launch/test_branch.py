"""WSD branching (launch.branch; spec optimizers §3(a)): a decay forked from a main run's checkpoint equals an
independent WSD run of the same budget, bitwise on CPU; it records its origin, resumes, and refuses bad forks."""

from __future__ import annotations

import json
import logging
import shutil

import jax
import numpy as np
import pytest

from experiments import base
from helpers import run_module
from launch import branch, configs, loop, mesh as mesh_lib, step as step_lib


def wsd_cfg(steps: int, **optim_overrides):
    """A tiny WSD run: warmup 5 steps, a 10-step linear decay at the end, checkpoints every 10 steps, all kept."""
    cfg = base.get_config("tiny")
    cfg.model.update(vocab_size=128, d_model=32, n_heads=2, dtype="float32")
    cfg.data.update(source="synthetic", synthetic_tokens=50_000, seq_len=32, batch_size=8)
    cfg.optim.update(**{"lr": 3e-3, "schedule": "wsd", "warmup_steps": 5, **optim_overrides})
    cfg.optim.wsd.decay = 10
    cfg.train.update(steps=steps, log_every=5, eval_every=20, eval_batches=2, ckpt_every=10, keep_ckpts=10)
    cfg.train.progress = False
    return cfg


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """The main branch: 60 steps of WSD, whose stable phase (steps < 50) is that of every budget <= 60."""
    workdir = tmp_path_factory.mktemp("main")
    loop.train(wsd_cfg(60), workdir, verbose=False)
    return workdir


def newest_state(workdir, cfg):
    step, state = loop.restore_newest(step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh)), workdir)
    return step, jax.device_get(state)


def untimed_rows(workdir):
    rows = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if k != "tokens_per_second"} for r in rows]


def assert_same_run(a, b, cfg):
    step_a, state_a = newest_state(a, cfg)
    step_b, state_b = newest_state(b, cfg)
    assert step_a == step_b == cfg.train.steps
    jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
    assert untimed_rows(a) == untimed_rows(b)


def test_a_branch_equals_an_independent_wsd_run_of_its_budget(main_run, tmp_path):
    forked, independent = tmp_path / "b40", tmp_path / "wsd40"
    args = (f"--from={main_run}", "--budget=40", f"--workdir={forked}", "--config.train.progress=False")
    r = run_module("launch.branch", *args)
    assert r.returncode == 0, r.stderr
    record = {"main": str(main_run.resolve()), "step": 30, "budget": 40}
    assert json.loads((forked / "branch.json").read_text()) == record
    recorded = json.loads((forked / "config.json").read_text())
    assert (recorded["optim.schedule"], recorded["train.steps"]) == ("wsd", 40)

    summary = loop.train(wsd_cfg(40), independent, verbose=False)
    assert_same_run(forked, independent, wsd_cfg(40))  # step for step: the main run's rows up to 30, then the decay
    got = json.loads((forked / "summary.json").read_text())
    assert (got["final_loss"], got["eval_loss"], got["steps"]) == (summary["final_loss"], summary["eval_loss"], 40)
    lrs = [row["lr"] for row in untimed_rows(forked) if "lr" in row]
    assert lrs[5] == pytest.approx(3e-3) and lrs[-1] < 1e-3  # stable at step 30, decayed by step 40


def test_a_branch_resumes_like_any_run(main_run, tmp_path, caplog):
    full, killed = tmp_path / "full", tmp_path / "killed"
    branch.branch(main_run, 40, full, verbose=False)
    shutil.copytree(full, killed)  # as if killed before the final checkpoint: only the fork step's is left
    shutil.rmtree(killed / "checkpoints" / "40")
    (killed / "summary.json").unlink()
    with caplog.at_level(logging.INFO):  # progress lines: absl logging
        branch.branch(main_run, 40, killed)
    assert f"{killed}: resuming from step 30" in caplog.text
    assert_same_run(full, killed, wsd_cfg(40))
    assert branch.branch(main_run, 40, killed)["finished"]  # finished: nothing to do


def test_a_branch_without_its_checkpoint_is_a_one_line_error(main_run, tmp_path):
    r = run_module("launch.branch", f"--from={main_run}", "--budget=45", f"--workdir={tmp_path / 'b45'}")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no checkpoint at step 35" in r.stderr
    assert "[10, 20, 30, 40, 50, 60]" in r.stderr and "train.ckpt_every" in r.stderr


def test_a_branch_refuses_a_main_run_with_another_lr_history(tmp_path):
    cosine = tmp_path / "cosine"
    configs.claim_workdir(wsd_cfg(60, schedule="warmup_cosine"), cosine)
    with pytest.raises(configs.ConfigError, match=r"LR at step \d+ .* differs from the 40-step wsd schedule"):
        branch.branch(cosine, 40, tmp_path / "b40")


def test_a_branch_refuses_overrides_that_change_the_main_runs_steps(main_run, tmp_path):
    with pytest.raises(configs.ConfigError, match="model.d_model"):
        branch.branch(main_run, 40, tmp_path / "b40", {"model.d_model": 64})
    with pytest.raises(configs.ConfigError, match="train.seed"):
        branch.branch(main_run, 40, tmp_path / "b40", {"train.seed": 1})
