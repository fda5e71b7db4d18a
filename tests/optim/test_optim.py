"""optim/: AdamW with independent / coupled weight decay, warmup_cosine, registries, batched (vmapped) hparams.

References are float64 numpy, written here from the spec (optimizers §4, model-variants §6), not from optim/.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optim
from experiments.base import get_config


def optim_cfg(**overrides):
    """config.optim with dotted-key overrides (e.g. `**{"spam.threshold": 0.0}`)."""
    cfg = get_config("tiny").optim
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def np_warmup_cosine(t, peak, warmup, min_lr, end):
    if t < warmup:
        return peak * t / warmup
    x = min((t - warmup) / (end - warmup), 1.0)
    return min_lr + (peak - min_lr) * 0.5 * (1 + np.cos(np.pi * x))


# ---- schedules -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay_steps", [0, 800])
def test_warmup_cosine_key_steps(decay_steps):
    peak, total, warmup, min_lr = 1e-3, 1000, 100, 1e-5
    end = decay_steps or total
    sched = optim.warmup_cosine(peak, total, warmup, min_lr, decay_steps)
    mid = (warmup + end) // 2
    expected = {0: 0.0, 50: 5e-4, 100: 1e-3, mid: (peak + min_lr) / 2, end: min_lr, end + 300: min_lr}
    for step, value in expected.items():
        got = sched(step)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), value, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")
    for step in range(0, end + 50, 7):
        ref = np_warmup_cosine(step, peak, warmup, min_lr, end)
        np.testing.assert_allclose(float(sched(step)), ref, rtol=1e-5, atol=1e-10, err_msg=f"step {step}")


def test_constant_schedule_and_config_schedules():
    np.testing.assert_allclose(float(optim.constant(3e-3)(12345)), 3e-3, rtol=1e-7)
    cfg = optim_cfg(lr=2e-3, warmup_steps=10, min_lr=1e-4, decay_steps=0)
    sched = optim.make_schedule(cfg, 110)
    np.testing.assert_allclose([float(sched(s)) for s in (5, 10, 60, 110)], [1e-3, 2e-3, 1.05e-3, 1e-4], rtol=1e-6)
    sched = optim.make_schedule(cfg, 110, {"lr": 4e-3, "warmup_steps": 20})
    np.testing.assert_allclose(float(sched(10)), 2e-3, rtol=1e-6)


# ---- weight decay ----------------------------------------------------------------------------------------------


def _zero_grad_factors(cfg, total_steps, n_updates, x64_params):
    """Per-update multiplicative factor θ_new/θ on a decayed matrix and an (undecayed) vector, zero gradients."""
    tx = optim.make_optimizer(cfg, total_steps)
    state = tx.init(x64_params)
    zeros = jax.tree.map(jnp.zeros_like, x64_params)
    params, factors = x64_params, []
    for _ in range(n_updates):
        updates, state = tx.update(zeros, state, params)
        new = jax.tree.map(lambda p, u: p + u, params, updates)
        factors.append({k: np.asarray(new[k] / params[k]) for k in params})
        params = new
    return factors


@pytest.fixture
def x64_params():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        yield {"w": jnp.asarray(rng.normal(size=(4, 3)) + 3.0), "scale": jnp.asarray(rng.normal(size=(3,)) + 3.0)}


def test_independent_vs_coupled_decay_spec_4d(x64_params):
    """Spec optimizers §4(d): multiplier s_t = 0.5, zero Adam update (zero gradients)."""
    # warmup_cosine with a 2-step warmup: update 0 at lr 0 (s=0), update 1 at lr η/2 (s=0.5).
    base = dict(schedule="warmup_cosine", warmup_steps=2, min_lr=0.0, clip=0.0)
    cases = {  # (peak lr, independent?, λ) -> θ_new/θ at s_t = 0.5
        (1e-3, True, 1e-4): 1 - 5e-5,
        (1e-3, False, 0.1): 1 - 5e-5,  # coupled λ=0.1 at lr_t = 5e-4: the same point
        (1e-2, True, 1e-4): 1 - 5e-5,  # independent: unchanged by the peak LR
        (1e-2, False, 0.1): 1 - 5e-4,  # coupled: ten times more decay
    }
    for (lr, independent, lam), factor in cases.items():
        cfg = optim_cfg(lr=lr, independent_wd=independent, weight_decay=lam, **base)
        f0, f1 = _zero_grad_factors(cfg, 1000, 2, x64_params)
        np.testing.assert_allclose(f0["w"], 1.0, rtol=0, atol=1e-15)  # s_0 = 0
        np.testing.assert_allclose(1 - f1["w"], 1 - factor, rtol=1e-6)
        np.testing.assert_array_equal(f1["scale"], 1.0)  # vectors are not decayed ([D] decay_mask)


def test_independent_decay_ignores_peak_lr_model_variants_6e3(x64_params):
    """Model-variants §6(e)3: zero gradients, s_t = 1: factor 1 − 1e-4 for any peak LR; coupled 1 − ηλ."""
    for lr in (3e-4, 3e-1):
        cfg = optim_cfg(lr=lr, schedule="constant", weight_decay=1e-4, independent_wd=True, clip=0.0)
        (f,) = _zero_grad_factors(cfg, 10, 1, x64_params)
        np.testing.assert_allclose(1 - f["w"], 1e-4, rtol=1e-6)
        cfg = optim_cfg(lr=lr, schedule="constant", weight_decay=1e-4, independent_wd=False, clip=0.0)
        (f,) = _zero_grad_factors(cfg, 10, 1, x64_params)
        np.testing.assert_allclose(1 - f["w"], lr * 1e-4, rtol=1e-6)


def test_decay_mask_and_decay_all(x64_params):
    stacked = {"blocks": {"kernel": jnp.ones((2, 3, 4)), "scale": jnp.ones((2, 4))}, "embed": jnp.ones((5, 4))}
    assert optim.decay_mask(stacked) == {"blocks": {"kernel": True, "scale": True}, "embed": True}
    mask = optim.decay_mask(stacked, stacked=optim.stacked_by_path("^blocks/"))
    assert mask == {"blocks": {"kernel": True, "scale": False}, "embed": True}
    cfg = optim_cfg(schedule="constant", weight_decay=1e-4, clip=0.0, decay_all=True)
    (f,) = _zero_grad_factors(cfg, 10, 1, x64_params)
    np.testing.assert_allclose(1 - f["scale"], 1e-4, rtol=1e-6)


def test_optimizer_on_nnx_state():
    """The decay mask and every transform work on an nnx.State of a real module (Linear kernel/bias, LayerNorm)."""

    class Tiny(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 4, rngs=rngs)
            self.norm = nnx.LayerNorm(4, rngs=rngs)

    _, params = nnx.split(Tiny(nnx.Rngs(0)), nnx.Param)
    cfg = optim_cfg(schedule="constant", lr=1.0, weight_decay=0.5, clip=0.0)
    tx = optim.make_optimizer(cfg, 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"][...], -0.5 * params["dense"]["kernel"][...], rtol=1e-6)
    np.testing.assert_array_equal(updates["norm"]["scale"][...], 0.0)


# ---- Adam --------------------------------------------------------------------------------------------------------


def test_scale_by_adam_matches_optax():
    """optim.scale_by_adam is optax.scale_by_adam up to float32 rounding, with the same state."""
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}
    ours, ref = optim.scale_by_adam(0.9, 0.95, 1e-8), optax.scale_by_adam(0.9, 0.95, 1e-8)
    s_ours, s_ref = ours.init(params), ref.init(params)
    for _ in range(6):
        g = {"w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}
        u_ours, s_ours = ours.update(g, s_ours)
        u_ref, s_ref = ref.update(g, s_ref)
        np.testing.assert_allclose(u_ours["w"], u_ref["w"], rtol=2e-6)
    assert type(s_ours) is type(s_ref) and int(s_ours.count) == int(s_ref.count) == 6
    jax.tree.map(np.testing.assert_array_equal, s_ours.mu, s_ref.mu)


@pytest.mark.parametrize(("r", "eps", "expected"), [(1e-8, 1e-8, 0.5), (1e-9, 1e-8, 0.0909), (1e-8, 1e-15, 0.9999999)])
def test_eps_attenuation_spec_4d(r, eps, expected):
    """Constant gradient g = r: m̂ = r, v̂ = r², so |u| = r/(r + ε) (spec optimizers §4(d))."""
    with jax.enable_x64(True):
        cfg = optim_cfg(schedule="constant", lr=1.0, eps=eps, weight_decay=0.0, clip=0.0)
        tx = optim.make_optimizer(cfg, 100)
        params = {"w": jnp.zeros((2, 2), jnp.float64)}
        state = tx.init(params)
        grads = {"w": jnp.full((2, 2), r, jnp.float64)}
        for _ in range(20):
            updates, state = tx.update(grads, state, params)
        got = -np.asarray(updates["w"])
        np.testing.assert_allclose(got, r / (r + eps), rtol=1e-12)
        np.testing.assert_allclose(got, expected, rtol=5e-4 if expected == 0.0909 else 1e-12)


def np_adamw(params, grads_seq, *, lrs, peak, b1, b2, eps, wd, clip, independent, decayed):
    """Hand-written float64 AdamW: global-norm clip, bias-corrected Adam (ε outside the sqrt), weight decay."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    clipped = []
    for k, (g, lr) in enumerate(zip(grads_seq, lrs), start=1):
        norm = np.sqrt(sum(np.sum(np.square(x)) for x in g.values()))
        clipped.append(norm > clip)
        g = {n: x * min(1.0, clip / norm) for n, x in g.items()}
        for n in p:
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
            u = (m[n] / (1 - b1**k)) / (np.sqrt(v[n] / (1 - b2**k)) + eps)
            lam = wd if n in decayed else 0.0
            if independent:
                p[n] = p[n] - lr * u - lam * (lr / peak) * p[n]
            else:
                p[n] = p[n] - lr * (u + lam * p[n])
    return p, clipped


@pytest.mark.parametrize("independent", [True, False])
def test_adamw_steps_match_numpy(independent):
    rng = np.random.default_rng(1)
    params0 = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))}
    grads_seq = [{n: rng.normal(size=x.shape) * s for n, x in params0.items()} for s in (0.1, 1.0, 0.2, 3.0, 0.3)]
    hp = dict(lr=3e-2, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1 if independent else 0.5, clip=1.0)
    cfg = optim_cfg(schedule="warmup_cosine", warmup_steps=2, min_lr=1e-3, independent_wd=independent, **hp)
    lrs = [np_warmup_cosine(t, hp["lr"], 2, 1e-3, 5) for t in range(5)]
    ref, clipped = np_adamw(
        params0, grads_seq, lrs=lrs, peak=hp["lr"], b1=hp["b1"], b2=hp["b2"], eps=hp["eps"],
        wd=hp["weight_decay"], clip=hp["clip"], independent=independent, decayed={"w"},
    )
    assert any(clipped) and not all(clipped)
    with jax.enable_x64(True):
        tx = optim.make_optimizer(cfg, 5)
        params = {n: jnp.asarray(x) for n, x in params0.items()}
        state = tx.init(params)
        update = jax.jit(tx.update)
        for g in grads_seq:
            updates, state = update({n: jnp.asarray(x) for n, x in g.items()}, state, params)
            params = jax.tree.map(lambda p, u: p + u, params, updates)
        for n in ref:
            np.testing.assert_allclose(np.asarray(params[n]), ref[n], rtol=1e-6, atol=1e-9, err_msg=n)


# ---- batched hyperparameters ------------------------------------------------------------------------------------

MEMBERS = {  # three sweep members; every HPARAM_KEY varies
    "lr": [1e-3, 1e-2, 1e-1],
    "weight_decay": [1e-4, 0.1, 0.0],
    "eps": [1e-8, 1e-6, 1e-15],
    "b1": [0.9, 0.8, 0.95],
    "b2": [0.95, 0.99, 0.999],
    "clip": [0.0, 0.05, 1.0],
    "warmup_steps": [0.0, 2.0, 0.5],
    "min_lr": [1e-5, 0.0, 1e-3],
}

VARIANTS = {
    "adamw_independent": {},
    "adamw_coupled": {"independent_wd": False},
    "component_clip": {"clip_mode": "component"},
    "spam": {"name": "spam", "spam.reset_interval": 4, "spam.reset_warmup": 2, "spam.no_clip_steps": 1},
    "skip_step": {"skip_step.enabled": True, "skip_step.window": 4},
    "wsd_s": {"schedule": "wsd_s", "warmup_steps": 0, "wsd.cycles": (4,), "wsd.decay": 2.0},
    "wsd_s_per_budget": {"schedule": "wsd_s", "warmup_steps": 0, "wsd.cycles": (4,), "wsd.decay": 0.25,
                         "wsd.decay_of": "budget"},  # decays over 1 step before 4, 2 before 8
}


def _batched_and_single_runs(variant, per_member_grads):
    """8 updates of 3 members: one jit(vmap) program vs 3 separate jitted runs -> (batched, [member runs]).

    As in a batched sweep, the optimizer is built inside the (vmapped) step from traced hparams and the state is
    initialised from the config values. Gradients and losses are the batch's (shared by all members), or, with
    `per_member_grads`, each member's own.
    """
    cfg = optim_cfg(**VARIANTS[variant])
    rng = np.random.default_rng(2)
    params0 = {n: jnp.asarray(rng.normal(size=shape), jnp.float32) for n, shape in [("w", (4, 3)), ("b", (3,))]}
    lead = (3,) if per_member_grads else ()
    grads = [
        {n: jnp.asarray(rng.normal(size=(*lead, *x.shape)) * 0.5, jnp.float32) for n, x in params0.items()}
        for _ in range(8)
    ]
    spike = [3.0, 3.1, 2.9, 3.0, 3.05, 50.0, 3.0, 2.95]  # a loss spike at update 5 for the skip-step variant
    losses = [jnp.asarray([x, x + 0.01, x - 0.01] if per_member_grads else x, jnp.float32) for x in spike]

    def step(params, state, hparams, g, loss):
        tx = optim.make_optimizer(cfg, 8, hparams)
        updates, state = tx.update(g, state, params, loss=loss)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    state0 = optim.make_optimizer(cfg, 8).init(params0)  # init with the config values
    hparams = {k: jnp.asarray(v, jnp.float32) for k, v in MEMBERS.items()}
    batched = jax.tree.map(lambda x: jnp.stack([x] * 3), (params0, state0))
    data_axis = 0 if per_member_grads else None
    vstep = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, data_axis, data_axis)))
    for g, loss in zip(grads, losses):
        batched = vstep(*batched, hparams, g, loss)

    single, runs = jax.jit(step), []
    pick = lambda tree, i, axis: jax.tree.map(lambda x: x if axis is None else x[i], tree)  # noqa: E731
    for i in range(3):
        member = (params0, state0)
        for g, loss in zip(grads, losses):
            member = single(*member, pick(hparams, i, 0), pick(g, i, data_axis), pick(loss, i, data_axis))
        runs.append(member)
    assert not np.allclose(batched[0]["w"][0], batched[0]["w"][1])  # the members really differ
    if variant == "skip_step":
        assert np.asarray(optim.state_metrics(batched[1])["skipped_total"]).tolist() == [1, 1, 1]
    return batched, runs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_vmap_over_hparams_equals_unbatched(variant):
    """One compiled program trains 3 members with different hparams on the same batch (DESIGN §4): every
    member's params and optimizer state are bitwise equal to its own unbatched run."""
    batched, runs = _batched_and_single_runs(variant, per_member_grads=False)
    for i, run in enumerate(runs):
        for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(run)):
            np.testing.assert_array_equal(np.asarray(b)[i], np.asarray(s))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_vmap_with_per_member_gradients(variant):
    """Members with their own gradients (as after their params diverge) stay independent. Only float32 rounding
    may differ here: XLA does not keep the summation order of a reduction (gradient norms, skip-step history)
    when it gains a batch axis."""
    batched, runs = _batched_and_single_runs(variant, per_member_grads=True)
    for i, run in enumerate(runs):
        for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(run)):
            np.testing.assert_allclose(np.asarray(b)[i], np.asarray(s), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_shards_like_params(variant):
    """optax.tree_map_params (how launch/ shards the optimizer state) finds exactly Adam's / SPAM's two moment
    trees as parameter-shaped; counters and skip-step buffers are the non-parameter rest."""
    params = {"blocks": {"kernel": jnp.ones((2, 3, 4)), "scale": jnp.ones((2, 4))}, "embed": jnp.ones((5, 4))}
    tx = optim.make_optimizer(optim_cfg(**VARIANTS[variant], stacked_params="^blocks/"), 8)
    state = jax.eval_shape(tx.init, params)
    specs = jax.tree.map(lambda p: f"param{p.ndim}", params)
    mapped = optax.tree_map_params(tx, lambda _, spec: spec, state, specs, transform_non_params=lambda _: "rest")
    leaves = jax.tree.leaves(mapped)
    assert sorted(x for x in leaves if x != "rest") == sorted(["param3", "param2", "param2"] * 2)


# ---- registries and hparams ----------------------------------------------------------------------------------------


def test_hparams_from_config():
    h = optim.hparams_from_config(optim_cfg(lr=3e-3))
    assert tuple(h) == optim.HPARAM_KEYS and all(isinstance(v, float) for v in h.values()) and h["lr"] == 3e-3
    assert set(optim.HPARAM_KEYS) >= {"lr", "weight_decay", "eps", "b1", "b2", "clip", "warmup_steps", "min_lr"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "sgdx"}, r"unknown optim.name 'sgdx'; choose one of adamw, spam"),
        ({"schedule": "linearx"}, r"unknown optim.schedule 'linearx'; choose one of constant, warmup_cosine"),
        ({"clip_mode": "blockwise"}, r"unknown optim.clip_mode 'blockwise'; choose one of global, component"),
    ],
)
def test_unknown_names_raise(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        optim.make_optimizer(optim_cfg(**overrides), 10)
    assert "\n" not in str(info.value)


def test_unknown_hparam_raises():
    with pytest.raises(ValueError, match="unknown optimizer hparams"):
        optim.make_optimizer(optim_cfg(), 10, {"learning_rate": 1e-3})


# ---- state counters and probes -------------------------------------------------------------------------------------


def test_state_metrics_come_from_each_state_class():
    """SPAM under skip-step under the schedule wrapper: both states' counters, named as their classes say; a new
    state class reports its counters by declaring METRICS alone; vmapped states keep the member axis."""
    cfg = optim_cfg(name="spam", **{"skip_step.enabled": True, "skip_step.window": 4})
    state = optim.make_optimizer(cfg, 10).init({"w": jnp.zeros((2, 2))})
    metrics = optim.state_metrics(state)
    assert sorted(metrics) == sorted([*optim.SpamState.METRICS, *optim.SkipStepState.METRICS])
    assert sorted(optim.SpamState.METRICS) == ["spam_clipped", "spam_clipped_total", "spam_resets"]
    assert sorted(optim.SkipStepState.METRICS) == [
        "skip_grad_norm_threshold", "skip_grad_norm_z", "skip_loss_threshold", "skip_loss_z", "skipped",
        "skipped_total",
    ]
    assert optim.state_metrics(optim.make_optimizer(optim_cfg(), 10).init({"w": jnp.zeros(2)})) == {}

    class CountState(NamedTuple):
        ticks: jax.Array
        METRICS = {"my_ticks": "ticks"}

    nested = (optax.EmptyState(), {"a": CountState(jnp.asarray(7))}, state)
    assert int(optim.state_metrics(nested)["my_ticks"]) == 7
    stacked = jax.tree.map(lambda x: jnp.stack([x, x + 1]), state)
    assert np.asarray(optim.state_metrics(stacked)["spam_resets"]).tolist() == [0, 1]


def np_attenuation(m, v, count, eps, b1, b2):
    m_hat, sqrt_v = m / (1 - b1**count), np.sqrt(v / (1 - b2**count))
    rms = lambda x: np.sqrt(np.mean(np.square(x)))  # noqa: E731
    ok = sqrt_v > 0
    den = rms(np.where(ok, m_hat / np.where(ok, sqrt_v, 1.0), 0.0))
    return rms(m_hat / (sqrt_v + eps)) / den if den > 0 else 1.0


@pytest.mark.parametrize("skip", [False, True])
def test_adam_attenuation_matches_numpy(skip):
    """optim.adam_attenuation finds Adam's moments under with_lr_schedule (and skip_step) and equals a float64
    numpy RMS(m̂/(√v̂+ε)) / RMS(m̂/√v̂) per tensor; ε comparable to √v̂ makes it visibly below 1."""
    cfg = optim_cfg(schedule="constant", lr=1e-3, clip=0.0, **{"skip_step.enabled": skip})
    rng = np.random.default_rng(5)
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros((3,))}
    tx, eps, b1, b2 = optim.make_optimizer(cfg, 10), 1e-3, 0.9, 0.95
    state = tx.init(params)
    m, v = ({n: np.zeros(p.shape) for n, p in params.items()} for _ in range(2))
    for k in range(1, 4):
        g = {n: rng.normal(size=p.shape) * 10.0 ** rng.uniform(-4, -2, size=p.shape) for n, p in params.items()}
        g["b"][0] = 0.0 if k == 1 else g["b"][0]
        for n in g:
            m[n], v[n] = b1 * m[n] + (1 - b1) * g[n], b2 * v[n] + (1 - b2) * g[n] ** 2
        _, state = tx.update({n: jnp.asarray(x, jnp.float32) for n, x in g.items()}, state, params, loss=3.0)
    got = optim.adam_attenuation(state, eps, b1, b2)
    assert sorted(got) == ["adam_attenuation/b", "adam_attenuation/w"]
    for n in params:
        ref = np_attenuation(m[n], v[n], 3, eps, b1, b2)
        assert ref < 0.99
        np.testing.assert_allclose(float(got[f"adam_attenuation/{n}"]), ref, rtol=2e-5, err_msg=n)
    zero = optim.adam_attenuation(tx.init(params), eps, b1, b2)  # count 0, v̂ = 0 everywhere: no attenuation
    assert all(float(x) == 1.0 for x in zero.values())
