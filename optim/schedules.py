"""Learning-rate schedules, and the wrapper that feeds one to an optimizer chain.

Every schedule is a pure function of the step written in jnp arithmetic, so that its scalar hyperparameters
(`peak_lr`, `warmup_steps`, `min_lr`, ...) may be traced jax arrays: a batched sweep builds the schedule inside a
jitted, vmapped train step (DESIGN §4). Structural arguments (`total_steps`, `cycles`, `decay_shape`) are Python
values. Schedules return float32.

- `constant`, `warmup_cosine`: the Wortsman et al. recipe (spec optimizers §4(a), model-variants §6(a)).
- `wsd`, `wsd_s`, `cyclic_cosine`: warmup-stable-decay and its single-run multi-budget variant WSD-S
  (Wen et al. 2024), with Levanter's `lr_scheduler` semantics (spec optimizers §3(a)).

Hand-written rather than `optax.warmup_cosine_decay_schedule` / `join_schedules`: optax's builders branch in
Python on `warmup_steps` (`if transition_steps <= 0`), so a traced per-member warmup raises a
TracerBoolConversionError (tests/optim/test_optim_schedules.py, traced hparams).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# Decay shapes S(x) on x in [0, 1], S(0) = 1, S(1) = 0: lr = min + (peak - min) * S(x).
DECAY_SHAPES: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: 1.0 - x,  # optax.linear_schedule(peak, min, d)
    "cosine": lambda x: 0.5 * (1.0 + jnp.cos(jnp.pi * x)),  # optax.cosine_decay_schedule(peak, d, alpha=min/peak)
    "1-sqrt": lambda x: 1.0 - jnp.sqrt(x),  # Hägele et al. 2024 cooldown
}


# wsd_s `decay_of`: what a fractional decay is a fraction of.
DECAY_OF = ("cycle", "budget")


def _f32(x) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def constant(peak_lr) -> optax.Schedule:
    """lr_t = peak_lr for every step."""

    def schedule(step):
        del step
        return _f32(peak_lr)

    return schedule


def warmup_cosine(peak_lr, total_steps: int, warmup_steps, min_lr, decay_steps: int = 0) -> optax.Schedule:
    """Linear warmup from 0 to `peak_lr` over `warmup_steps`, cosine to `min_lr` at `decay_steps`, then `min_lr`.

    `decay_steps` = 0 means `total_steps`. For t in [w, D]:
    lr_t = min_lr + (peak − min_lr)·(1 + cos(π(t−w)/(D−w)))/2, i.e. nanodo's `join_schedules([linear(0, peak, w), cosine_decay(peak, D − w, alpha=min_lr/peak)], [w])`
    (spec model-variants §6(a); the warmup start value 0 is [D]).
    """
    end = decay_steps or total_steps
    if end <= 0:
        raise ValueError(f"warmup_cosine: decay_steps/total_steps must be positive, got {end}")

    def schedule(step):
        t, peak, w, lo = _f32(step), _f32(peak_lr), _f32(warmup_steps), _f32(min_lr)
        warm = peak * t / jnp.maximum(w, 1.0)
        x = jnp.clip((t - w) / jnp.maximum(end - w, 1.0), 0.0, 1.0)
        return jnp.where(t < w, warm, lo + (peak - lo) * DECAY_SHAPES["cosine"](x))

    return schedule


def cycle_ends(total_steps: int, cycles: Sequence[int] = ()) -> tuple[int, ...]:
    """The step counts at which each WSD-S cycle (and its decay) has finished: `(*cycles, total_steps)`.

    After `e` optimizer updates (the last one at lr S((d-1)/d) of a decay), the parameters are a decayed model:
    the checkpoint saved at step `e` is the budget-`e` result (spec optimizers §3(a)).
    """
    ends = (*[int(c) for c in cycles], int(total_steps))
    if any(c != int(c) for c in cycles) or not all(a < b for a, b in zip((0, *ends), ends)):
        raise ValueError(f"cycles must be increasing whole steps inside (0, {total_steps}), got {tuple(cycles)}")
    return ends


def frac_or_steps(value, cycle_steps: int, name: str):
    """Levanter's rule (spec §3(a)): a value <= 1.0 is a fraction of the cycle (truncated), else whole steps.

    Python numbers are resolved exactly as Levanter does (`int(value * cycle_steps)`; a non-integer > 1 raises).
    A traced value gets the same rule in float32 jnp arithmetic ([D]: a fraction that is not exact in float32 may
    floor one step lower than the Python value; sweeps should vary whole step counts).
    """
    if isinstance(value, numbers.Real):
        if value <= 1.0:
            return int(value * cycle_steps)
        if value != int(value):
            raise ValueError(f"{name}={value}: values > 1 are step counts and must be whole (<= 1.0 is a fraction)")
        return int(value)
    value = _f32(value)
    return jnp.where(value <= 1.0, jnp.floor(value * cycle_steps), value)


class _Cycle(NamedTuple):
    start: int
    end: int
    warmup: jax.Array | int  # steps of the linear ramp at the start of the cycle
    decay: jax.Array | int  # steps of the decay at the end of the cycle


def wsd_s(
    peak_lr,
    total_steps: int,
    cycles: Sequence[int] = (),
    warmup=0.0,
    decay=0.1,
    rewarmup=0.0,
    decay_shape: str = "linear",
    min_lr_ratio=0.1,
    decay_of: str = "cycle",
) -> optax.Schedule:
    """WSD-S (Wen et al. 2024, arXiv 2410.05192) with Levanter semantics (spec optimizers §3(a)).

    `cycles` are the budgets (LR minima); 0 and `total_steps` are added. Each cycle [start, end) runs a linear
    ramp (`warmup` for the first cycle, from 0; `rewarmup` for later ones, from the minimum; 0 = jump to the
    peak), a stable phase at `peak_lr`, and a decay over its last `decay` steps to `min_lr_ratio * peak_lr` with
    `decay_shape` (linear | cosine | 1-sqrt). `warmup`, `rewarmup` and `decay` follow the fraction-or-steps rule
    of `frac_or_steps` per cycle (so cycle 3 of [300, 600] in 1000 steps decays over int(0.1·400) = 40 steps);
    `decay=None` decays over the whole post-warmup cycle (cyclic cosine). `decay_of` = "budget" reads a fractional
    `decay` as a fraction of the step B_k the cycle ends at instead (cycle [300, 600) decays over int(0.1·600) =
    60 steps): the decay before B_k is then the decay of a `wsd` run of B_k steps, step for step, which is how
    a WSD-S budget compares like-for-like with a WSD run of that budget ([inferred], see experiments/wsd_s.py;
    Levanter's rule, "cycle", is the default). Each piece is evaluated at
    step − piece start, so the last step of a decay uses S((d−1)/d): the exact minimum is only held after
    `total_steps`. The optimizer state is never touched at a cycle boundary (only the LR jumps back).
    """
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"unknown decay_shape {decay_shape!r}; choose one of {', '.join(DECAY_SHAPES)}")
    if decay_of not in DECAY_OF:
        raise ValueError(f"unknown decay_of {decay_of!r}; choose one of {', '.join(DECAY_OF)}")
    shape = DECAY_SHAPES[decay_shape]
    ends = cycle_ends(total_steps, cycles)
    plan = []
    for i, (start, end) in enumerate(zip((0, *ends[:-1]), ends)):
        n = end - start
        w = frac_or_steps(warmup if i == 0 else rewarmup, n, "warmup" if i == 0 else "rewarmup")
        d = n - w if decay is None else frac_or_steps(decay, end if decay_of == "budget" else n, "decay")
        if isinstance(w, int) and isinstance(d, int) and not (w >= 0 and d >= 0 and w + d <= n):
            raise ValueError(f"cycle [{start}, {end}): warmup {w} + decay {d} steps must fit in its {n} steps")
        plan.append(_Cycle(start, end, w, d))

    def schedule(step):
        t, peak = _f32(step), _f32(peak_lr)
        lo = peak * _f32(min_lr_ratio)
        lr = jnp.zeros_like(t)
        for i, c in enumerate(plan):
            w, d = _f32(c.warmup), _f32(c.decay)
            ramp_from = 0.0 if i == 0 else lo
            ramp = ramp_from + (peak - ramp_from) * (t - c.start) / jnp.maximum(w, 1.0)
            x = jnp.clip((t - (c.end - d)) / jnp.maximum(d, 1.0), 0.0, 1.0)
            value = jnp.where(t - c.start < w, ramp, lo + (peak - lo) * shape(x))
            lr = jnp.where(t >= c.start, value, lr)
        return lr

    return schedule


def wsd(peak_lr, total_steps: int, warmup_steps, decay_steps, decay_shape: str = "linear", min_lr_ratio=0.1):
    """Warmup-stable-decay for one budget: `wsd_s` with no intermediate cycles (spec optimizers §3(a)).

    lr = peak·t/T_w for t < T_w; peak until T − T_d; then min + (peak − min)·S((t − (T − T_d))/T_d).
    `warmup_steps` and `decay_steps` follow the fraction-or-steps rule (<= 1.0 is a fraction of `total_steps`).
    """
    return wsd_s(peak_lr, total_steps, (), warmup_steps, decay_steps, 0.0, decay_shape, min_lr_ratio)


def cyclic_cosine(peak_lr, total_steps: int, cycles: Sequence[int] = (), warmup=0.0, rewarmup=0.0, min_lr_ratio=0.1):
    """The Cyclic-Cosine baseline of the WSD-S paper: WSD-S cycle end points, each cycle a full cosine from the
    peak (after its warmup) to `min_lr_ratio * peak_lr`, no stable phase (Levanter `decay=None`, spec §3(a))."""
    return wsd_s(peak_lr, total_steps, cycles, warmup, None, rewarmup, "cosine", min_lr_ratio)


class WithLrState(NamedTuple):
    count: jax.Array  # int32 updates so far: the schedule's step, advanced on every update (skipped ones too)
    inner: optax.OptState


def with_lr_schedule(
    build: Callable[[jax.Array], optax.GradientTransformation], schedule: optax.Schedule
) -> optax.GradientTransformationExtraArgs:
    """Evaluates `schedule` at its own step count and runs `build(lr_t)` with that learning rate.

    This is `optax.inject_hyperparams` reduced to the LR, placed like Levanter's (spec optimizers §10(a)): a
    `skip_step` inside `build` can freeze the inner state without freezing the schedule, as in OLMo-core, whose
    scheduler follows the trainer step. `build` must return transforms whose state structure does not depend
    on `lr_t`; extra args (`loss=`) are passed through.
    """

    def init(params):
        return WithLrState(jnp.zeros([], jnp.int32), build(schedule(0)).init(params))

    def update(updates, state, params=None, **extra_args):
        inner = optax.with_extra_args_support(build(schedule(state.count)))
        updates, inner_state = inner.update(updates, state.inner, params, **extra_args)
        return updates, WithLrState(optax.safe_int32_increment(state.count), inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


class Schedule(NamedTuple):
    """A `SCHEDULES` entry: the builder and the schedule's decay ends, so that callers never test its name."""

    build: Callable[..., optax.Schedule]  # (optim_cfg, total_steps, hparams) -> optax.Schedule
    # (optim_cfg, total_steps) -> the steps (increasing, in (0, total_steps]) after which the LR has just finished
    # a decay to the schedule's minimum, so the parameters there are a decayed model, the result for that budget
    decay_ends: Callable[..., tuple[int, ...]]
