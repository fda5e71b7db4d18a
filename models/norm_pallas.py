"""LayerNorm and RMSNorm as fused Pallas kernels, forward and backward (`model.norm_impl=pallas`, issue 15).

Why: on the H200 the 42M model's norms (two per block, the q and k norms of qk-layernorm over Dh = 64, the final
norm: 25 in all) took 22.0 ms of a 137.6 ms train step in 137 XLA fusions, ~5-6 memory-bound passes per norm
(benchmarks/results/h200_session11_profile_42m.md); one read and one write forward, two reads and one write
backward would take ~6 ms at HBM speed. PyTorch, the reference of issue 15's throughput goal, runs fused kernels.

The functions are those of `models.layers.LayerNorm` / `RMSNorm` over the last axis, learned scale s, no bias,
statistics in float32 (d = the row width, ε = eps):

    LayerNorm:  μ = Σx/d,  r = 1/sqrt(Σ(x − μ)²/d + ε),  x̂ = (x − μ)·r       (two-pass variance, from registers)
    RMSNorm:    r = 1/sqrt(Σx²/d + ε),                     x̂ = x·r
    y = x̂·s in the output dtype

Backward, with g = dy·s and the means over the row:

    LayerNorm:  dx = r·(g − mean(g) − x̂·mean(g·x̂))      RMSNorm:  dx = r·(g − x̂·mean(g·x̂))
    ds = Σ_rows dy·x̂

Kernels (blocks of `block_rows` rows, each row whole in registers): `_forward_kernel`, one program per block,
reads x once and writes y. `_backward_kernel` reads x and dy once and writes dx (x's dtype); its programs (at
most `backward_programs`) each loop over consecutive blocks, summing dy·x̂ over their rows in registers, and write
one row of a float32 [n_programs, d] array of ds partials that JAX sums. One program per block would make that
array half as large as a bfloat16 x at d = 768 (4 rows per block), a third more traffic than the backward's own;
at most 1024 programs make it 3 MB (the 42M model's x is 201 MB at 256 × 512 tokens).

Residuals: x and s only. The backward re-derives μ and r from the x rows it loads anyway instead of saving them:
that costs no HBM traffic (saved [N] float32 statistics would add a write and a read) and no extra outputs, and
two row reductions are free in a memory-bound kernel.

Widths: a Triton block must be a power of two, so the block spans d_pad = next_power_of_2(d) columns (768 ->
1024) with masked loads (padding read as 0) and masked stores; the padding never reaches HBM. Rows past N (the
last block) are masked the same way. Knobs: `block_rows` (a power of two; default 4096 // d_pad, at least 1),
`backward_programs`, `num_warps`, `num_stages`. Under vmap (the batched executor's members) Pallas adds a grid
axis in front of the kernels' own.

On GPU the kernels are Triton (`pl.pallas_call` with `plgpu.CompilerParams`, as models/lssar_pallas.py);
elsewhere they run in interpret mode (tests). Under SPMD sharding the call needs a `shard_map` around it (a
pallas_call is not partitioned by XLA).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

KINDS = ("layernorm", "rmsnorm")
BLOCK_ELEMENTS = 4096  # default elements per block of rows: block_rows = BLOCK_ELEMENTS // d_pad
BACKWARD_PROGRAMS = 1024  # default most programs of the backward, so few [n_programs, d] dscale partials (~8 per SM)


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The static arguments of the kernels (hashable: a nondiff argument of the custom_vjp)."""

    kind: str
    eps: float
    out_dtype: jnp.dtype
    block_rows: int
    backward_programs: int
    num_warps: int
    num_stages: int
    interpret: bool


def _columns(d: int):
    """The d_pad = next_power_of_2(d) column indices of a block and the mask of the real ones."""
    cols = jnp.arange(pl.next_power_of_2(d))
    return cols, cols < d


def _rows(block: jax.Array, n: int, cols, col_ok, st: _Settings):
    """The ref indices of row block `block` ([block_rows, d_pad]) and the mask of its entries inside [n, d]."""
    rows = block * st.block_rows + jnp.arange(st.block_rows)
    return (rows[:, None], cols[None, :]), (rows < n)[:, None] & col_ok[None, :]


def _load(ref, idx, mask):
    return plgpu.load(ref.at[idx], mask=mask, other=0).astype(jnp.float32)


def _normalise(x, mask, d: int, st: _Settings):
    """(x̂, r) of float32 rows whose masked entries are 0 (x̂ is 0 there too)."""
    if st.kind == "layernorm":
        x = jnp.where(mask, x - (x.sum(-1, keepdims=True) / d), 0.0)
    rstd = lax.rsqrt((x * x).sum(-1, keepdims=True) / d + st.eps)
    return x * rstd, rstd


def _forward_kernel(x_ref, scale_ref, y_ref, *, st: _Settings):
    n, d = x_ref.shape
    cols, col_ok = _columns(d)
    idx, mask = _rows(pl.program_id(0), n, cols, col_ok, st)
    x_hat, _ = _normalise(_load(x_ref, idx, mask), mask, d, st)
    y = x_hat * _load(scale_ref, cols, col_ok)[None, :]
    plgpu.store(y_ref.at[idx], y.astype(y_ref.dtype), mask=mask)


def _backward_kernel(x_ref, scale_ref, dy_ref, dx_ref, dscale_ref, *, st: _Settings, blocks_per_program: int):
    n, d = x_ref.shape
    cols, col_ok = _columns(d)
    scale = _load(scale_ref, cols, col_ok)[None, :]
    program = pl.program_id(0)  # outside the loop: interpret mode substitutes it in the kernel's top level only

    def block(i, dscale):
        idx, mask = _rows(program * blocks_per_program + i, n, cols, col_ok, st)
        x_hat, rstd = _normalise(_load(x_ref, idx, mask), mask, d, st)
        dy = _load(dy_ref, idx, mask)
        g = dy * scale
        dx = g - x_hat * ((g * x_hat).sum(-1, keepdims=True) / d)
        if st.kind == "layernorm":
            dx = dx - g.sum(-1, keepdims=True) / d
        plgpu.store(dx_ref.at[idx], (dx * rstd).astype(dx_ref.dtype), mask=mask)
        return dscale + (dy * x_hat).sum(0)

    dscale = lax.fori_loop(0, blocks_per_program, block, jnp.zeros(cols.shape, jnp.float32))
    plgpu.store(dscale_ref.at[program, cols], dscale, mask=col_ok)


def _call(kernel, st: _Settings, n_programs: int, ins, out_shape, name: str):
    return pl.pallas_call(
        kernel,
        grid=(n_programs,),
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=st.num_warps, num_stages=st.num_stages),
        interpret=st.interpret,
        name=name,
    )(*ins)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused(x_NxD, scale_D, st: _Settings):
    return _call(functools.partial(_forward_kernel, st=st), st, pl.cdiv(x_NxD.shape[0], st.block_rows),
                 (x_NxD, scale_D), jax.ShapeDtypeStruct(x_NxD.shape, st.out_dtype), f"{st.kind}_forward")


def _fused_fwd(x_NxD, scale_D, st: _Settings):
    return _fused(x_NxD, scale_D, st), (x_NxD, scale_D)


def _fused_bwd(st: _Settings, res, dy_NxD):
    x_NxD, scale_D = res
    n_blocks = pl.cdiv(x_NxD.shape[0], st.block_rows)
    per_program = pl.cdiv(n_blocks, st.backward_programs)
    n_programs = pl.cdiv(n_blocks, per_program)
    dx_NxD, dscale_PxD = _call(
        functools.partial(_backward_kernel, st=st, blocks_per_program=per_program), st, n_programs,
        (x_NxD, scale_D, dy_NxD),
        (jax.ShapeDtypeStruct(x_NxD.shape, x_NxD.dtype),
         jax.ShapeDtypeStruct((n_programs, x_NxD.shape[1]), jnp.float32)),
        f"{st.kind}_backward",
    )
    return dx_NxD, dscale_PxD.sum(0).astype(scale_D.dtype)


_fused.defvjp(_fused_fwd, _fused_bwd)


def norm_fused(x: jax.Array, scale_D: jax.Array, *, kind: str, eps: float, out_dtype=None,
               block_rows: int | None = None, backward_programs: int = BACKWARD_PROGRAMS, num_warps: int = 4,
               num_stages: int = 2, interpret: bool | None = None) -> jax.Array:
    """LayerNorm (`kind="layernorm"`) or RMSNorm of `x` over its last axis with the learned scale `scale_D`, in
    `out_dtype` (default x's), equal to `models.layers.LayerNorm` / `RMSNorm`; differentiable in x and the scale.

    `block_rows`: rows per block, a power of two (default `BLOCK_ELEMENTS // d_pad`, at least 1).
    `backward_programs`: the most programs of the backward kernel (each then loops over consecutive blocks).
    `num_stages`: Triton's software pipelining of the backward's loop. `interpret`: None runs the kernels
    interpreted unless the default backend is GPU.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown; choose one of {KINDS}")
    d = x.shape[-1]
    if scale_D.shape != (d,):
        raise ValueError(f"scale shape {scale_D.shape} does not match the last axis of x {x.shape}")
    if block_rows is None:
        block_rows = max(1, BLOCK_ELEMENTS // pl.next_power_of_2(d))
    if block_rows < 1 or block_rows & (block_rows - 1):
        raise ValueError(f"block_rows={block_rows} must be a power of two")
    if backward_programs < 1:
        raise ValueError(f"backward_programs={backward_programs} must be >= 1")
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    st = _Settings(kind=kind, eps=float(eps), out_dtype=jnp.dtype(out_dtype or x.dtype), block_rows=block_rows,
                   backward_programs=backward_programs, num_warps=num_warps, num_stages=num_stages,
                   interpret=bool(interpret))
    return _fused(x.reshape(-1, d), scale_D, st).reshape(x.shape)
