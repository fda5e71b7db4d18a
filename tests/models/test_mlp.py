"""SwiGLU and Smooth-SwiGLU (models/mlp.py; Fishman et al. 2024, spec model-variants §5(e) check 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import base
from models import mlp, transformer


def model_cfg(**kw):
    m = base.get_config("tiny").model
    m.update({"dtype": "float32", "d_model": 32, **kw})
    return m


def build(name, mode="channel", fp8=False):
    cfg = model_cfg(mlp=name)
    cfg.smooth_swiglu.mode = mode
    cfg.fp8.update(enabled=fp8, targets="mlp")
    return mlp.make_mlp(cfg, d_model=32, d_ff=48, rngs=nnx.Rngs(0))


def test_swiglu_width_rule_and_explicit_d_ff():
    cfg = model_cfg(mlp="swiglu", d_model=4096)
    assert mlp.hidden_width(cfg) == 11008  # Llama-2-7B's FFN width (spec §5(b))
    assert transformer.dims(model_cfg(mlp="swiglu", d_model=64))[1] == 256  # 170.7 rounded up to 256
    assert transformer.dims(model_cfg(mlp="gelu", d_model=64))[1] == 256  # 4d
    assert transformer.dims(model_cfg(mlp="swiglu", d_ff=40))[1] == 40


def test_swiglu_matches_float64_reference():
    m = build("swiglu")
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 32)), np.float64)
    w1, w2, w3 = (np.asarray(getattr(m, n).kernel[...], np.float64) for n in ("w1", "w2", "w3"))
    gate = x @ w2
    ref = ((x @ w1) * gate / (1 + np.exp(-gate))) @ w3
    np.testing.assert_allclose(np.asarray(m(jnp.asarray(x, jnp.float32))), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["channel", "token"])
def test_smooth_swiglu_equals_swiglu_without_quantization(mode):
    plain, smooth = build("swiglu"), build("smooth_swiglu", mode)
    x = 3.0 * jax.random.normal(jax.random.key(2), (2, 5, 32))
    c = jax.random.normal(jax.random.key(3), (2, 5, 32))

    def loss(model, x):
        return jnp.sum(model(x) * c)

    (lp, (gp, gxp)), (ls, (gs, gxs)) = (
        (m(x), jax.grad(lambda mm, xx: loss(mm, xx), argnums=(0, 1))(m, x)) for m in (plain, smooth)
    )
    np.testing.assert_allclose(ls, lp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gxs, gxp, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(nnx.state(gs, nnx.Param)), jax.tree.leaves(nnx.state(gp, nnx.Param))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))  # float32 rounding
    # the scale is not a constant 1: the smoothing actually rescales (so the equality above is not vacuous)
    h = smooth.w1(x) * jax.nn.silu(smooth.w2(x))
    assert float(jnp.abs(h).max()) > 2.0


def test_smooth_swiglu_channel_normalises_the_down_projection_input_under_fp8():
    for name, expect_one in (("smooth_swiglu", True), ("swiglu", False)):
        m = build(name, fp8=True)
        m(3.0 * jax.random.normal(jax.random.key(2), (2, 5, 32)))
        amax = float(m.w3.fp8.x_amax_history[...][0])  # max |input| the down projection quantised
        assert (amax == pytest.approx(1.0, abs=1e-6)) == expect_one, (name, amax)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="model.smooth_swiglu.mode"):
        build("smooth_swiglu", mode="tensor")


def test_swiglu_alignment_metrics_against_numpy():
    m = build("smooth_swiglu")
    w1 = np.asarray(m.w1.kernel[...], np.float64)
    m.w2.kernel[...] = m.w2.kernel[...].at[:, 3].set(-2.0 * m.w1.kernel[...][:, 3])  # channel 3 anti-aligned
    w2 = np.asarray(m.w2.kernel[...], np.float64)
    cos = np.abs((w1 * w2).sum(0) / (np.linalg.norm(w1, axis=0) * np.linalg.norm(w2, axis=0)))
    got = mlp.swiglu_alignment_metrics(nnx.Dict(mlp=m))
    assert float(got["swiglu_cos_absmax/mlp"]) == pytest.approx(1.0, abs=1e-6)
    assert float(got["swiglu_cos_abs_p999/mlp"]) == pytest.approx(np.quantile(cos, 0.999), rel=1e-5)
    assert np.sort(cos)[-2] < 0.9  # the others are not aligned at init (so the max is channel 3's)


@pytest.mark.parametrize("name,mode", [("swiglu", "channel"), ("smooth_swiglu", "channel"), ("smooth_swiglu", "token")])
def test_swiglu_down_absmax_is_max_h_before_smoothing(name, mode):
    """models/probes.py capture_metrics: max |h| entering W3, h = (x w1) * Swish(x w2) in float64, the same for
    SwiGLU and both Smooth-SwiGLU modes (their smoothing is applied after it); nothing is sown outside the capture."""
    from models import probes

    m = build(name, mode)
    x = 3.0 * jax.random.normal(jax.random.key(4), (2, 5, 32))
    x64 = np.asarray(x, np.float64)
    w1, w2 = (np.asarray(getattr(m, n).kernel[...], np.float64) for n in ("w1", "w2"))
    gate = x64 @ w2
    h = (x64 @ w1) * gate / (1 + np.exp(-gate))
    got = probes.capture_metrics(lambda mm: jnp.sum(mm.mlp(x)), nnx.Dict(mlp=m))
    assert list(got) == ["swiglu_down_absmax/mlp"]
    assert float(got["swiglu_down_absmax/mlp"]) == pytest.approx(np.abs(h).max(), rel=1e-5)
    m(x)
    assert not jax.tree.leaves(nnx.state(m, nnx.Intermediate))
