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
from test_optim import optim_cfg  # tests/optim/test_optim.py (pytest puts its folder on sys.path)

SHAPES = {
    "linear": lambda x: 1 - x,
    "cosine": lambda x: 0.5 * (1 + np.cos(np.pi * x)),
    "1-sqrt": lambda x: 1 - np.sqrt(x),
}


def np_levanter(
    peak, total, cycles=(), warmup=0.0, decay=0.1, rewarmup=0.0, shape="linear", min_lr_ratio=0.1, decay_of="cycle"
):
    """float64 reference: a list of (start, f(step − start)) pieces; the last piece started at `step` applies.
    decay_of="budget": a fractional decay is a fraction of the cycle's end step instead of its length."""

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
        d = n - w if decay is None else steps(decay, end if decay_of == "budget" else n)
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
        dict(cycles=(300, 600), warmup=50, decay=0.1, shape="linear", min_lr_ratio=0.1, decay_of="budget"),
        dict(cycles=(200, 500), warmup=0.1, decay=0.2, rewarmup=10, shape="cosine", min_lr_ratio=0.0, decay_of="budget"),
    ],
)
def test_wsd_s_matches_reference_everywhere(args):
    ref = np_levanter(2e-3, 1000, **args)
    ours = optim.wsd_s(2e-3, 1000, args["cycles"], args["warmup"], args["decay"], args.get("rewarmup", 0.0),
                       args["shape"], args["min_lr_ratio"], args.get("decay_of", "cycle"))  # fmt: skip
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


def test_cycle_ends():
    assert optim.cycle_ends(1000, (300, 600)) == (300, 600, 1000)
    assert optim.cycle_ends(1000) == (1000,)
    for bad in [(600, 300), (0,), (1000,), (2.5,)]:
        with pytest.raises(ValueError, match="cycles must be increasing"):
            optim.cycle_ends(1000, bad)


@pytest.mark.parametrize(
    ("overrides", "ends"),
    [
        ({"schedule": "constant"}, ()),
        ({"schedule": "warmup_cosine", "decay_steps": 0}, (1000,)),
        ({"schedule": "warmup_cosine", "decay_steps": 800}, (800,)),
        ({"schedule": "warmup_cosine", "decay_steps": 1200}, ()),  # the cosine ends after the run
        ({"schedule": "wsd"}, (1000,)),
        ({"schedule": "wsd_s", "wsd.cycles": (300, 600)}, (300, 600, 1000)),
        ({"schedule": "cyclic_cosine", "wsd.cycles": (300, 600)}, (300, 600, 1000)),
    ],
)
def test_decay_ends_are_where_the_lr_reaches_its_minimum(overrides, ends):
    """`optim.decay_ends` (the SCHEDULES records' metadata) lists the steps e whose last update e − 1 ran at the end
    of a decay: within 5% of the peak-to-floor range above the floor, and lower than 10 steps earlier. A schedule
    without decay ends is still far above its floor at the run's last update."""
    cfg = optim_cfg(lr=1e-3, warmup_steps=50, min_lr=1e-4, **{"wsd.min_lr_ratio": 0.1, **overrides})
    assert optim.decay_ends(cfg, 1000) == ends
    lr = np.asarray(jax.vmap(optim.make_schedule(cfg, 1000))(np.arange(1000)), np.float64)
    floor, peak = 1e-4, 1e-3
    for e in ends:
        assert lr[e - 1] - floor < 0.05 * (peak - floor) and lr[e - 1] < lr[e - 11], e
    if not ends:
        assert lr[999] - floor > 0.05 * (peak - floor)


def test_wsd_s_per_budget_decay_is_the_wsd_decay_of_each_budget():
    """decay_of="budget": over the decay window before each budget B_k, WSD-S's LR equals a WSD run's of
    budget B_k step for step (float64 reference of that WSD run), and the window lasts int(0.1·B_k) steps; with
    Levanter's per-cycle rule it does not (cycle [300, 600) would decay over 30 steps, the 600-step WSD over 60)."""
    budgets, peak = (300, 600, 1000), 2e-3
    ours = optim.wsd_s(peak, 1000, budgets[:-1], 50, 0.1, 0.0, "linear", 0.1, decay_of="budget")
    per_cycle = optim.wsd_s(peak, 1000, budgets[:-1], 50, 0.1, 0.0, "linear", 0.1)
    for b in budgets:
        d = int(0.1 * b)
        window = np.arange(b - d, b)
        wsd_ref = np_levanter(peak, b, (), 50, 0.1, 0.0, "linear", 0.1)
        np.testing.assert_allclose(np.asarray(jax.vmap(ours)(window)), [wsd_ref(t) for t in window], rtol=1e-6)
        np.testing.assert_allclose(
            np.asarray(jax.vmap(optim.wsd(peak, b, 50, 0.1))(window)), np.asarray(jax.vmap(ours)(window)), rtol=1e-6
        )
        assert float(ours(b - d - 1)) == pytest.approx(peak, rel=1e-7)  # the decay starts at b − d, not before
        if b > budgets[0]:
            assert float(per_cycle(b - d + 1)) == pytest.approx(peak, rel=1e-7)  # per cycle: still stable here
            assert float(ours(b - d + 1)) < (1 - 1e-3) * peak
    with pytest.raises(ValueError, match="must fit"):  # 0.1·600 = 60 steps do not fit in the cycle [550, 600)
        optim.wsd_s(peak, 1000, (550, 600), 0, 0.1, decay_of="budget")
    with pytest.raises(ValueError, match="decay_of"):
        optim.wsd_s(peak, 1000, (300,), decay_of="cycles")


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


def _decay_length(lr: np.ndarray, end: int) -> int:
    """Steps of the decay that finishes at `end`: the updates before `end` below the LR of the step before them
    that run back without a rise (a linear decay of d steps from the peak gives d − 1)."""
    n = 0
    while end - n - 2 >= 0 and lr[end - n - 1] < lr[end - n - 2]:
        n += 1
    return n


@pytest.mark.parametrize("preset", ["tiny", "gpu"])
def test_wsd_s_study_arms_decay_alike_at_every_budget(preset):
    """experiments/wsd_s.py (issue 10): read from the study's own sweep configs, every budget has a decayed model
    in every arm; the WSD-S decay that ends at a budget is as long as the WSD run's of that budget; all arms share
    the peak LR and warmup. The same check on the study with Levanter's per-cycle rule finds the mismatch."""
    from experiments import wsd_s
    from launch import configs

    base_cfg = wsd_s.get_config(preset)

    def arms(cfg):
        out = {}
        for trial in wsd_s.get_sweep(preset):
            c = configs.apply_overrides(cfg, trial)
            total = int(c.train.steps)
            lr = np.asarray(jax.vmap(optim.make_schedule(c.optim, total))(np.arange(total)), np.float64)
            for end in optim.decay_ends(c.optim, total):
                out.setdefault(c.optim.schedule, {})[end] = (_decay_length(lr, end), lr)
        return out

    got = arms(base_cfg)
    budgets = wsd_s.BUDGETS[preset]
    assert all(sorted(per_budget) == list(budgets) for per_budget in got.values()), got.keys()
    for b in budgets:
        assert got["wsd_s"][b][0] == got["wsd"][b][0] > 0, b
    warmup = int(base_cfg.optim.warmup_steps)
    starts = {(lr.max(), tuple(lr[:warmup])) for per_budget in got.values() for _, lr in per_budget.values()}
    assert len(starts) == 1 and warmup > 0

    per_cycle = configs.apply_overrides(base_cfg, {"optim.wsd.decay_of": "cycle"})
    mismatch = arms(per_cycle)
    assert any(mismatch["wsd_s"][b][0] != mismatch["wsd"][b][0] for b in budgets)
