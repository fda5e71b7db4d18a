"""launch/undertrained.py (Land & Bartolo 2024): the indicator against a float64 SVD reference on a constructed
unembedding, the norm fallback, and summary.json of a tiny run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from launch import loop, undertrained


def constructed(rng, v=64, d=16):
    """Rows: a shared offset (the first principal component's job) + per-token directions; tokens 0-9 never
    occur and keep the init row r0 + small noise; token 10 occurs once and looks like them; the rest trained."""
    offset = 4.0 * rng.normal(size=d)
    r0 = rng.normal(size=d)
    u = offset + rng.normal(size=(v, d)) * np.linspace(0.5, 3.0, v)[:, None]
    u[:11] = offset + r0 + 0.05 * rng.normal(size=(11, d))
    counts = rng.integers(50, 5000, size=v)
    counts[:10], counts[10] = 0, 1
    return u, counts


def test_indicator_matches_a_float64_svd_reference():
    u, counts = constructed(np.random.default_rng(0))
    report = undertrained.undertrained_tokens(u, counts, top=12)
    pc = np.linalg.svd(u - u.mean(0), full_matrices=False)[2][0]
    rows = u - np.outer(u @ pc, pc)
    ref = rows[counts == 0].mean(0)
    score = rows @ ref / (np.linalg.norm(rows, axis=1) * np.linalg.norm(ref))
    assert report["indicator"] == "cosine_to_unseen_mean" and report["n_reference"] == 10
    got = {t["id"]: t for t in report["tokens"]}
    assert set(got) == set(np.argsort(-score)[:12].tolist())
    for i, t in got.items():
        assert t["score"] == pytest.approx(score[i], rel=1e-6)  # power iteration vs SVD and t["count"] == counts[i]
    assert 10 in got and report["n_flagged"] >= 1  # the token seen once is found among the never-seen ones


def test_without_unseen_tokens_the_smallest_rows_rank_first():
    u = np.diag(np.arange(1.0, 7.0))
    report = undertrained.undertrained_tokens(u, np.ones(6, int), top=3)
    assert report["indicator"] == "minus_row_norm" and report["n_flagged"] is None
    assert [t["id"] for t in report["tokens"]] == [0, 1, 2]
    assert [t["score"] for t in report["tokens"]] == [-1.0, -2.0, -3.0]


def test_tiny_run_writes_the_report(tiny_config, runtime, tmp_path):
    cfg = tiny_config(**{"train.undertrained_tokens": 5, "train.steps": 10, "train.eval_every": 10})
    summary = loop.train(cfg, tmp_path, rt=runtime(cfg), verbose=False)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    report = on_disk["undertrained_tokens"]
    assert report == summary["undertrained_tokens"] and len(report["tokens"]) == 5
    counts = runtime(cfg).source.token_counts()
    assert all(t["count"] == counts[t["id"]] and np.isfinite(t["score"]) for t in report["tokens"])
