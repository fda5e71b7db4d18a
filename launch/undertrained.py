"""Under-trained tokens at the end of a run ("Fishing for Magikarp", Land & Bartolo 2024, arXiv 2405.05417, §3.1).

A token whose unembedding row received (almost) no gradient keeps a row that looks like the rows of tokens that
never occur in training. The paper's indicator for an untied unembedding U [V, d]: remove U's first principal
component (a direction shared by all rows, which dominates cosine similarities), average the rows of a reference
set of tokens known to be unused, and score every token by the cosine similarity of its row to that mean; high =
under-trained. Our reference set is the tokens that never occur in the training stream (count 0). [D] When every
token occurs (no reference), the score is minus the row's L2 norm instead (small rows = little gradient, the
paper's indicator for tied embeddings). With `train.undertrained_tokens = N > 0`, summary.json's
`undertrained_tokens` lists the N highest-scoring tokens with their training-stream counts, the indicator used,
the reference-set size and how many tokens that do occur in training score at least the reference set's median
(`n_flagged`; [D] the paper reads its threshold off a plot).
"""

from __future__ import annotations

import numpy as np


def _first_principal_component(u_VxD: np.ndarray, iters: int = 100) -> np.ndarray:
    """Unit top principal direction of the centred rows (power iteration on the covariance, float64)."""
    centred = u_VxD - u_VxD.mean(0)
    v = np.random.default_rng(0).normal(size=u_VxD.shape[1])
    for _ in range(iters):
        v = centred.T @ (centred @ v)
        v /= np.linalg.norm(v)
    return v


def undertrained_tokens(unembedding_VxD, counts_V, top: int) -> dict:
    """The module docstring's report for an unembedding [V, d] and each token's training-stream count."""
    u = np.asarray(unembedding_VxD, np.float64)
    counts = np.asarray(counts_V)
    unseen = counts == 0
    if unseen.any():
        pc = _first_principal_component(u)
        rows = u - np.outer(u @ pc, pc)
        ref = rows[unseen].mean(0)
        score = rows @ ref / np.maximum(np.linalg.norm(rows, axis=1) * np.linalg.norm(ref), 1e-30)
        indicator = "cosine_to_unseen_mean"
    else:
        score = -np.linalg.norm(u, axis=1)
        indicator = "minus_row_norm"
    order = np.argsort(-score, kind="stable")[:top]
    flagged = int(np.sum(~unseen & (score >= np.median(score[unseen])))) if unseen.any() else None
    return dict(
        indicator=indicator,
        n_reference=int(unseen.sum()),
        n_flagged=flagged,
        tokens=[dict(id=int(i), count=int(counts[i]), score=float(score[i])) for i in order],
    )


def unembedding(params, model_cfg) -> np.ndarray:
    """The run's unembedding rows [V, d]: the head kernel transposed, or the embedding when tied."""
    if model_cfg.tie_embeddings:
        return np.asarray(params["embed"]["embedding"])
    return np.asarray(params["head"]["kernel"]).T
