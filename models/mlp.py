"""Position-wise MLPs of the pre-LN block, selected by `model.mlp` (registry `MLPS`).

  gelu           x -> GELU(x W1) W2, hidden width 4d (Wortsman et al. 2023).
  swiglu         x -> ((x W1) * Swish(x W2)) W3 (Shazeer 2020), hidden width `swiglu_width`.
  smooth_swiglu  SwiGLU whose down-projection input is rescaled before it is quantised and unscaled after (Fishman
                 et al. 2024, "Scaling FP8 training to trillion-token LLMs", ICLR 2025; spec model-variants §5(a)).

Notation follows the paper (spec §5(a)): W1 the linear branch, W2 the Swish gate, W3 the output projection. All
linears are `layers.make_linear` layers of FP8 group "mlp", so `model.fp8` quantises them and σReparam wraps them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from models import layers


class GeluMLP(nnx.Module):
    """x -> GELU(x W1) W2 with hidden width d_ff (4d in the paper), no biases."""

    def __init__(self, cfg, *, d_model: int, d_ff: int, rngs: nnx.Rngs):
        init = layers.get_init(cfg)
        self.fc1 = layers.make_linear(
            cfg, (d_model,), (d_ff,), ("embed", "mlp"), init=init.kernel(d_model), rngs=rngs, fp8_target="mlp"
        )
        self.fc2 = layers.make_linear(
            cfg, (d_ff,), (d_model,), ("mlp", "embed"), init=init.out_kernel(d_ff), rngs=rngs, fp8_target="mlp"
        )

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x_BxTxD)))


def swiglu_width(cfg) -> int:
    """SwiGLU's hidden width: 2/3 of 4d (same parameters as a 4d two-matrix MLP), rounded up to a multiple of
    `model.swiglu_multiple_of` (Llama's rule; 256 gives the FP8 paper's Llama-2-7B width 11008 at d = 4096, spec
    §5(b))."""
    k = cfg.swiglu_multiple_of
    return k * math.ceil(8 * cfg.d_model / 3 / k)


class SwiGLU(nnx.Module):
    """SwiGLU_i(x) = (x·w1_i) · Swish(x·w2_i), y = h W3 (spec §5(a)); `down` computes h W3, which Smooth-SwiGLU
    replaces."""

    def __init__(self, cfg, *, d_model: int, d_ff: int, rngs: nnx.Rngs):
        init = layers.get_init(cfg)

        def linear(in_dim, out_dim, axes, kernel_init):
            return layers.make_linear(cfg, (in_dim,), (out_dim,), axes, init=kernel_init, rngs=rngs, fp8_target="mlp")

        self.w1 = linear(d_model, d_ff, ("embed", "mlp"), init.kernel(d_model))
        self.w2 = linear(d_model, d_ff, ("embed", "mlp"), init.kernel(d_model))
        self.w3 = linear(d_ff, d_model, ("mlp", "embed"), init.out_kernel(d_ff))

    def down(self, lin_BxTxF: jax.Array, gate_BxTxF: jax.Array) -> jax.Array:
        return self.w3(lin_BxTxF * jax.nn.silu(gate_BxTxF))

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        lin_BxTxF, gate_BxTxF = self.w1(x_BxTxD), self.w2(x_BxTxD)
        # under nnx.capture only (the diagnostic pass, models/probes.py `capture_metrics`; a no-op otherwise): max |h|
        # of h = lin * Swish(gate) entering W3, before any smoothing: where the paper's outliers grow
        h_absmax = jnp.max(jnp.abs(lin_BxTxF * jax.nn.silu(gate_BxTxF))).astype(jnp.float32)
        self.sow(nnx.Intermediate, "down_absmax", h_absmax, reduce_fn=lambda _, v: v, capture_noop=True)
        return self.down(lin_BxTxF, gate_BxTxF)


_TINY = 1e-12  # floor of the absmax a smoothing scale divides by (an all-zero channel/token keeps scale 1e12) [D]


class SmoothSwiGLU(SwiGLU):
    """Smooth-SwiGLU (Fishman et al. 2024, the Smooth-SwiGLU equation; spec §5(a), formula [S]): the same parameters
    and, in exact arithmetic, the same function as SwiGLU; only what the FP8 down projection quantises changes.

    mode "channel" (the paper): s_i = 1 / max_{b,t} |h_{b,t,i}| per hidden channel i [D: s_i = 1/absmax], and
        y = Q(h diag(s)) · Q(diag(s)^-1 W3), the inverse scale folded into W3's input rows before W3 is quantised.
    mode "token" (the official code, `ScaledSwiglu` [V-code]): s_t = max_i |lin_{t,i}| over the linear branch per
        token, h = Swish(gate) · (lin / s_t), y = (Q(h) · Q(W3)) · s_t (per-token scaling commutes with W3).
    The scale is stop-gradient (`DETACH_SCALED_SWIGLU=true` in the released script [V-code]) and computed just in time
    on the current batch. Without FP8 the outputs and gradients equal SwiGLU's up to float rounding.
    """

    def __init__(self, cfg, *, d_model: int, d_ff: int, rngs: nnx.Rngs):
        super().__init__(cfg, d_model=d_model, d_ff=d_ff, rngs=rngs)
        if cfg.smooth_swiglu.mode not in ("channel", "token"):
            raise ValueError(f"model.smooth_swiglu.mode={cfg.smooth_swiglu.mode!r} is unknown; choose channel or token")
        self.mode = cfg.smooth_swiglu.mode

    def down(self, lin_BxTxF: jax.Array, gate_BxTxF: jax.Array) -> jax.Array:
        if self.mode == "channel":
            h_BxTxF = (lin_BxTxF * jax.nn.silu(gate_BxTxF)).astype(jnp.float32)
            absmax_F = jnp.abs(h_BxTxF).max(axis=(0, 1))
            s_F = jax.lax.stop_gradient(1.0 / jnp.maximum(absmax_F, _TINY))
            w_FxD = self.w3.weight().astype(jnp.float32) / s_F[:, None]
            return self.w3.apply(h_BxTxF * s_F, w_FxD)
        lin32 = lin_BxTxF.astype(jnp.float32)
        s_BxTx1 = jax.lax.stop_gradient(jnp.maximum(jnp.abs(lin32).max(axis=-1, keepdims=True), _TINY))
        y_BxTxD = self.w3(jax.nn.silu(gate_BxTxF.astype(jnp.float32)) * (lin32 / s_BxTx1))
        return (y_BxTxD.astype(jnp.float32) * s_BxTx1).astype(y_BxTxD.dtype)


@dataclasses.dataclass(frozen=True)
class MLPVariant:
    """A `model.mlp` choice: its module and its hidden-width rule for `model.d_ff = 0`."""

    module: type
    default_width: Callable[..., int]  # model cfg -> d_ff


MLPS: dict[str, MLPVariant] = {
    "gelu": MLPVariant(GeluMLP, lambda cfg: 4 * cfg.d_model),
    "swiglu": MLPVariant(SwiGLU, swiglu_width),
    "smooth_swiglu": MLPVariant(SmoothSwiGLU, swiglu_width),
}


def hidden_width(cfg) -> int:
    """d_ff: `model.d_ff` when set, else the `model.mlp` entry's rule (an unknown entry is make_mlp's to refuse)."""
    variant = MLPS.get(cfg.mlp)
    return cfg.d_ff or (variant.default_width(cfg) if variant else 0)


def make_mlp(cfg, *, d_model: int, d_ff: int, rngs: nnx.Rngs) -> nnx.Module:
    if cfg.mlp not in MLPS:
        raise ValueError(f"model.mlp={cfg.mlp!r} is unknown; choose one of {sorted(MLPS)}")
    return MLPS[cfg.mlp].module(cfg, d_model=d_model, d_ff=d_ff, rngs=rngs)


def swiglu_down_metrics(intermediates: nnx.State) -> dict:
    """`swiglu_down_absmax/<module>`: per SwiGLU layer the max |h| entering its down projection W3 (before
    Smooth-SwiGLU's scaling), as sown under `nnx.capture` (models/probes.py `capture_metrics`)."""
    return {
        f"swiglu_down_absmax/{'/'.join(map(str, path[:-1]))}": var.get_value()
        for path, var in nnx.to_flat_state(intermediates)
        if path[-1] == "down_absmax"
    }


def swiglu_alignment_metrics(model: nnx.Module) -> dict:
    """Per SwiGLU layer (keyed by module path): the max and the 99.9th percentile over hidden channels i of
    |cos(w1_i, w2_i)|, the alignment of the linear-branch and gate weight vectors that Fishman et al. 2024 identify as
    the source of the quadratic outliers entering W3 (spec §5(a), §5(d) mechanism check). float32."""
    out = {}
    for path, module in nnx.iter_graph(model):
        if isinstance(module, SwiGLU):
            w1, w2 = (m.weight().astype(jnp.float32) for m in (module.w1, module.w2))  # [d, F]: column i = w_i
            cos_F = (w1 * w2).sum(0) / jnp.maximum(jnp.linalg.norm(w1, axis=0) * jnp.linalg.norm(w2, axis=0), 1e-30)
            name = "/".join(map(str, path))
            out[f"swiglu_cos_absmax/{name}"] = jnp.abs(cos_F).max()
            out[f"swiglu_cos_abs_p999/{name}"] = jnp.quantile(jnp.abs(cos_F), 0.999)
    return out
