"""Init rules (models/layers.py INITS; MLRA's factors in models/attention.py): the std of every kernel of a small
model equals its rule. Tolerance from the sample size: the sample std of n i.i.d. normals has relative standard error
1/sqrt(2n), and we allow 5 of them (a false failure has probability < 1e-6 per kernel)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flax import nnx

from experiments import base
from models import transformer

D, L, V = 64, 3, 512


def model(**overrides):
    cfg = base.get_config("tiny").model
    cfg.update(dtype="float32", d_model=D, n_layers=L, n_heads=2, vocab_size=V, **overrides)
    return transformer.Transformer(cfg, rngs=nnx.Rngs(0))


def assert_std(w, std, name):
    x = np.asarray(w[...], np.float64).ravel()
    assert abs(x.mean()) < 5 * std / math.sqrt(x.size), name  # zero-mean
    assert x.std() == pytest.approx(std, rel=5 / math.sqrt(2 * x.size)), name


def kernels(m):
    """(name, kernel, is a residual-branch output) for every weight of the model."""
    yield "embed", m.embed.embedding, False
    yield "head", m.head.kernel, False
    for i, blk in enumerate(m.blocks):
        for name, lin in [("q", blk.attn.q), ("k", blk.attn.k), ("v", blk.attn.v), ("fc1", blk.mlp.fc1)]:
            yield f"{i}/{name}", lin.kernel, False
        yield f"{i}/o", blk.attn.o.kernel, True
        yield f"{i}/fc2", blk.mlp.fc2.kernel, True


def test_gpt2_init_statistics():
    """model.init=gpt2: every weight N(0, 0.02²), Wo and W2 N(0, (0.02/sqrt(2L))²), untruncated (GPT-2 §2.3)."""
    m = model(init="gpt2")
    for name, w, is_out in kernels(m):
        assert_std(w, 0.02 / math.sqrt(2 * L) if is_out else 0.02, name)
    fc1 = np.asarray(m.blocks[0].mlp.fc1.kernel[...])
    assert np.abs(fc1).max() > 3 * 0.02  # a plain normal: 3-sigma draws exist in 64·256 samples (truncation would cut at 2)


def test_mlra_factors_follow_model_init():
    """MLRA's factors are drawn like the dense q/k/v kernel of `model.init` (the paper: GPT-2's N(0, 0.02²)); so at
    init std(q_MLRA) / std(q_dense) = sqrt(r)·0.02 under gpt2 (spec §2(e) check 2), on the same model's inputs."""
    for init, std in [("gpt2", 0.02), ("small", math.sqrt(2 / (5 * D)))]:
        m = model(init=init, attention="mlra")
        for i, blk in enumerate(m.blocks):
            for name in "qkv":
                proj = getattr(blk.attn, name)
                assert_std(proj.a, std, f"{init} {i}/{name}.a")
                assert_std(proj.b, std, f"{init} {i}/{name}.b")
    fan_in = model(init="fan_in", attention="mlra").blocks[0].attn.q  # the dense kernel's 1/sqrt(d), both factors
    assert_std(fan_in.a, 1 / math.sqrt(D), "fan_in a")
    assert_std(fan_in.b, 1 / math.sqrt(D), "fan_in b")
    explicit = model(init="gpt2", attention="mlra", mlra=dict(rank=0, shared_latent=False, init_std=0.05))
    assert_std(explicit.blocks[1].attn.k.b, 0.05, "init_std override")
