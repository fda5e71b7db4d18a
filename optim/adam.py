"""Adam's update direction, in a form whose batched (vmapped) members equal their standalone runs bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def scale_by_adam(b1=0.9, b2=0.999, eps=1e-8) -> optax.GradientTransformation:
    """Adam's direction m̂/(sqrt(v̂) + ε), ε outside the square root (placement E1 of spec optimizers, as optax and
    torch AdamW): m = β1 m + (1 − β1) g, v = β2 v + (1 − β2) g², m̂ = m/(1 − β1^k), v̂ = v/(1 − β2^k).

    State and math are those of `optax.scale_by_adam(b1, b2, eps)` (an `optax.ScaleByAdamState`). The bias
    corrections are applied as scalar reciprocals instead of tensor divisions: XLA's algebraic simplifier rewrites
    "tensor / broadcast scalar" differently when the scalar is batched, so with optax's form a member of a vmapped
    sweep (DESIGN §4) differs from its standalone run in the last bit, and with this one it does not. The bias
    corrections are computed in the default float type (float64 under jax_enable_x64).
    """

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

    def update(updates, state, params=None):
        del params
        count = optax.safe_int32_increment(state.count)
        mu = jax.tree.map(lambda m, g: (b1 * m + (1 - b1) * g).astype(m.dtype), state.mu, updates)
        nu = jax.tree.map(lambda v, g: (b2 * v + (1 - b2) * jnp.square(g)).astype(v.dtype), state.nu, updates)
        k = count.astype(float)
        r1, r2 = 1 / (1 - b1**k), 1 / (1 - b2**k)
        out = jax.tree.map(lambda m, v, g: (m * r1 / (jnp.sqrt(v * r2) + eps)).astype(g.dtype), mu, nu, updates)
        return out, optax.ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)
