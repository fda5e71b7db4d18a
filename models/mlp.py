"""Position-wise MLPs of the pre-LN block, selected by `model.mlp` (registry `MLPS`)."""

from __future__ import annotations

import jax
from flax import nnx

from models import layers


class GeluMLP(nnx.Module):
    """x -> GELU(x W1) W2 with hidden width d_ff (4d in the paper), no biases."""

    def __init__(self, cfg, *, d_model: int, d_ff: int, rngs: nnx.Rngs):
        init = layers.get_init(cfg)
        self.fc1 = layers.make_linear(cfg, (d_model,), (d_ff,), ("embed", "mlp"), init=init.kernel(d_model), rngs=rngs)
        self.fc2 = layers.make_linear(cfg, (d_ff,), (d_model,), ("mlp", "embed"), init=init.out_kernel(d_ff), rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x_BxTxD)))


MLPS = {"gelu": GeluMLP}


def make_mlp(cfg, *, d_model: int, d_ff: int, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.mlp not in MLPS:
        raise ValueError(f"model.mlp={cfg.mlp!r} is unknown; choose one of {sorted(MLPS)}")
    return MLPS[cfg.mlp](cfg, d_model=d_model, d_ff=d_ff, rngs=rngs)
