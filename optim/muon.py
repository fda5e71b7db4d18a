"""Muon for the block matrices, Adam for everything else (`optim.name=muon`).

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers"; Liu et al. 2025, "Muon is Scalable for LLM
Training", arXiv 2502.16982) replaces Adam's elementwise normalisation of a matrix parameter's momentum by its
orthogonalisation. For a block matrix W with gradient G (optax.contrib.scale_by_muon, Nesterov form):

    M ← β·M + (1 − β)·G;   M̃ = Nesterov-corrected M (bias-corrected, as optax does)
    X ← M̃ / (‖M̃‖_F + ε);  5 times: A = X Xᵀ,  X ← a·X + (b·A + c·A²)·X     (a, b, c) = (3.4445, −4.775, 2.0315)
    u = s(W) · X           X ≈ U Vᵀ of M̃ = U Σ Vᵀ (Newton–Schulz; Xᵀ instead of X when W has more rows)

with the shape factor s(W) = rms_scale·sqrt(max(fan_in, fan_out)) (Liu et al. eq. 4: the update's RMS matches
AdamW's typical 0.2, so `optim.lr` is on AdamW's scale and one LR axis serves both optimizers in a sweep) or,
with rms_scale = 0, Jordan's sqrt(max(1, fan_out/fan_in)) (optax's default; LRs near 0.02). The embedding, the
output head and every vector (ndim < 2 per layer: norm scales, σReparam's γ) use Adam (optim.adam) with
optim.b1/b2/eps, its direction scaled by `optim.muon.adam_lr_ratio`, as in both papers. Weight decay and the LR
schedule are make_optimizer's, shared by both parts (the papers decay both).

A kernel is a matrix from its input axes to its output axes (models/layers.Linear: shape = in + out); every
block kernel has one input axis except attention's output projection `attn/o` ([H, Dh, D]: heads and head_dim in).
A leaf matching `optim.stacked_params` has a leading layer axis, orthogonalised per layer.
"""

from __future__ import annotations

import math

import jax
import optax
from optax.contrib import MuonDimensionNumbers, scale_by_muon

from optim.adam import scale_by_adam
from optim.masks import Stacked, path_str, resolve_stacked

ADAM_TOP_LEVEL = ("embed", "head")  # parameter subtrees that stay on Adam whatever their shape


def _muon_leaf(path, x, stacked: bool) -> bool:
    return path_str(path).split("/")[0] not in ADAM_TOP_LEVEL and x.ndim - int(stacked) >= 2


def _dims(path, x, stacked: bool) -> MuonDimensionNumbers:
    """Input (reduction) and output axes of a block kernel; a stacked leaf's axis 0 is a batch axis."""
    first = int(stacked)
    n_in = 2 if "/attn/o/" in f"/{path_str(path)}/" else 1
    return MuonDimensionNumbers(
        reduction_axis=tuple(range(first, first + n_in)), output_axis=tuple(range(first + n_in, x.ndim))
    )


def labels(params, stacked: Stacked = False):
    """'muon' for the block matrices, 'adam' for the embedding, the head and every vector (per layer)."""
    flags = resolve_stacked(stacked, params)
    return jax.tree_util.tree_map_with_path(
        lambda p, x, s: "muon" if _muon_leaf(p, x, s) else "adam", params, flags
    )


def _shape_scale(rms_scale: float, dims: MuonDimensionNumbers, x) -> float:
    fan_in = math.prod(x.shape[a] for a in dims.reduction_axis)
    fan_out = math.prod(x.shape[a] for a in dims.output_axis)
    if rms_scale > 0:
        return rms_scale * math.sqrt(max(fan_in, fan_out))
    return math.sqrt(max(1.0, fan_out / fan_in))


def scale_by_muon_adam(
    b1, b2, eps, beta: float = 0.95, ns_steps: int = 5, rms_scale: float = 0.2, adam_lr_ratio: float = 1.0,
    stacked: Stacked = False,
) -> optax.GradientTransformation:
    """The update direction of the module docstring (positive; make_optimizer scales it by −lr_t).

    b1, b2, eps (Adam part) may be traced; beta, ns_steps, rms_scale and adam_lr_ratio are static.
    """

    def dim_numbers(tree):  # the Muon part's tree: arrays where Muon applies, optax MaskedNode elsewhere
        flags = resolve_stacked(stacked, tree)
        return jax.tree_util.tree_map_with_path(lambda p, x, s: _dims(p, x, s), tree, flags)

    def shape_scale():
        def update(updates, state, params=None):
            del params
            flags = resolve_stacked(stacked, updates)
            scaled = jax.tree_util.tree_map_with_path(
                lambda p, u, s: u * _shape_scale(rms_scale, _dims(p, u, s), u), updates, flags
            )
            return scaled, state

        return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

    muon = optax.chain(
        scale_by_muon(ns_steps=ns_steps, beta=beta, eps=1e-8, nesterov=True, weight_dimension_numbers=dim_numbers),
        shape_scale(),
    )
    adam = optax.chain(scale_by_adam(b1, b2, eps), optax.scale(adam_lr_ratio))
    return optax.partition({"muon": muon, "adam": adam}, lambda params: labels(params, stacked))
