"""Adam's moments stored in FP8 (Fishman et al. 2024, "Scaling FP8 training to trillion-token LLMs", ICLR 2025;
spec model-variants §5(a) "FP8 Adam moments" [V-code: experimental/fp8_optimizer.py]): `optim.fp8_moments`.

The first moment m is stored in E4M3 and the second moment v in E5M2, each tensor with its own scale
s = fmax / amax (amax = max |entry| of that tensor after the update; not a power of two, as the official code),
rounded to nearest even:

    stored  q_m = Q4(m s_m),  q_v = Q5(v s_v)            (float8 arrays in the optimizer state, 1 byte per entry)
    step    m, v = q_m / s_m, q_v / s_v   ->  the wrapped optimizer's update (its direction uses the new float32
            m, v)  ->  requantise the new m, v with their new scales

`fp8_moments(inner)` wraps any direction whose state is a NamedTuple with `mu` and `nu` fields (optim/adam.py's
`ScaleByAdamState`, optim/spam.py's `SpamState`), so it composes with AdamW and SPAM alike; everything else in the
inner state (counts, SPAM's counters) passes through. A tensor whose amax is 0 (at init, after a SPAM reset) or
not finite gets scale 1. Relative error of a normal entry: <= 2^-4 (E4M3, 3 mantissa bits) and <= 2^-3 (E5M2,
2 bits); entries below half the smallest subnormal, about amax·2^-18.8 (E4M3) or amax·2^-32.8 (E5M2), flush to zero.
The latter is the spec's risk to monitor: a v entry flushed to 0 makes m/(sqrt(v) + ε) large.

Deviations [D]: the official code keeps FP16 master weights with per-tensor scaling and quantises only optimizer
param group 0 (usually the decayed matrices); here the parameters stay in `model.param_dtype` and every tensor's
moments are stored in FP8. The official code quantise-dequantises in place (a simulation of FP8 storage); here
the state really holds float8 arrays, so the memory saving is real and the numerics are the same.

The per-tensor scales are float32 vectors, one entry per moment tensor in `jax.tree.leaves` order, not a tree
beside the moments: `optax.tree_map_params` (how launch/step.py shards the optimizer state) would take a
parameter-shaped tree of scalars for parameters and give each scalar a parameter's sharding. `dequantized(state)`
gives the view with float32 moments that optimizer probes read (optim/probes.py `adam_attenuation`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from models.fp8 import Format, quantize

M_FORMAT = Format(jnp.dtype(jnp.float8_e4m3fn), float(jnp.finfo(jnp.float8_e4m3fn).max))  # first moment: 448
V_FORMAT = Format(jnp.dtype(jnp.float8_e5m2), float(jnp.finfo(jnp.float8_e5m2).max))  # second moment: 57344


class FP8MomentsState(NamedTuple):
    inner: optax.OptState  # the wrapped optimizer's state, its `mu` / `nu` trees holding float8 arrays
    mu_scale: jax.Array  # float32[number of tensors]: the scale of each E4M3 first-moment tensor (leaves order)
    nu_scale: jax.Array  # float32[number of tensors]: the scale of each E5M2 second-moment tensor


def moment_scale(x: jax.Array, fmt: Format) -> jax.Array:
    """fmax / max|x| as float32; 1 when the amax is 0 or not finite."""
    amax = jnp.max(jnp.abs(x)).astype(jnp.float32)
    ok = jnp.isfinite(amax) & (amax > 0)
    return jnp.where(ok, fmt.fmax / jnp.where(ok, amax, 1.0), 1.0)


def _quantize_tree(tree, fmt: Format):
    """(tree of float8 arrays, float32[n] scales) of a moment tree."""
    leaves, treedef = jax.tree.flatten(tree)
    scales = [moment_scale(x, fmt) for x in leaves]
    q = [quantize(x, s, fmt, saturate=True) for x, s in zip(leaves, scales)]
    return jax.tree.unflatten(treedef, q), jnp.stack(scales) if scales else jnp.zeros((0,), jnp.float32)


def _dequantize_tree(tree, scales: jax.Array):
    """The float32 moments q / s (as q · (1/s): a vmapped member then equals its standalone run bit for bit)."""
    leaves, treedef = jax.tree.flatten(tree)
    return jax.tree.unflatten(treedef, [q.astype(jnp.float32) * (1.0 / scales[i]) for i, q in enumerate(leaves)])


def _check_inner(state) -> None:
    if not (hasattr(state, "_replace") and hasattr(state, "mu") and hasattr(state, "nu")):
        raise ValueError(f"optim.fp8_moments needs a state with Adam's mu and nu, got {type(state).__name__}")


def fp8_moments(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` (Adam / SPAM direction) with its moments stored in FP8 between steps (module docstring)."""

    def pack(state) -> FP8MomentsState:
        mu, mu_scale = _quantize_tree(state.mu, M_FORMAT)
        nu, nu_scale = _quantize_tree(state.nu, V_FORMAT)
        return FP8MomentsState(state._replace(mu=mu, nu=nu), mu_scale, nu_scale)

    def init(params):
        state = inner.init(params)
        _check_inner(state)
        return pack(state)

    def update(updates, state, params=None):
        out, new_inner = inner.update(updates, unpack(state), params)
        return out, pack(new_inner)

    return optax.GradientTransformation(init, update)


def unpack(state: FP8MomentsState):
    """The wrapped optimizer's state with float32 moments q / s."""
    inner = state.inner
    mu, nu = _dequantize_tree(inner.mu, state.mu_scale), _dequantize_tree(inner.nu, state.nu_scale)
    return inner._replace(mu=mu, nu=nu)


def dequantized(opt_state):
    """`opt_state` with every `FP8MomentsState` replaced by the wrapped state with float32 moments (for probes that
    read Adam's m and v wherever they sit); unchanged when there is none."""
    return jax.tree.map(
        lambda s: unpack(s) if isinstance(s, FP8MomentsState) else s,
        opt_state,
        is_leaf=lambda s: isinstance(s, FP8MomentsState),
    )
