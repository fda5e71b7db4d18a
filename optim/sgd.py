"""Heavy-ball momentum SGD's update direction (torch.optim.SGD semantics), for the Adam vs SGD study.

Kunstner et al. 2024 ("Heavy-tailed class imbalance and why Adam outperforms gradient descent on language
models", spec optimizers-and-metrics §5(b)) train their SGD baseline with `torch.optim.SGD(momentum=0.9)`: no
dampening, no Nesterov, no weight decay.
"""

from __future__ import annotations

import optax


def sgd_momentum(b1=0.9) -> optax.GradientTransformation:
    """`optax.trace(b1)`: the direction m, m ← b1·m + g from m = 0 (torch's first step, m = g, is the same
    thing); b1 = 0 is plain SGD. The state is an `optax.TraceState`.

    The learning rate, its schedule and the weight decay come after it in `optim.make_optimizer`, as for adamw,
    so coupled decay here is θ ← θ − lr_t·(m + λθ), not torch's θ ← θ − lr·m with λθ folded into g before the
    momentum. `b1` may be a traced per-member scalar (batched sweeps). Updates and state are cast back to the
    incoming dtypes: a traced float32 b1 would otherwise promote a bfloat16 momentum to float32, so the state's
    dtypes would change after the first step (tests/optim/test_optim_sgd.py, bfloat16 test).
    """
    trace = optax.trace(b1)

    def update(updates, state, params=None):
        new_updates, new_state = trace.update(updates, state, params)
        return optax.tree.cast_like(new_updates, updates), optax.tree.cast_like(new_state, state)

    return optax.GradientTransformation(trace.init, update)
