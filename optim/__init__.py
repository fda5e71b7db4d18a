"""proxylab optimizers: `config.optim` -> an optax transformation (DESIGN §1, §4).

`make_optimizer(optim_cfg, total_steps, hparams)` is called inside the jitted (and, for batched sweeps,
vmapped) train step: `hparams` carries the scalars of `HPARAM_KEYS`, possibly as traced arrays, one value per
sweep member. Everything below is jnp arithmetic on those scalars and the optimizer state's structure never
depends on their values, so `init` may use the config values and `update` the traced ones.

Registries (adding an entry = one function + one entry): `OPTIMIZERS` (optim.name), `SCHEDULES` (optim.schedule;
a `Schedule(build, decay_ends)` record, read through `make_schedule` and `decay_ends`), `CLIPPING`
(optim.clip_mode). Unknown names raise ValueError listing the choices. An optimizer state that reports counters
names them in its own class (`METRICS`, read by `state_metrics`); `adam_attenuation` (optim/probes.py) reads Adam's
moments wherever they sit in the state.

Not `optax.inject_hyperparams`: it stores numeric hyperparameters in the state at `init` and updates with those,
while a batched sweep initialises the state from the config values and passes each member's traced scalars when
it builds the optimizer inside the vmapped step; `with_lr_schedule` injects only the LR, computed from them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from optim import schedules
from optim.adam import scale_by_adam
from optim.clipping import SkipStepState, clip_by_component_norm, clip_by_global_norm, global_norm, skip_step
from optim.fp8_moments import fp8_moments
from optim.masks import decay_mask, stacked_by_path
from optim.mup import scale_by_multipliers
from optim.muon import scale_by_muon_adam
from optim.probes import adam_attenuation
from optim.schedules import (
    Schedule, constant, cycle_ends, cyclic_cosine, warmup_cosine, with_lr_schedule, wsd, wsd_s,
)
from optim.sgd import sgd_momentum
from optim.spam import SpamState, scale_by_spam, spam

# The scalar hyperparameters a batched LR sweep may vary per member (config.optim fields of the same names).
HPARAM_KEYS: tuple[str, ...] = ("lr", "weight_decay", "eps", "b1", "b2", "clip", "warmup_steps", "min_lr")

# optim.schedule -> Schedule(build, decay_ends). Decay ends ([D], spec optimizers §3(a)): every step where a
# decay to the minimum LR finishes is a decayed model for that budget: each WSD-S / cyclic-cosine cycle end, a WSD
# run's budget (as a WSD branch's end is, in the spec's branching), and the end of a cosine (the per-budget
# oracle) when it falls inside the run; a constant LR has none.
SCHEDULES = {
    "constant": Schedule(lambda o, total, h: constant(h["lr"]), lambda o, total: ()),
    "warmup_cosine": Schedule(
        lambda o, total, h: warmup_cosine(h["lr"], total, h["warmup_steps"], h["min_lr"], o.decay_steps),
        lambda o, total: tuple(e for e in (int(o.decay_steps) or int(total),) if e <= total),
    ),
    "wsd": Schedule(
        lambda o, total, h: wsd(h["lr"], total, h["warmup_steps"], o.wsd.decay, o.wsd.decay_shape, o.wsd.min_lr_ratio),
        lambda o, total: (int(total),),
    ),
    "wsd_s": Schedule(
        lambda o, total, h: wsd_s(
            h["lr"], total, tuple(o.wsd.cycles), h["warmup_steps"], o.wsd.decay, o.wsd.rewarmup, o.wsd.decay_shape,
            o.wsd.min_lr_ratio, o.wsd.decay_of,
        ),
        lambda o, total: cycle_ends(total, tuple(o.wsd.cycles)),
    ),
    "cyclic_cosine": Schedule(
        lambda o, total, h: cyclic_cosine(
            h["lr"], total, tuple(o.wsd.cycles), h["warmup_steps"], o.wsd.rewarmup, o.wsd.min_lr_ratio
        ),
        lambda o, total: cycle_ends(total, tuple(o.wsd.cycles)),
    ),
}

# optim.name -> (optim_cfg, hparams) -> the update direction u (before the learning rate and weight decay)
OPTIMIZERS = {
    "adamw": lambda o, h: scale_by_adam(h["b1"], h["b2"], h["eps"]),  # m̂/(sqrt(v̂) + ε), ε outside the sqrt
    "spam": lambda o, h: scale_by_spam(
        h["b1"], h["b2"], h["eps"], o.spam.threshold, o.spam.reset_interval, o.spam.reset_warmup,
        o.spam.no_clip_steps,
    ),
    "sgd": lambda o, h: sgd_momentum(h["b1"]),  # optax.trace: m ← β1·m + g, u = m (torch SGD); β1 = 0: plain SGD
    # Newton–Schulz-orthogonalised momentum on block matrices, Adam (b1, b2, eps) on embed/head/vectors (optim.muon)
    "muon": lambda o, h: scale_by_muon_adam(
        h["b1"], h["b2"], h["eps"], o.muon.beta, o.muon.ns_steps, o.muon.rms_scale, o.muon.adam_lr_ratio,
        stacked_by_path(o.stacked_params),
    ),
}
# optim.name -> float copies of the parameters its state holds (launch/memory.py); muon: 1 (momentum) on block
# matrices and 2 (Adam) elsewhere, counted as 2, an upper bound
STATE_COPIES = {"adamw": 2, "spam": 2, "sgd": 1, "muon": 2}
FP8_MOMENTS = ("adamw", "spam")  # the optimizers whose state holds Adam's m and v (optim.fp8_moments)

# optim.clip_mode -> (optim_cfg, hparams) -> gradient clipping with threshold hparams["clip"] (<= 0: off)
CLIPPING = {
    "global": lambda o, h: clip_by_global_norm(h["clip"]),
    "component": lambda o, h: clip_by_component_norm(h["clip"], stacked=stacked_by_path(o.stacked_params)),
}


def _lookup(registry: dict, name: str, field: str):
    if name not in registry:
        raise ValueError(f"unknown {field} {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def hparams_from_config(optim_cfg) -> dict[str, float]:
    """The `HPARAM_KEYS` scalars of `config.optim`, as Python floats."""
    return {k: float(optim_cfg[k]) for k in HPARAM_KEYS}


def _hparams(optim_cfg, hparams: dict | None) -> dict:
    h = hparams_from_config(optim_cfg)
    unknown = sorted(set(hparams or ()) - set(HPARAM_KEYS))
    if unknown:
        raise ValueError(f"unknown optimizer hparams {unknown}; choose from {', '.join(HPARAM_KEYS)}")
    return {**h, **(hparams or {})}


def make_schedule(optim_cfg, total_steps: int, hparams: dict | None = None) -> optax.Schedule:
    """The LR schedule `optim.schedule` (lr_t as a function of the update index, 0-based)."""
    h = _hparams(optim_cfg, hparams)
    return _lookup(SCHEDULES, optim_cfg.schedule, "optim.schedule").build(optim_cfg, total_steps, h)


def decay_ends(optim_cfg, total_steps: int) -> tuple[int, ...]:
    """The steps after which `optim.schedule` has just finished a decay (a decayed model: the result for that
    budget), increasing, in (0, total_steps]; `SCHEDULES` says which they are. Empty for a constant LR."""
    return _lookup(SCHEDULES, optim_cfg.schedule, "optim.schedule").decay_ends(optim_cfg, int(total_steps))


def make_optimizer(
    optim_cfg, total_steps: int, hparams: dict | None = None, lr_multipliers=None
) -> optax.GradientTransformationExtraArgs:
    """The optimizer of `config.optim`; `hparams` (a subset of HPARAM_KEYS, maybe traced) overrides the config.
    `lr_multipliers` (a tree of floats like the params, or None): per-parameter LR factors m (μParam, optim/mup.py).

    One update, with g the gradients, θ the parameters, lr_t the schedule at this update, η = hparams["lr"]:

        g ← clip(g)                               optim.clip_mode, threshold optim.clip (<= 0: off)
        u ← direction(g)                          optim.name: adamw = Adam, m̂/(sqrt(v̂) + ε) (optim.adam);
                                                  sgd = heavy-ball momentum m ← β1·m + g, u = m (optim.sgd)
        independent_wd:  θ ← θ − lr_t·u − λ·s_t·θ,  s_t = lr_t/η   (Wortsman et al.; spec §4(a))
        coupled:         θ ← θ − lr_t·(u + λ·θ)                      (optax.adamw / torch AdamW)

    The independent decay follows the schedule but is not scaled by the peak LR (composer `DecoupledAdamW`).
    With `lr_multipliers`, lr_t becomes m·lr_t per parameter: independent_wd scales u only (the decay does not
    follow the LR), coupled scales u + λ·θ (a per-layer LR of torch AdamW).
    Decay applies to the leaves of `decay_mask` (every leaf if optim.decay_all). With optim.skip_step.enabled
    everything but the schedule is wrapped in `skip_step`, so `update` then needs `loss=` (the CE loss without
    z-loss); it may always be passed. The schedule's step lives outside, in `with_lr_schedule`, and advances
    on skipped updates too.
    """
    h = _hparams(optim_cfg, hparams)
    schedule = make_schedule(optim_cfg, total_steps, h)
    clip = _lookup(CLIPPING, optim_cfg.clip_mode, "optim.clip_mode")(optim_cfg, h)
    direction = _lookup(OPTIMIZERS, optim_cfg.name, "optim.name")(optim_cfg, h)
    if optim_cfg.fp8_moments:  # m in E4M3, v in E5M2 between steps (optim/fp8_moments.py)
        if optim_cfg.name not in FP8_MOMENTS:
            raise ValueError(f"optim.fp8_moments=True needs optim.name in {FP8_MOMENTS}, got {optim_cfg.name!r}")
        direction = fp8_moments(direction)
    stacked = stacked_by_path(optim_cfg.stacked_params)
    mask = None if optim_cfg.decay_all else functools.partial(decay_mask, stacked=stacked)
    peak, wd, skip = jnp.asarray(h["lr"], jnp.float32), h["weight_decay"], optim_cfg.skip_step

    per_param = () if lr_multipliers is None else (scale_by_multipliers(lr_multipliers),)

    def build(lr_t):
        if optim_cfg.independent_wd:
            s_t = jnp.where(peak > 0, lr_t / jnp.where(peak > 0, peak, 1.0), 0.0)
            tail = (*per_param, optax.scale(-lr_t), optax.add_decayed_weights(-wd * s_t, mask))
        else:
            tail = (optax.add_decayed_weights(wd, mask), *per_param, optax.scale(-lr_t))
        tx = optax.chain(clip, direction, *tail)
        return skip_step(tx, skip.window, skip.sigma) if skip.enabled else tx

    return with_lr_schedule(build, schedule)


def _reports(x) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "METRICS")


def state_metrics(opt_state) -> dict[str, jax.Array]:
    """The counters an optimizer state reports (DESIGN §5), e.g. SPAM's clip/reset counts, skip-step decisions.

    Every state class that reports counters names them itself, in a `METRICS` class attribute {metric name:
    field} next to its transform (optim/spam.py `SpamState`, optim/clipping.py `SkipStepState`); states nested
    inside a reporting state (a SpamState under a SkipStepState) are found too. Empty for plain AdamW. Works on
    batched (vmapped) states: every value then has the member axis.
    """
    out = {}

    def visit(tree):
        for node in jax.tree.leaves(tree, is_leaf=_reports):
            if _reports(node):
                out.update({name: getattr(node, field) for name, field in type(node).METRICS.items()})
                visit(tuple(node))  # a plain tuple of its fields: nested reporting states

    visit(opt_state)
    return out


__all__ = [
    "CLIPPING", "HPARAM_KEYS", "OPTIMIZERS", "SCHEDULES", "STATE_COPIES", "Schedule", "SkipStepState", "SpamState",
    "adam_attenuation", "clip_by_component_norm", "clip_by_global_norm", "constant", "cycle_ends", "cyclic_cosine",
    "decay_ends", "decay_mask", "global_norm", "hparams_from_config", "make_optimizer", "make_schedule",
    "scale_by_adam", "scale_by_spam", "schedules", "sgd_momentum", "skip_step", "spam", "stacked_by_path",
    "state_metrics", "warmup_cosine", "with_lr_schedule", "wsd", "wsd_s",
]
