"""Helpers for `get_sweep(arg)`: a sweep is a list of dotted-key override dicts, one per trial (DESIGN §2).

    product(lr=[1e-3, 1e-2], **{"model.qk_norm": [False, True]})
    -> [{"optim.lr": 0.001, "model.qk_norm": False}, {"optim.lr": 0.001, "model.qk_norm": True},
        {"optim.lr": 0.01, "model.qk_norm": False}, {"optim.lr": 0.01, "model.qk_norm": True}]

A bare name of an optimizer scalar (`optim.HPARAM_KEYS`: lr, weight_decay, eps, warmup_steps, ...) means
`optim.<name>`; every other key is a dotted config field. An axis whose values are dicts contributes those dicts'
overrides, for fields that move together (a model size: `size=[{"model.d_model": 256, "model.n_layers": 3}, ...]`;
the axis name is then only a label). Sweeps are plain lists: `+` concatenates them, a comprehension filters them.
Unknown fields are rejected by launch.sweep with a one-line error before anything runs.

`seeds(n)` is the seed axis `train.seed = 0..n-1` (`product(lr=[...], **seeds(3))`): trials that differ only in
optimizer scalars and the seed train as one batched program (members with their own init and data order), so
seed noise costs one program per point group. The `gpu` presets run `GPU_SEEDS` seeds per point (`seed_axis(preset)`).

A `gpu` sweep longer than one device call is cut into slices `gpu_<label>` (`slice_presets`, `slice_trials`): each
slice is the `gpu` sweep's trials of one label, with the same base config and trial ids, so the slices' rows go into
one workdir (launch.sweep accepts them there) and their union is exactly the `gpu` sweep.
"""

from __future__ import annotations

import itertools

from optim import HPARAM_KEYS


GPU_SEEDS = 3  # seeds per point of every study's gpu preset (issue 10)


def seeds(n: int) -> dict[str, list[int]]:
    """The axis `train.seed` = 0, 1, ..., n-1, as keyword arguments of `product`."""
    return {"train.seed": list(range(n))}


def seed_axis(preset: str) -> dict[str, list[int]]:
    """`seeds(GPU_SEEDS)` for the `gpu` preset, no axis otherwise (`tiny` stays single-seed: CPU time)."""
    return seeds(GPU_SEEDS) if preset == "gpu" else {}


def slice_presets(labels, whole: str = "gpu") -> tuple[str, ...]:
    """The slice presets `<whole>_<label>` of a sweep whose trials carry these labels (see `slice_trials`)."""
    return tuple(f"{whole}_{label}" for label in labels)


def slice_trials(preset: str, labelled: list[tuple[str, dict]], whole: str = "gpu") -> list[dict]:
    """The trials of preset `whole`'s sweep, given as (label, trial) pairs in its order, that `preset` runs: every
    trial for `whole` itself, those labelled L for the slice `<whole>_L` (a ValueError if none is)."""
    if preset == whole:
        return [trial for _, trial in labelled]
    label = preset[len(whole) + 1:] if preset.startswith(f"{whole}_") else None
    trials = [trial for name, trial in labelled if name == label]
    if not trials:
        raise ValueError(f"preset {preset!r} is no slice of {whole!r}: no trial is labelled {label!r}")
    return trials


def full_key(key: str) -> str:
    return f"optim.{key}" if key in HPARAM_KEYS else key


def product(**axes) -> list[dict[str, object]]:
    """Every combination of the axes' values; the first axis varies slowest."""

    def overrides(key, value):
        return dict(value) if isinstance(value, dict) else {full_key(key): value}

    return [
        {k: v for key, value in zip(axes, values) for k, v in overrides(key, value).items()}
        for values in itertools.product(*axes.values())
    ]
