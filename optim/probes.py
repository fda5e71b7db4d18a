"""Diagnostics read from an optimizer state (DESIGN §5): what launch/ logs about the optimizer besides its counters
(`optim.state_metrics`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optim.fp8_moments import dequantized


def tensor_name(path) -> str:
    """A per-tensor metric's name for a jax key path: '/'-joined keys or indices, e.g. 'embed/embedding/.value'
    for an nnx.State leaf (the attribute key prints as '.value'); launch/'s per-tensor RMS metrics use the same."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _rms(x) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def adam_attenuation(opt_state, eps, b1, b2) -> dict[str, jax.Array]:
    """Adam's ε attenuation per tensor, RMS(m̂/(√v̂+ε)) / RMS(m̂/√v̂) (Wortsman et al. 2023 §3.4; spec optimizers
    §4(a)), from every `optax.ScaleByAdamState` in `opt_state` (optim.adam's state; SPAM's differs and is skipped),
    wherever it sits: under `with_lr_schedule`, `skip_step` or an `optax.chain` (found by its type name with
    `optax.tree_utils.tree_get_all_with_path`; FP8-stored moments dequantised first, optim/fp8_moments.py). m̂, v̂
    are bias-corrected with the state's count. 1 means no attenuation; r/(r+ε) for a constant gradient r. Entries
    with v̂ = 0 count as 0 in both RMS; a tensor with none left reports 1. Keys are `adam_attenuation/<tensor_name(param path)>`."""
    out = {}
    for _, s in optax.tree_utils.tree_get_all_with_path(dequantized(opt_state), "ScaleByAdamState"):
        k = s.count.astype(jnp.float32)
        r1, r2 = 1.0 / (1.0 - b1**k), 1.0 / (1.0 - b2**k)

        def ratio(m, v):
            m_hat, sqrt_v = m.astype(jnp.float32) * r1, jnp.sqrt(v.astype(jnp.float32) * r2)
            den = _rms(jnp.where(sqrt_v > 0, m_hat / jnp.where(sqrt_v > 0, sqrt_v, 1.0), 0.0))
            return jnp.where(den > 0, _rms(m_hat / (sqrt_v + eps)) / jnp.where(den > 0, den, 1.0), 1.0)

        flat_mu = jax.tree_util.tree_flatten_with_path(s.mu)[0]
        for (path, m), v in zip(flat_mu, jax.tree.leaves(s.nu)):
            out[f"adam_attenuation/{tensor_name(path)}"] = ratio(m, v)
    return out
