"""optim/agg.py (`optim.agg=True`): AGG's gates (spec optimizers §7(d)), the gated head gradient against a float64
reference written from the paper's rule, the K+1-step count window, and a tiny run whose counters and frequency
buckets are logged."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from launch import loop
from optim import agg


def test_gates_match_the_spec_check():
    """K = 10, α = 0.3, wc = [50, 8, 2, 1]: a = [5, .8, .2, .1], gate1 = [1, 1, .2, .1], gate2 = [1, 1, 1, 2/3]
    (not a/α, and never the target's own row: that one is `logit_gate`'s)."""
    g = agg.gates_from_counts(jnp.asarray([50, 8, 2, 1]), jnp.int32(25), 0.3, 10)
    np.testing.assert_array_equal(np.asarray(g.rare), [False, False, True, True])
    np.testing.assert_allclose(np.asarray(g.gate1), [1.0, 1.0, 0.2, 0.1], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g.gate2), [1.0, 1.0, 1.0, 1 / 1.5], rtol=1e-6)
    early = agg.gates_from_counts(jnp.asarray([50, 8, 2, 1]), jnp.int32(4), 0.3, 10)  # a = wc / min(itr, K)
    np.testing.assert_allclose(np.asarray(early.gate1), [1.0, 1.0, 1.0, 0.25])  # a = [12.5, 2, .5, .25]


def np_gated_grads(h, w, y, gate1, gate2, rare):
    """float64 mean-CE gradients of z = h·W: dW[:, v] = Σ_i G[i, v](p_i[v] − 1[v = y_i]) h_i / N with G[i, v] = 1 at
    v = y_i, else gate2[v] if y_i is rare, else gate1[v]; dh ungated."""
    n, vocab = h.shape[0], w.shape[1]
    z = h @ w
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(vocab)[y]) / n
    g = np.where(rare[y][:, None], gate2[None], gate1[None])
    g[np.arange(n), y] = 1.0
    return dz @ w.T, h.T @ (g * dz)


def test_gated_head_gradient_matches_float64():
    rng = np.random.default_rng(0)
    n, d, vocab = 12, 5, 7
    h, w = rng.normal(size=(n, d)), rng.normal(size=(d, vocab))
    y = rng.integers(0, vocab, size=n)
    gate1, gate2 = rng.uniform(size=vocab), rng.uniform(size=vocab)
    rare = np.array([True, False, True, False, False, True, False])
    with jax.enable_x64(True):
        gates = agg.Gates(jnp.asarray(gate1), jnp.asarray(gate2), jnp.asarray(rare))
        gate = agg.logit_gate(gates, jnp.asarray(y)[None])[0]

        def loss(h, w, gated):
            z = h @ w
            if gated:
                z = agg.gate_head_gradient(gate, z, jax.lax.stop_gradient(h) @ w)
            return jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, jnp.asarray(y)[:, None], 1)[:, 0])

        value, (dh, dw) = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(w), True)
        plain = loss(jnp.asarray(h), jnp.asarray(w), False)
    ref_dh, ref_dw = np_gated_grads(h, w, y, gate1, gate2, rare)
    assert float(value) == float(plain)  # the gate changes gradients only
    np.testing.assert_allclose(np.asarray(dh), ref_dh, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=1e-12, atol=1e-14)
    assert not np.allclose(ref_dw, np_gated_grads(h, w, y, np.ones(vocab), np.ones(vocab), rare)[1])


def test_counts_cover_the_last_k_plus_one_updates():
    vocab, window = 6, 3
    tx = agg.agg_counts(vocab, window, alpha=1.5)
    state = tx.init(())
    rng = np.random.default_rng(1)
    history = []
    for itr in range(1, 9):
        targets = rng.integers(0, vocab, size=(2, 4))
        history.append(np.bincount(targets.reshape(-1), minlength=vocab))
        expected = agg.gates_from_counts(jnp.asarray(sum(history[-(window + 1):])), jnp.int32(itr), 1.5, window)
        got = agg.gates(state, jnp.asarray(targets), 1.5, window)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        _, state = tx.update((), state, targets=jnp.asarray(targets))
        a = sum(history[-(window + 1):]) / min(itr, window)
        assert int(state.rare) == int(np.sum(a < 1.5)) and int(state.itr) == itr


def test_tiny_agg_run_learns_and_logs_counters_and_buckets(tiny_config, runtime, tmp_path):
    cfg = tiny_config(**{"optim.agg": True, "optim.agg_alpha": 1.0, "train.freq_buckets": 4})
    summary = loop.train(cfg, tmp_path, rt=runtime(cfg), verbose=False)
    assert not summary["diverged"] and summary["eval_loss"] < summary["initial_loss"] - 0.3, summary
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "agg_rare" in r]  # the synthetic language: ~2 targets per type per step
    assert train_rows and all(0 < r["agg_rare"] < 512 and 0 < r["agg_rare_gate"] < 1 for r in train_rows)
    assert any("eval_loss_rank_bucket" in r or "eval_loss_rank_bucket/0" in r for r in rows)


def test_off_by_default_and_free_when_off():
    """With optim.agg off (and optim.name adamw) the lowered train step does not depend on the AGG or Muon fields
    and the train state holds no counts; turning AGG on changes the program."""
    from experiments import base
    from launch import configs, mesh as mesh_lib, step as step_lib

    def lowered(**overrides):
        cfg = configs.apply_overrides(base.get_config("tiny"), overrides)
        prog = step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1]))
        state = prog.abstract_state()
        batch = jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.seq_len + 1), jnp.int32)
        return "agg" in state, jax.jit(prog.train_step).lower(state, batch, step_lib.hparams_array(cfg)).as_text()

    has_counts, baseline = lowered()
    assert not base.get_config("tiny").optim.agg and not has_counts
    assert lowered(**{"optim.agg_alpha": 0.5, "optim.agg_window": 7, "optim.muon.rms_scale": 0.0,
                      "optim.muon.beta": 0.5}) == (False, baseline)
    with_agg = lowered(**{"optim.agg": True})
    assert with_agg[0] and with_agg[1] != baseline
