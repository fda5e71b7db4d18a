"""Key-blocked LSSA / LSSAR (`model.softplus.key_chunk`, models/attention.py `lssar_blocked`) against the reference
(the explicit [B, H, T, T] weights of `lssar_weights`) and a float64 numpy reference of spec model-variants §4(a).

Tolerances (float32): outputs 1e-5 of their largest entry, gradients 1e-4 of the largest entry over dq, dk, dv
(only the order of the row sums differs); against float64 numpy 1e-4 relative / 1e-5 absolute, as
tests/models/test_lssar.py.
"""

from __future__ import annotations

import math

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import attention

EPS = 1e-8


def qkv(B=2, T=50, H=2, K=8, seed=0, sharp=False):
    """Random [B, T, H, K] q, k, v; `sharp`: key 0 aligned with every query, so that late rows put more than
    370/i of their stage-1 mass on it (the rows where r^15 overflows without the row-max rescaling)."""
    rng = np.random.default_rng(seed)
    q, k, v = (rng.normal(size=(B, T, H, K)).astype(np.float32) for _ in range(3))
    if sharp:
        q[..., 0] += 20.0
        k[:, 0] = 0.0
        k[:, 0, :, 0] = 1.0
        k[:, 1:, :, 0] -= 3.0
    return [jnp.asarray(x) for x in (q, k, v)]


def kernel(reweight=True, power=15, query_chunk=0, key_chunk=0):
    return attention.SoftplusKernel(reweight=reweight, power=power, eps=EPS, query_chunk=query_chunk,
                                    key_chunk=key_chunk)


def lssar_np(q, k, v, reweight, power):
    """Spec §4(a) in float64 numpy with the row-max rescaling of the re-weighting (exact in float64 either way)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, T, H, K = q.shape
    q, k = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
    n = np.arange(1, T + 1, dtype=np.float64)[:, None]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * math.log(K) * np.log(n)
    a = np.where(np.tril(np.ones((T, T), bool)), np.logaddexp(0.0, s), 0.0)
    a = a / (a.sum(-1, keepdims=True) + EPS)
    if reweight:
        r = np.maximum(a * n - np.where(n > 3, 1.0, 0.0), 0.0)
        m = r.max(-1, keepdims=True)
        m = np.where(m > 0, m, 1.0)
        u = (r / m) ** power
        a = u / (u.sum(-1, keepdims=True) + EPS * m ** (-power))
    return np.einsum("bhqk,bkhd->bqhd", a, v)


def out_and_grads(kern, q, k, v):
    c = jnp.asarray(np.random.default_rng(9).normal(size=q.shape), jnp.float32)
    f = lambda q, k, v: kern(q, k, v, False)[0]
    out = f(q, k, v)
    grads = jax.grad(lambda *x: jnp.sum(f(*x) * c), argnums=(0, 1, 2))(q, k, v)
    return np.asarray(out), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("key_chunk,query_chunk", [(16, 0), (7, 0), (64, 0), (8, 20)])
@pytest.mark.parametrize("reweight,power", [(True, 15), (True, 3), (False, 15)])
def test_blocked_equals_reference_and_float64(key_chunk, query_chunk, reweight, power):
    """Key chunks of 16 and 7 do not divide T = 50 (the last block is padded), 64 > T is one block; (8, 20) blocks
    both queries and keys."""
    for sharp in (False, True):
        q, k, v = qkv(sharp=sharp)
        want, want_g = out_and_grads(kernel(reweight, power), q, k, v)
        got, got_g = out_and_grads(kernel(reweight, power, query_chunk, key_chunk), q, k, v)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
        scale = max(np.abs(w).max() for w in want_g)  # sharp rows: q, k gradients ~0 up to float32 rounding
        for g, w in zip(got_g, want_g):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-4 * scale)
        np.testing.assert_allclose(got, lssar_np(q, k, v, reweight, power), rtol=1e-4, atol=1e-5)


def test_key_chunk_is_validated():
    from experiments import base

    cfg = base.get_config("tiny").model
    cfg.softplus.key_chunk = -1
    with pytest.raises(ValueError, match="key_chunk=-1 >= 0"):
        attention.SoftplusKernel.from_config(cfg, 2, 32)


def test_blocked_scales_to_4096_without_txt_arrays():
    """T = 4096, one head: the train step's function (output and gradients) traces to a jaxpr without any array of
    T·T elements (the reference's has several), runs, and matches float64 on sampled rows."""
    T, K = 4096, 8
    q, k, v = qkv(B=1, T=T, H=1, K=K, seed=1, sharp=True)
    c = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

    def loss(kern):
        return lambda q, k, v: jnp.sum(kern(q, k, v, False)[0] * c)

    blocked = kernel(key_chunk=256)
    assert helpers.largest_intermediate(jax.grad(loss(blocked), argnums=(0, 1, 2)), q, k, v) < T * T // 8
    assert helpers.largest_intermediate(jax.grad(loss(kernel()), argnums=(0, 1, 2)), q, k, v) >= T * T

    out = np.asarray(jax.jit(lambda *x: blocked(*x, False)[0])(q, k, v))[0, :, 0]
    grads = jax.jit(jax.grad(loss(blocked), argnums=(0, 1, 2)))(q, k, v)
    assert np.all(np.isfinite(out)) and all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    qn, kn = (np.asarray(x, np.float64)[0, :, 0] for x in (q, k))
    qn, kn = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (qn, kn))
    vn = np.asarray(v, np.float64)[0, :, 0]
    for i in [0, 2, 3, 100, 1000, 2047, 4000, T - 1]:
        n = i + 1
        a = np.logaddexp(0.0, math.log(K) * math.log(n) * (kn[:n] @ qn[i]))
        a = a / (a.sum() + EPS)
        r = np.maximum(a * n - (1.0 if n > 3 else 0.0), 0.0)
        m = r.max() if r.max() > 0 else 1.0
        u = (r / m) ** 15
        np.testing.assert_allclose(out[i], (u / (u.sum() + EPS * m**-15)) @ vn[:n], rtol=1e-4, atol=1e-5)
