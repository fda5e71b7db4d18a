"""Layers shared by every model variant: linear maps with logical axes, norms, embeddings, init rules.

Every parameter carries `axes` metadata (logical axis names such as "embed", "heads", "mlp", "vocab"); the
runtime (launch/mesh.py) maps them onto mesh axes. Modules never decide placement themselves.

Init rules (registry `INITS`, selected by `model.init`):
  fan_in  Wortsman et al. 2023 / nanodo (spec model-variants §6(b)): embedding N(0, 1/d); every other kernel a
          truncated normal with std 1/sqrt(fan_in) (jax's variance_scaling corrects the truncation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class InitRule:
    """How to initialise the embedding table and the linear kernels of one model."""

    embed: Callable[[int], Initializer]  # d_model -> initializer of the [V, d] table
    kernel: Callable[[int], Initializer]  # fan_in -> initializer of a kernel


def _fan_in_kernel(fan_in: int) -> Initializer:
    # variance_scaling on a reshaped kernel would need in/out axes; we pass the fan-in explicitly instead.
    std = 1.0 / math.sqrt(fan_in)
    # jax.nn.initializers.truncated_normal truncates at +-2 std; dividing by the std of the truncated unit
    # normal (0.87962566) restores the requested std, as variance_scaling(..., "truncated_normal") does.
    return jax.nn.initializers.truncated_normal(std / 0.87962566103423978)


INITS: dict[str, InitRule] = {
    "fan_in": InitRule(
        embed=lambda d: jax.nn.initializers.normal(1.0 / math.sqrt(d)),
        kernel=_fan_in_kernel,
    ),
}


def get_init(name: str) -> InitRule:
    if name not in INITS:
        raise ValueError(f"model.init={name!r} is unknown; choose one of {sorted(INITS)}")
    return INITS[name]


def _dot(x, w, n_in: int, out_dtype):
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, w, (contract, ((), ())), preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dot_wide_out(x: jax.Array, w: jax.Array, n_in: int) -> jax.Array:
    """x . w in the inputs' (low) precision with a float32 result, whose backward runs in the inputs' precision.

    Used for the output head: the logits keep float32 precision for the loss, but the incoming gradient is cast
    to the compute dtype before the two backward matmuls. Without this, XLA promotes those matmuls to float32
    (the cotangent is float32), which on the H200 made a 9.4M-proxy step 2x slower (RESULTS.md).
    """
    return _dot(x, w, n_in, jnp.float32)


def _dot_wide_out_fwd(x, w, n_in):
    return _dot(x, w, n_in, jnp.float32), (x, w)


def _dot_wide_out_bwd(n_in, res, g):
    x, w = res
    g = g.astype(x.dtype)
    n_out = g.ndim - (x.ndim - n_in)
    batch_axes = tuple(range(x.ndim - n_in))
    # dx = g . w^T over the output axes; dw = x^T . g over the batch axes
    dx = jax.lax.dot_general(
        g, w, ((tuple(range(len(batch_axes), g.ndim)), tuple(range(n_in, n_in + n_out))), ((), ())),
        preferred_element_type=jnp.float32,
    ).astype(x.dtype)
    dw = jax.lax.dot_general(x, g, ((batch_axes, batch_axes), ((), ())), preferred_element_type=jnp.float32)
    return dx, dw.astype(w.dtype)


dot_wide_out.defvjp(_dot_wide_out_fwd, _dot_wide_out_bwd)


class Linear(nnx.Module):
    """y = x . W contracting the trailing `len(in_shape)` axes of x with the leading axes of W (no bias).

    The kernel has shape in_shape + out_shape, e.g. [d, H, Dh] for a query projection, so heads stay explicit and
    shardable. Matmuls run in `dtype` with float32 accumulation; the kernel is stored in `param_dtype`. With a
    float32 `out_dtype` and a lower-precision `dtype` (the output head) the backward stays in `dtype`.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        axes: tuple[str | None, ...],
        *,
        init: Initializer,
        dtype: jnp.dtype,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        out_dtype: jnp.dtype | None = None,
    ):
        shape = (*in_shape, *out_shape)
        assert len(axes) == len(shape), (axes, shape)
        self.kernel = nnx.Param(init(rngs.params(), shape, param_dtype), axes=axes)
        self.n_in = len(in_shape)
        self.dtype = dtype
        self.out_dtype = out_dtype or dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x, w = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
        if self.out_dtype == jnp.float32 and self.dtype != jnp.float32:
            return dot_wide_out(x, w, self.n_in)
        return _dot(x, w, self.n_in, self.out_dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with a learned scale and no bias; statistics in float32."""

    def __init__(self, dim: int, axis_name: str | None, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=(axis_name,))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis with a learned scale; statistics in float32."""

    def __init__(self, dim: int, axis_name: str | None, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=(axis_name,))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def make_norm(cfg, dim: int, axis_name: str | None) -> nnx.Module:
    """The norm selected by `model.norm`, over a last axis of size `dim`."""
    if cfg.norm not in NORMS:
        raise ValueError(f"model.norm={cfg.norm!r} is unknown; choose one of {sorted(NORMS)}")
    return NORMS[cfg.norm](
        dim, axis_name, eps=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype)
    )


class Embed(nnx.Module):
    """Token embedding table [V, d]; also serves as the output head when embeddings are tied."""

    def __init__(self, vocab_size: int, d_model: int, *, init: Initializer, dtype, param_dtype, rngs: nnx.Rngs):
        self.embedding = nnx.Param(init(rngs.params(), (vocab_size, d_model), param_dtype), axes=("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], tokens_BxT, axis=0).astype(self.dtype)

    def attend(self, x_BxTxD: jax.Array, out_dtype) -> jax.Array:
        """Logits against the table (tied head): x . E^T."""
        e = self.embedding[...].astype(self.dtype)
        return jnp.einsum("btd,vd->btv", x_BxTxD.astype(self.dtype), e, preferred_element_type=out_dtype)
