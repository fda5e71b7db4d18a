"""The token-frequency studies (spec optimizers-and-metrics §2 weight decay, §5 Adam vs SGD): per-bucket eval
losses in the batched sweep executor, the §2(d) known-answer check of the bucketed loss, the bucket report (launch/report/buckets.py) and the two study files.

Heavy-ball SGD (optim/sgd.py) is tested in tests/optim/test_optim_sgd.py. The §5(d) group-split example is tested in test_train_interventions.py (test_frequency_buckets_match_hand_...).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import base, class_imbalance, weight_decay_fairness
from launch import configs, evaluation, loop, report, sweep
from launch.report import buckets

# ---- per-bucket eval losses: batched executor == local, and the spec §2(d) known answer -------------------------

MICRO = {  # a unigram Zipf language: frequency buckets that differ a lot, seconds per trial on CPU
    "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.vocab_size": 64, "model.dtype": "float32",
    "data.source": "synthetic", "data.synthetic_kind": "unigram", "data.synthetic_tokens": 40_000,
    "data.seq_len": 32, "data.batch_size": 8, "optim.name": "sgd", "optim.warmup_steps": 2,
    "train.steps": 20, "train.log_every": 5, "train.eval_every": 10, "train.eval_batches": 2, "train.ckpt_every": 20,
    "train.freq_buckets": 4, "train.progress": False,
}


def micro_config(**overrides):
    return configs.apply_overrides(base.get_config("tiny"), {**MICRO, **overrides})


def bucket_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if evaluation.BUCKET_METRICS[0] in r]


def test_batched_sweep_bucket_losses_equal_local_runs_and_get_plotted(tmp_path):
    """Two SGD learning rates as one vmapped program log, at every eval, the per-member bucket losses their local
    runs log; the sweep report then draws the bucket plots (launch/report/buckets.py)."""
    sweep_overrides = [{"optim.lr": 0.1}, {"optim.lr": 0.3}]
    local = sweep.run_sweep(micro_config(), sweep_overrides, tmp_path / "local", "local")
    batched = sweep.run_sweep(micro_config(), sweep_overrides, tmp_path / "batched", "batched")
    assert {r["id"] for r in batched} == {"lr=0.1", "lr=0.3"}
    for row in local:
        assert row["eval_loss"] < row["initial_loss"] - 0.5  # SGD trains
        a, b = bucket_rows(tmp_path / "local/trials" / row["id"]), bucket_rows(tmp_path / "batched/trials" / row["id"])
        assert [r["step"] for r in a] == [r["step"] for r in b] == [10, 20]
        for ra, rb in zip(a, b):
            for key in evaluation.BUCKET_METRICS:
                assert len(ra[key]) == 4
                np.testing.assert_allclose(np.array(rb[key], float), np.array(ra[key], float), rtol=2e-5, err_msg=key)
    out = tmp_path / "batched/report"
    assert (out / "buckets_vs_lr.png").stat().st_size > 10_000
    assert (out / "bucket_loss_over_steps.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "## Loss per token-frequency bucket" in summary and "| lr=0.3 |" in summary


def unigram_model_state(rt: loop.Runtime, group, log_p_V: np.ndarray) -> dict:
    """The states (one member) of a model that predicts log p at every position: the blocks are zero (the residual
    stream is the embedding), every embedding row is the same vector e, and the head maps u = LayerNorm(e) to log p."""
    state = group.member(group.init(np.zeros([1], np.int32)), 0)
    params = jax.tree.map(np.zeros_like, jax.device_get(state["params"]))
    d = params["final_norm"]["scale"].size
    e_D = np.random.default_rng(0).normal(size=d).astype(np.float32)
    u_D = (e_D - e_D.mean()) / np.sqrt(e_D.var() + rt.prog.cfg.model.norm_eps)
    params["embed"]["embedding"][:] = e_D
    params["final_norm"]["scale"][:] = 1.0
    params["head"]["kernel"][:] = np.outer(u_D, log_p_V) / (u_D @ u_D)
    return group.stack(dict(state, params=jax.tree.map(jnp.asarray, params)))


def test_unigram_predictor_bucket_losses_known_answer_spec_2d():
    """Spec optimizers §2(d): every position predicts the unigram p(v) = n_v/N of the eval pass's own targets.
    Through the eval's code path (Group.eval_buckets, evaluation.evaluate_buckets), bucket b must read
    Σ_{v∈b} n_v·(−log(n_v/N)) / Σ_{v∈b} n_v, rare buckets highest, and the count-weighted mean of the buckets must
    be the overall eval loss (evaluation.evaluate_loss)."""
    cfg = micro_config(**{"model.n_layers": 2, "train.eval_batches": 4})
    rt = loop.Runtime(cfg)
    targets = np.concatenate([rt.source.batch(i, split="eval")[:, 1:].ravel() for i in range(cfg.train.eval_batches)])
    n_V = np.bincount(targets, minlength=cfg.model.vocab_size)
    log_p_V = np.log(np.maximum(n_V, 1e-30) / n_V.sum())  # unseen ids get ~0 probability, never a target
    group, gdata = rt.group(1, shared_batch=True), loop.GroupData(rt, [cfg.train.seed])
    states = unigram_model_state(rt, group, log_p_V)
    eval_loss = float(evaluation.evaluate_loss(group, states, gdata, cfg.train.eval_batches)[0])
    np.testing.assert_allclose(eval_loss, -(n_V * np.where(n_V > 0, log_p_V, 0)).sum() / n_V.sum(), rtol=1e-5)
    for counts in (n_V, rt.source.token_counts()):  # buckets by the same split's counts, and by the train split's
        table = evaluation.frequency_buckets(counts, cfg.train.freq_buckets)
        got_M = evaluation.evaluate_buckets(group, states, gdata, cfg.train.eval_batches, table)
        got = {k: v[0] for k, v in got_M.items()}  # the one member
        for key, ids_V in zip(evaluation.BUCKET_METRICS, table):
            n_b = np.bincount(ids_V, weights=n_V, minlength=cfg.train.freq_buckets)
            with np.errstate(invalid="ignore"):  # NaN for a bucket without eval targets, as the eval reports it
                expected = np.bincount(ids_V, weights=n_V * -np.where(n_V > 0, log_p_V, 0), minlength=len(n_b)) / n_b
            np.testing.assert_allclose(got[key], expected, rtol=1e-5, err_msg=key)
            np.testing.assert_allclose(np.nansum(n_b * got[key]) / n_b.sum(), eval_loss, rtol=1e-5)
            if counts is n_V:  # ranked by the same counts: the loss grows from the most frequent bucket to the rarest
                filled = got[key][n_b > 0]
                assert len(filled) >= 3 and np.all(np.diff(filled) >= 0) and filled[-1] > filled[0], (key, got[key])


# ---- the bucket report on a hand-made sweep directory -------------------------------------------------------------


def fake_trial(workdir: Path, overrides: dict, final_NxK: list | None, diverged: bool = False) -> dict:
    """A trial directory with config.json and metrics.jsonl (evals at steps 0, 10, 20), and its results row."""
    tid = sweep.trial_id(overrides)
    run = workdir / "trials" / tid
    configs.claim_workdir(micro_config(**overrides), run)  # writes config.json
    evals = [{"step": 0, "eval_loss": 4.2}] + [
        {"step": s, "eval_loss": 3.0, **{k: [2.0 + b / s for b in range(3)] for k in evaluation.BUCKET_METRICS}}
        for s in (10, 20)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    buckets = {} if final_NxK is None else dict(zip(evaluation.BUCKET_METRICS, final_NxK))
    return dict(id=tid, overrides=overrides, lr=overrides.get("optim.lr", 1e-2), diverged=diverged,
                diverged_at_step=15 if diverged else None, eval_loss=None if diverged else 3.0, final_loss=3.1,
                initial_loss=4.2, n_params=1000, wall_seconds=1.0, **buckets)


def test_bucket_report_of_a_categorical_sweep_with_a_diverged_trial(tmp_path):
    rows = [
        fake_trial(tmp_path, {"optim.name": "sgd", "optim.lr": 0.1}, [[2.0, 3.0, None], [1.5, 3.0, 4.5]]),
        fake_trial(tmp_path, {"optim.name": "adamw", "optim.lr": 1e-3}, [[2.0, 2.5, None], [1.5, 2.5, 3.0]]),
        fake_trial(tmp_path, {"optim.name": "sgd", "optim.lr": 1.0}, None, diverged=True),
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = report.write_report(tmp_path)
    assert {p.name for p in out.glob("*.png")} >= {"buckets_vs_name+lr.png", "bucket_loss_over_steps.png"}
    summary = (out / "summary.md").read_text()
    section = summary[summary.index("## Loss per token-frequency bucket"):]
    assert "![final eval loss per bucket](buckets_vs_name+lr.png)" in section
    assert section.count("| name=adamw, lr=0.001 | 3.0000 |") == 2  # a row in both tables
    assert section.index("name=adamw, lr=0.001") < section.index("name=sgd, lr=0.1")  # sorted by name, then lr
    assert "| name=sgd, lr=0.1 | 3.0000 | 2.000 | 3.000 | – |" in section  # a bucket without eval targets
    assert "lr=1.0" not in section  # a diverged trial has no final bucket losses


def test_bucket_report_with_seeds_averages_points_and_pairs_changes_by_seed(tmp_path):
    """Two λ × two seeds: the point rows are the seed means, the changes from λ = 0 are taken within each seed
    (a float64 numpy reference), and the seed is not an axis of the figure's name."""
    rng = np.random.default_rng(0)
    vals = {(wd, seed): rng.normal(3.0, 0.3, size=(2, 3)).round(3) for wd in (0.0, 1.0) for seed in (0, 1)}
    rows = [fake_trial(tmp_path, {"optim.weight_decay": wd, "train.seed": seed}, v.tolist())
            for (wd, seed), v in vals.items()]
    for r in rows:  # distinct overall losses per trial
        r["eval_loss"] = float(np.mean(vals[r["overrides"]["optim.weight_decay"], r["overrides"]["train.seed"]]))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    section = buckets.write_bucket_report(tmp_path, rows, tmp_path)
    assert "![final eval loss per bucket](buckets_vs_weight_decay.png)" in section
    assert (tmp_path / "buckets_vs_weight_decay.png").stat().st_size > 10_000
    mean_1 = (vals[1.0, 0][1] + vals[1.0, 1][1]) / 2  # the equal-mass groups of λ = 1, mean over seeds
    overall_1 = (vals[1.0, 0].mean() + vals[1.0, 1].mean()) / 2
    assert f"| weight_decay=1.0 | 2 | {overall_1:.4f} | " + " | ".join(f"{v:.3f}" for v in mean_1) + " |" in section
    d_SxK = np.stack([vals[1.0, s][1] - vals[0.0, s][1] for s in (0, 1)])
    d_all = np.array([vals[1.0, s].mean() - vals[0.0, s].mean() for s in (0, 1)])
    cells = [f"{d_all.mean():+.3f} [{d_all.min():+.3f}, {d_all.max():+.3f}]"] + [
        f"{c.mean():+.3f} [{c.min():+.3f}, {c.max():+.3f}]" for c in d_SxK.T]
    tail = section[section.index("`eval_loss_mass_bucket`"):]
    assert "| weight_decay=1.0 | 2 | " + " | ".join(cells) + " |" in tail


def test_no_bucket_section_without_bucket_metrics(tmp_path):
    assert buckets.write_bucket_report(tmp_path, [], tmp_path) == ""


@pytest.mark.parametrize(
    ("values", "scale", "ticks"),
    [
        ([0.0, 0.1, 0.3, 1.0], "symlog", None),  # a weight-decay grid from 0
        ([1e-3, 1e-2, 1e-1], "log", None),  # an LR grid
        ([0.5, 1.0], "linear", None),
        (["adamw", "sgd"], "linear", ["key=adamw", "key=sgd"]),  # categorical
    ],
)
def test_sweep_axis(values, scale, ticks):
    rows = [{"overrides": {"optim.key": v}} for v in values]
    x, got_ticks, got_scale = buckets.sweep_axis(rows, buckets.swept_keys(rows))
    assert (got_scale, got_ticks) == (scale, ticks)
    assert x.tolist() == (list(range(len(values))) if ticks else values)


# ---- the study files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("study", [weight_decay_fairness, class_imbalance])
@pytest.mark.parametrize("preset", ["tiny", "gpu"])
def test_study_presets_are_valid_sweeps_with_frequency_buckets(study, preset):
    trials = sweep.make_trials(study.get_config(preset), study.get_sweep(preset))
    trials = [t for t in trials if t.cfg.train.seed == 0]  # one seed (the seed axis: tests/experiments)
    assert all(t.cfg.train.freq_buckets == 10 for t in trials)
    groups = sweep.group_trials(trials)
    if study is weight_decay_fairness:  # one vmapped program over the coupled-AdamW weight decays
        assert len(groups) == 1 and [t.cfg.optim.weight_decay for t in trials] == [0.0, 0.1, 0.3, 1.0]
        assert not trials[0].cfg.optim.independent_wd and trials[0].cfg.optim.name == "adamw"
    else:  # one program per optimizer over its LRs; Kunstner et al.'s recipe (spec §5(b))
        assert [{t.cfg.optim.name for t in g} for g in groups] == [{"adamw"}, {"sgd"}]
        assert all(len(g) >= 2 for g in groups)
        for t in trials:
            o = t.cfg.optim
            assert (o.b1, o.b2, o.weight_decay, o.clip, o.schedule) == (0.9, 0.999, 0.0, 0.0, "constant")
    for make in (study.get_config, study.get_sweep):
        with pytest.raises(ValueError, match="unknown preset"):
            make("huge")
