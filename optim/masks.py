"""Per-parameter boolean trees: which leaves are weight-decayed, which carry a stacked-layer axis.

A mask is a pytree of Python bools with the structure of the params (plain dicts or an `nnx.State`), usable as
an optax `mask=`. `stacked` arguments accept what optax masks accept: a bool for every leaf, a tree of bools, or
a callable params -> tree of bools (e.g. `stacked_by_path("blocks")` for a model whose blocks are `nnx.scan`ned
and so hold all L layers in one leaf with a leading layer axis).
"""

from __future__ import annotations

import re
from typing import Any

import jax

Stacked = bool | Any  # bool, pytree of bools, or Callable[[params], pytree of bools]


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path) -> str:
    """'/'-joined names of a jax key path, e.g. 'blocks/attn/kernel/value' for an nnx.State leaf."""
    return "/".join(_key_name(k) for k in path)


def stacked_by_path(pattern: str):
    """A `stacked` callable: leaves whose `path_str` matches `pattern` (re.search) have a leading layer axis;
    an empty pattern matches nothing."""
    regex = re.compile(pattern) if pattern else None

    def stacked(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: bool(regex and regex.search(path_str(path))), params
        )

    return stacked


def resolve_stacked(stacked: Stacked, params):
    """The tree of Python bools that `stacked` denotes for `params`."""
    if callable(stacked):
        return stacked(params)
    if isinstance(stacked, bool):
        return jax.tree.map(lambda _: stacked, params)
    return stacked


def decay_mask(params, stacked: Stacked = False):
    """True for the leaves that weight decay applies to: every parameter with ndim >= 2 per layer.

    Matrices and embeddings are decayed; vectors and scalars (norm scales, biases, σReparam gammas) are not.
    For a leaf with a leading stacked-layer axis the per-layer ndim (ndim − 1) counts. [D] This differs from
    nanodo, which decays every parameter (spec model-variants §6(a), §10); `optim.decay_all=True` restores that.
    It follows the usual GPT/OLMo practice and the spec's "no WD on scalars" choice for σReparam (§3, §10).
    """
    flags = resolve_stacked(stacked, params)
    return jax.tree.map(lambda p, s: p.ndim - int(s) >= 2, params, flags)
