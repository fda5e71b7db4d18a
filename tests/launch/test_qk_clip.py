"""QK-clip (`model.qk_clip`, Kimi K2's MuonClip rescale) in the train step: after a step whose forward saw a head's
max logit S > τ, that head's Wq and Wk are scaled by sqrt(τ/S) each, so the same batch then gives max logit τ;
heads below τ are untouched; the fast attention's extra max pass agrees with the explicit logits; refusals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import base
from launch import mesh as mesh_lib, step as step_lib
from models import attention, transformer


def small_cfg(tau: float):
    cfg = base.get_config("tiny")
    cfg.model.update(vocab_size=64, d_model=32, n_layers=1, n_heads=4, dtype="float32", qk_clip=tau)
    cfg.data.update(seq_len=16, batch_size=4)
    cfg.optim.update(lr=0.0, weight_decay=0.0)  # the update is zero: the step changes only what QK-clip rescales
    cfg.train.update(steps=10)
    return cfg


def max_logits_H(prog, params, rest, batch_BxS) -> np.ndarray:
    """Each head's max logit of layer 0 on `batch_BxS`, from the explicit float32 logits (a diagnostic forward)."""
    model = nnx.merge(prog.graphdef, params, rest)
    return np.asarray(model(batch_BxS[:, :-1], diagnostics=True)[1]["attn_max_logit_per_head/layer_0"], np.float64)


def test_rescaled_heads_give_max_logit_tau_on_the_same_batch():
    tau = 6.0
    cfg = small_cfg(tau)
    prog = step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh))
    state = jax.jit(prog.init)(jnp.int32(0))
    attn = state["params"]["blocks"][0]["attn"]
    # heads 0 and 2 far above τ (Wq and Wk × 4: logits × 16), heads 1 and 3 as initialised (below τ)
    boost_H = jnp.asarray([4.0, 1.0, 4.0, 1.0])
    for name in ("q", "k"):
        attn[name]["kernel"] = attn[name]["kernel"] * boost_H[None, :, None]
    batch = jax.random.randint(jax.random.key(3), (4, 17), 0, cfg.model.vocab_size)
    before_H = max_logits_H(prog, state["params"], state["rest"], batch)
    assert np.all(before_H[[0, 2]] > tau) and np.all(before_H[[1, 3]] < tau), before_H

    new, metrics = jax.jit(prog.train_step)(state, batch, step_lib.hparams_array(cfg))
    assert int(metrics["qk_clip_heads"]) == 2
    # float64 reference of the rescale from the step's own max logits
    scale_H = np.where(before_H > tau, np.sqrt(tau / before_H), 1.0)
    for name in ("q", "k"):
        np.testing.assert_allclose(new["params"]["blocks"][0]["attn"][name]["kernel"],
                                   np.asarray(attn[name]["kernel"], np.float64) * scale_H[None, :, None], rtol=2e-6)
    after_H = max_logits_H(prog, new["params"], new["rest"], batch)
    np.testing.assert_allclose(after_H[[0, 2]], tau, rtol=1e-5)
    np.testing.assert_allclose(after_H[[1, 3]], before_H[[1, 3]], rtol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, new["params"]["blocks"][0]["mlp"], state["params"]["blocks"][0]["mlp"])


@pytest.mark.parametrize("name", ["softmax", "ls"])
def test_fast_path_max_pass_equals_the_explicit_logits(name):
    """The training forward's per-head max (the extra q·k pass beside jax.nn.dot_product_attention) equals the
    diagnostic forward's, and costs no gradient."""
    cfg = small_cfg(1.0).model
    cfg.update(attention=name, ls=dict(n_global=1, window=5))
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    tok = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab_size)
    _, train = model(tok)
    _, diag = model(tok, diagnostics=True)
    assert set(train) == {"attn_max_logit_per_head/layer_0"}
    np.testing.assert_allclose(train["attn_max_logit_per_head/layer_0"], diag["attn_max_logit_per_head/layer_0"],
                               rtol=1e-6)


def test_qk_clip_scales_are_one_at_or_below_tau_and_when_not_finite():
    s = attention.qk_clip_scales(jnp.asarray([1.0, 4.0, 16.0, 100.0, jnp.nan, jnp.inf]), 4.0)
    np.testing.assert_allclose(s, np.asarray([1.0, 1.0, 0.5, 0.2, 1.0, 1.0]), rtol=1e-7)


@pytest.mark.parametrize("overrides", [dict(qk_norm=True), dict(sigma_reparam=True), dict(attention="softplus"),
                                       dict(attention="mlra"), dict(qk_clip=-1.0)])
def test_refused_where_a_rescale_of_wq_wk_does_not_clip(overrides):
    cfg = small_cfg(5.0).model
    cfg.update(**overrides)
    with pytest.raises(ValueError, match="qk_clip"):
        transformer.Transformer(cfg, rngs=nnx.Rngs(0))
