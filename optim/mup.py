"""Per-parameter learning-rate multipliers: the optimizer half of μParam (simple) (`model.mup`).

The model states the multipliers (models/transformer.py `mup_lr_multipliers`: base_width / d_model for every matrix,
1 for the embeddings and vectors; Wortsman et al. 2023, spec model-variants §6(d)5); `make_optimizer` applies them
to the update direction where a per-layer learning rate would act (optim/__init__.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def scale_by_multipliers(multipliers) -> optax.GradientTransformation:
    """u ← m ⊙ u leaf by leaf, for a tree `multipliers` of Python floats with the structure of the parameters.

    Stateless; the multipliers are constants of the program (they depend on the model shape only), so a leaf whose
    multiplier is 1 passes through unchanged."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u if m == 1.0 else u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
