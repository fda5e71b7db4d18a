"""optim/schedules.py: WSD, WSD-S, cyclic cosine (spec optimizers §3) against a float64 numpy reference.

The reference below is an independent reading of spec §3(a): Levanter's schedule as a join of pieces
(warmup, stable, decay per cycle), each evaluated at step − its start.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optim
from tests.test_optim import optim_cfg

SHAPES = {
    "linear": lambda x: 1 - x,
    "cosine": lambda x: 0.5 * (1 + np.cos(np.pi * x)),
    "1-sqrt": lambda x: 1 - np.sqrt(x),
}


def np_levanter(peak, total, cycles=(), warmup=0.0, decay=0.1, rewarmup=0.0, shape="linear", min_lr_ratio=0.1):
    """float64 reference: a list of (start, f(step − start)) pieces; the last piece started at `step` applies."""

    def steps(value, n):
        if value <= 1.0:
            return int(value * n)
        assert value == int(value)
        return int(value)

    lo, pieces, ramp_from = min_lr_ratio * peak, [], 0.0
    bounds = [0, *cycles, total]
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        n = end - start
        w = steps(warmup if i == 0 else rewarmup, n)
        d = n - w if decay is None else steps(decay, n)
        if w:
            pieces.append((start, lambda t, a=ramp_from, w=w: a + (peak - a) * t / w))
        if n - w - d:
            pieces.append((start + w, lambda t: peak))
        pieces.append((end - d, lambda t, d=d: lo + (peak - lo) * SHAPES[shape](min(t / d, 1.0))))
        ramp_from = lo  # the next cycle ramps up from this cycle's minimum

    def schedule(step):
        start, f = [p for p in pieces if p[0] <= step][-1]
        return f(step - start)

    return schedule


def test_wsd_s_lr_table_spec_3d_check1():
    """Peak 1e-3, total 1000, warmup 100, decay 0.1, cycles [300, 600], linear, min_lr_ratio 0."""
    args = dict(cycles=(300, 600), warmup=100, decay=0.1, shape="linear", min_lr_ratio=0.0)
    table = {0: 0, 50: 5e-4, 100: 1e-3, 269: 1e-3, 270: 1e-3, 285: 5e-4, 299: 3.333e-5, 300: 1e-3,
             599: 3.333e-5, 600: 1e-3, 959: 1e-3, 960: 1e-3, 999: 2.5e-5}  # fmt: skip
    ref = np_levanter(1e-3, 1000, **args)
    ours = optim.wsd_s(1e-3, 1000, (300, 600), 100, 0.1, 0.0, "linear", 0.0)
    for step, lr in table.items():
        np.testing.assert_allclose(ref(step), lr, rtol=1e-3, atol=1e-12, err_msg=f"reference, step {step}")
        np.testing.assert_allclose(float(ours(step)), ref(step), rtol=1e-6, atol=1e-12, err_msg=f"step {step}")
    # cycle 3 (400 steps) decays over int(0.1 * 400) = 40 steps, not 30
    assert float(ours(969)) < 1e-3 and float(ours(959)) == pytest.approx(1e-3, rel=1e-7)


def test_levanter_test_wsds_schedule_spec_3d_check3():
    """Levanter `tests/test_optimizer_config.py::test_wsds_schedule`: cosine, min_lr_ratio 0.1, cycles
    [300, 700], decay 0.1, warmup 0, 1000 steps."""
    sched_fn = optim.wsd_s(1e-3, 1000, cycles=(300, 700), warmup=0.0, decay=0.1, decay_shape="cosine", min_lr_ratio=0.1)
    # First cycle
    assert np.isclose(sched_fn(0), 1e-3)
    # Final phase
    assert np.isclose(sched_fn(269), 1e-3)
    assert sched_fn(271) < 1e-3
    # Second cycle
    assert np.isclose(sched_fn(300), 1e-3)
    assert np.isclose(sched_fn(659), 1e-3)
    assert sched_fn(661) < 1e-3
    # Third cycle
    assert np.isclose(sched_fn(701), 1e-3)
    assert np.isclose(sched_fn(969), 1e-3)
    assert sched_fn(971) < 1e-3


@pytest.mark.parametrize(
    "args",
    [
        dict(cycles=(300, 600), warmup=100, decay=0.1, shape="linear", min_lr_ratio=0.1),
        dict(cycles=(300, 700), warmup=0.0, decay=0.1, shape="cosine", min_lr_ratio=0.1),
        dict(cycles=(250,), warmup=0.04, decay=50, rewarmup=20, shape="1-sqrt", min_lr_ratio=0.0),
        dict(cycles=(300, 600), warmup=0.1, decay=None, rewarmup=0.05, shape="cosine", min_lr_ratio=0.1),
        dict(cycles=(), warmup=30, decay=0.2, shape="linear", min_lr_ratio=0.1),
    ],
)
def test_wsd_s_matches_reference_everywhere(args):
    ref = np_levanter(2e-3, 1000, **args)
    ours = optim.wsd_s(2e-3, 1000, args["cycles"], args["warmup"], args["decay"], args.get("rewarmup", 0.0),
                       args["shape"], args["min_lr_ratio"])  # fmt: skip
    steps = np.arange(0, 1100)
    got = np.asarray(jax.jit(jax.vmap(ours))(steps))
    np.testing.assert_allclose(got, [ref(s) for s in steps], rtol=2e-6, atol=1e-10)


def test_rewarmup_ramps_from_the_minimum():
    sched = optim.wsd_s(1e-3, 1000, (300,), warmup=0.0, decay=0.1, rewarmup=10, min_lr_ratio=0.1)
    np.testing.assert_allclose([float(sched(s)) for s in (300, 305, 310)], [1e-4, 5.5e-4, 1e-3], rtol=1e-6)


def test_wsd_single_budget_and_shapes():
    """wsd: warmup 10, decay over the last 20 of 100 steps to 0.1·peak; S = linear | cosine | 1-sqrt."""
    mid = {"linear": 5.5e-4, "cosine": 5.5e-4, "1-sqrt": 1e-4 + 9e-4 * (1 - np.sqrt(0.5))}
    for shape, at_90 in mid.items():
        sched = optim.wsd(1e-3, 100, 10, 20, shape, 0.1)
        expected = {0: 0.0, 5: 5e-4, 10: 1e-3, 79: 1e-3, 80: 1e-3, 90: at_90, 100: 1e-4, 150: 1e-4}
        for step, lr in expected.items():
            np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-6, atol=1e-12, err_msg=f"{shape} {step}")
    np.testing.assert_allclose(float(optim.wsd(1e-3, 100, 10, 20)(99)), 1e-4 + 9e-4 / 20, rtol=1e-6)


def test_cyclic_cosine():
    sched = optim.cyclic_cosine(1e-3, 1000, (300, 600), min_lr_ratio=0.1)
    expected = {0: 1e-3, 150: 5.5e-4, 300: 1e-3, 450: 5.5e-4, 600: 1e-3, 800: 5.5e-4, 1000: 1e-4}
    for step, lr in expected.items():
        np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-6, err_msg=f"step {step}")


def test_fraction_or_steps_rule():
    """Any value <= 1.0 is a fraction of the cycle (so 1 is the whole cycle); non-integers > 1 raise."""
    whole = optim.wsd_s(1e-3, 1000, (300,), warmup=1, decay=0.0)
    np.testing.assert_allclose(float(whole(150)), 5e-4, rtol=1e-6)  # warmup=1: the whole first cycle
    two = optim.wsd_s(1e-3, 1000, (300,), warmup=2, decay=0.0)
    np.testing.assert_allclose(float(two(1)), 5e-4, rtol=1e-6)  # warmup=2: two steps
    by_steps = optim.wsd_s(1e-3, 1000, (300,), decay=40, min_lr_ratio=0.0)
    assert float(by_steps(259)) == pytest.approx(1e-3) and float(by_steps(260)) == pytest.approx(1e-3)
    assert float(by_steps(280)) == pytest.approx(5e-4, rel=1e-6)
    with pytest.raises(ValueError, match="must be whole"):
        optim.wsd_s(1e-3, 1000, (300,), warmup=2.5)
    with pytest.raises(ValueError, match="must fit"):
        optim.wsd_s(1e-3, 1000, (300,), warmup=1, decay=0.1)


def test_wsd_s_decay_ends():
    assert optim.wsd_s_decay_ends(1000, (300, 600)) == (300, 600, 1000)
    assert optim.wsd_s_decay_ends(1000) == (1000,)
    for bad in [(600, 300), (0,), (1000,), (2.5,)]:
        with pytest.raises(ValueError, match="cycles must be increasing"):
            optim.wsd_s_decay_ends(1000, bad)


def test_schedules_from_config_with_traced_hparams():
    """make_schedule builds wsd/wsd_s/cyclic_cosine from config.optim; peak lr and warmup may be traced."""
    for name, decay in [("wsd_s", 0.1), ("cyclic_cosine", None), ("wsd", 0.1)]:
        cycles = () if name == "wsd" else (300, 600)
        cfg = optim_cfg(schedule=name, lr=1e-3, warmup_steps=50, **{"wsd.cycles": cycles, "wsd.min_lr_ratio": 0.0})
        ref = np_levanter(1e-3, 1000, cycles, 50, decay, 0.0, "cosine" if decay is None else "linear", 0.0)
        sched = optim.make_schedule(cfg, 1000)
        steps = np.arange(0, 1000, 7)
        np.testing.assert_allclose(np.asarray(jax.vmap(sched)(steps)), [ref(s) for s in steps], rtol=2e-6, atol=1e-10)
        members = {"lr": jnp.asarray([1e-3, 3e-3]), "warmup_steps": jnp.asarray([50.0, 20.0])}
        batched = jax.jit(jax.vmap(lambda h: jax.vmap(optim.make_schedule(cfg, 1000, h))(steps)))(members)
        ref2 = np_levanter(3e-3, 1000, cycles, 20, decay, 0.0, "cosine" if decay is None else "linear", 0.0)
        np.testing.assert_allclose(np.asarray(batched[1]), [ref2(s) for s in steps], rtol=2e-6, atol=1e-10)


def test_wsd_s_restart_keeps_optimizer_state_spec_3d_check2():
    """WSD-S changes only the LR: Adam's count runs on through the budget at 300 (LR back to the peak), and
    resuming from the (params, opt_state) saved after 300 updates reproduces updates 300-309 bitwise."""
    cfg = optim_cfg(schedule="wsd_s", lr=1e-2, warmup_steps=10, clip=1.0, **{"wsd.cycles": (300,)})
    tx = optim.make_optimizer(cfg, 400)
    target = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)

    @jax.jit
    def step(params, state, k):
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), k), params.shape)
        updates, state = tx.update(params - target + 0.1 * noise, state, params)
        return params + updates, state

    params, state = jnp.zeros((2, 3)), tx.init(jnp.zeros((2, 3)))
    for k in range(300):
        params, state = step(params, state, k)
    saved = jax.tree.map(np.asarray, (params, state))  # what a checkpoint holds
    for k in range(300, 310):
        params, state = step(params, state, k)
    resumed = jax.tree.map(jnp.asarray, saved)
    for k in range(300, 310):
        resumed = step(*resumed, k)
    jax.tree.map(np.testing.assert_array_equal, (params, state), resumed)
    adam = state.inner[1]
    assert int(adam.count) == 310 and int(state.count) == 310  # not re-initialised at the restart
    sched = optim.make_schedule(cfg, 400)
    assert float(sched(299)) < 2e-3 and float(sched(300)) == pytest.approx(1e-2)
