"""Spectral alignment (Qiu et al. 2025; spec optimizers §8, models/probes.py): the spec's worked check, a
constructed aligned / unaligned pair against float64 numpy (SVD), and the model wiring (the inputs are the
sub-layer norm's outputs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import base
from models import probes, transformer


def np_alignment(w, x):
    """float64: v1 = top left-singular vector of the kernel [I, O] (input space of y = x·W); SA_i, then the
    sign diversity min(p+, 1 − p+) and mean |SA|."""
    v1 = np.linalg.svd(w)[0][:, 0]
    sa = x @ v1 / np.linalg.norm(x, axis=1)
    p = np.mean(sa > 0)
    return sa, min(p, 1 - p), np.mean(np.abs(sa))


def test_spec_check_diag_3_1():
    """W = diag(3, 1), inputs (1, .1), (−1, .2), (.5, 1): SA = ±(0.99504, −0.98058, 0.44721), diversity 1/3."""
    w = np.diag([3.0, 1.0])
    x = np.array([[1.0, 0.1], [-1.0, 0.2], [0.5, 1.0]])
    sa, div, abs_mean = np_alignment(w, x)
    np.testing.assert_allclose(np.abs(sa), [0.99504, 0.98058, 0.44721], atol=1e-5)
    out = probes.spectral_alignment(jnp.asarray(w, jnp.float32), jnp.asarray(x, jnp.float32))
    assert float(out["sa_sign_diversity"]) == pytest.approx(1 / 3, abs=1e-6) == div
    assert float(out["sa_abs_mean"]) == pytest.approx(abs_mean, rel=1e-5)


@pytest.mark.parametrize("aligned", [True, False])
def test_constructed_aligned_and_unaligned_inputs(aligned):
    """A kernel with a dominant input direction; aligned inputs lie on one side of it (diversity 0, |SA| near 1),
    isotropic inputs straddle it (diversity near 1/2, |SA| small): both equal the float64 SVD reference."""
    rng = np.random.default_rng(0)
    d_in, d_out, n = 16, 24, 256
    u, _ = np.linalg.qr(rng.normal(size=(d_in, d_in)))
    v, _ = np.linalg.qr(rng.normal(size=(d_out, d_out)))
    s = np.linspace(1.0, 0.2, d_in)
    s[0] = 5.0
    w = u @ np.diag(s) @ v[:d_in]  # kernel [I, O], top input direction u[:, 0]
    noise = rng.normal(size=(n, d_in))
    x = 3.0 * u[:, 0] + 0.3 * noise if aligned else noise
    _, div, abs_mean = np_alignment(w, x)
    out = probes.spectral_alignment(jnp.asarray(w, jnp.float32), jnp.asarray(x, jnp.float32))
    assert float(out["sa_sign_diversity"]) == pytest.approx(div, abs=1e-7)
    assert float(out["sa_abs_mean"]) == pytest.approx(abs_mean, rel=1e-5)
    if aligned:
        assert div == 0.0 and abs_mean > 0.9
    else:
        assert 0.4 < div <= 0.5 and abs_mean < 0.4


def test_model_metrics_read_the_norm_outputs():
    cfg = base.get_config("tiny").model
    cfg.dtype = "float32"
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
    out = probes.spectral_alignment_metrics(model, tokens)
    names = probes.spectral_alignment_modules(cfg)
    assert names == [f"blocks/{i}/{m}" for i in range(cfg.n_layers) for m in ("attn/k", "attn/q", "attn/v", "mlp/fc1")]
    assert set(out) == {f"{k}/{m}" for m in names for k in probes.SPECTRAL_ALIGNMENT_DIAGNOSTICS}
    block = model.blocks[0]
    h1 = np.asarray(block.norm1(model.embed_tokens(tokens)), np.float64).reshape(-1, cfg.d_model)
    _, div, abs_mean = np_alignment(np.asarray(block.attn.q.kernel[...], np.float64).reshape(cfg.d_model, -1), h1)
    assert float(out["sa_sign_diversity/blocks/0/attn/q"]) == pytest.approx(div, abs=1e-7)
    assert float(out["sa_abs_mean/blocks/0/attn/q"]) == pytest.approx(abs_mean, rel=1e-4)
