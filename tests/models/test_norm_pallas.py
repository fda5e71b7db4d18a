"""The fused Pallas LayerNorm / RMSNorm (`model.norm_impl=pallas`, models/norm_pallas.py) against the XLA modules of
models/layers.py (and their autodiff) and a float64 numpy reference written here. On CPU the kernels run in Pallas
interpret mode; `test_lowers_to_triton_for_cuda` lowers them for an abstract H200 (Triton IR, without compiling
it), and the GPU test runs them compiled.

Tolerances, relative to the largest entry of each compared array: float32 inputs 1e-5 against the XLA path and
against float64 (sums in a different order); bfloat16 inputs and outputs one bfloat16 rounding of the output or
dx, 2^-7 (the float32 values before the cast agree to ~1e-6, so a value near a rounding boundary may round
either way), and 1e-4 for the float32 dscale (a sum over rows of bfloat16 dy·x̂).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import base
from helpers import triton_calls_on_h200
from models import layers, norm_pallas, transformer

EPS = 1e-6
N_ROWS = (3, 37)  # 111 rows: not a multiple of the block


def module_norm(kind, impl, out_dtype):
    """(x, scale) -> the layers.py module's output with that scale (a module built inside the trace)."""

    def apply(x, scale):
        m = layers.NORMS[kind](x.shape[-1], None, eps=EPS, dtype=out_dtype, param_dtype=jnp.float32, impl=impl)
        m.scale[...] = scale
        return m(x)

    return apply


def norm_f64(kind, x, scale, dy):
    """Forward y and the gradients (dx, dscale) for the cotangent dy, float64 numpy, written from the definitions:
    x̂ = (x − μ)/sqrt(var + ε) (two-pass variance) or x/sqrt(mean(x²) + ε), y = x̂·s."""
    x, scale, dy = (np.asarray(a, np.float64) for a in (x, scale, dy))
    xc = x - x.mean(-1, keepdims=True) if kind == "layernorm" else x
    rstd = 1.0 / np.sqrt(np.square(xc).mean(-1, keepdims=True) + EPS)
    x_hat = xc * rstd
    g = dy * scale
    dx = g - x_hat * (g * x_hat).mean(-1, keepdims=True)
    if kind == "layernorm":
        dx = dx - g.mean(-1, keepdims=True)
    return x_hat * scale, dx * rstd, (dy * x_hat).reshape(-1, x.shape[-1]).sum(0)


def inputs(d, dtype, seed=0, mean=0.5, std=2.0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(mean + std * rng.normal(size=(*N_ROWS, d)), dtype)
    scale = jnp.asarray(1.0 + 0.3 * rng.normal(size=(d,)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=x.shape), dtype)  # the cotangent of an output in x's dtype
    return x, scale, dy


def out_and_grads(f, x, scale, dy):
    y, vjp = jax.jit(lambda x, s: jax.vjp(f, x, s))(x, scale)
    return [np.asarray(a, np.float32) for a in (y, *vjp(dy))]


def assert_close(got, want, tol):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=tol * np.abs(w).max())


@pytest.mark.parametrize("kind", norm_pallas.KINDS)
@pytest.mark.parametrize("d", [64, 96, 768])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_and_gradients_equal_xla_and_float64(kind, d, dtype):
    """111 rows in 7 blocks of 16; the backward's 3 programs loop over 3 blocks each (the last 2 wholly masked)."""
    x, scale, dy = inputs(d, dtype)
    pallas = lambda x, s: norm_pallas.norm_fused(x, s, kind=kind, eps=EPS, block_rows=16, backward_programs=3)
    got = out_and_grads(pallas, x, scale, dy)
    want_xla = out_and_grads(module_norm(kind, "xla", dtype), x, scale, dy)
    want_f64 = norm_f64(kind, x, scale, dy)
    assert [g.shape for g in got] == [x.shape, x.shape, scale.shape]
    if dtype == jnp.float32:
        assert_close(got, want_xla, 1e-5)
        assert_close(got, want_f64, 1e-5)
    else:
        assert_close(got[:2], want_xla[:2], 2**-7)
        assert_close(got[2:], want_xla[2:], 1e-4)
        assert_close(got[:2], want_f64[:2], 2**-7)
        assert_close(got[2:], want_f64[2:], 1e-4)


@pytest.mark.parametrize("kind", norm_pallas.KINDS)
def test_layers_module_with_impl_pallas_matches_and_casts(kind):
    """The module path (`impl="pallas"`): bfloat16 output from float32 input, dx float32, as the XLA module."""
    x, scale, dy = inputs(96, jnp.float32)
    dy = dy.astype(jnp.bfloat16)
    got = jax.jit(lambda x, s: jax.vjp(module_norm(kind, "pallas", jnp.bfloat16), x, s))(x, scale)
    want = jax.jit(lambda x, s: jax.vjp(module_norm(kind, "xla", jnp.bfloat16), x, s))(x, scale)
    assert got[0].dtype == jnp.bfloat16
    assert [a.dtype for a in got[1](dy)] == [jnp.float32, jnp.float32]
    assert_close([np.asarray(got[0], np.float32)], [np.asarray(want[0], np.float32)], 2**-7)
    assert_close([np.asarray(a) for a in got[1](dy)], [np.asarray(a) for a in want[1](dy)], 1e-5)


def test_large_mean_rows_keep_two_pass_accuracy():
    """Rows of mean 1e3 and std 1 (float32, d = 768): the mean is subtracted from the row before squaring, so y, dx
    and dscale match float64 to 1e-4 of their largest entry (measured 4e-5, as the XLA path: the float32 mean itself
    is only good to ulp(1e3)/2 = 3e-5). E[x²] − E[x]² in float32 misses these rows' variance by up to 20 %."""
    x, scale, dy = inputs(768, jnp.float32, seed=3, mean=1e3, std=1.0)
    got = out_and_grads(lambda x, s: norm_pallas.norm_fused(x, s, kind="layernorm", eps=EPS), x, scale, dy)
    assert_close(got, norm_f64("layernorm", x, scale, dy), 1e-4)
    assert_close(got, out_and_grads(module_norm("layernorm", "xla", jnp.float32), x, scale, dy), 1e-5)


def test_vmapped_over_members():
    """Under vmap (the batched executor's members: x and the scale batched) Pallas adds a grid axis in front of the
    kernels' own; every member matches float64."""
    x, scale, dy = inputs(96, jnp.float32)
    x_M, scale_M, dy_M = jnp.stack([x, -x]), jnp.stack([scale, 2.0 - scale]), jnp.stack([dy, dy])

    def member(x, s, dy):
        y, vjp = jax.vjp(lambda x, s: norm_pallas.norm_fused(x, s, kind="layernorm", eps=EPS, block_rows=16), x, s)
        return (y, *vjp(dy))

    got = jax.jit(jax.vmap(member))(x_M, scale_M, dy_M)
    for m in range(2):
        assert_close([np.asarray(a[m]) for a in got], norm_f64("layernorm", x_M[m], scale_M[m], dy_M[m]), 1e-5)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_tiny_transformer_same_loss_and_gradients(norm):
    """qk_norm and embed_scale=layernorm on (every kind of norm in the model): the parameters (names, shapes) are
    those of norm_impl=xla, and the loss and every gradient agree to 1e-5 (relative) in float32."""
    tokens = jax.random.randint(jax.random.key(0), (2, 25), 0, 256)

    def loss_and_grads(impl):
        cfg = base.get_config("tiny").model
        cfg.update(dtype="float32", qk_norm=True, embed_scale="layernorm", norm=norm, norm_impl=impl)
        model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
        loss = lambda m: transformer.lm_loss(m(tokens[:, :-1])[0], tokens[:, 1:], 0.0)[0]
        graphdef, state = nnx.split(model)
        jaxpr = jax.make_jaxpr(jax.grad(lambda st: loss(nnx.merge(graphdef, st))))(state)
        # 10 norms (2 per block, q and k per block, final, embedding), each a forward and a backward kernel
        assert str(jaxpr).count("pallas_call") == (20 if impl == "pallas" else 0)
        value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
        return float(value), nnx.state(model, nnx.Param), grads

    (loss_p, params_p, grads_p), (loss_x, params_x, grads_x) = loss_and_grads("pallas"), loss_and_grads("xla")
    shapes = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype), tree)
    assert shapes(params_p) == shapes(params_x)
    assert loss_p == pytest.approx(loss_x, rel=1e-5)
    for gp, gx in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_x), strict=True):
        np.testing.assert_allclose(np.asarray(gp), np.asarray(gx), rtol=0, atol=1e-5 * np.abs(np.asarray(gx)).max())


def test_impl_is_validated_and_auto_is_xla_off_a_single_gpu():
    cfg = base.get_config("tiny").model
    assert cfg.norm_impl == "auto" and jax.default_backend() != "gpu"
    assert layers.make_norm(cfg, 8, None).impl == "xla"
    cfg.norm_impl = "pallas"
    assert layers.make_norm(cfg, 8, None).impl == "pallas"
    cfg.embed_scale = "layernorm"
    assert layers.make_embed_scale(cfg).impl == "pallas"
    cfg.norm_impl = "triton"
    with pytest.raises(ValueError, match="model.norm_impl='triton' is unknown"):
        layers.make_norm(cfg, 8, None)
    old = base.get_config("tiny").model
    del old["norm_impl"]  # a run config written before the field existed
    assert layers.make_norm(old, 8, None).impl == "xla"
    x, scale, _ = inputs(8, jnp.float32)
    with pytest.raises(ValueError, match="block_rows=48 must be a power of two"):
        norm_pallas.norm_fused(x, scale, kind="layernorm", eps=EPS, block_rows=48)
    with pytest.raises(ValueError, match="backward_programs=0 must be >= 1"):
        norm_pallas.norm_fused(x, scale, kind="layernorm", eps=EPS, backward_programs=0)
    with pytest.raises(ValueError, match="kind='batchnorm' is unknown"):
        norm_pallas.norm_fused(x, scale, kind="batchnorm", eps=EPS)


def test_auto_is_pallas_on_one_gpu_only(monkeypatch):
    """auto = pallas on a single GPU (where it is faster), xla over several devices (no shard_map around the call)."""
    cfg = base.get_config("tiny").model
    monkeypatch.setattr(layers.jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(layers.jax, "device_count", lambda: 1)
    assert layers.norm_impl(cfg) == "pallas"
    monkeypatch.setattr(layers.jax, "device_count", lambda: 2)
    assert layers.norm_impl(cfg) == "xla"
    cfg.norm_impl = "pallas"
    assert layers.norm_impl(cfg) == "pallas"


@pytest.mark.parametrize("kind,members", [("layernorm", 0), ("rmsnorm", 0), ("layernorm", 3)])
def test_lowers_to_triton_for_cuda(kind, members):
    """Forward and backward kernels lower to Triton IR for an H200 without a GPU (an abstract device), at d = 768
    (a block over 1024 masked columns) and 400 rows (not a multiple of the block), also vmapped over 3 members;
    compiling the IR (ptxas) needs the GPU: the GPU test below."""
    lead = (members,) if members else ()
    x = jax.ShapeDtypeStruct((*lead, 4, 100, 768), jnp.bfloat16)
    scale = jax.ShapeDtypeStruct((*lead, 768), jnp.float32)
    loss = lambda x, s: jnp.sum(norm_pallas.norm_fused(x, s, kind=kind, eps=EPS, interpret=False).astype(jnp.float32))
    step = jax.value_and_grad(loss, argnums=(0, 1))
    assert triton_calls_on_h200(jax.vmap(step) if members else step, x, scale) == 2


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="compiled Triton kernels need a GPU")
@pytest.mark.parametrize("kind", norm_pallas.KINDS)
@pytest.mark.parametrize("d", [64, 768, 1024])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compiled_on_gpu_equals_xla_path(kind, d, dtype):
    """Compiled (not interpreted), with the default blocks, against the XLA module at the tolerances above."""
    x, scale, dy = inputs(d, dtype, seed=5)
    got = out_and_grads(lambda x, s: norm_pallas.norm_fused(x, s, kind=kind, eps=EPS, interpret=False), x, scale, dy)
    want = out_and_grads(module_norm(kind, "xla", dtype), x, scale, dy)
    tol = (1e-5, 1e-5) if dtype == jnp.float32 else (2**-7, 1e-4)
    assert_close(got[:2], want[:2], tol[0])
    assert_close(got[2:], want[2:], tol[1])
