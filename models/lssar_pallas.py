"""LSSA / LSSAR attention as fused Pallas kernels: no [B, H, T, T] weights in HBM, forward or backward (issue 15).

The function is `lssar_weights(q, k, arange(T))[1] @ v` of models/attention.py (Gao & Spratling 2025, arXiv
2501.13428; spec model-variants §4(a)), with its overflow-safe form of the re-weighting. The L2 normalisation of
q and k and the log(Dh)·log(n) scale stay in plain JAX (autodiff differentiates them), so the kernels see
q̃_i = log(Dh)·log(n_i)·q̂_i and k̂_j and compute, per query row i at 1-based position n = n_i (keys j <= i):

    s_ij = q̃_i·k̂_j     a_ij = softplus(s_ij)     Z_i = Σ_j a_ij + eps     y_ij = a_ij / Z_i
    LSSA:   P_ij = y_ij
    LSSAR:  x_ij = n·y_ij − o_i, r = ReLU(x), m_i = max_j r_ij (1 if 0), t = r/m_i,
            P_ij = t^p / U_i with U_i = Σ_j t^p + eps·m_i^-p     (every t^p <= 1: no float32 overflow of r^15)
    out_i = Σ_j P_ij v_j

Forward (`_forward_kernel`, one program per query block and head): LSSA is one pass over the key blocks (Z and
Σ a v); LSSAR is two: pass 1 the row sums Z and the row max of a (m follows from it, r being monotone in a),
pass 2 Σ t^p and Σ t^p v together (U is only needed at the end). Residuals: the per-row statistics Z, m, U (and
the output itself), [B, H, T] each.

Backward, derived by hand (m is held constant, as the stop_gradient of `lssar_weights`; δ_i = dO_i·out_i):

    g_ij = dO_i·v_j     dv_j = Σ_i P_ij dO_i
    LSSA:   dy_ij = g_ij                       ρ_i = δ_i
    LSSAR:  du_ij = (g_ij − δ_i)/U_i,  dx_ij = [x_ij > 0]·p·t_ij^(p−1)·du_ij/m_i,  dy_ij = n·dx_ij,
            ρ_i = Σ_j dy_ij y_ij               (a row sum: one extra pass over the key blocks)
    da_ij = (dy_ij − ρ_i)/Z_i     ds_ij = [j <= i]·sigmoid(s_ij)·da_ij     dq̃_i = Σ_j ds_ij k̂_j,  dk̂_j = Σ_i ds_ij q̃_i

`_dq_kernel` (per query block: for LSSAR pass A gives ρ, pass B dq̃) runs first and hands ρ to `_dkdv_kernel`
(per key block, a pass over the query blocks at and below the diagonal). Every kernel recomputes its weights
blockwise and skips the key blocks wholly above the diagonal; accumulation is float32.

Caveats: queries are the positions 0..T−1 of the keys (self-attention: no query offset, so no `query_chunk`);
T is padded to a multiple of the blocks and Dh to a power of two >= 16 (zeros, sliced off); the output is
float32. On GPU the kernels are Triton (`pl.pallas_call` with `plgpu.CompilerParams`; jax 0.11 marks the Pallas
Triton backend deprecated); elsewhere they run in interpret mode (tests). Under SPMD sharding over batch or heads
the call needs a `shard_map` around it (a pallas_call is not partitioned by XLA). Knobs: `block_q`, `block_k`,
`num_warps`, `num_stages`, `precision` (the dots' algorithm: by default IEEE float32 when interpreted and 3×TF32
on GPU, whose error is at float32's level; plain TF32 would change s by ~1e-3·|s| and t^15 by ~15 times that).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

# LSSAR's offset o_i is 0 on rows 1..3 (1-based) and 1 after them (spec §4(a); models/attention.py uses it too).
OFFSET_FREE_ROWS = 3


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The static arguments of the kernels (hashable: a nondiff argument of the custom_vjp)."""

    reweight: bool
    power: int
    eps: float
    block_q: int
    block_k: int
    num_warps: int
    num_stages: int
    precision: object
    interpret: bool


def _dot(a, b, contract, precision):
    """float32 a·b contracting dimension contract[0] of a with contract[1] of b (2-D blocks)."""
    return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def _softplus(s):
    return jnp.maximum(s, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(s)))


def _stage1(q, k, row0, col0, st: _Settings):
    """s, the causal mask and a = softplus(s) ⊙ M' of a [block_q, block_k] block whose first row/key are row0/col0."""
    s = _dot(q, k, (1, 1), st.precision)
    causal = (row0 + jnp.arange(q.shape[0]))[:, None] >= (col0 + jnp.arange(k.shape[0]))[None, :]
    return s, causal, jnp.where(causal, _softplus(s), 0.0)


def _row_consts(row0, block_q):
    """n = 1-based position and the offset o of each row of the block, float32 [block_q]."""
    n = (row0 + jnp.arange(block_q) + 1).astype(jnp.float32)
    return n, jnp.where(n > OFFSET_FREE_ROWS, 1.0, 0.0)


def _reweighted(a, z, n, offset, m):
    """x = n·a/Z − o and t = ReLU(x)/m of a block (row statistics [block_q])."""
    x = a / z[:, None] * n[:, None] - offset[:, None]
    return x, jnp.maximum(x, 0.0) / m[:, None]


def _block_grads(a, g, rows: dict, st: _Settings):
    """(P, dy, y) of a block from g = dO vᵀ and the row statistics: the weights, and the cotangent of y = a/Z."""
    y = a / rows["z"][:, None]
    if not st.reweight:
        return y, g, y
    x, t = _reweighted(a, rows["z"], rows["n"], rows["offset"], rows["m"])
    w = t ** (st.power - 1)
    u_sum = rows["u"][:, None]
    du = (g - rows["delta"][:, None]) / u_sum
    dy = jnp.where(x > 0.0, du * st.power * w / rows["m"][:, None], 0.0) * rows["n"][:, None]
    return w * t / u_sum, dy, y


def _score_grad(s, causal, dy, rows: dict):
    """ds = [j <= i]·sigmoid(s)·(dy − ρ)/Z."""
    da = (dy - rows["rho"][:, None]) / rows["z"][:, None]
    return jnp.where(causal, da * jax.nn.sigmoid(s), 0.0)


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, z_ref, *lssar_refs, st: _Settings):
    bq, bk = st.block_q, st.block_k
    row0 = pl.program_id(2) * bq
    q = q_ref[...]
    n_blocks = lax.div(row0 + bq + bk - 1, bk)  # key blocks at or below the diagonal
    zeros = jnp.zeros((bq,), jnp.float32)
    acc = jnp.zeros(o_ref.shape, jnp.float32)

    def keys(j):
        sl = pl.ds(j * bk, bk)
        return _stage1(q, k_ref[sl, :], row0, j * bk, st)[2], v_ref[sl, :]

    if not st.reweight:
        def lssa(j, carry):
            a, v = keys(j)
            return carry[0] + a.sum(-1), carry[1] + _dot(a, v, (1, 0), st.precision)

        z, acc = lax.fori_loop(0, n_blocks, lssa, (zeros, acc))
        z = z + st.eps
        o_ref[...] = acc / z[:, None]
        z_ref[...] = z
        return

    m_ref, u_ref = lssar_refs

    def sums(j, carry):  # pass 1: Z and the row max of a
        a, _ = keys(j)
        return carry[0] + a.sum(-1), jnp.maximum(carry[1], a.max(-1))

    z, a_max = lax.fori_loop(0, n_blocks, sums, (zeros, zeros))
    z = z + st.eps
    n, offset = _row_consts(row0, bq)
    m = jnp.maximum(a_max / z * n - offset, 0.0)
    m = jnp.where(m > 0.0, m, 1.0)

    def mixed(j, carry):  # pass 2: Σ t^p and Σ t^p v
        a, v = keys(j)
        u = _reweighted(a, z, n, offset, m)[1] ** st.power
        return carry[0] + u.sum(-1), carry[1] + _dot(u, v, (1, 0), st.precision)

    u_sum, acc = lax.fori_loop(0, n_blocks, mixed, (zeros, acc))
    u_sum = u_sum + st.eps * m ** (-st.power)
    o_ref[...] = acc / u_sum[:, None]
    z_ref[...], m_ref[...], u_ref[...] = z, m, u_sum


def _dq_kernel(q_ref, k_ref, v_ref, do_ref, z_ref, delta_ref, *refs, st: _Settings):
    bq, bk = st.block_q, st.block_k
    row0 = pl.program_id(2) * bq
    q, do = q_ref[...], do_ref[...]
    n_blocks = lax.div(row0 + bq + bk - 1, bk)
    n, offset = _row_consts(row0, bq)
    rows = dict(z=z_ref[...], delta=delta_ref[...], n=n, offset=offset)
    if st.reweight:
        m_ref, u_ref, dq_ref, rho_ref = refs
        rows.update(m=m_ref[...], u=u_ref[...])
    else:
        (dq_ref,) = refs

    def block(j):
        sl = pl.ds(j * bk, bk)
        k = k_ref[sl, :]
        s, causal, a = _stage1(q, k, row0, j * bk, st)
        _, dy, y = _block_grads(a, _dot(do, v_ref[sl, :], (1, 1), st.precision), rows, st)
        return k, s, causal, dy, y

    if st.reweight:  # pass A: ρ = Σ_j dy y
        def rho_sum(j, acc):
            _, _, _, dy, y = block(j)
            return acc + (dy * y).sum(-1)

        rows["rho"] = lax.fori_loop(0, n_blocks, rho_sum, jnp.zeros((bq,), jnp.float32))
        rho_ref[...] = rows["rho"]
    else:
        rows["rho"] = rows["delta"]

    def dq(j, acc):
        k, s, causal, dy, _ = block(j)
        return acc + _dot(_score_grad(s, causal, dy, rows), k, (1, 0), st.precision)

    dq_ref[...] = lax.fori_loop(0, n_blocks, dq, jnp.zeros(dq_ref.shape, jnp.float32))


def _dkdv_kernel(q_ref, k_ref, v_ref, do_ref, z_ref, delta_ref, *refs, st: _Settings):
    bq, bk = st.block_q, st.block_k
    col0 = pl.program_id(2) * bk
    k, v = k_ref[...], v_ref[...]
    if st.reweight:
        m_ref, u_ref, rho_ref, dk_ref, dv_ref = refs
    else:
        dk_ref, dv_ref = refs
        rho_ref = delta_ref

    def block(i, carry):
        sl = pl.ds(i * bq, bq)
        q, do = q_ref[sl, :], do_ref[sl, :]
        n, offset = _row_consts(i * bq, bq)
        rows = dict(z=z_ref[sl], delta=delta_ref[sl], rho=rho_ref[sl], n=n, offset=offset)
        if st.reweight:
            rows.update(m=m_ref[sl], u=u_ref[sl])
        s, causal, a = _stage1(q, k, i * bq, col0, st)
        p, dy, _ = _block_grads(a, _dot(do, v, (1, 1), st.precision), rows, st)
        ds = _score_grad(s, causal, dy, rows)
        return carry[0] + _dot(ds, q, (0, 0), st.precision), carry[1] + _dot(p, do, (0, 0), st.precision)

    zeros = jnp.zeros(dk_ref.shape, jnp.float32)
    dk, dv = lax.fori_loop(lax.div(col0, bq), q_ref.shape[0] // bq, block, (zeros, zeros))
    dk_ref[...], dv_ref[...] = dk, dv


def _call(kernel, st: _Settings, grid_len: int, ins, in_kinds, outs, name: str):
    """pallas_call over (B, H, grid_len) blocks. in_kinds/outs name each array's block: "q" [block_q, Dh] of the
    program's block, "k" [block_k, Dh] of it, "seq" the whole [T, Dh], "q_rows" [block_q] of a [B, H, T] statistic,
    "rows" the whole [T] of one."""
    B, T, H, K = ins[0].shape
    spec = {
        "q": pl.BlockSpec((None, st.block_q, None, K), lambda b, h, i: (b, i, h, 0)),
        "k": pl.BlockSpec((None, st.block_k, None, K), lambda b, h, i: (b, i, h, 0)),
        "seq": pl.BlockSpec((None, T, None, K), lambda b, h, i: (b, 0, h, 0)),
        "q_rows": pl.BlockSpec((None, None, st.block_q), lambda b, h, i: (b, h, i)),
        "rows": pl.BlockSpec((None, None, T), lambda b, h, i: (b, h, 0)),
    }
    shape = {"q": (B, T, H, K), "k": (B, T, H, K), "q_rows": (B, H, T)}
    return pl.pallas_call(
        functools.partial(kernel, st=st),
        grid=(B, H, grid_len),
        in_specs=[spec[kind] for kind in in_kinds],
        out_specs=[spec[kind] for kind in outs],
        out_shape=[jax.ShapeDtypeStruct(shape[kind], jnp.float32) for kind in outs],
        compiler_params=plgpu.CompilerParams(num_warps=st.num_warps, num_stages=st.num_stages),
        interpret=st.interpret,
        name=name,
    )(*ins)


def _forward(q, k, v, st: _Settings):
    stats = ("q_rows",) * (3 if st.reweight else 1)
    out, *stats = _call(_forward_kernel, st, q.shape[1] // st.block_q, (q, k, v), ("q", "seq", "seq"),
                        ("q", *stats), "lssar_forward")
    return out, stats


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused(q, k, v, st: _Settings):
    return _forward(q, k, v, st)[0]


def _fused_fwd(q, k, v, st: _Settings):
    out, stats = _forward(q, k, v, st)
    return out, (q, k, v, out, stats)


def _fused_bwd(st: _Settings, res, do):
    q, k, v, out, stats = res
    T = q.shape[1]
    delta = jnp.einsum("bthd,bthd->bht", do, out)
    z = stats[0]
    row_stats = (z, delta, *stats[1:])
    dq_outs = ("q", "q_rows") if st.reweight else ("q",)
    dq, *rho = _call(_dq_kernel, st, T // st.block_q, (q, k, v, do, *row_stats),
                     ("q", "seq", "seq", "q", *("q_rows",) * len(row_stats)), dq_outs, "lssar_dq")
    dk, dv = _call(_dkdv_kernel, st, T // st.block_k, (q, k, v, do, *row_stats, *rho),
                   ("seq", "k", "k", "seq", *("rows",) * (len(row_stats) + len(rho))), ("k", "k"), "lssar_dkdv")
    return dq, dk, dv


_fused.defvjp(_fused_fwd, _fused_bwd)


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ||x||_2 over the last axis (LSSA's q, k normalisation; a zero vector stays 0)."""
    return x * lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))


def lssar_fused(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, *, reweight: bool, power: int, eps: float, block_q: int = 64,
                block_k: int = 64, num_warps: int = 4, num_stages: int = 2, precision=None,
                interpret: bool | None = None) -> jax.Array:
    """LSSA (reweight=False) / LSSAR causal self-attention of [B, T, H, Dh] q, k (after RoPE), v: float32
    [B, T, H, Dh], equal to `lssar_weights(q, k, arange(T), ...)[1]` mixed with v, without T × T arrays.

    `block_q`, `block_k`: powers of two (shrunk to T's next power of two when T is smaller, >= 16). `precision`:
    the kernels' dot algorithm (None: float32 `lax.Precision.HIGHEST` when interpreted, 3×TF32 on GPU).
    `interpret`: None runs the kernels interpreted unless the default backend is GPU.
    """
    B, T, H, Dh = q_BxTxHxK.shape
    if power < 1:
        raise ValueError(f"power={power} must be >= 1")
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if block < 16 or block & (block - 1):
            raise ValueError(f"{name}={block} must be a power of two >= 16")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    if precision is None:
        precision = lax.Precision.HIGHEST if interpret else lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    fit = max(16, pl.next_power_of_2(T))
    block_q, block_k = min(block_q, fit), min(block_k, fit)
    T_pad = -(-T // max(block_q, block_k)) * max(block_q, block_k)
    K_pad = max(16, pl.next_power_of_2(Dh))
    scale_T = math.log(Dh) * jnp.log(jnp.arange(1, T + 1, dtype=jnp.float32))
    q = l2_normalize(q_BxTxHxK.astype(jnp.float32)) * scale_T[None, :, None, None]
    k = l2_normalize(k_BxTxHxK.astype(jnp.float32))
    pad = lambda x: jnp.pad(x, ((0, 0), (0, T_pad - T), (0, 0), (0, K_pad - Dh)))
    st = _Settings(reweight=bool(reweight), power=int(power), eps=float(eps), block_q=block_q, block_k=block_k,
                   num_warps=num_warps, num_stages=num_stages, precision=precision, interpret=bool(interpret))
    out = _fused(pad(q), pad(k), pad(v_BxTxHxK.astype(jnp.float32)), st)
    return out[:, :T, :, :Dh]
