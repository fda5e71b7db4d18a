"""optim/muon.py (`optim.name=muon`): one update against a float64 Newton–Schulz reference written from the
papers' equations (Jordan et al. 2024; Liu et al. 2025 eq. 4), the Adam part on embed/head/vectors, and a tiny
CPU run that learns."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_optim  # tests/optim/test_optim.py: optim_cfg

import optim
from launch import loop

NS = (3.4445, -4.775, 2.0315)


def np_newton_schulz(g, steps=5):
    """float64: X = G/‖G‖_F (transposed to wide), `steps` quintic iterations, transposed back."""
    x = g / np.linalg.norm(g)
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T
    for _ in range(steps):
        a = x @ x.T
        x = NS[0] * x + (NS[1] * a + NS[2] * a @ a) @ x
    return x if wide else x.T


def shapes():
    return {
        "blocks": {0: {
            "attn": {"q": {"kernel": (8, 2, 4)}, "o": {"kernel": (2, 4, 8)}},
            "mlp": {"fc1": {"kernel": (8, 16)}, "fc2": {"kernel": (16, 8)}},
            "norm1": {"scale": (8,)},
        }},
        "embed": {"embedding": (32, 8)},
        "head": {"kernel": (8, 32)},
    }


@pytest.mark.parametrize("rms_scale", [0.2, 0.0])
def test_one_muon_update_matches_float64_newton_schulz(rms_scale):
    rng = np.random.default_rng(0)
    tree = shapes()
    is_shape = lambda x: isinstance(x, tuple)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), tree, is_leaf=is_shape)
    grads = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), tree, is_leaf=is_shape)
    lr, ratio = 0.05, 0.5
    cfg = test_optim.optim_cfg(name="muon", schedule="constant", lr=lr, weight_decay=0.0, clip=0.0, warmup_steps=0,
                               **{"muon.rms_scale": rms_scale, "muon.adam_lr_ratio": ratio})
    tx = optim.make_optimizer(cfg, 10)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)

    block = grads["blocks"][0]
    # (gradient as a matrix, fan_in, fan_out, how to read the update back as that matrix)
    matrices = {
        ("attn", "q"): (np.asarray(block["attn"]["q"]["kernel"], np.float64).reshape(8, 8), 8, 8),
        ("attn", "o"): (np.asarray(block["attn"]["o"]["kernel"], np.float64).reshape(8, 8), 8, 8),
        ("mlp", "fc1"): (np.asarray(block["mlp"]["fc1"]["kernel"], np.float64), 8, 16),
        ("mlp", "fc2"): (np.asarray(block["mlp"]["fc2"]["kernel"], np.float64), 16, 8),
    }
    for (mod, name), (g, fan_in, fan_out) in matrices.items():
        scale = rms_scale * np.sqrt(max(fan_in, fan_out)) if rms_scale else np.sqrt(max(1.0, fan_out / fan_in))
        ref = -lr * scale * np_newton_schulz(g)
        got = np.asarray(updates["blocks"][0][mod][name]["kernel"], np.float64).reshape(g.shape)
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5 * np.abs(ref).max(), err_msg=f"{mod}/{name}")
    # everything else is Adam's first step, m̂/(√v̂ + ε) = g/(|g| + ε), at ratio·lr
    for got, g in [(updates["embed"]["embedding"], grads["embed"]["embedding"]),
                   (updates["head"]["kernel"], grads["head"]["kernel"]),
                   (updates["blocks"][0]["norm1"]["scale"], grads["blocks"][0]["norm1"]["scale"])]:
        g = np.asarray(g, np.float64)
        np.testing.assert_allclose(np.asarray(got), -ratio * lr * g / (np.abs(g) + 1e-8), rtol=1e-6)


def test_newton_schulz_reference_is_near_orthogonal():
    """The yardstick itself: NS's singular values land in Jordan's band (~0.7-1.2), not exactly 1."""
    s = np.linalg.svd(np_newton_schulz(np.random.default_rng(1).normal(size=(8, 16))), compute_uv=False)
    assert 0.6 < s.min() and s.max() < 1.25


def test_tiny_muon_run_learns(tiny_config, runtime, tmp_path):
    cfg = tiny_config(**{"optim.name": "muon", "optim.lr": 1e-2, "train.eval_every": 40})
    summary = loop.train(cfg, tmp_path, rt=runtime(cfg), verbose=False)
    assert not summary["diverged"]
    assert summary["eval_loss"] < summary["initial_loss"] - 0.5, summary
