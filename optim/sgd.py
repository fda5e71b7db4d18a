"""Heavy-ball momentum SGD's update direction (torch.optim.SGD semantics), for the Adam vs SGD study.

Kunstner et al. 2024 ("Heavy-tailed class imbalance and why Adam outperforms gradient descent on language
models", spec optimizers-and-metrics §5(b)) train their SGD baseline with `torch.optim.SGD(momentum=0.9)`: no
dampening, no Nesterov, no weight decay.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class SgdState(NamedTuple):
    momentum: optax.Updates  # the momentum buffer m, parameter-shaped, in the parameters' dtype


def scale_by_sgd_momentum(b1=0.9) -> optax.GradientTransformation:
    """The direction m, with m ← b1·m + g from m = 0 (torch's first step, m = g, is the same thing); b1 = 0 is plain
    SGD. The learning rate, its schedule and the weight decay come after it in `optim.make_optimizer`, as for
    adamw, so coupled decay here is θ ← θ − lr_t·(m + λθ), not torch's θ ← θ − lr·m with λθ folded into g before
    the momentum. `b1` may be a traced per-member scalar (batched sweeps): it only multiplies."""

    def init(params):
        return SgdState(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        momentum = jax.tree.map(lambda m, g: (b1 * m + g).astype(m.dtype), state.momentum, updates)
        return jax.tree.map(lambda m, g: m.astype(g.dtype), momentum, updates), SgdState(momentum)

    return optax.GradientTransformation(init, update)
