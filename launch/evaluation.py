"""Held-out evaluation of a group's members: the mean eval CE, and the eval CE per token-frequency bucket.

Every eval reads the same `train.eval_batches` held-out batches (`split="eval"` of the data source), so evals at
different steps, of different members and of `launch.eval_length` are comparable.
"""

from __future__ import annotations

import jax
import numpy as np

# The eval metrics of `train.freq_buckets`, one per row of `frequency_buckets`'s table (vectors, bucket 0 = most
# frequent).
BUCKET_METRICS = ("eval_loss_rank_bucket", "eval_loss_mass_bucket")


def evaluate_loss(group, states_M, data, n_batches: int) -> np.ndarray:
    """float64[M]: each member's mean eval CE over `n_batches` held-out batches (`loop.GroupData.eval_batch`)."""
    losses = [group.evaluate(states_M, data.eval_batch(i)) for i in range(n_batches)]
    return np.mean(np.asarray(jax.device_get(losses), np.float64), axis=0)


def frequency_buckets(counts, n: int) -> np.ndarray:
    """int32[2, V]: the bucket of each token id by its train-split frequency `counts` (spec optimizers §2(a), §5(a)).

    Tokens are ranked most frequent first (ties by id). Row 0, rank buckets (the "Fair" view): n buckets of equal
    numbers of token types, rank r in bucket r·n // V. Row 1, equal-mass buckets: Kunstner et al.'s
    `split_classes_by_frequency`, each holding ~1/n of the occurrences; the token at which the cumulative mass
    first reaches k/n closes bucket k-1, so a bucket is empty when one token holds more than 1/n of the mass.
    """
    counts = np.asarray(counts)
    ranks = np.arange(len(counts))
    order = np.argsort(-counts, kind="stable")
    cum = np.cumsum(counts[order] / counts.sum())
    splits = np.searchsorted(cum, np.linspace(0, 1, n, endpoint=False)[1:], side="left") + 1
    table = np.empty((2, len(counts)), np.int32)
    table[0, order] = ranks * n // len(counts)
    table[1, order] = np.searchsorted(splits, ranks, side="right")
    return table


def evaluate_buckets(group, states_M, data, n_batches: int, table) -> dict:
    """The `BUCKET_METRICS` over the held-out batches of `evaluate_loss`: each member's token-weighted mean CE per
    bucket (NaN for a bucket without targets), float64[M, K] each."""
    sums = counts = 0.0
    for i in range(n_batches):
        s, c = jax.device_get(group.eval_buckets(states_M, data.eval_batch(i), table))
        sums, counts = sums + s.astype(np.float64), counts + c
    with np.errstate(invalid="ignore", divide="ignore"):
        return dict(zip(BUCKET_METRICS, np.moveaxis(sums / counts, -2, 0)))  # the table's row axis N first
