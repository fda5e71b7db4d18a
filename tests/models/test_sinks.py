"""Attention sinks and massive activations (spec model-variants §8.4, Guo et al. 2024 "Active-Dormant Attention
Heads"): the sink mass of a constructed attention and the residual-stream statistics against float64 numpy, and
that a diagnostic forward reports them per layer from the blocks' own residual stream."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import base
from models import attention, transformer


def test_sink_mass_of_a_constructed_attention_matches_float64():
    """Logits z_i0 = s_h for the first key and 0 for the others (causal): A_i0 = e^s / (e^s + i), so the sink mass of
    head h is mean_{i=1..T-1} e^{s_h} / (e^{s_h} + i); a head with s = 0 is uniform (mean 1/(i+1))."""
    B, H, T = 2, 3, 7
    s_H = np.array([0.0, 2.0, 9.0])
    z = np.zeros((B, H, T, T))
    z[:, :, :, 0] = s_H[None, :, None]
    z = np.where(np.tril(np.ones((T, T), bool)), z, -np.inf)
    probs = jax.nn.softmax(jnp.asarray(z, jnp.float32), axis=-1)
    diag = attention.attention_diagnostics(jnp.asarray(z, jnp.float32), probs)
    i = np.arange(1, T, dtype=np.float64)
    ref_H = np.array([np.mean(np.exp(s) / (np.exp(s) + i)) for s in s_H])
    np.testing.assert_allclose(diag["attn_sink_mass_per_head"], ref_H, rtol=1e-6)
    np.testing.assert_allclose(diag["attn_sink_mass"], ref_H.mean(), rtol=1e-6)
    np.testing.assert_allclose(diag["attn_max_logit_per_head"], s_H, rtol=1e-6)


def test_kernel_sink_mass_matches_float64_softmax():
    """Through the softmax kernel's diagnostic path on random q, k: the float64 softmax's column 0, mean over i >= 1."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 9, 2, 8)).astype(np.float32) * 2 for _ in range(3))
    cfg = base.get_config("tiny").model
    kernel = attention.ATTENTIONS["softmax"].kernel(cfg, 2, 8)
    _, diag = kernel(q, k, v, diagnostics=True)
    z = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(8)
    z = np.where(np.tril(np.ones((9, 9), bool)), z, -np.inf)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(diag["attn_sink_mass_per_head"], p[:, :, 1:, 0].mean(axis=(0, 2)), rtol=1e-5)


def test_residual_stats_match_float64():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 8, 16)).astype(np.float32)
    x[1, 0, 5] = -80.0  # a massive activation on a first token
    stats = transformer.residual_stats(jnp.asarray(x))
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=-1)
    np.testing.assert_allclose(stats["resid_max_abs"], 80.0)
    np.testing.assert_allclose(stats["resid_first_token_ratio"], np.mean(norms[:, 0] / np.median(norms, axis=-1)),
                               rtol=1e-5)


def test_diagnostic_forward_reports_each_blocks_residual_stream():
    cfg = base.get_config("tiny").model
    cfg.update(dtype="float32", vocab_size=96, d_model=32, n_heads=2)
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    tok = jax.random.randint(jax.random.key(0), (2, 11), 0, cfg.vocab_size)
    _, diag = model(tok, diagnostics=True)
    x = model.embed_tokens(tok)
    for i, block in enumerate(model.blocks):
        x, _ = block(x)
        assert float(diag[f"resid_max_abs/layer_{i}"]) == float(jnp.max(jnp.abs(x)))
        assert diag[f"attn_sink_mass_per_head/layer_{i}"].shape == (cfg.n_heads,)
    _, train_diag = model(tok)
    assert train_diag == {}  # a training forward computes none of them
