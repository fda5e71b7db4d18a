"""Absolute position embeddings (`model.position`): sinusoidal (Vaswani et al. 2017 §3.5) and learned (GPT-2)
against float64 values; neither applies RoPE; the learned table refuses sequences longer than it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import base
from models import attention, layers, transformer


def model_cfg(**overrides):
    cfg = base.get_config("tiny").model
    cfg.update(**{"dtype": "float32", "vocab_size": 96, "d_model": 32, "n_heads": 2, **overrides})
    return cfg


def sinusoids64(T: int, d: int) -> np.ndarray:
    """PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d)), float64, written out per entry."""
    pe = np.zeros((T, d))
    for t in range(T):
        for i in range(d // 2):
            pe[t, 2 * i] = np.sin(t / 10000.0 ** (2 * i / d))
            pe[t, 2 * i + 1] = np.cos(t / 10000.0 ** (2 * i / d))
    return pe


def test_sinusoidal_positions_match_float64():
    np.testing.assert_allclose(layers.sinusoidal_positions(50, 32), sinusoids64(50, 32), atol=2e-5)
    np.testing.assert_array_equal(layers.sinusoidal_positions(50, 32)[0, 1::2], 1.0)  # cos(0) on every odd channel


@pytest.mark.parametrize("position", ["sinusoidal", "learned"])
def test_x0_is_the_token_embedding_plus_the_position_row(position):
    cfg = model_cfg(position=position, max_positions=40, embed_scale="scaled")
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    tok = jax.random.randint(jax.random.key(1), (2, 13), 0, cfg.vocab_size)
    table = np.asarray(model.embed.embedding[...], np.float64)[np.asarray(tok)] * np.sqrt(cfg.d_model)
    pe = sinusoids64(13, 32) if position == "sinusoidal" else np.asarray(model.positions.embedding[...])[:13]
    np.testing.assert_allclose(model.embed_tokens(tok), table + pe[None], rtol=1e-5, atol=3e-5)
    if position == "learned":
        assert model.positions.embedding.shape == (40, cfg.d_model)
        with pytest.raises(ValueError, match="max_positions"):
            model(jnp.zeros((1, 41), jnp.int32))


@pytest.mark.parametrize("position", ["rope", "sinusoidal", "learned"])
def test_only_rope_makes_attention_position_dependent(position):
    """The same vector at every position: without RoPE every logit of a row is equal, so each causal row is uniform
    and the attention entropy is mean_i log(i + 1) exactly; with RoPE the logits depend on the positions."""
    cfg = model_cfg(position=position)
    attn = attention.Attention(cfg, d_model=32, n_heads=2, head_dim=16, rngs=nnx.Rngs(0))
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(2), (32,)) * 3, (1, 12, 32))
    entropy = float(attn(x, diagnostics=True)[1]["attn_entropy"])
    uniform = np.mean(np.log(np.arange(1, 13)))
    if position == "rope":
        assert abs(entropy - uniform) > 1e-2
    else:
        np.testing.assert_allclose(entropy, uniform, rtol=1e-4)


def test_unknown_position_and_bad_settings_are_refused():
    for overrides, match in ((dict(position="alibi"), "model.position"),
                             (dict(position="learned", max_positions=0), "max_positions"),
                             (dict(position="sinusoidal", d_model=33, head_dim=16), "even")):
        with pytest.raises(ValueError, match=match):
            transformer.Transformer(model_cfg(**overrides), rngs=nnx.Rngs(0))
