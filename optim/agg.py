"""AGG: adaptive gradient gating of rare-token embeddings (Yu et al., ACL 2022, arXiv 2109.03127; spec optimizers §7).

The official fairseq criterion (`cross_entropy_agg.py`) counts how often each token appeared as a target over the
last K+1 updates (the current one included) and gates the gradient that reaches the OUTPUT embedding row v from a
context whose target is not v. With wc[v] those counts, itr the 1-based update index and α = `optim.agg_alpha`:

    a[v]     = wc[v] / min(itr, K)                     mean appearances per update
    rare[v]  = a[v] < α
    gate1[v] = a[v] if rare[v] else 1                  for contexts whose target is not rare
    gate2[v] = min(1, wc[v] / mean_{u rare} wc[u]) if rare[v] else 1     for contexts whose target is rare
    G[i, v]  = 1 if v = y_i, else gate2[v] if rare[y_i] else gate1[v]

and the head's gradient is dL/dE[v] = Σ_i G[i, v]·(dL/dz_i[v])·h_i while the hidden states h get the ungated
gradient (the paper's three NLL terms with stop-gradients). `gate_head_gradient` does this in one expression, the
paper's `z·gate + sg(z)·(1 − gate)` restricted to the head: z + (G − 1)·(z' − sg(z')) with z' = head(sg(h)); its
value is z exactly and z' is the same matmul as z (XLA shares it), so the cost is the [B, T, V] gate and one more
weight-gradient product. The model applies it (`models/transformer.py`, `head_gate=`) before any logit transform.

K = `optim.agg_window` steps [D] (the paper: one epoch of updates, K = iterations per epoch). The counts are of the
global batch (every data-parallel shard; the official code counts GPU 0's only), kept as a ring of per-step counts
int32[K+1, V] in the train state (`AggState`, checkpointed, so resume is exact). [D] no special tokens are forced to
gate 1 (our tokenizers have none among the targets). The transform itself is the identity on gradients: the gate
acts in the loss; its `update(..., targets=)` commits a step's counts, and the state reports its counters.

The head runs twice in the traced forward (on h and on sg(h)): a head with state of its own (σReparam's vector with
`model.sigma_reparam_head`, an FP8 head's amax history) advances it twice per step. The gate must act on the head's
raw output, before any logit transform (e.g. a final-logit soft-cap), so that G multiplies the cotangent of the
head's matmul alone.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class AggState(NamedTuple):
    counts: jax.Array  # int32[K+1, V] target counts of the last K+1 updates (a ring; slot itr % (K+1))
    itr: jax.Array  # int32 updates counted so far
    rare: jax.Array  # int32 rare token types (a < α) at the last update
    very_rare: jax.Array  # int32 rare types whose gate2 < 1 at the last update
    rare_gate: jax.Array  # float32 mean gate1 over the rare types at the last update (1 if none)

    # the counters `optim.state_metrics` reports: metric name -> field
    METRICS = {"agg_rare": "rare", "agg_very_rare": "very_rare", "agg_rare_gate": "rare_gate"}


class Gates(NamedTuple):
    gate1: jax.Array  # float32[V]
    gate2: jax.Array  # float32[V]
    rare: jax.Array  # bool[V]


def _advance(state: AggState, targets, window: int) -> tuple[jax.Array, jax.Array]:
    """(counts ring with this update's targets in its slot, the 1-based update index itr)."""
    itr = state.itr + 1
    step_counts = jnp.zeros(state.counts.shape[1], jnp.int32).at[jnp.reshape(targets, -1)].add(1)
    return state.counts.at[itr % (window + 1)].set(step_counts), itr


def gates_from_counts(wc, itr, alpha, window: int) -> Gates:
    """gate1, gate2 and rare of the module docstring from the window's counts wc[V] at update itr (1-based)."""
    wc = wc.astype(jnp.float32)
    a = wc / jnp.minimum(itr, window).astype(jnp.float32)
    rare = a < alpha
    n_rare = jnp.sum(rare)
    mean_rare = jnp.sum(jnp.where(rare, wc, 0.0)) / jnp.maximum(n_rare, 1)
    f2 = jnp.minimum(1.0, wc / jnp.where(mean_rare > 0, mean_rare, 1.0))
    return Gates(jnp.where(rare, a, 1.0), jnp.where(rare & (mean_rare > 0), f2, 1.0), rare)


def gates(state: AggState, targets, alpha, window: int) -> Gates:
    """The gates of the update that trains on `targets` (its own counts included, as in the official code)."""
    counts, itr = _advance(state, targets, window)
    return gates_from_counts(counts.sum(0), itr, alpha, window)


def logit_gate(g: Gates, targets_BxT) -> jax.Array:
    """G[b, t, v] of the module docstring, float32[B, T, V]."""
    vocab = jax.lax.broadcasted_iota(jnp.int32, (*targets_BxT.shape, g.gate1.shape[0]), 2)
    per_context = jnp.where(g.rare[targets_BxT][..., None], g.gate2, g.gate1)
    return jnp.where(vocab == targets_BxT[..., None], 1.0, per_context)


def gate_head_gradient(gate_BxTxV, logits, logits_of_detached_h):
    """z + (G − 1)·(z' − sg(z')): the value of `logits`, the head weights' gradient multiplied by G elementwise
    per (position, row), the hidden states' gradient untouched (z' = the same head applied to sg(h))."""
    delta = logits_of_detached_h - jax.lax.stop_gradient(logits_of_detached_h)
    return logits + ((gate_BxTxV - 1.0) * delta).astype(logits.dtype)


def head_gate(state: AggState, targets_BxT, alpha, window: int):
    """The `head_gate` callable the model takes: (logits, logits of sg(h)) -> gated logits, for this update."""
    gate = logit_gate(gates(state, targets_BxT, alpha, window), targets_BxT)
    return lambda logits, detached: gate_head_gradient(gate, logits, detached)


def agg_counts(vocab_size: int, window: int, alpha) -> optax.GradientTransformationExtraArgs:
    """The AGG counter as an optax transformation: identity on its updates (the train step passes `()`),
    `update(updates, state, targets=int[B, T])` records the update's target counts and the counters."""
    if window < 1:
        raise ValueError(f"optim.agg_window must be >= 1, got {window}")

    def init(params):
        del params
        i0 = jnp.zeros([], jnp.int32)
        return AggState(jnp.zeros((window + 1, vocab_size), jnp.int32), i0, i0, i0, jnp.ones([], jnp.float32))

    def update(updates, state, params=None, *, targets, **extra_args):
        del params, extra_args
        counts, itr = _advance(state, targets, window)
        g = gates_from_counts(counts.sum(0), itr, alpha, window)
        n_rare = jnp.sum(g.rare, dtype=jnp.int32)
        rare_gate = jnp.where(n_rare > 0, jnp.sum(jnp.where(g.rare, g.gate1, 0.0)) / jnp.maximum(n_rare, 1), 1.0)
        very_rare = jnp.sum(g.rare & (g.gate2 < 1.0), dtype=jnp.int32)
        return updates, AggState(counts, itr, n_rare, very_rare, rare_gate.astype(jnp.float32))

    return optax.GradientTransformationExtraArgs(init, update)
