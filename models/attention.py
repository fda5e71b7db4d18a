"""Causal self-attention: projections, optional qk-layernorm, RoPE, and a registry of attention variants.

`Attention` owns the parameters (Wq, Wk, Wv: [d, H, Dh]; Wo: [H, Dh, d]) and the optional per-head qk-layernorm.
`model.attention` selects an entry of `ATTENTIONS`: the kernel that turns (q, k, v) into the mixed values, and how
the q/k/v projections are built. A variant is one kernel class (or projection) plus one registry entry:

  softmax   softmax(q kᵀ/sqrt(Dh) + causal mask) v                           (baseline; Wortsman et al. 2023)
  ls        Long-Short attention: n_global full-causal heads, the others causal sliding-window heads
            (Hajra 2025, spec §1)
  softplus  LSSA / LSSAR: L2-normalised q, k, softplus with a log(Dh)·log(N) scale, l1 rows, optional re-weighting
            (Gao & Spratling 2025, spec §4)
  mlra      softmax attention whose Wq, Wk, Wv are low-rank products A·B (Chung et al. 2024, spec §2)

Logit controls (issue 16): `model.attn_softcap` (Gemma 2's c·tanh(z/c) on the softmax kernels' logits, explicit
path) and `model.qk_clip` (Kimi K2's per-head rescale of Wq, Wk after a step: `check_qk_clip`, `qk_clip_scales`,
`clip_qk`; the kernels return each head's max logit from the training forward for it).

Methods that constrain the logits through Q/K (qk-layernorm, a variant whose entry says `bounds_logits`, σReparam
on Wq/Wk) are not stacked unless `model.allow_stacking` says so (spec §9; `check_stacking`).

Diagnostics (DESIGN §5) are computed only when asked for (diagnostic steps): they materialise the fp32 logit
matrix, which the fast paths never do. Every kernel reports `ATTENTION_DIAGNOSTICS`; a variant's entry lists its
extras and which of them a config reports (`AttentionVariant.diagnostics`, `.reported`), so the names a run logs
are known from the registry (models/probes.py `diagnostic_names`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers, lssar_pallas


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


# name -> meaning of the diagnostics every kernel reports (per layer: "<name>/layer_i")
ATTENTION_DIAGNOSTICS = {
    "attn_max_logit": "max pre-softmax logit q·k/sqrt(Dh) over the batch, before model.attn_softcap (softplus: max "
                      "stage-1 pre-activation log(Dh)·log(i)·q̂·k̂)",
    "attn_max_logit_per_head": "the same per head (a vector of n_heads; what model.qk_clip compares with τ)",
    "attn_entropy": "attention entropy -Σ_j A_ij log(A_ij + 1e-6), mean over batch, heads and rows",
    "attn_entropy_per_head": "the same per head (a vector of n_heads)",
    "attn_sink_mass": "attention mass on the first token A_i0, mean over batch, heads and queries i >= 1 (Guo et al. "
                      "2024, attention sinks)",
    "attn_sink_mass_per_head": "the same per head (a vector of n_heads; ~1: a dormant/sink head)",
}


def head_max_logit(z_BxHxTxT: jax.Array) -> jax.Array:
    """float32[H]: the max logit of each head over the batch, queries and (unmasked) keys; no gradient."""
    return jax.lax.stop_gradient(jnp.max(z_BxHxTxT, axis=(0, 2, 3)))


def attention_diagnostics(z_BxHxTxT: jax.Array, probs_BxHxTxT: jax.Array, eps: float = 1e-6) -> dict:
    """Max pre-softmax logit and attention entropy (spec model-variants §0; eps inside the log as in σReparam), and
    the attention-sink mass (spec §8.4: the sink weight of a head is A[h, i, 0] averaged over queries i; we average
    over i >= 1, since query 0 can only attend to itself and always puts mass 1 there [D])."""
    ent_BxHxT = -(probs_BxHxTxT * jnp.log(probs_BxHxTxT + eps)).sum(-1)
    sink_BxHxQ = probs_BxHxTxT[:, :, 1:, 0].astype(jnp.float32)
    return {
        "attn_max_logit": jnp.max(z_BxHxTxT),
        "attn_max_logit_per_head": head_max_logit(z_BxHxTxT),
        "attn_entropy": ent_BxHxT.mean(),
        "attn_entropy_per_head": ent_BxHxT.mean(axis=(0, 2)),
        "attn_sink_mass": sink_BxHxQ.mean(),
        "attn_sink_mass_per_head": sink_BxHxQ.mean(axis=(0, 2)),
    }


def softmax_mix(z_BxHxTxT: jax.Array, v_BxTxHxK: jax.Array, softcap: float = 0.0) -> tuple[jax.Array, dict]:
    """softmax over keys of masked fp32 logits (soft-capped first when `softcap` > 0: masked entries stay -inf), the
    mixed values, and the diagnostics of those logits (of the logits before the cap)."""
    capped = z_BxHxTxT
    if softcap:
        capped = jnp.where(z_BxHxTxT == -jnp.inf, -jnp.inf, layers.softcap(z_BxHxTxT, softcap))
    probs = jax.nn.softmax(capped, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v_BxTxHxK.dtype), v_BxTxHxK)
    return out, attention_diagnostics(z_BxHxTxT, probs)


def check_softcap(cfg) -> float:
    """`model.attn_softcap` (>= 0; 0 = off): runs the explicit float32 attention (`softmax_mix`), because
    jax.nn.dot_product_attention has no soft-cap; `attention_impl=auto` then resolves to it, and an explicit
    `attention_impl=cudnn` is refused (the cuDNN flash kernel cannot cap its logits)."""
    if cfg.attn_softcap < 0:
        raise ValueError(f"model.attn_softcap={cfg.attn_softcap} must be >= 0 (0 = off)")
    if cfg.attn_softcap and cfg.attention_impl == "cudnn":
        raise ValueError("model.attn_softcap needs the explicit attention, not cuDNN; set model.attention_impl=xla|auto")
    return float(cfg.attn_softcap)


@dataclasses.dataclass(frozen=True)
class SoftmaxKernel:
    """softmax(q kᵀ · scale + causal mask) v. Fast path: jax.nn.dot_product_attention (cuDNN flash on GPU).

    `softcap` > 0 (`model.attn_softcap`): softmax(softcap·tanh(z/softcap)) through the explicit float32 logits
    (`check_softcap`). `max_logits` (`model.qk_clip`): the training forward also returns each head's max logit
    (`attn_max_logit_per_head`). The explicit path has it for free; the fast path, which never forms the logits,
    pays one extra forward-only q·kᵀ matmul and max per layer (2·B·H·T²·Dh FLOPs, half of the attention
    forward's, and a transient float32 [B, H, T, T] unless XLA fuses the reduction; no backward)."""

    scale: float
    impl: str
    softcap: float = 0.0
    max_logits: bool = False

    @classmethod
    def from_config(cls, cfg, n_heads: int, head_dim: int) -> SoftmaxKernel:
        return cls(scale=1.0 / math.sqrt(head_dim), impl=resolve_impl(cfg.attention_impl, jnp.dtype(cfg.dtype)),
                   softcap=check_softcap(cfg), max_logits=cfg.qk_clip > 0)

    def __call__(self, q, k, v, diagnostics: bool):
        if diagnostics or self.softcap:
            out, diag = softmax_mix(causal_logits(q, k, self.scale), v, self.softcap)
            return out, diag if diagnostics else train_stats(self.max_logits, lambda: diag)
        out = jax.nn.dot_product_attention(q, k, v, scale=self.scale, is_causal=True, implementation=self.impl)
        return out, train_stats(self.max_logits, lambda: attention_diagnostics_max(causal_logits(q, k, self.scale)))


def attention_diagnostics_max(z_BxHxTxT: jax.Array) -> dict:
    """The one diagnostic a fast-path training forward computes for `model.qk_clip`: each head's max logit."""
    return {"attn_max_logit_per_head": head_max_logit(z_BxHxTxT)}


def train_stats(max_logits: bool, diag: Callable[[], dict]) -> dict:
    """What a kernel's training (non-diagnostic) forward returns: each head's max logit when `max_logits`
    (`model.qk_clip`), else nothing. `diag` computes the dict holding it, traced only when needed."""
    return {"attn_max_logit_per_head": diag()["attn_max_logit_per_head"]} if max_logits else {}


def long_short_mask(T: int, n_heads: int, n_global: int, window: int) -> jax.Array:
    """bool[H, T, T]: head h < n_global sees keys j <= i; a local head sees i - window < j <= i (spec §1(a)).

    Head indices 0..n_global-1 are the global heads [D]; a local head's window holds `window` keys including the
    query itself [D].
    """
    i, j = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    causal_TxT = j <= i
    local_TxT = causal_TxT & (i - j < window)
    is_global_H = jnp.arange(n_heads) < n_global
    return jnp.where(is_global_H[:, None, None], causal_TxT[None], local_TxT[None])


@dataclasses.dataclass(frozen=True)
class LongShortKernel:
    """LS-attention (Hajra 2025, arXiv 2505.15548 [S]; spec §1): the first `n_global` heads attend causally to
    every key, the others to the last `window` keys only. Same projections as MHSA, so the same parameters.

    Fast path: two jax.nn.dot_product_attention calls, the local one with local_window_size=(window-1, 0) (keys
    i-window+1..i; checked against `long_short_mask` in tests/models/test_variants.py on the XLA path). Diagnostics use
    the explicit mask and add the max logit per head group: attn_max_logit_global, attn_max_logit_local.
    """

    scale: float
    impl: str
    n_global: int
    window: int
    softcap: float = 0.0
    max_logits: bool = False

    @classmethod
    def from_config(cls, cfg, n_heads: int, head_dim: int) -> LongShortKernel:
        if not 0 <= cfg.ls.n_global <= n_heads:
            raise ValueError(f"model.ls.n_global={cfg.ls.n_global} must be in [0, model.n_heads={n_heads}]")
        if cfg.ls.window < 1:
            raise ValueError(f"model.ls.window={cfg.ls.window} must be >= 1")
        sm = SoftmaxKernel.from_config(cfg, n_heads, head_dim)
        return cls(scale=sm.scale, impl=sm.impl, n_global=cfg.ls.n_global, window=cfg.ls.window, softcap=sm.softcap,
                   max_logits=sm.max_logits)

    def logits(self, q, k) -> jax.Array:
        """The masked logits [B, H, T, T] (each head's own mask, `long_short_mask`), float32."""
        _, T, H, _ = q.shape
        mask_HxTxT = long_short_mask(T, H, self.n_global, self.window)
        return jnp.where(mask_HxTxT[None], causal_logits(q, k, self.scale), -jnp.inf)

    def __call__(self, q, k, v, diagnostics: bool):
        _, T, H, _ = q.shape
        g = self.n_global
        if diagnostics or self.softcap:  # the explicit path (attn_softcap: SoftmaxKernel's docstring)
            z = self.logits(q, k)
            out, diag = softmax_mix(z, v, self.softcap)
            if not diagnostics:
                return out, train_stats(self.max_logits, lambda: diag)
            groups = {"global": z[:, :g], "local": z[:, g:]}
            diag.update({f"attn_max_logit_{name}": jnp.max(zg) for name, zg in groups.items() if zg.shape[1]})
            return out, diag
        attend = functools.partial(
            jax.nn.dot_product_attention, scale=self.scale, is_causal=True, implementation=self.impl
        )
        parts = []
        if g:
            parts.append(attend(q[:, :, :g], k[:, :, :g], v[:, :, :g]))
        if g < H:
            parts.append(attend(q[:, :, g:], k[:, :, g:], v[:, :, g:], local_window_size=(self.window - 1, 0)))
        out = jnp.concatenate(parts, axis=2) if len(parts) > 1 else parts[0]
        return out, train_stats(self.max_logits, lambda: attention_diagnostics_max(self.logits(q, k)))


# LSSAR's offset matrix O is all ones except its first rows, which are zero for early-row stability (spec §4(a) [S]),
# and LSSA's L2 normalisation of q and k: both shared with the fused kernels (models/lssar_pallas.py).
LSSAR_OFFSET_FREE_ROWS = lssar_pallas.OFFSET_FREE_ROWS
_l2_normalize = lssar_pallas.l2_normalize


def lssar_weights(q_BxQxHxK, k_BxTxHxK, pos_Q, *, reweight: bool, power: int, eps: float):
    """LSSA (stage 1) and LSSAR (stage 2) attention weights for queries at 0-based positions `pos_Q` (spec §4(a)).

    Stage 1 (Gao & Spratling, eq. 4 [S]): q, k L2-normalised; A = softplus(log(Dh)·log(N) · q kᵀ) ⊙ M' with
    N_ij = i (1-based query position) and M' the 0/1 causal mask; rows l1-normalised. Stage 2 (eq. 5 [S], `reweight`):
    A = ReLU(A ⊙ N − O)^p, rows l1-normalised again, O = 1 except rows 1..3 = 0. float32 throughout (x^15).

    Overflow (issue 10): r = ReLU(A ⊙ N − O) reaches i − 1 at query position i, and r^15 exceeds float32's max once
    r > ~370, so the spec's pseudocode (§4(a)) gives inf/inf = NaN on sharp rows (forward and backward) at the
    lengths LSSAR is evaluated at. We compute the same function as r^p / (Σ_j r^p + eps) in the form
    u^p / (Σ_j u^p + eps·m^-p) with u = r/m and m the row max of r: every u^p <= 1, and eps·m^-p is 0 (m large)
    or inf (m tiny: the row is then 0, where r^p/(Σ r^p + eps) is below 3e-39). The identity holds for any m > 0,
    so m is held constant (stop_gradient) and the gradient is exact too. A row with m = 0 stays the zero row.
    Returns (stage-1 pre-activations s [B, H, Q, T], weights [B, H, Q, T]); entries above the diagonal are 0.
    """
    Dh, T = q_BxQxHxK.shape[-1], k_BxTxHxK.shape[1]
    q = _l2_normalize(q_BxQxHxK.astype(jnp.float32))
    k = _l2_normalize(k_BxTxHxK.astype(jnp.float32))
    n_Qx1 = (pos_Q + 1).astype(jnp.float32)[:, None]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * (math.log(Dh) * jnp.log(n_Qx1))
    causal_QxT = jnp.arange(T)[None, :] <= pos_Q[:, None]
    a = jnp.where(causal_QxT, jax.nn.softplus(s), 0.0)
    a = a / (a.sum(-1, keepdims=True) + eps)
    if reweight:
        offset_Qx1 = jnp.where(n_Qx1 > LSSAR_OFFSET_FREE_ROWS, 1.0, 0.0)
        r = jnp.maximum(a * n_Qx1 - offset_Qx1, 0.0)
        m = jax.lax.stop_gradient(jnp.max(r, axis=-1, keepdims=True))
        m = jnp.where(m > 0.0, m, 1.0)
        u = (r / m) ** power
        a = u / (u.sum(-1, keepdims=True) + eps * m ** (-power))
    return s, a


def lssar_blocked(q_BxQxHxK, k_BxTxHxK, v_BxTxHxK, pos_Q, *, key_chunk: int, reweight: bool, power: int, eps: float):
    """`lssar_weights` mixed with v ([B, Q, H, K], float32) without the [B, H, Q, T] weights: keys `key_chunk` at a
    time, so the largest live arrays are [B, H, Q, key_chunk] (memory O(Q · key_chunk), not O(Q · T)).

    Every quantity of the reference is a row sum, a row max or elementwise, so it splits over key blocks:
      LSSA (one pass):   Z_i = Σ_j a_ij and Y_i = Σ_j a_ij v_j, out_i = Y_i / (Z_i + eps)
      LSSAR (two):       pass 1: Z_i and a_max,i = max_j a_ij, so m_i = max_j r_ij = ReLU(a_max,i n_i / (Z_i + eps)
                         − o_i) (r is monotone in a); pass 2: r_ij from a_ij and Z_i, u_ij = (r_ij / m_i)^p,
                         out_i = Σ_j u_ij v_j / (Σ_j u_ij + eps m_i^-p)
    with `lssar_weights`'s overflow-safe form and stop-gradient m. Each pass is a `lax.scan` over key blocks with a
    `jax.checkpoint`ed body (the backward recomputes a block's weights); keys past T pad the last block and are
    masked like future keys. Equal to the reference up to the order of the row sums.
    """
    B, T, H, Dh = k_BxTxHxK.shape
    C = min(key_chunk, T)
    n = -(-T // C)
    q = _l2_normalize(q_BxQxHxK.astype(jnp.float32))
    blocks = lambda x: jnp.pad(x, ((0, 0), (0, n * C - T), (0, 0), (0, 0))).reshape(B, n, C, H, Dh).swapaxes(0, 1)
    k_NxBxCxHxK = blocks(_l2_normalize(k_BxTxHxK.astype(jnp.float32)))
    v_NxBxCxHxK = blocks(v_BxTxHxK.astype(jnp.float32))
    n_Qx1 = (pos_Q + 1).astype(jnp.float32)[:, None]
    scale_Qx1 = math.log(Dh) * jnp.log(n_Qx1)
    offset_Qx1 = jnp.where(n_Qx1 > LSSAR_OFFSET_FREE_ROWS, 1.0, 0.0)

    def stage1(i, k_BxCxHxK):  # softplus(s) ⊙ M' of key block i: [B, H, Q, C]
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k_BxCxHxK) * scale_Qx1
        return jnp.where(i * C + jnp.arange(C)[None, :] <= pos_Q[:, None], jax.nn.softplus(s), 0.0)

    def scan(body, init, *xs):  # the sums of body(i, *block_i) over key blocks i; body's backward recomputes
        def step(carry, x):
            return jax.tree.map(jnp.add, carry, body(*x)), None

        return jax.lax.scan(jax.checkpoint(step), init, (jnp.arange(n), *xs))[0]

    rows = jnp.zeros((B, H, q.shape[1]), jnp.float32)
    mixed = jnp.zeros(q.shape, jnp.float32)
    mix = lambda w, v: jnp.einsum("bhqk,bkhd->bqhd", w, v)
    if not reweight:
        def lssa(i, k, v):
            a = stage1(i, k)
            return a.sum(-1), mix(a, v)

        z, y = scan(lssa, (rows, mixed), k_NxBxCxHxK, v_NxBxCxHxK)
        return y / (jnp.moveaxis(z, 1, 2)[..., None] + eps)

    def z_and_max(carry, x):  # pass 1: Z (differentiated) and the row max of a (only m uses it: no gradient)
        a = stage1(*x)
        return (carry[0] + a.sum(-1), jnp.maximum(carry[1], jax.lax.stop_gradient(a).max(-1))), None

    z, a_max = jax.lax.scan(jax.checkpoint(z_and_max), (rows, rows), (jnp.arange(n), k_NxBxCxHxK))[0]
    zn_BxHxQ = z + eps
    m = jax.lax.stop_gradient(jnp.maximum(a_max / zn_BxHxQ * n_Qx1[:, 0] - offset_Qx1[:, 0], 0.0))
    m = jnp.where(m > 0.0, m, 1.0)

    def reweighted(i, k, v):
        r = jnp.maximum(stage1(i, k) / zn_BxHxQ[..., None] * n_Qx1 - offset_Qx1, 0.0)
        u = (r / m[..., None]) ** power
        return u.sum(-1), mix(u, v)

    u_sum, y = scan(reweighted, (rows, mixed), k_NxBxCxHxK, v_NxBxCxHxK)
    return y / jnp.moveaxis(u_sum + eps * m ** (-power), 1, 2)[..., None]


SOFTPLUS_IMPLS = ("xla", "pallas")  # model.softplus.impl


def softplus_impl(sp) -> str:
    """`model.softplus.impl` of the `model.softplus` block: "xla" (jnp, optionally chunked) or "pallas" (the fused
    kernels of models/lssar_pallas.py); run configs written before the field existed read "xla"."""
    impl = sp.get("impl", "xla")
    if impl not in SOFTPLUS_IMPLS:
        raise ValueError(f"model.softplus.impl={impl!r} is unknown; choose one of {SOFTPLUS_IMPLS}")
    return impl


@dataclasses.dataclass(frozen=True)
class SoftplusKernel:
    """LSSA / LSSAR attention (Gao & Spratling 2025, arXiv 2501.13428; spec §4), replacing softmax(q kᵀ/sqrt(Dh)).

    q and k arrive after RoPE and are L2-normalised here (order RoPE -> L2 [D]); there is no 1/sqrt(Dh), the mask
    is multiplicative and no parameter depends on the length, so a model trained at length T evaluates at any
    length. On the fast path `query_chunk` > 0 processes queries in blocks of that many (each block's backward
    recomputes its weights: memory [B, H, chunk, T] instead of [B, H, T, T], train and eval), and `key_chunk` > 0
    takes keys in blocks of that many (`lssar_blocked`: no [B, H, Q, T] weights at all; with both, memory
    [B, H, query_chunk, key_chunk]). `impl="pallas"` runs the fused kernels of models/lssar_pallas.py instead
    (issue 15: no T × T arrays in HBM, forward or backward; without chunks). Diagnostics (the explicit weights):
    attn_max_logit is the stage-1 pre-activation max; attn_degenerate_frac the fraction of rows that re-weighting
    zeroed (spec §4(e)2).
    """

    reweight: bool
    power: int
    eps: float
    query_chunk: int
    key_chunk: int = 0
    impl: str = "xla"

    @classmethod
    def from_config(cls, cfg, n_heads: int, head_dim: int) -> SoftplusKernel:
        sp = cfg.softplus
        if cfg.attn_softcap:
            raise ValueError("model.attn_softcap does not apply to model.attention=softplus (no softmax logits to cap)")
        if sp.power < 1 or sp.query_chunk < 0 or sp.key_chunk < 0:
            raise ValueError(
                f"model.softplus.power={sp.power} must be >= 1 and query_chunk={sp.query_chunk}, "
                f"key_chunk={sp.key_chunk} >= 0"
            )
        impl = softplus_impl(sp)
        if impl == "pallas" and (sp.query_chunk or sp.key_chunk):
            raise ValueError(
                f"model.softplus.impl=pallas never forms T × T weights: set query_chunk={sp.query_chunk} and "
                f"key_chunk={sp.key_chunk} to 0 (they chunk the xla path)"
            )
        return cls(
            reweight=sp.reweight, power=sp.power, eps=sp.eps, query_chunk=sp.query_chunk, key_chunk=sp.key_chunk,
            impl=impl,
        )

    def __call__(self, q, k, v, diagnostics: bool):
        B, T, H, K = q.shape
        settings = dict(reweight=self.reweight, power=self.power, eps=self.eps)
        weights = functools.partial(lssar_weights, **settings)
        v32 = v.astype(jnp.float32)
        mix = lambda a: jnp.einsum("bhqk,bkhd->bqhd", a, v32)
        if diagnostics:
            s, a = weights(q, k, jnp.arange(T))
            diag = attention_diagnostics(jnp.where(jnp.tril(jnp.ones((T, T), bool)), s, -jnp.inf), a)
            if self.reweight:
                diag["attn_degenerate_frac"] = jnp.mean(jnp.max(a, axis=-1) == 0.0)
            return mix(a).astype(v.dtype), diag
        if self.impl == "pallas":
            return lssar_pallas.lssar_fused(q, k, v, **settings).astype(v.dtype), {}
        C = self.query_chunk if 0 < self.query_chunk < T else T
        n_chunks = -(-T // C)
        q_pad = jnp.pad(q, ((0, 0), (0, n_chunks * C - T), (0, 0), (0, 0)))

        def chunk(i):
            pos_C = i * C + jnp.arange(C)
            q_BxCxHxK = jax.lax.dynamic_slice_in_dim(q_pad, i * C, C, axis=1)
            if self.key_chunk:
                return lssar_blocked(q_BxCxHxK, k, v, pos_C, key_chunk=self.key_chunk, **settings)
            return mix(weights(q_BxCxHxK, k, pos_C)[1])

        if n_chunks == 1:
            return chunk(0).astype(v.dtype), {}
        out_NxBxCxHxK = jax.lax.map(jax.checkpoint(chunk), jnp.arange(n_chunks))
        out = jnp.moveaxis(out_NxBxCxHxK, 0, 1).reshape(B, n_chunks * C, H, K)[:, :T]
        return out.astype(v.dtype), {}


def resolve_impl(name: str, dtype: jnp.dtype) -> str:
    """`model.attention_impl`: "auto" picks cuDNN flash attention on GPU for half-precision inputs, else XLA."""
    if name == "auto":
        half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        return "cudnn" if jax.default_backend() == "gpu" and half else "xla"
    if name not in ("xla", "cudnn"):
        raise ValueError(f"model.attention_impl={name!r} is unknown; choose auto, xla or cudnn")
    return name


class LowRankProjection(nnx.Module):
    """An MLRA projection x -> q (or k, v): [B, T, d] -> [B, T, H, Dh] through rank r (Chung et al. 2024, §3 [R];
    spec §2(a)). The exact parameterisation is not in reachable sources [U]; both forms are available:

      per head (default [D]):  W_h = A_h B_h,  A: [d, H, r],  B: [H, r, Dh]      (H·r·(d + Dh) parameters)
      shared latent:           W = A B,        A: [d, r],     B: [r, H, Dh]      (r·(d + H·Dh) parameters)

    Init (`init`): both factors are drawn from the initializer that `model.init` gives the dense q/k/v kernel they
    replace. The paper trains GPT-2, whose every weight is N(0, 0.02²), factors included [R] (spec §2(a)); so under
    `model.init=gpt2` both are N(0, 0.02²), Var(q) = d·r·0.02⁴·Var(x), and std(q_MLRA)/std(q_dense) = sqrt(r)·0.02
    exactly as in the paper (spec §2(e) check 2). Under another `model.init` this keeps the paper's rule (factors
    initialised like every other weight) [D]; before issue 10 the factors were N(0, 0.02²) under the base `fan_in`
    init, which put q_MLRA ~16x below the dense query at GPT-2-small width (sqrt(r·d)·0.02² = 0.063 vs 1), where
    the paper has 0.113. `model.mlra.init_std` > 0 overrides both with N(0, init_std²).
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, *, rank: int, shared_latent: bool, init,
                 dtype, param_dtype, rngs: nnx.Rngs):
        if shared_latent:
            a_shape, a_axes = (d_model, rank), ("embed", None)
            b_shape, b_axes = (rank, n_heads, head_dim), (None, "heads", "head_dim")
            self.equations = ("btd,dr->btr", "btr,rhe->bthe")
        else:
            a_shape, a_axes = (d_model, n_heads, rank), ("embed", "heads", None)
            b_shape, b_axes = (n_heads, rank, head_dim), ("heads", None, "head_dim")
            self.equations = ("btd,dhr->bthr", "bthr,hre->bthe")
        self.a = nnx.Param(init(rngs.params(), a_shape, param_dtype), axes=a_axes)
        self.b = nnx.Param(init(rngs.params(), b_shape, param_dtype), axes=b_axes)
        self.dtype = dtype

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        dt = self.dtype
        h = jnp.einsum(self.equations[0], x_BxTxD.astype(dt), self.a[...].astype(dt), preferred_element_type=dt)
        return jnp.einsum(self.equations[1], h, self.b[...].astype(dt), preferred_element_type=dt)


def dense_qkv(cfg, *, d_model: int, n_heads: int, head_dim: int, rngs: nnx.Rngs) -> nnx.Module:
    """A full-rank q/k/v projection [d, H, Dh] (σReparam-wrapped when model.sigma_reparam)."""
    init = layers.get_init(cfg).kernel(d_model)
    axes = ("embed", "heads", "head_dim")
    return layers.make_linear(cfg, (d_model,), (n_heads, head_dim), axes, init=init, rngs=rngs, fp8_target="attn")


def low_rank_qkv(cfg, *, d_model: int, n_heads: int, head_dim: int, rngs: nnx.Rngs) -> nnx.Module:
    """An MLRA q/k/v projection of rank model.mlra.rank (0: Dh/2 [D])."""
    if cfg.sigma_reparam:
        raise ValueError("model.sigma_reparam does not apply to MLRA's low-rank factors; use one or the other")
    rank = cfg.mlra.rank or head_dim // 2
    if rank < 1:
        raise ValueError(f"model.mlra.rank={cfg.mlra.rank} must be >= 0 (0 means head_dim // 2)")
    if cfg.mlra.init_std < 0:
        raise ValueError(f"model.mlra.init_std={cfg.mlra.init_std} must be >= 0 (0 means model.init's q/k/v kernel)")
    init = jax.nn.initializers.normal(cfg.mlra.init_std) if cfg.mlra.init_std else layers.get_init(cfg).kernel(d_model)
    return LowRankProjection(
        d_model, n_heads, head_dim, rank=rank, shared_latent=cfg.mlra.shared_latent, init=init,
        dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs,
    )


@dataclasses.dataclass(frozen=True)
class AttentionVariant:
    """A `model.attention` choice: how the kernel and each of Wq, Wk, Wv are built, and what the variant declares.

    `bounds_logits`: the variant itself bounds the attention logits through q, k (the stacking rule, spec §9).
    `qk_clip`: `model.qk_clip` applies: softmax logits from the dense Wq, Wk kernels [d, H, Dh] that `clip_qk`
    rescales per head.
    `diagnostics`: name -> meaning of the extras its kernel reports besides `ATTENTION_DIAGNOSTICS`; `reported`:
    which of them a model config reports (some exist only for some settings). tests/models/test_probes.py checks
    both against what each kernel returns."""

    kernel: Callable  # (model cfg, n_heads, head_dim) -> kernel(q, k, v, diagnostics) -> (out, diagnostics dict)
    qkv: Callable  # (model cfg, *, d_model, n_heads, head_dim, rngs) -> module x_BxTxD -> [B, T, H, Dh]
    bounds_logits: bool = False
    qk_clip: bool = False
    diagnostics: dict[str, str] = dataclasses.field(default_factory=dict)
    reported: Callable = lambda cfg: ()  # (model cfg) -> tuple of the `diagnostics` names it reports

    def diagnostic_names(self, cfg) -> tuple[str, ...]:
        """Every attention diagnostic a layer of this variant reports under the model config `cfg`."""
        return (*ATTENTION_DIAGNOSTICS, *self.reported(cfg))


def _ls_reported(cfg) -> tuple[str, ...]:
    groups = {"global": cfg.ls.n_global > 0, "local": cfg.ls.n_global < cfg.n_heads}
    return tuple(f"attn_max_logit_{g}" for g, present in groups.items() if present)


ATTENTIONS: dict[str, AttentionVariant] = {
    "softmax": AttentionVariant(SoftmaxKernel.from_config, dense_qkv, qk_clip=True),
    "ls": AttentionVariant(
        LongShortKernel.from_config, dense_qkv, qk_clip=True,
        diagnostics={
            "attn_max_logit_global": "attn_max_logit over the global heads (ls with n_global > 0)",
            "attn_max_logit_local": "attn_max_logit over the local heads (ls with n_global < n_heads)",
        },
        reported=_ls_reported,
    ),
    "softplus": AttentionVariant(
        SoftplusKernel.from_config, dense_qkv, bounds_logits=True,  # q, k L2-normalised: |s_ij| <= log(Dh)·log(i)
        diagnostics={"attn_degenerate_frac": "fraction of rows that LSSAR's re-weighting zeroed (softplus.reweight)"},
        reported=lambda cfg: ("attn_degenerate_frac",) if cfg.softplus.reweight else (),
    ),
    "mlra": AttentionVariant(SoftmaxKernel.from_config, low_rank_qkv),
}


def check_stacking(cfg) -> None:
    """Refuses, unless model.allow_stacking, two of the methods that all bound the attention logits through Q/K:
    qk-layernorm, a variant whose entry says `bounds_logits` (LSSA's L2 normalisation) and σReparam on Wq/Wk
    (spec §9: a stacked run is comparable to neither paper)."""
    variant = ATTENTIONS.get(cfg.attention)
    on = [
        name
        for name, flag in (
            ("model.qk_norm", cfg.qk_norm),
            (f"model.attention={cfg.attention} (bounds the logits)", variant is not None and variant.bounds_logits),
            ("model.sigma_reparam", cfg.sigma_reparam),
        )
        if flag
    ]
    if len(on) > 1 and not cfg.allow_stacking:
        raise ValueError(
            f"{' and '.join(on)} both constrain the attention logits (spec §9); "
            "set model.allow_stacking=True to stack them"
        )


def check_qk_clip(cfg) -> None:
    """`model.qk_clip` (τ >= 0; 0 = off) needs logits that a per-head rescale of the Wq, Wk kernels scales: a variant
    whose entry says `qk_clip`, and neither qk-layernorm (which undoes the rescale) nor σReparam (W/σ(W) is
    invariant to it)."""
    if cfg.qk_clip < 0:
        raise ValueError(f"model.qk_clip={cfg.qk_clip} must be >= 0 (0 = off)")
    if not cfg.qk_clip:
        return
    for bad, why in (
        (not ATTENTIONS[cfg.attention].qk_clip, f"model.attention={cfg.attention}"),
        (cfg.qk_norm, "model.qk_norm (the layernorm undoes a rescale of Wq, Wk)"),
        (cfg.sigma_reparam, "model.sigma_reparam (W/σ(W) does not change when W is rescaled)"),
    ):
        if bad:
            raise ValueError(f"model.qk_clip does not apply with {why}; choose one of them")


def qk_clip_scales(max_logit_H: jax.Array, tau: float) -> jax.Array:
    """The per-head factor of QK-clip (Kimi K2 / MuonClip, Kimi Team 2025, §2.1): sqrt(τ / S_h) for a head whose
    max logit S_h of the step exceeded τ, else 1 (also for a non-finite S_h: that step's loss diverged, and the
    divergence rule, not the clip, decides). Applied to both Wq and Wk, it scales that head's logits by τ / S_h, so
    the same input then gives the max logit τ exactly."""
    clip_H = jnp.isfinite(max_logit_H) & (max_logit_H > tau)
    return jnp.where(clip_H, jnp.sqrt(tau / jnp.where(clip_H, max_logit_H, 1.0)), 1.0)


def clip_qk(attn_params: dict, scale_H: jax.Array) -> dict:
    """An `Attention`'s parameters (a pure dict) with the heads of its Wq and Wk kernels [d, H, Dh] scaled."""
    out = dict(attn_params)
    for name in ("q", "k"):
        kernel = attn_params[name]["kernel"]
        out[name] = dict(attn_params[name], kernel=kernel * scale_H[None, :, None].astype(kernel.dtype))
    return out


class Attention(nnx.Module):
    """Multi-head causal self-attention with RoPE (when `model.position=rope`), optional per-head qk-layernorm
    (Wortsman et al. §3.1), and the `model.attention` variant's projections and kernel."""

    def __init__(self, cfg, *, d_model: int, n_heads: int, head_dim: int, rngs: nnx.Rngs):
        if cfg.attention not in ATTENTIONS:
            raise ValueError(f"model.attention={cfg.attention!r} is unknown; choose one of {sorted(ATTENTIONS)}")
        check_stacking(cfg)
        check_qk_clip(cfg)
        variant = ATTENTIONS[cfg.attention]
        shape = dict(d_model=d_model, n_heads=n_heads, head_dim=head_dim, rngs=rngs)
        self.q, self.k, self.v = (variant.qkv(cfg, **shape) for _ in range(3))
        self.o = layers.make_linear(
            cfg, (n_heads, head_dim), (d_model,), ("heads", "head_dim", "embed"),
            init=layers.get_init(cfg).out_kernel(n_heads * head_dim), rngs=rngs, fp8_target="attn",
        )
        # Per-head qk-layernorm: one LayerNorm over Dh whose scale (Dh entries) is shared across heads; q and k
        # get separate norms [D]. Order: LN, then RoPE, then the dot product [D] (spec §6(a)).
        self.q_norm = nnx.data(layers.make_norm(cfg, head_dim, "head_dim") if cfg.qk_norm else None)
        self.k_norm = nnx.data(layers.make_norm(cfg, head_dim, "head_dim") if cfg.qk_norm else None)
        self.kernel = variant.kernel(cfg, n_heads, head_dim)
        self.scale = 1.0 / math.sqrt(head_dim)  # the softmax logit scale z = q·k / sqrt(Dh) (what causal_logits takes)
        self.rope_base = cfg.rope_base
        self.rope = cfg.position == "rope"  # otherwise the positions were added to the embeddings (models/layers.py)

    def __call__(self, x_BxTxD: jax.Array, diagnostics: bool = False) -> tuple[jax.Array, dict]:
        q, k, v = self.q(x_BxTxD), self.k(x_BxTxD), self.v(x_BxTxD)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = rope(q, self.rope_base), rope(k, self.rope_base)
        out_BxTxHxK, diag = self.kernel(q, k, v, diagnostics)
        return self.o(out_BxTxHxK), diag
