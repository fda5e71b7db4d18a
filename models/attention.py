"""Causal self-attention: projections, optional qk-layernorm, RoPE, and a registry of attention kernels.

`Attention` owns the parameters (Wq, Wk, Wv: [d, H, Dh]; Wo: [H, Dh, d]) and the optional per-head qk-layernorm;
the kernel that turns (q, k, v) into the mixed values is looked up in `KERNELS` by `model.attention`, so a
variant that changes only the attention pattern is one function and one registry entry.

Diagnostics (DESIGN §5) are computed only when asked for (diagnostic steps): they materialise the fp32 logit
matrix, which the fast path never does.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers


def rope(x_BxTxHxK: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding, rotate-half convention, computed in float32.

    Channel i (i < K/2) is paired with channel i + K/2 and the pair at position t is rotated by angle
    t * base^(-2i/K) (Su et al. 2021, eq. 34, with the GPT-NeoX channel pairing).
    """
    _, T, _, K = x_BxTxHxK.shape
    half = K // 2
    inv_freq_F = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / K)
    angle_TxF = jnp.arange(T, dtype=jnp.float32)[:, None] * inv_freq_F[None, :]
    cos, sin = jnp.cos(angle_TxF)[None, :, None, :], jnp.sin(angle_TxF)[None, :, None, :]
    x = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


def causal_logits(q_BxTxHxK: jax.Array, k_BxTxHxK: jax.Array, scale: float) -> jax.Array:
    """Pre-softmax logits z_ij = scale * <q_i, k_j> in float32, -inf above the diagonal: [B, H, T, T]."""
    T = q_BxTxHxK.shape[1]
    z = jnp.einsum("bqhd,bkhd->bhqk", q_BxTxHxK, k_BxTxHxK, preferred_element_type=jnp.float32) * scale
    causal_TxT = jnp.tril(jnp.ones((T, T), bool))
    return jnp.where(causal_TxT, z, -jnp.inf)


def attention_diagnostics(z_BxHxTxT: jax.Array, probs_BxHxTxT: jax.Array, eps: float = 1e-6) -> dict:
    """Max pre-softmax logit and attention entropy (spec model-variants §0; eps inside the log as in σReparam)."""
    ent_BxHxT = -(probs_BxHxTxT * jnp.log(probs_BxHxTxT + eps)).sum(-1)
    return {
        "attn_max_logit": jnp.max(z_BxHxTxT),
        "attn_entropy": ent_BxHxT.mean(),
        "attn_entropy_per_head": ent_BxHxT.mean(axis=(0, 2)),
    }


def softmax_kernel(q, k, v, *, scale: float, impl: str, diagnostics: bool):
    """softmax(q k^T * scale + causal mask) v. Fast path: jax.nn.dot_product_attention (cuDNN flash on GPU)."""
    if not diagnostics:
        out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation=impl)
        return out, {}
    z = causal_logits(q, k, scale)
    probs = jax.nn.softmax(z, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)
    return out, attention_diagnostics(z, probs)


KERNELS: dict[str, Callable] = {"softmax": softmax_kernel}


def resolve_impl(name: str, dtype: jnp.dtype) -> str:
    """`model.attention_impl`: "auto" picks cuDNN flash attention on GPU for half-precision inputs, else XLA."""
    if name == "auto":
        half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        return "cudnn" if jax.default_backend() == "gpu" and half else "xla"
    if name not in ("xla", "cudnn"):
        raise ValueError(f"model.attention_impl={name!r} is unknown; choose auto, xla or cudnn")
    return name


class Attention(nnx.Module):
    """Multi-head causal self-attention with RoPE and optional per-head qk-layernorm (Wortsman et al. §3.1)."""

    def __init__(self, cfg, *, d_model: int, n_heads: int, head_dim: int, rngs: nnx.Rngs):
        if cfg.attention not in KERNELS:
            raise ValueError(f"model.attention={cfg.attention!r} is unknown; choose one of {sorted(KERNELS)}")
        init = layers.get_init(cfg.init)
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        proj = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
        qkv_axes = ("embed", "heads", "head_dim")
        self.q = layers.Linear((d_model,), (n_heads, head_dim), qkv_axes, init=init.kernel(d_model), **proj)
        self.k = layers.Linear((d_model,), (n_heads, head_dim), qkv_axes, init=init.kernel(d_model), **proj)
        self.v = layers.Linear((d_model,), (n_heads, head_dim), qkv_axes, init=init.kernel(d_model), **proj)
        self.o = layers.Linear(
            (n_heads, head_dim), (d_model,), ("heads", "head_dim", "embed"), init=init.kernel(n_heads * head_dim), **proj
        )
        # Per-head qk-layernorm: one LayerNorm over Dh whose scale (Dh entries) is shared across heads; q and k
        # get separate norms [D]. Order: LN, then RoPE, then the dot product [D] (spec §6(a)).
        self.q_norm = nnx.data(layers.make_norm(cfg, head_dim, "head_dim") if cfg.qk_norm else None)
        self.k_norm = nnx.data(layers.make_norm(cfg, head_dim, "head_dim") if cfg.qk_norm else None)
        self.kernel = KERNELS[cfg.attention]
        self.impl = resolve_impl(cfg.attention_impl, dt)
        self.scale = 1.0 / math.sqrt(head_dim)
        self.rope_base = cfg.rope_base

    def __call__(self, x_BxTxD: jax.Array, diagnostics: bool = False) -> tuple[jax.Array, dict]:
        q, k, v = self.q(x_BxTxD), self.k(x_BxTxD), self.v(x_BxTxD)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q, self.rope_base), rope(k, self.rope_base)
        out_BxTxHxK, diag = self.kernel(q, k, v, scale=self.scale, impl=self.impl, diagnostics=diagnostics)
        return self.o(out_BxTxHxK), diag
