"""optim/fp8_moments.py (`optim.fp8_moments`; spec model-variants §5(a) "FP8 Adam moments", §5(e) check 4): the
stored moments against a float64 numpy quantiser written here, the update against the wrapped optimizer's, and a
tiny run that learns and resumes bitwise with AdamW and with SPAM."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import helpers
import optim
from optim.fp8_moments import (
    M_FORMAT, V_FORMAT, FP8MomentsState, _dequantize_tree, _quantize_tree, dequantized, fp8_moments, unpack,
)
from test_optim import optim_cfg  # tests/optim/test_optim.py (pytest puts its folder on sys.path)

# (mantissa bits, exponent bias, fmax) of E4M3 (OCP e4m3fn) and E5M2
FORMATS = {"e4m3": (3, 7, 448.0), "e5m2": (2, 15, 57344.0)}


def np_round(y, mbits, bias, fmax):
    """Round-to-nearest-even onto the FP8 grid (subnormals included), saturating at fmax; float64."""
    a = np.abs(y)
    e = np.floor(np.log2(np.where(a > 0, a, 1.0)))
    ulp = 2.0 ** (np.maximum(e, 1 - bias) - mbits)  # subnormals share the smallest normal binade's spacing
    return np.sign(y) * np.minimum(np.round(a / ulp) * ulp, fmax)  # np.round: ties to even


def np_quantize(x32, fmt):
    """(dequantised x, scale) as the spec states it: s = fmax / max|x| per tensor, x·s rounded to the grid."""
    mbits, bias, fmax = FORMATS[fmt]
    s = np.float32(fmax) / np.abs(x32).max()  # float32, as stored
    y = (x32 * s).astype(np.float64)  # the float32 product the cast sees
    return np_round(y, mbits, bias, fmax) / np.float64(s), s


def tensors(seed):
    """A parameter-like tree whose entries span ~12 decades (E4M3 flushes the smallest, E5M2 keeps most)."""
    rng = np.random.default_rng(seed)
    mags = lambda *shape: np.exp(rng.uniform(-28, 0, shape)) * rng.choice([-1, 1], shape)  # noqa: E731
    return {"w": mags(64, 32).astype(np.float32), "b": {"scale": mags(500).astype(np.float32)}}


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_round_trip_matches_float64_reference_within_the_formats_precision(fmt):
    tree = tensors(0)
    if fmt == "e5m2":
        tree = jax.tree.map(np.abs, tree)  # v >= 0
    fmt_obj = M_FORMAT if fmt == "e4m3" else V_FORMAT
    q, scales = _quantize_tree(jax.tree.map(jnp.asarray, tree), fmt_obj)
    assert all(x.dtype == fmt_obj.dtype for x in jax.tree.leaves(q)) and scales.shape == (2,)
    back = _dequantize_tree(q, scales)
    mbits, bias, fmax = FORMATS[fmt]
    for x, got, s in zip(jax.tree.leaves(tree), jax.tree.leaves(back), np.asarray(scales)):
        ref, s_ref = np_quantize(x, fmt)
        assert s == s_ref
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=2e-7, atol=0)  # q·(1/s) in float32
        amax = np.abs(x).max()
        normal = np.abs(x) * s >= 2.0 ** (1 - bias)
        err = np.abs(np.asarray(got, np.float64) - x)
        assert (err[normal] <= 2.0 ** -(mbits + 1) * np.abs(x[normal]) * (1 + 1e-6)).all()  # half an ulp
        assert abs(np.abs(np.asarray(got)).max() - amax) <= 1e-6 * amax  # the amax entry maps onto fmax
        flushed = np.abs(x) * s < 2.0 ** (1 - bias - mbits) / 2
        assert flushed.any() and (np.asarray(got)[flushed] == 0).all()  # below half the smallest subnormal
        assert len(np.unique(np.abs(np.asarray(got)))) <= 128  # an 8-bit format: <= 128 magnitudes per tensor
    if fmt == "e5m2":
        assert all((np.asarray(x) >= 0).all() for x in jax.tree.leaves(back))


def test_zero_and_nonfinite_tensors_get_scale_one():
    _, scales = _quantize_tree([jnp.zeros(4), jnp.array([1.0, jnp.nan])], M_FORMAT)
    np.testing.assert_array_equal(scales, [1.0, 1.0])


@pytest.mark.parametrize("name", ["adamw", "spam"])
def test_update_is_the_wrapped_optimizers_on_the_dequantised_moments(name):
    """Each step: the direction equals the plain optimizer's from the dequantised moments, and the new state
    stores the plain optimizer's new moments quantised (float64 reference quantiser)."""
    cfg = optim_cfg(name=name, fp8_moments=True, weight_decay=0.0, clip=0.0)
    plain = optim.OPTIMIZERS[name](cfg, optim.hparams_from_config(cfg))
    fp8 = fp8_moments(plain)
    params = jax.tree.map(jnp.asarray, tensors(1))
    state = fp8.init(params)
    assert isinstance(state, FP8MomentsState)
    assert {x.dtype for x in jax.tree.leaves(state.inner.mu)} == {jnp.dtype(jnp.float8_e4m3fn)}
    assert {x.dtype for x in jax.tree.leaves(state.inner.nu)} == {jnp.dtype(jnp.float8_e5m2)}
    step = jax.jit(fp8.update)
    for k in range(5):
        g = jax.tree.map(lambda p: jnp.asarray(p) * (1.0 + 0.1 * k), tensors(10 + k))
        inner = unpack(state)
        want_u, want_inner = plain.update(g, inner)
        u, state = step(g, state)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), u, want_u)  # jit vs eager
        for field, fmt in (("mu", "e4m3"), ("nu", "e5m2")):
            stored = getattr(unpack(state), field)
            for got, new in zip(jax.tree.leaves(stored), jax.tree.leaves(getattr(want_inner, field))):
                np.testing.assert_allclose(got, np_quantize(np.asarray(new), fmt)[0], rtol=2e-7, atol=1e-30)
    assert int(state.inner.count) == 5


def test_composes_in_make_optimizer_shards_like_params_and_refuses_sgd():
    params = {"blocks": {"kernel": jnp.ones((2, 3, 4)), "scale": jnp.ones((2, 4))}, "embed": jnp.ones((5, 4))}
    for name in ("adamw", "spam"):
        tx = optim.make_optimizer(optim_cfg(name=name, fp8_moments=True, **{"skip_step.enabled": True}), 8)
        state = jax.eval_shape(tx.init, params)
        specs = jax.tree.map(lambda p: f"param{p.ndim}", params)
        mapped = optax.tree_map_params(tx, lambda _, spec: spec, state, specs, transform_non_params=lambda _: "rest")
        leaves = jax.tree.leaves(mapped)  # the float8 moments shard like params; the scale vectors are the rest
        assert sorted(x for x in leaves if x != "rest") == sorted(["param3", "param2", "param2"] * 2)
        found = optax.tree_utils.tree_get_all_with_path(state, "FP8MomentsState")
        assert len(found) == 1 and found[0][1].mu_scale.shape == (3,)
    with pytest.raises(ValueError, match="optim.fp8_moments"):
        optim.make_optimizer(optim_cfg(name="sgd", fp8_moments=True), 8)


def test_adam_attenuation_reads_the_dequantised_moments():
    cfg = optim_cfg(fp8_moments=True)
    tx = optim.make_optimizer(cfg, 10)
    params = {"w": jnp.ones((8, 8))}
    state = tx.init(params)
    for k in range(3):
        _, state = tx.update({"w": jax.random.normal(jax.random.key(k), (8, 8))}, state, params)
    got = optim.adam_attenuation(state, 1e-8, 0.9, 0.95)
    ref = optim.adam_attenuation(dequantized(state), 1e-8, 0.9, 0.95)
    assert list(got) == ["adam_attenuation/w"] and float(got["adam_attenuation/w"]) == float(ref["adam_attenuation/w"])
    assert 0.99 < float(got["adam_attenuation/w"]) <= 1.0


@pytest.mark.parametrize("name", ["adamw", "spam"])
def test_tiny_run_learns_and_resumes_bitwise(tmp_path, tiny_config, runtime, name):
    from launch import loop

    cfg = tiny_config(**{"optim.name": name, "optim.fp8_moments": True, "train.progress": False})
    full, killed = tmp_path / "full", tmp_path / "killed"
    summary = loop.train(cfg, full, rt=runtime(cfg))
    # float32 moments reach 6.2376 (adamw and spam) from 6.7342 on this run; FP8 moments 6.2375 / 6.2372
    assert not summary["diverged"] and summary["eval_loss"] < summary["initial_loss"] - 0.45
    shutil.copytree(full, killed)  # as if killed after the step-30 checkpoint
    shutil.rmtree(killed / "checkpoints" / "40")
    (killed / "summary.json").unlink()
    loop.train(cfg, killed, rt=runtime(cfg))
    a, b = helpers.restore(full / "checkpoints", 40, cfg), helpers.restore(killed / "checkpoints", 40, cfg)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    (_, stored), = optax.tree_utils.tree_get_all_with_path(a["opt_state"], "FP8MomentsState")
    assert {x.dtype for x in jax.tree.leaves(stored.inner.mu)} == {jnp.dtype(jnp.float8_e4m3fn)}  # float8 on disk
    assert {x.dtype for x in jax.tree.leaves(stored.inner.nu)} == {jnp.dtype(jnp.float8_e5m2)}
