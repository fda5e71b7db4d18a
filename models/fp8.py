"""FP8 linear layers: E4M3 activations and weights forward, E5M2 gradients backward, per-tensor scales.

Fishman, Chmiel, Banner, Soudry 2024, "Scaling FP8 training to trillion-token LLMs" (ICLR 2025, arXiv 2409.12517):
its FP8 recipe as the official code implements it (`experimental/fp8_linear.py`, spec model-variants §5(a) [V-code];
the paper's section numbers were not checked against the PDF).

Numerics of one FP8 linear y = x . W (`fp8_dot`):
  forward   y = (Q4(x sx) . Q4(W sw)) / (sx sw)               Q4: saturate at ±fmax4, round to nearest even, E4M3
  backward  G = Q5(g sg);  dx = (G . Q4(W sw)ᵀ) / (sg sw);  dW = (Q4(x sx)ᵀ . G) / (sx sg)      Q5: the same, E5M2
The backward reuses the forward's E4M3 copies of x and W (Transformer Engine's "hybrid" recipe; Hopper's FP8 GEMMs
take E4M3 x E5M2 but not E5M2 x E5M2); the official Gaudi code recasts x and W to E5M2 for the backward [D: hybrid].
Gradients are rounded to nearest, not stochastically as in the official code [D: deviation recorded, spec §5(a)].

Scales (one per tensor: x, W and g of every FP8 linear), spec §5(a):
  s = fmax / amax / 2^margin, rounded down to a power of two with `pow2_scale` (the official code's rule [V-code]);
  `current` scaling takes amax = max|t| of the tensor itself; `delayed` takes the max of the amax history of the
  previous `amax_history` steps (official code: one global batch of forward calls, i.e. the previous step when
  there is no gradient accumulation, hence the default 1 [V-code]); with an empty (all-zero) history, i.e. at step
  0, delayed scaling uses the current amax [D] (a scale of 1 would flush step-0 gradients, which are below E5M2's
  smallest subnormal 2^-16, to zero). A zero or non-finite amax keeps the previous scale. Each step then rolls its
  current amax into the front of the history (index 0 is the newest).

Lowering (DESIGN §7): the quantized operands are real float8 arrays handed to `jax.lax.dot_general` with
`preferred_element_type=float32`, and the product of the inverse scales is applied to the float32 result. On the
H200, XLA rewrites such a dot into a cuBLASLt FP8 GEMM (`benchmarks/fp8_hlo.py` checks the compiled HLO); a
dequantise-to-bf16 form would stay a bf16 GEMM. On CPU the same code runs: the casts round to the E4M3/E5M2 grids
and saturate exactly as on the GPU, and XLA upcasts the float8 operands of the dot, whose products are exact in
float32 (at most 4 + 4 significant bits), so CPU numbers show FP8 rounding faithfully (a native GEMM may differ in
its accumulation order/precision only).

State and the train-step contract. Every `FP8Dot` holds six `META` Variables (not `nnx.Param`, so
`nnx.split(model, nnx.Param, ...)` puts them in `rest`, which is checkpointed): `{x,w,grad}_amax_history`
float32[amax_history] and `{x,w,grad}_scale` float32[] (the scale the latest step used). The x and W entries are
written in the forward (a Variable write, so they come back in the forward's `new_rest`). The gradient entries are
produced in the backward: `fp8_dot` takes `grad_amax_history` and `grad_scale` as inputs and returns their *new
values as their cotangents* ("overwrite with gradient", as Flax's `fp8_ops` does). So the step must

    1. differentiate the loss w.r.t. `rest` as well as the params:
           (loss, (aux, new_rest)), (grads, rest_grads) = jax.value_and_grad(forward, argnums=(0, 1), has_aux=True)(
               params, rest, batch)
    2. new_rest = fp8.apply_meta_grads(new_rest, rest_grads)   # the backward's gradient amax/scale replace theirs
    3. keep `new_rest` as the next state's rest; never feed `rest_grads` to the optimizer.

`apply_meta_grads` is a no-op for a model without FP8 layers, and eval steps simply discard their `new_rest`.
Everything is a pure function of arrays, so it runs unchanged under `jax.vmap` over members and resumes bitwise.

Reused from JAX/Flax: the float8 dtypes and their round-to-nearest-even casts (`jnp.float8_e4m3fn`,
`jnp.float8_e5m2`), `lax.dot_general` with `preferred_element_type`, and Flax's `fp8_ops.dot_general_transpose_lhs
/ _rhs` for the backward contractions. Written here, because `flax.linen.fp8_ops` lacks them and `flax.nnx` has no
FP8 layer: current scaling, power-of-two scales with a margin, a configurable E4M3 maximum (240 for the Gaudi
replication), the step-0 fallback, and plain float32 state (Flax's `fp8_meta` extended dtype is not a checkpointable
array) updated under NNX's functional split.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from flax.linen import fp8_ops

TARGETS = ("mlp", "attn", "head")  # model.fp8.targets: MLP linears, q/k/v/o projections, the output head
SCALINGS = ("delayed", "current")
OWG_KEYS = ("grad_amax_history", "grad_scale")  # the META entries the backward overwrites (apply_meta_grads)


@dataclasses.dataclass(frozen=True)
class Format:
    """An FP8 storage format: its dtype and the largest magnitude used (the clip bound and the scales' fmax)."""

    dtype: jnp.dtype
    fmax: float


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the tensors of one FP8 linear are scaled and cast (static: it is part of the compiled program)."""

    e4m3: Format  # forward operands x and W
    e5m2: Format  # backward output gradient g
    scaling: str  # delayed | current
    amax_history: int
    margin: float
    pow2_scale: bool
    saturate: bool


def recipe(cfg) -> Recipe | None:
    """The `Recipe` of `model.fp8`, or None when FP8 is off. Raises ValueError naming a bad field."""
    f = cfg.fp8
    if not f.enabled:
        return None
    if f.scaling not in SCALINGS:
        raise ValueError(f"model.fp8.scaling={f.scaling!r} is unknown; choose one of {SCALINGS}")
    if f.amax_history < 1:
        raise ValueError(f"model.fp8.amax_history={f.amax_history} must be >= 1")
    e4m3_max = float(jnp.finfo(jnp.float8_e4m3fn).max)
    if not 0 < f.e4m3_max <= e4m3_max:
        raise ValueError(f"model.fp8.e4m3_max={f.e4m3_max} must be in (0, {e4m3_max}] (240 replicates Gaudi2)")
    return Recipe(
        e4m3=Format(jnp.dtype(jnp.float8_e4m3fn), float(f.e4m3_max)),
        e5m2=Format(jnp.dtype(jnp.float8_e5m2), float(jnp.finfo(jnp.float8_e5m2).max)),
        scaling=f.scaling, amax_history=int(f.amax_history), margin=float(f.margin), pow2_scale=bool(f.pow2_scale),
        saturate=bool(f.saturate),
    )


def targets(cfg) -> frozenset[str]:
    """The layer groups `model.fp8.targets` (comma-separated) selects; empty when FP8 is off."""
    if not cfg.fp8.enabled:
        return frozenset()
    chosen = frozenset(t.strip() for t in cfg.fp8.targets.split(",") if t.strip())
    if not chosen or not chosen <= set(TARGETS):
        raise ValueError(f"model.fp8.targets={cfg.fp8.targets!r} must be a comma-separated subset of {TARGETS}")
    return chosen


def validate(cfg) -> None:
    """Refuses FP8 combinations the model cannot honour (called by the Transformer constructor)."""
    chosen = targets(cfg)
    recipe(cfg)
    if "attn" in chosen and cfg.attention == "mlra":
        raise ValueError("model.fp8.targets=attn does not apply to model.attention=mlra's low-rank factors")
    if "head" in chosen and cfg.tie_embeddings:
        raise ValueError("model.fp8.targets=head needs an untied head (model.tie_embeddings=False)")


def recipe_for(cfg, target: str | None) -> Recipe | None:
    """The recipe of a linear layer of group `target` ("mlp" | "attn" | "head"), None if it stays un-quantized."""
    return recipe(cfg) if target in targets(cfg) else None


def quantize(x: jax.Array, scale: jax.Array, fmt: Format, saturate: bool) -> jax.Array:
    """float8 Q(x·scale): multiply in float32, clip to ±fmax when `saturate` (otherwise an overflow becomes NaN in
    E4M3, which has no infinity, and ±inf in E5M2), then cast with round-to-nearest-even."""
    y = x.astype(jnp.float32) * scale
    if saturate:
        y = jnp.clip(y, -fmt.fmax, fmt.fmax)
    return y.astype(fmt.dtype)


def qdq(x: jax.Array, scale: jax.Array, fmt: Format, saturate: bool = True) -> jax.Array:
    """Quantize then dequantize, in float32: what an FP8 tensor stands for."""
    return quantize(x, scale, fmt, saturate).astype(jnp.float32) / scale


def saturated_fraction(t: jax.Array, scale: jax.Array, fmt: Format) -> jax.Array:
    """The fraction of entries of `t` that quantising with `scale` saturates: |t·scale| >= fmax (float32)."""
    return jnp.mean(jnp.abs(t.astype(jnp.float32) * scale) >= fmt.fmax, dtype=jnp.float32)


def _latest(_, value):
    return value


def compute_scale(amax: jax.Array, prev_scale: jax.Array, fmt: Format, r: Recipe) -> jax.Array:
    """s = fmax / amax / 2^margin (then 2^floor(log2 s) with pow2_scale); the previous scale if amax is 0 or not
    finite (spec §5(a))."""
    ok = jnp.isfinite(amax) & (amax > 0)
    s = fmt.fmax / jnp.where(ok, amax, 1.0) / 2.0**r.margin
    if r.pow2_scale:
        s = jnp.exp2(jnp.floor(jnp.log2(s)))
    return jnp.where(ok, s, prev_scale)


def next_scale(t: jax.Array, history: jax.Array, prev_scale: jax.Array, fmt: Format, r: Recipe):
    """(scale for tensor `t` this step, the history with amax(t) rolled in at index 0) under `r.scaling`."""
    amax = jax.lax.stop_gradient(jnp.max(jnp.abs(t)).astype(jnp.float32))
    if r.scaling == "current":
        ref = amax
    else:
        past = jnp.max(history)
        ref = jnp.where(past > 0, past, amax)  # [D] empty history (step 0): the current amax
    new_history = jnp.concatenate([amax[None], history[:-1]])
    return compute_scale(ref, prev_scale, fmt, r), new_history


def _dims(x_ndim: int, n_in: int):
    return ((tuple(range(x_ndim - n_in, x_ndim)), tuple(range(n_in))), ((), ()))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def fp8_dot(r: Recipe, n_in: int, in_dtype, out_dtype, x, w, x_scale, w_scale, grad_history, grad_scale):
    """x . W over the trailing `n_in` axes of x and the leading `n_in` axes of W, with FP8 operands (module doc).

    `x_scale`, `w_scale` are this step's forward scales; `grad_history`, `grad_scale` the gradient's state before
    this step. Their cotangents: zero for the forward scales, and the NEW gradient amax history and scale for the
    last two (overwrite with gradient; see `apply_meta_grads`). x and W must have dtype `in_dtype`.
    """
    return _fp8_dot_fwd(r, n_in, in_dtype, out_dtype, x, w, x_scale, w_scale, grad_history, grad_scale)[0]


def _fp8_dot_fwd(r, n_in, in_dtype, out_dtype, x, w, x_scale, w_scale, grad_history, grad_scale):
    qx = quantize(x, x_scale, r.e4m3, r.saturate)
    qw = quantize(w, w_scale, r.e4m3, r.saturate)
    y = jax.lax.dot_general(qx, qw, _dims(x.ndim, n_in), preferred_element_type=jnp.float32)
    y = (y * (1.0 / (x_scale * w_scale))).astype(out_dtype)
    return y, (qx, qw, x_scale, w_scale, grad_history, grad_scale)


def _fp8_dot_bwd(r, n_in, in_dtype, out_dtype, res, g):
    qx, qw, x_scale, w_scale, grad_history, grad_scale = res
    g_scale, new_history = next_scale(g, grad_history, grad_scale, r.e5m2, r)
    qg = quantize(g, g_scale, r.e5m2, r.saturate)
    dims = _dims(qx.ndim, n_in)
    kw = dict(dimension_numbers=dims, precision=None, preferred_element_type=jnp.float32)
    dx = fp8_ops.dot_general_transpose_lhs(qg, qx, qw, **kw)  # G . Q4(W)ᵀ, E5M2 x E4M3
    dw = fp8_ops.dot_general_transpose_rhs(qg, qx, qw, **kw)  # Q4(x)ᵀ . G
    dx = (dx * (1.0 / (g_scale * w_scale))).astype(in_dtype)
    dw = (dw * (1.0 / (g_scale * x_scale))).astype(in_dtype)
    return dx, dw, jnp.zeros_like(x_scale), jnp.zeros_like(w_scale), new_history, g_scale


fp8_dot.defvjp(_fp8_dot_fwd, _fp8_dot_bwd)


class Meta(nnx.Variable):
    """FP8 scaling state (amax histories and scales): not a Param, so it lives in the train state's `rest`."""


META = Meta


class FP8Dot(nnx.Module):
    """The FP8 matmul of one linear layer and its scaling state (module doc: the state and the step contract)."""

    def __init__(self, r: Recipe):
        self.recipe = r
        for name in ("x", "w", "grad"):
            setattr(self, f"{name}_amax_history", Meta(jnp.zeros((r.amax_history,), jnp.float32)))
            setattr(self, f"{name}_scale", Meta(jnp.ones((), jnp.float32)))

    def __call__(self, x: jax.Array, w: jax.Array, n_in: int, out_dtype) -> jax.Array:
        """x . w (both of one dtype) in FP8; writes this step's x and W amax histories and scales.

        Under `nnx.capture` (the diagnostic pass, `saturation_metrics`) it also sows the saturated fractions of x and
        W and perturbs its output so that the gradient it quantises can be read; elsewhere both are no-ops."""
        r = self.recipe
        sx, hx = next_scale(x, self.x_amax_history[...], self.x_scale[...], r.e4m3, r)
        sw, hw = next_scale(w, self.w_amax_history[...], self.w_scale[...], r.e4m3, r)
        self.x_amax_history[...], self.x_scale[...] = hx, sx
        self.w_amax_history[...], self.w_scale[...] = hw, sw
        for name, t, s in (("x", x, sx), ("w", w, sw)):
            self.sow(nnx.Intermediate, f"{name}_saturated", saturated_fraction(t, s, r.e4m3), reduce_fn=_latest,
                     capture_noop=True)
        y = fp8_dot(
            r, n_in, x.dtype, jnp.dtype(out_dtype), x, w, sx, sw, self.grad_amax_history[...], self.grad_scale[...]
        )
        return self.perturb("grad", y, capture_noop=True)  # d loss / d(this) = the g that the backward quantises


def _last_key(path) -> str | None:
    k = path[-1]
    return getattr(k, "key", getattr(k, "name", None))


def apply_meta_grads(rest, rest_grads):
    """The rest after a train step: `rest` (the forward's new_rest) with every `OWG_KEYS` leaf replaced by its
    gradient, which `fp8_dot`'s backward set to the new gradient amax history / scale. Same tree as `rest`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, value, grad: grad if _last_key(path) in OWG_KEYS else value, rest, rest_grads
    )


def _linear_name(linear_path) -> str:
    """The metric key of the Linear that holds an FP8Dot as its `fp8` attribute, e.g. blocks/0/mlp/w3."""
    return "/".join(map(str, linear_path))


def saturation_metrics(model: nnx.Module, intermediates: nnx.State, output_grads: nnx.State) -> dict:
    """`fp8_saturated/<linear>/{x,w,grad}`: per quantized tensor, the fraction of entries with |t·scale| >= fmax,
    from one forward and backward of `model` under `nnx.capture` (models/probes.py `capture_metrics`): x and W
    as sown in the forward, and the output gradient g (the gradient of the `grad` perturbation) with the scale the
    backward gives it (`next_scale` from the model's gradient state). The scales are those the next train step uses.
    A value of 0 with delayed scaling means no tensor outgrew its amax history; current scaling never saturates."""
    dots = {path: m for path, m in nnx.iter_graph(model) if isinstance(m, FP8Dot)}
    out = {}
    for path, var in nnx.to_flat_state(intermediates):
        if path[:-1] in dots and path[-1] in ("x_saturated", "w_saturated"):
            out[f"fp8_saturated/{_linear_name(path[:-2])}/{path[-1][0]}"] = var.get_value()
    for path, var in nnx.to_flat_state(output_grads):
        module = dots.get(path[:-1])
        if module is not None and path[-1] == "grad":
            r, g = module.recipe, var.get_value()
            scale, _ = next_scale(g, module.grad_amax_history[...], module.grad_scale[...], r.e5m2, r)
            out[f"fp8_saturated/{_linear_name(path[:-2])}/grad"] = saturated_fraction(g, scale, r.e5m2)
    return out


def metrics(model: nnx.Module) -> dict:
    """Per quantized tensor (x, w, grad of every FP8 linear, keyed by the linear's module path, e.g.
    `fp8_amax/blocks/0/mlp/w3/x`): the newest amax in the state and the scale its step used (DESIGN §5)."""
    out = {}
    for path, module in nnx.iter_graph(model):
        if isinstance(module, FP8Dot):
            name = _linear_name(path[:-1])
            for t in ("x", "w", "grad"):
                out[f"fp8_amax/{name}/{t}"] = getattr(module, f"{t}_amax_history")[...][0]
                out[f"fp8_scale/{name}/{t}"] = getattr(module, f"{t}_scale")[...]
    return out
