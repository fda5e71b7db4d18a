"""Training interventions end to end: an injected gradient spike that skip-step skips (spec optimizers §10),
WSD-S decay-end checkpoints (§3), and eval loss per token-frequency bucket (§2, §5)."""

from __future__ import annotations

import json
import logging
import shutil

import jax
import numpy as np
import optax
import pytest

import optim
from experiments import base
from launch import checkpoint, evaluation, loop, mesh as mesh_lib, step as step_lib


def small_cfg(**train_overrides):
    cfg = base.get_config("tiny")
    cfg.model.update(vocab_size=128, d_model=32, n_heads=2, dtype="float32")
    cfg.data.update(source="synthetic", synthetic_tokens=50_000, seq_len=32, batch_size=8)
    cfg.optim.update(lr=3e-3, warmup_steps=5)
    cfg.train.update(steps=40, log_every=10, eval_every=20, eval_batches=2, ckpt_every=20, progress=False)
    cfg.train.update(**train_overrides)
    return cfg


def rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def restore(directory, cfg, step):
    """The train state saved at `step` in the checkpoint `directory`, as host numpy arrays."""
    ckpt = checkpoint.Checkpointer(directory, keep=None)
    state = ckpt.restore(step, step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh)).abstract_state())
    ckpt.close()
    return jax.device_get(state)


def adam_counts(opt_state) -> list[int]:
    return [int(s.count) for _, s in optax.tree_utils.tree_get_all_with_path(opt_state, "ScaleByAdamState")]


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_injected_spike_is_skipped_and_leaves_params_and_optimizer_state_unchanged(tmp_path):
    spike = 20
    cfg = small_cfg(steps=30, log_every=1, eval_every=0, spike_at_step=spike)
    cfg.optim.skip_step.update(enabled=True, window=16)  # armed after 7 previous steps (OLMo-core warm-up rule)
    rt = loop.Runtime(cfg)
    group, gdata = rt.group(1, shared_batch=True), loop.GroupData(rt, [cfg.train.seed])
    hparams = step_lib.stacked_hparams(group, [cfg])
    states = loop.fresh_states(group, gdata, [cfg])
    for step in range(spike - 1):
        states, _ = group.step(states, gdata.train_batch(step), hparams)
    before = jax.device_get(group.member(states, 0))
    states, m = group.step(states, gdata.train_batch(spike - 1), hparams)
    after = jax.device_get(group.member(states, 0))
    m = jax.tree.map(lambda x: x[0], jax.device_get(m))  # the one member's metrics
    assert bool(m["skipped"]) and float(m["skip_grad_norm_z"]) > cfg.optim.skip_step.sigma
    assert_trees_equal(after["params"], before["params"])
    is_skip = lambda x: isinstance(x, optim.SkipStepState)
    # Adam's m, v, count
    inner = lambda s: [x.inner for x in jax.tree.leaves(s["opt_state"], is_leaf=is_skip) if is_skip(x)]
    assert inner(before), "no SkipStepState in the optimizer state"
    assert_trees_equal(inner(after), inner(before))
    assert int(after["step"]) == spike

    summary = loop.train(cfg, tmp_path, rt=rt, verbose=False)
    assert not summary["diverged"]
    skipped = [r["step"] for r in rows(tmp_path) if r.get("skipped")]
    assert skipped == [spike]
    assert [r["skipped_total"] for r in rows(tmp_path) if "skipped_total" in r][-1] == 1


def test_wsd_s_decay_end_checkpoints_resume_bitwise_and_keep_the_optimizer_count(tmp_path, caplog):
    cfg = small_cfg()
    cfg.optim.update(schedule="wsd_s", warmup_steps=5)
    cfg.optim.wsd.update(cycles=(20,), decay=0.25)
    a, b = tmp_path / "a", tmp_path / "b"
    loop.train(cfg, a, verbose=False)
    assert sorted(int(p.name) for p in (a / "decayed").iterdir() if p.name.isdigit()) == [20, 40]
    assert [r["step"] for r in rows(a) if "decayed_eval_loss" in r] == [20, 40]
    mid, end = restore(a / "decayed", cfg, 20), restore(a / "checkpoints", cfg, 40)
    assert int(mid["step"]) == 20 and set(adam_counts(mid["opt_state"])) == {20}
    assert set(adam_counts(end["opt_state"])) == {40}  # no restart of Adam's count or bias correction at step 20
    assert_trees_equal(restore(a / "decayed", cfg, 40)["params"], end["params"])

    # a run killed after the first decay resumes from the decay-end checkpoint alone
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints")
    shutil.rmtree(b / "decayed" / "40")
    (b / "summary.json").unlink()
    shutil.copytree(b / "decayed" / "20", b / "checkpoints" / "20")
    with caplog.at_level(logging.INFO):  # progress lines: absl logging
        loop.train(cfg, b)
    assert f"{b}: resuming from step 20" in caplog.text
    assert_trees_equal(restore(b / "checkpoints", cfg, 40), end)
    assert_trees_equal(restore(b / "decayed", cfg, 40), end)
    assert [r["step"] for r in rows(b) if "decayed_eval_loss" in r] == [20, 40]


@pytest.mark.parametrize(
    "counts,n,rank,mass",
    [  # spec optimizers §5(d): equal-mass groups [[0], [1..5]], [[0], [], [1, 2], [3, 4, 5]], [[0], [], ..., [5]]
        ([50, 20, 10, 10, 5, 5], 2, [0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]),
        ([50, 20, 10, 10, 5, 5], 4, [0, 0, 1, 2, 2, 3], [0, 2, 2, 3, 3, 3]),
        ([50, 20, 10, 10, 5, 5], 10, [0, 1, 3, 5, 6, 8], [0, 5, 6, 7, 8, 9]),
        ([5, 50, 10], 3, [2, 0, 1], [2, 0, 2]),  # ids not in frequency order
    ],
)
def test_frequency_buckets_match_hand_computation(counts, n, rank, mass):
    table = evaluation.frequency_buckets(np.array(counts), n)
    assert table.tolist() == [rank, mass]


def test_bucketed_eval_loss_averages_to_the_eval_loss(tmp_path):
    cfg = small_cfg(steps=20, eval_every=10, freq_buckets=4)
    rt = loop.Runtime(cfg)
    summary = loop.train(cfg, tmp_path, rt=rt, verbose=False)
    table = evaluation.frequency_buckets(rt.source.token_counts(), 4)
    targets = np.concatenate([rt.source.batch(i, split="eval")[:, 1:].ravel() for i in range(cfg.train.eval_batches)])
    evals = [r for r in rows(tmp_path) if r["step"] > 0 and "eval_loss" in r]
    assert [r["step"] for r in evals] == [10, 20]
    for key, ids in zip(evaluation.BUCKET_METRICS, table):
        n_b = np.bincount(ids[targets], minlength=4)
        for row in (*evals, summary):
            loss_b = np.array([np.nan if v is None else v for v in row[key]])
            assert len(loss_b) == 4 and np.all(np.isfinite(loss_b) == (n_b > 0))
            assert np.nansum(n_b * loss_b) / n_b.sum() == pytest.approx(row["eval_loss"], rel=1e-5)
