"""Model numerics against independent float64 numpy references (spec model-variants §6(e))."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import base
from models import attention, layers, transformer


def tiny_model_cfg(**overrides):
    cfg = base.get_config("tiny").model
    cfg.update(dtype="float32", **overrides)
    return cfg


# ---- references -----------------------------------------------------------------------------------------------


def rope_ref(x: np.ndarray, base_: float) -> np.ndarray:
    """RoPE as complex multiplication: channel pair (i, i + K/2) is the complex number x_i + j x_{i+K/2}."""
    _, T, _, K = x.shape
    half = K // 2
    z = x[..., :half].astype(np.float64) + 1j * x[..., half:].astype(np.float64)
    theta = base_ ** (-2.0 * np.arange(half) / K)
    rot = np.exp(1j * np.arange(T)[:, None] * theta[None, :])[None, :, None, :]
    w = z * rot
    return np.concatenate([w.real, w.imag], axis=-1)


def layernorm_ref(x: np.ndarray, scale: np.ndarray, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale


def loss_ref(logits: np.ndarray, targets: np.ndarray, z: float) -> float:
    y = logits.astype(np.float64)
    m = y.max(-1, keepdims=True)
    logz = (m + np.log(np.exp(y - m).sum(-1, keepdims=True)))[..., 0]
    tgt = np.take_along_axis(y, targets[..., None], -1)[..., 0]
    return float((logz - tgt).mean() + z * (logz**2).mean())


# ---- tests ----------------------------------------------------------------------------------------------------


def test_rope_matches_complex_rotation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 17, 3, 16)).astype(np.float32)
    got = np.asarray(attention.rope(jnp.asarray(x), 10000.0))
    np.testing.assert_allclose(got, rope_ref(x, 10000.0), rtol=1e-5, atol=1e-5)


def test_rope_logits_depend_only_on_relative_position():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
    k = rng.normal(size=(1, 1, 1, 8)).astype(np.float32)
    T = 12
    qs = jnp.asarray(np.repeat(q, T, axis=1))
    ks = jnp.asarray(np.repeat(k, T, axis=1))
    rq, rk = attention.rope(qs, 100.0)[0, :, 0], attention.rope(ks, 100.0)[0, :, 0]
    dots = np.asarray(rq @ rk.T)  # dots[i, j] depends on i - j only
    for offset in range(-3, 4):
        diag = np.diagonal(dots, offset=offset)
        np.testing.assert_allclose(diag, diag[0], rtol=1e-4, atol=1e-4)


def test_layernorm_matches_reference():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 5.0, size=(4, 7, 32)).astype(np.float32)
    ln = layers.LayerNorm(32, "embed", eps=1e-6, dtype=jnp.float32, param_dtype=jnp.float32)
    ln.scale[...] = jnp.asarray(rng.normal(size=32), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(ln(jnp.asarray(x))), layernorm_ref(x, np.asarray(ln.scale[...]), 1e-6), rtol=1e-4, atol=1e-5
    )


def _attention_logits(cfg, x_BxTxD, model):
    attn = model.blocks[0].attn
    q, k = attn.q(x_BxTxD), attn.k(x_BxTxD)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = attention.rope(q, cfg.rope_base), attention.rope(k, cfg.rope_base)
    return attention.causal_logits(q, k, attn.scale)


def test_qk_layernorm_bounds_logits_and_is_scale_invariant():
    """Spec §6(e)1: with qk-LN (scale 1), |z_ij| <= sqrt(Dh) for any input scale; scaling x leaves z unchanged."""
    cfg = tiny_model_cfg(qk_norm=True)
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 16, cfg.d_model))
    z1 = _attention_logits(cfg, x, model)
    z1000 = _attention_logits(cfg, 1000.0 * x, model)
    finite = np.isfinite(np.asarray(z1))
    head_dim = cfg.d_model // cfg.n_heads
    assert np.abs(np.asarray(z1)[finite]).max() <= math.sqrt(head_dim) + 1e-4
    np.testing.assert_allclose(np.asarray(z1)[finite], np.asarray(z1000)[finite], rtol=1e-4, atol=1e-4)
    # without qk-LN the logits scale quadratically with the input
    plain = transformer.Transformer(tiny_model_cfg(qk_norm=False), rngs=nnx.Rngs(0))
    zp, zp10 = _attention_logits(cfg, x, plain), _attention_logits(cfg, 10.0 * x, plain)
    np.testing.assert_allclose(np.asarray(zp10)[finite], 100.0 * np.asarray(zp)[finite], rtol=1e-3, atol=1e-3)


def test_z_loss_matches_reference_and_gradient():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, size=(2, 5, 11)).astype(np.float32)
    targets = rng.integers(0, 11, size=(2, 5))
    loss, metrics = transformer.lm_loss(jnp.asarray(logits), jnp.asarray(targets), 1e-4)
    assert float(loss) == pytest.approx(loss_ref(logits, targets, 1e-4), rel=1e-6)
    assert float(metrics["ce"]) == pytest.approx(loss_ref(logits, targets, 0.0), rel=1e-6)

    # Spec §6(e)2: d/dy [1e-4 logZ^2] = 2e-4 logZ softmax(y) (one token).
    y = logits[0, 0].astype(np.float64)
    z_term = lambda l: 1e-4 * transformer.lm_loss(l, jnp.zeros((1, 1), jnp.int32), 1e-4)[1]["z_loss"]
    grad = jax.grad(z_term)(jnp.asarray(y[None, None], jnp.float32))
    logz = np.log(np.exp(y).sum())
    np.testing.assert_allclose(np.asarray(grad)[0, 0], 2e-4 * logz * np.exp(y - logz), rtol=1e-4, atol=1e-9)

    # Shifting the logits by -logZ zeroes the z-loss and leaves the CE unchanged.
    logz_all = jax.nn.logsumexp(jnp.asarray(logits), -1, keepdims=True)
    _, shifted = transformer.lm_loss(jnp.asarray(logits) - logz_all, jnp.asarray(targets), 1e-4)
    assert abs(float(shifted["z_loss"])) < 1e-10
    assert float(shifted["ce"]) == pytest.approx(float(metrics["ce"]), rel=1e-6)


def test_init_statistics():
    """Spec §6(e)4: embedding std ~ 1/sqrt(d); kernels std ~ 1/sqrt(fan_in) after the truncation correction."""
    cfg = tiny_model_cfg(d_model=256, n_heads=4, vocab_size=4096, n_layers=1)
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    emb = np.asarray(model.embed.embedding[...])
    assert emb.std() == pytest.approx(1 / math.sqrt(256), rel=0.02)
    for kernel, fan_in in [
        (model.blocks[0].attn.q.kernel, 256),
        (model.blocks[0].attn.o.kernel, 256),
        (model.blocks[0].mlp.fc1.kernel, 256),
        (model.blocks[0].mlp.fc2.kernel, 1024),
        (model.head.kernel, 256),
    ]:
        w = np.asarray(kernel[...])
        assert w.std() == pytest.approx(1 / math.sqrt(fan_in), rel=0.03), kernel
        assert np.abs(w).max() <= 2 / math.sqrt(fan_in) / 0.8796 + 1e-6  # truncated at 2 sigma of the base normal


def test_model_is_causal_and_fast_path_matches_materialised_attention():
    cfg = tiny_model_cfg(qk_norm=False)
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, cfg.vocab_size)
    logits, _ = model(tokens)
    logits_diag, diag = model(tokens, diagnostics=True)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(logits_diag), rtol=1e-4, atol=1e-4)
    changed = tokens.at[:, 8].set((tokens[:, 8] + 1) % cfg.vocab_size)
    logits2, _ = model(changed)
    np.testing.assert_array_equal(np.asarray(logits[:, :8]), np.asarray(logits2[:, :8]))
    assert not np.allclose(np.asarray(logits[:, 8:]), np.asarray(logits2[:, 8:]))
    assert set(diag) >= {"attn_max_logit/layer_0", "attn_entropy/layer_1", "attn_entropy_per_head/layer_0"}


def test_uniform_causal_attention_entropy_is_log_position():
    """Spec σReparam §(e)4: uniform causal attention at query i (1-based) has entropy log(i)."""
    T = 9
    z = jnp.where(jnp.tril(jnp.ones((T, T), bool)), 0.0, -jnp.inf)[None, None]
    probs = jax.nn.softmax(z, -1)
    ent = -(probs * jnp.log(probs + 1e-12)).sum(-1)[0, 0]
    np.testing.assert_allclose(np.asarray(ent), np.log(np.arange(1, T + 1)), atol=1e-5)
    d = attention.attention_diagnostics(z, probs)
    assert float(d["attn_entropy"]) == pytest.approx(np.log(np.arange(1, T + 1)).mean(), abs=1e-4)


def test_tied_embeddings_share_the_table():
    cfg = tiny_model_cfg(tie_embeddings=True)
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    assert model.head is None
    x = jax.random.normal(jax.random.key(0), (1, 3, cfg.d_model))
    np.testing.assert_allclose(
        np.asarray(model.embed.attend(x, jnp.float32)), np.asarray(x @ model.embed.embedding[...].T), rtol=1e-5
    )


def test_wide_output_matmul_has_exact_gradients_and_low_precision_backward():
    """The head's float32-output matmul: float32 gradients equal plain autodiff; bf16 inputs get bf16 gradients."""
    x = jax.random.normal(jax.random.key(0), (2, 3, 8), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (8, 5), jnp.float32)
    wide = lambda x, w: jnp.sum(jnp.sin(layers.dot_wide_out(x, w, 1)))
    plain = lambda x, w: jnp.sum(jnp.sin(jnp.einsum("btd,dv->btv", x, w)))
    for got, want in zip(jax.grad(wide, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    y = layers.dot_wide_out(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1)
    assert y.dtype == jnp.float32
    gx, gw = jax.grad(wide, (0, 1))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert gx.dtype == gw.dtype == jnp.bfloat16
