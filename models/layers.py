"""Layers shared by every model variant: linear maps with logical axes, norms, embeddings, init rules.

Every parameter carries `axes` metadata (logical axis names such as "embed", "heads", "mlp", "vocab"); the
runtime (launch/mesh.py) maps them onto mesh axes. Modules never decide placement themselves.

Init rules (registry `INITS`, selected by `model.init`):
  fan_in  Wortsman et al. 2023 / nanodo (spec model-variants §6(b)): embedding N(0, 1/d); every other kernel a
          truncated normal with std 1/sqrt(fan_in) (jax's variance_scaling corrects the truncation).
  small   Spike No More (Takase et al. 2023, condition 1 "small sub-layers"; spec §7(a)) [R]: every weight, the
          embedding included, N(0, σ²) with σ = sqrt(2/(5d)) ("small init", Nguyen & Salazar 2019); the residual-branch
          output projections (Wo, W2) get σ/sqrt(2L) (GPT-2/Megatron "scaled init").
  gpt2    GPT-2 (Radford et al. 2019, §2.3: residual-layer weights scaled by 1/sqrt(N) at init, N the number of
          residual layers = 2L): every weight, embedding and head included, N(0, 0.02²); Wo and W2 N(0, (0.02/sqrt(2L))²).
          The init of the papers that train GPT-2 (MLRA, Chung et al. 2024; LSSAR, Gao & Spratling 2025).

μParam (simple) (`model.mup`, `mup_init`): the fan_in rule with the embedding std anchored at the base width.
Soft-caps (`softcap`): Gemma 2's cap·tanh(x/cap).

Embedding-output options (registry `EMBED_SCALES`, `model.embed_scale`; Spike No More, spec §7(a) [R]):
  none       x0 = E[tokens]                    (std(x0) = σ_embed: "Vanilla" under `small` init)
  scaled     x0 = sqrt(d) E[tokens]            ("Scaled Embed": std ≈ sqrt(2/5) under `small` init)
  layernorm  x0 = LayerNorm(E[tokens])         ("Embed LN": std 1 at init; no bias, learned scale)

σReparam (`SigmaReparamLinear`, `model.sigma_reparam`): Zhai et al. 2023, W_hat = (γ/σ(W)) W with one power
iteration per forward on a stored vector (spec §3); its σ, γ metrics are in models/probes.py. Token-embedding
variability `tev` (Chung et al. 2024, spec §2).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from models import fp8, norm_pallas

Initializer = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Inits:
    """The initializers of one model (an `INITS` rule applied to its config)."""

    embed: Initializer  # the [V, d] token table
    kernel: Callable[[int], Initializer]  # fan_in -> initializer of a kernel
    out_kernel: Callable[[int], Initializer]  # fan_in -> initializer of a residual-branch output kernel (Wo, W2)


def _fan_in_kernel(fan_in: int) -> Initializer:
    # variance_scaling on a reshaped kernel would need in/out axes; we pass the fan-in explicitly instead.
    std = 1.0 / math.sqrt(fan_in)
    # jax.nn.initializers.truncated_normal truncates at +-2 std; dividing by the std of the truncated unit
    # normal (0.87962566) restores the requested std, as variance_scaling(..., "truncated_normal") does.
    return jax.nn.initializers.truncated_normal(std / 0.87962566103423978)


def fan_in_init(cfg) -> Inits:
    """Wortsman et al. 2023 / nanodo (spec §6(b)): embedding N(0, 1/d), kernels trunc-normal 1/sqrt(fan_in)."""
    return Inits(
        embed=jax.nn.initializers.normal(1.0 / math.sqrt(cfg.d_model)), kernel=_fan_in_kernel, out_kernel=_fan_in_kernel
    )


def normal_init(std: float, n_layers: int) -> Inits:
    """Every weight N(0, std²), the residual-branch output kernels N(0, std²/(2L)); plain (untruncated) normals."""
    out_std = std / math.sqrt(2 * n_layers)
    return Inits(
        embed=jax.nn.initializers.normal(std),
        kernel=lambda fan_in: jax.nn.initializers.normal(std),
        out_kernel=lambda fan_in: jax.nn.initializers.normal(out_std),
    )


def small_init(cfg) -> Inits:
    """Spike No More's condition-1 init (spec §7(a) [R]): N(0, σ²), σ = sqrt(2/(5d)), for every weight including the
    embedding; Wo and W2 get σ/sqrt(2L). Plain (untruncated) normal, as Megatron's init_method_normal [R]."""
    return normal_init(math.sqrt(2.0 / (5 * cfg.d_model)), cfg.n_layers)


def gpt2_init(cfg) -> Inits:
    """GPT-2's init: every weight N(0, 0.02²) (GPT-1, Radford et al. 2018 §4.1, kept by GPT-2's released code), Wo and
    W2 N(0, (0.02/sqrt(2L))²) (GPT-2, Radford et al. 2019 §2.3). Plain normal, as GPT-2 and Megatron draw it."""
    return normal_init(0.02, cfg.n_layers)


INITS: dict[str, Callable[..., Inits]] = {"fan_in": fan_in_init, "small": small_init, "gpt2": gpt2_init}


def get_init(cfg) -> Inits:
    """The initializers selected by `model.init` for the model config `cfg` (with `model.mup`: `mup_init`'s)."""
    if cfg.init not in INITS:
        raise ValueError(f"model.init={cfg.init!r} is unknown; choose one of {sorted(INITS)}")
    return mup_init(cfg) if cfg.mup else INITS[cfg.init](cfg)


def check_mup(cfg) -> None:
    """μParam (simple) is defined on the `fan_in` init, an untied head and full-rank matrices (see `mup_init`)."""
    if not cfg.mup:
        return
    if cfg.mup_base_width <= 0:
        raise ValueError(f"model.mup_base_width={cfg.mup_base_width} must be positive (the width whose LR transfers)")
    for bad, why in (
        (cfg.init != "fan_in", f"model.init={cfg.init!r} (μParam scales the fan_in init; set model.init=fan_in)"),
        (cfg.tie_embeddings, "model.tie_embeddings (the table would be both input and output layer)"),
        (cfg.attention == "mlra", "model.attention=mlra (a factor's fan-in is the rank, not the width)"),
    ):
        if bad:
            raise ValueError(f"model.mup does not apply with {why}")


def mup_init(cfg) -> Inits:
    """μParam (simple) init (Wortsman et al. 2023, "μParam (simple)"; spec model-variants §6(d)5; μP of Yang et al.
    2022, Table 3, for Adam): every kernel trunc-normal 1/sqrt(fan_in) as in `fan_in_init` (the μP hidden/output
    rule), and the embedding N(0, 1/b) with b = `model.mup_base_width` instead of N(0, 1/d): input weights keep a
    width-independent init in μP, and anchoring it at the base width makes the base-width model the `fan_in`
    baseline exactly [D]. The per-layer LR multipliers that complete it: `models.transformer.mup_lr_multipliers`."""
    check_mup(cfg)
    return dataclasses.replace(fan_in_init(cfg), embed=jax.nn.initializers.normal(1.0 / math.sqrt(cfg.mup_base_width)))


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """Gemma 2's logit soft-cap cap·tanh(x/cap) in float32 (Gemma Team 2024, §2): smooth, odd, |y| < cap, slope 1
    at 0. Used on the attention logits (`model.attn_softcap`) and the output logits (`model.final_softcap`)."""
    return cap * jnp.tanh(x.astype(jnp.float32) / cap)


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
    float32 `out_dtype` and a lower-precision `dtype` (the output head) the backward stays in `dtype`. With an FP8
    `fp8_recipe` the matmul is `models/fp8.py`'s E4M3/E5M2 dot, whose scaling state this layer holds.
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
        fp8_recipe: fp8.Recipe | None = None,
    ):
        shape = (*in_shape, *out_shape)
        assert len(axes) == len(shape), (axes, shape)
        self.kernel = nnx.Param(init(rngs.params(), shape, param_dtype), axes=axes)
        self.n_in = len(in_shape)
        self.dtype = dtype
        self.out_dtype = out_dtype or dtype
        self.fp8 = nnx.data(None if fp8_recipe is None else fp8.FP8Dot(fp8_recipe))

    def weight(self) -> jax.Array:
        """The kernel the matmul uses (`SigmaReparamLinear` reparametrises it)."""
        return self.kernel[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.apply(x, self.weight())

    def apply(self, x: jax.Array, w: jax.Array) -> jax.Array:
        """x . w with this layer's dtypes and matmul (FP8 or not), for a kernel `w` of the layer's shape (Smooth-SwiGLU
        passes a rescaled one)."""
        x, w = x.astype(self.dtype), w.astype(self.dtype)
        if self.fp8 is not None:
            return self.fp8(x, w, self.n_in, self.out_dtype)
        if self.out_dtype == jnp.float32 and self.dtype != jnp.float32:
            return dot_wide_out(x, w, self.n_in)
        return _dot(x, w, self.n_in, self.out_dtype)


class SpectralState(nnx.Variable):
    """Non-trainable σReparam state: the power-iteration vector u and the latest σ estimate.

    Not a Param, so it lives in the train state's `rest`: every forward writes the advanced u and σ back, the train
    step keeps what its forward wrote, and eval / diagnostics discard theirs (the official code's "power step from
    the stored u, no write-back" in eval mode, spec §3(a)).
    """


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x), 1e-12)


def power_iteration(w_IxO: jax.Array, u_O: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One power-iteration step for the spectral norm of `w_IxO` (Zhai et al. 2023; spec §3(a) [V-code]).

    v = normalize(W u), u' = normalize(Wᵀ v) with stop-gradient; σ = vᵀ W u' is differentiable w.r.t. W (its
    gradient is v u'ᵀ). Returns (σ, u'). float32 throughout.
    """
    w_IxO = w_IxO.astype(jnp.float32)
    w_sg = jax.lax.stop_gradient(w_IxO)
    v_I = _unit(w_sg @ jax.lax.stop_gradient(u_O))
    u_O = _unit(w_sg.T @ v_I)
    return v_I @ w_IxO @ u_O, u_O


class SigmaReparamLinear(Linear):
    """σReparam linear map (Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention Entropy
    Collapse"; spec §3, apple/ml-sigma-reparam [V-code]): W_hat = (γ / σ(W)) W with a learned scalar γ.

    σ(W) is the spectral norm of the kernel viewed as a [fan_in, fan_out] matrix (a [d, H, Dh] query kernel is
    reshaped to [d, H*Dh]), estimated by one `power_iteration` per forward from the stored u, which is initialised
    to the top right-singular vector of W0 by an SVD (so σ is exact at step 0) [V-code]. γ0 = σ(W0) ("sigma0", the
    official PyTorch code, used for LM: W_hat = W0 at init) or 1 ("one", the official JAX code) [D: sigma0].
    γ is a 0-d Param, so the ndim >= 2 weight-decay mask leaves it alone (spec §10 [D]).
    """

    def __init__(self, in_shape, out_shape, axes, *, gamma_init: str, **kwargs):
        super().__init__(in_shape, out_shape, axes, **kwargs)
        if gamma_init not in ("sigma0", "one"):
            raise ValueError(f"model.sigma_reparam_gamma_init={gamma_init!r} is unknown; choose sigma0 or one")
        self.fan_in = math.prod(in_shape)
        _, s_R, vh_RxO = jnp.linalg.svd(self.matrix(self.kernel[...]), full_matrices=False)
        self.u = SpectralState(vh_RxO[0])
        self.sigma = SpectralState(s_R[0])
        gamma0 = s_R[0] if gamma_init == "sigma0" else jnp.ones([], jnp.float32)
        self.gamma = nnx.Param(gamma0.astype(self.kernel.dtype), axes=())

    def matrix(self, w: jax.Array) -> jax.Array:
        """The kernel as a float32 [fan_in, fan_out] matrix."""
        return w.astype(jnp.float32).reshape(self.fan_in, -1)

    def weight(self) -> jax.Array:
        w = self.kernel[...]
        sigma, u_O = power_iteration(self.matrix(w), self.u[...])
        self.u[...] = u_O
        self.sigma[...] = jax.lax.stop_gradient(sigma)
        return (self.gamma[...].astype(jnp.float32) / sigma) * w.astype(jnp.float32)


def make_linear(cfg, in_shape, out_shape, axes, *, init: Initializer, rngs: nnx.Rngs, reparam: bool | None = None,
                out_dtype=None, fp8_target: str | None = None) -> Linear:
    """A linear map of the model: `SigmaReparamLinear` if `reparam` (default: `model.sigma_reparam`), else `Linear`;
    its matmul is FP8 when `fp8_target` ("mlp" | "attn" | "head") is among `model.fp8.targets` (FP8 on)."""
    kwargs = dict(
        init=init, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs, out_dtype=out_dtype,
        fp8_recipe=fp8.recipe_for(cfg, fp8_target),
    )
    if cfg.sigma_reparam if reparam is None else reparam:
        return SigmaReparamLinear(in_shape, out_shape, axes, gamma_init=cfg.sigma_reparam_gamma_init, **kwargs)
    return Linear(in_shape, out_shape, axes, **kwargs)


NORM_IMPLS = ("auto", "xla", "pallas")  # model.norm_impl


def norm_impl(cfg) -> str:
    """`model.norm_impl` resolved: "xla" (jnp, fused by XLA) or "pallas" (models/norm_pallas.py's kernels). "auto"
    picks pallas on a single GPU, where the fused kernels made the step 7.6 % / 6.5 % faster at 42M / 151M
    (benchmarks/results/h200_session12_norm.jsonl), and xla elsewhere: on CPU Pallas only interprets, and over
    several devices XLA cannot partition a pallas_call (no shard_map around it yet)."""
    impl = cfg.get("norm_impl", "xla")  # run configs written before the field existed ran XLA's norms
    if impl not in NORM_IMPLS:
        raise ValueError(f"model.norm_impl={impl!r} is unknown; choose one of {NORM_IMPLS}")
    if impl == "auto":
        return "pallas" if jax.default_backend() == "gpu" and jax.device_count() == 1 else "xla"
    return impl


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with a learned scale and no bias; statistics in float32. `impl="pallas"`: the
    same function by the fused kernels of models/norm_pallas.py (the parameters are the same)."""

    def __init__(self, dim: int, axis_name: str | None, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 impl: str = "xla"):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=(axis_name,))
        self.eps = eps
        self.dtype = dtype
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.impl == "pallas":
            return norm_pallas.norm_fused(x, self.scale[...], kind="layernorm", eps=self.eps, out_dtype=self.dtype)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis with a learned scale; statistics in float32. `impl` as `LayerNorm`'s."""

    def __init__(self, dim: int, axis_name: str | None, *, eps: float, dtype: jnp.dtype, param_dtype: jnp.dtype,
                 impl: str = "xla"):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), axes=(axis_name,))
        self.eps = eps
        self.dtype = dtype
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.impl == "pallas":
            return norm_pallas.norm_fused(x, self.scale[...], kind="rmsnorm", eps=self.eps, out_dtype=self.dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def make_norm(cfg, dim: int, axis_name: str | None) -> nnx.Module:
    """The norm selected by `model.norm`, over a last axis of size `dim`, run by `model.norm_impl`."""
    if cfg.norm not in NORMS:
        raise ValueError(f"model.norm={cfg.norm!r} is unknown; choose one of {sorted(NORMS)}")
    return NORMS[cfg.norm](
        dim, axis_name, eps=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        impl=norm_impl(cfg),
    )


class Scale(nnx.Module):
    """x -> factor * x."""

    def __init__(self, factor: float):
        self.factor = factor

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * jnp.asarray(self.factor, x.dtype)


# model.embed_scale -> (model cfg) -> the module applied to the embedding output, or None (Spike No More, spec §7)
EMBED_SCALES: dict[str, Callable] = {
    "none": lambda cfg: None,
    "scaled": lambda cfg: Scale(math.sqrt(cfg.d_model)),
    "layernorm": lambda cfg: LayerNorm(
        cfg.d_model, "embed", eps=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
        impl=norm_impl(cfg),
    ),
}


def make_embed_scale(cfg) -> nnx.Module | None:
    if cfg.embed_scale not in EMBED_SCALES:
        raise ValueError(f"model.embed_scale={cfg.embed_scale!r} is unknown; choose one of {sorted(EMBED_SCALES)}")
    return EMBED_SCALES[cfg.embed_scale](cfg)


def sinusoidal_positions(T: int, d: int) -> jax.Array:
    """float32[T, d], Vaswani et al. 2017 §3.5: PE(t, 2i) = sin(t / 10000^(2i/d)), PE(t, 2i+1) = cos(the same)."""
    angle_TxF = jnp.arange(T, dtype=jnp.float32)[:, None] * 10000.0 ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    return jnp.stack([jnp.sin(angle_TxF), jnp.cos(angle_TxF)], axis=-1).reshape(T, d)


class SinusoidalPositions(nnx.Module):
    """x + PE[:T] with the fixed sinusoids of `sinusoidal_positions` (no parameters)."""

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        _, T, D = x_BxTxD.shape
        return x_BxTxD + sinusoidal_positions(T, D).astype(x_BxTxD.dtype)[None]


class LearnedPositions(nnx.Module):
    """x + P[:T] with a learned absolute position table P [max_positions, d] (GPT-2, Radford et al. 2019), drawn from
    the token table's initializer (`model.init`: N(0, 0.02²) under gpt2, as GPT-2's wpe)."""

    def __init__(self, max_positions: int, d_model: int, *, init: Initializer, param_dtype, rngs: nnx.Rngs):
        self.embedding = nnx.Param(init(rngs.params(), (max_positions, d_model), param_dtype), axes=(None, "embed"))

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        T, max_positions = x_BxTxD.shape[1], self.embedding.shape[0]
        if T > max_positions:
            raise ValueError(f"sequence length {T} exceeds model.max_positions={max_positions} (position=learned)")
        return x_BxTxD + self.embedding[...][:T].astype(x_BxTxD.dtype)[None]


# model.position -> (model cfg, rngs) -> the module adding absolute positions to x0, or None (RoPE, in attention)
POSITIONS: dict[str, Callable] = {
    "rope": lambda cfg, rngs: None,
    "sinusoidal": lambda cfg, rngs: SinusoidalPositions(),
    "learned": lambda cfg, rngs: LearnedPositions(
        cfg.max_positions, cfg.d_model, init=get_init(cfg).embed, param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs
    ),
}


def make_positions(cfg, rngs: nnx.Rngs) -> nnx.Module | None:
    if cfg.position not in POSITIONS:
        raise ValueError(f"model.position={cfg.position!r} is unknown; choose one of {sorted(POSITIONS)}")
    if cfg.position == "sinusoidal" and cfg.d_model % 2:
        raise ValueError(f"model.position=sinusoidal needs an even model.d_model (got {cfg.d_model})")
    if cfg.position == "learned" and cfg.max_positions < 1:
        raise ValueError(f"model.max_positions={cfg.max_positions} must be >= 1 with model.position=learned")
    return POSITIONS[cfg.position](cfg, rngs)


def embed_detach(e: jax.Array, alpha: float) -> jax.Array:
    """Embed Detach (GLM-130B, Zeng et al. 2022, "Embedding Layer Gradient Shrink"; spec model-variants §7(a)):
    α·e + (1 − α)·stop_gradient(e): the forward value is e (up to rounding) and the gradient reaching the
    embedding table is α times its value. α = `model.embed_detach` in (0, 1] (GLM-130B: 0.1)."""
    return alpha * e + (1.0 - alpha) * jax.lax.stop_gradient(e)


def tev(embedding_VxD: jax.Array, row_mask_V: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Token-embedding variability (Chung et al. 2024, §2.2 [R]; spec §2(a)): TEV_i = std_j E_ij (ddof 0) per
    token row; returns (mean_i TEV_i, std_i TEV_i) over all rows, or over the rows where `row_mask_V` is set."""
    tev_V = jnp.std(embedding_VxD.astype(jnp.float32), axis=-1)
    w_V = jnp.ones_like(tev_V) if row_mask_V is None else row_mask_V.astype(jnp.float32)
    n = jnp.maximum(w_V.sum(), 1.0)
    mu = (w_V * tev_V).sum() / n
    return mu, jnp.sqrt((w_V * jnp.square(tev_V - mu)).sum() / n)


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
