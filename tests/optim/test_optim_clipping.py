"""optim/clipping.py: component-wise clipping (spec optimizers §6(d)) and skip-step (§10(d)).

References are float64 numpy written here from the spec.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim
from test_optim import optim_cfg  # tests/optim/test_optim.py (pytest puts its folder on sys.path)

G = {"g1": jnp.asarray([3.0, 0.0]), "g2": jnp.asarray([0.3, 0.4])}


def apply(tx, grads, params=None):
    return tx.update(grads, tx.init(grads), params)[0]


# ---- component-wise / global clipping -------------------------------------------------------------------------


def test_component_vs_global_clipping_spec_6d():
    comp = apply(optim.clip_by_component_norm(1.0), G)
    np.testing.assert_allclose(comp["g1"], [3 / (3 + 1e-6), 0.0], rtol=1e-7)  # torch: c/(‖g‖ + 1e-6)
    np.testing.assert_allclose(comp["g1"], [0.99999967, 0.0], atol=5e-8)
    np.testing.assert_array_equal(comp["g2"], G["g2"])  # norm 0.5 < 1: unchanged
    glob = apply(optim.clip_by_global_norm(1.0), G)
    norm = np.sqrt(9 + 0.09 + 0.16)
    np.testing.assert_allclose(float(optim.global_norm(G)), norm, rtol=1e-7)
    np.testing.assert_allclose(norm, 3.04138, atol=5e-6)
    np.testing.assert_allclose(glob["g1"], [0.98639, 0.0], atol=5e-6)
    np.testing.assert_allclose(glob["g2"], [0.09864, 0.13152], atol=5e-6)
    np.testing.assert_allclose(np.concatenate([glob["g1"], glob["g2"]]), np.asarray([3, 0, 0.3, 0.4]) / norm, rtol=1e-6)


def test_component_clipping_per_layer_slice():
    """A leaf with a leading stacked-layer axis is clipped per slice, like the separate tensors it stands for."""
    stacked = {"blocks": {"kernel": jnp.stack([G["g1"], G["g2"]])}, "head": jnp.asarray([[3.0, 4.0]])}
    per_slice = apply(optim.clip_by_component_norm(1.0, stacked=optim.stacked_by_path("^blocks/")), stacked)
    np.testing.assert_allclose(per_slice["blocks"]["kernel"][0], [3 / (3 + 1e-6), 0.0], rtol=1e-7)
    np.testing.assert_array_equal(per_slice["blocks"]["kernel"][1], G["g2"])
    np.testing.assert_allclose(per_slice["head"], [[3 / (5 + 1e-6), 4 / (5 + 1e-6)]], rtol=1e-6)  # not stacked
    whole = apply(optim.clip_by_component_norm(1.0), stacked)  # without the flag: one norm over both layers
    np.testing.assert_allclose(whole["blocks"]["kernel"][1], G["g2"] / (np.sqrt(9.25) + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("tx", [optim.clip_by_global_norm, optim.clip_by_component_norm])
def test_clipping_off_and_traced_threshold(tx):
    grads = {"w": jnp.asarray([30.0, 40.0], jnp.bfloat16)}
    run = jax.jit(lambda c: apply(tx(c), grads))
    np.testing.assert_array_equal(run(0.0)["w"], grads["w"])  # threshold <= 0: off
    clipped = run(5.0)["w"]
    assert clipped.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(clipped, np.float32), [3.0, 4.0], rtol=1e-2)


def test_component_clipping_from_config():
    cfg = optim_cfg(clip_mode="component", clip=1.0, schedule="constant", lr=1.0, weight_decay=0.0,
                    stacked_params="^blocks/")  # fmt: skip
    tx = optim.make_optimizer(cfg, 10)
    params = {"blocks": {"kernel": jnp.zeros((2, 2))}}
    grads = {"blocks": {"kernel": jnp.stack([G["g1"], G["g2"]])}}
    _, state = tx.update(grads, tx.init(params), params)
    # Adam's first direction is ±1 whatever the scale; the clipped gradients show in its second moment
    nu = state.inner[1].nu["blocks"]["kernel"]
    np.testing.assert_allclose(nu, (1 - 0.95) * np.square([[3 / (3 + 1e-6), 0.0], [0.3, 0.4]]), rtol=1e-6)


# ---- skip-step ---------------------------------------------------------------------------------------------------

ONE = {"w": jnp.asarray([1.0])}  # gradient norm 1 exactly, so the norm history is flat


def inner_adam():
    return optax.chain(optim.clip_by_global_norm(1.0), optim.scale_by_adam(0.9, 0.95, 1e-8))


def feed(tx, losses, grads=None, state=None):
    """Calls tx.update once per loss; returns the final state and the per-call (updates, state) pairs."""
    state = tx.init(ONE) if state is None else state
    update = jax.jit(lambda g, s, loss: tx.update(g, s, ONE, loss=loss))
    history = []
    for i, loss in enumerate(losses):
        g = ONE if grads is None else grads[i]
        updates, state = update(g, state, loss)
        history.append((updates, state))
    return state, history


def test_bessel_threshold_does_not_skip_3701_spec_10d():
    """History: 128 values alternating 3.0/3.2; current loss 3.701. Levanter's population std gives the
    threshold 3.7000 and skips; OLMo-core / MaxText (Bessel) give 3.70236 and do not. We follow OLMo."""
    hist = np.array([3.0, 3.2] * 64)
    mean, bessel, population = hist.mean(), hist.std(ddof=1), hist.std(ddof=0)
    np.testing.assert_allclose([mean, population, bessel], [3.1, 0.1, 0.100393], atol=5e-7)
    np.testing.assert_allclose(mean + 6 * population, 3.7000, atol=5e-5)
    np.testing.assert_allclose(mean + 6 * bessel, 3.70236, atol=5e-6)
    assert 3.701 > mean + 6 * population and 3.701 <= mean + 6 * bessel

    tx = optim.skip_step(inner_adam(), window=128, sigma=6.0)
    state, history = feed(tx, list(hist) + [3.701])
    assert not any(bool(s.skipped) for _, s in history)
    np.testing.assert_allclose(float(state.loss_threshold), mean + 6 * bessel, rtol=1e-6)
    np.testing.assert_allclose(float(state.loss_z), (3.701 - mean) / bessel, rtol=1e-5)
    assert float(state.grad_norm_z) == 0.0 and float(state.grad_norm_threshold) == 1.0  # flat norm history
    state, _ = feed(tx, [3.703], state=history[-2][1])  # the same history, a loss above 3.70236
    assert bool(state.skipped) and int(state.skipped_total) == 1


def test_warmup_rule_63_then_huge_spec_10d():
    """OLMo-core / MaxText may skip at the 64th call (63 previous values = L/2 − 1); Levanter needs 64."""
    tx = optim.skip_step(inner_adam(), window=128)
    state, _ = feed(tx, [3.0] * 63 + [1e4])
    assert bool(state.skipped) and float(state.loss_threshold) == 3.0 and float(state.loss_z) == np.inf
    state, _ = feed(tx, [3.0] * 62 + [1e4])
    assert not bool(state.skipped) and float(state.loss_threshold) == np.inf  # not armed yet


def test_skipped_update_leaves_inner_state_untouched_spec_10d():
    tx = optim.skip_step(inner_adam(), window=8)
    before, _ = feed(tx, [3.0, 3.1, 2.9, 3.0, 3.05])
    after, [(updates, _)] = feed(tx, [40.0], state=before)
    assert bool(after.skipped) and int(after.skipped_total) == 1
    np.testing.assert_array_equal(updates["w"], 0.0)
    jax.tree.map(np.testing.assert_array_equal, after.inner, before.inner)  # Adam's count, m, v
    assert int(after.inner[1].count) == int(before.inner[1].count) == 5
    assert int(after.count) == 6 and float(after.losses[5]) == 40.0  # the spike stays in the history
    resumed, _ = feed(tx, [3.0], state=after)
    assert not bool(resumed.skipped) and int(resumed.inner[1].count) == 6


def test_grad_norm_is_taken_before_clipping():
    """The inner chain clips at 1; the history norms are 2. A norm-50 gradient is a spike only pre-clip."""
    tx = optim.skip_step(inner_adam(), window=8)
    grads = [{"w": jnp.asarray([2.0])}] * 6 + [{"w": jnp.asarray([50.0])}]
    state, _ = feed(tx, [3.0] * 7, grads=grads)
    assert bool(state.skipped) and float(state.grad_norm_threshold) == 2.0 and float(state.loss_z) == 0.0


def test_make_optimizer_skip_step_keeps_the_schedule_running():
    """With optim.skip_step.enabled the LR schedule still advances on a skipped update (OLMo-core, Levanter):
    only the wrapped optimizer state is frozen."""
    cfg = optim_cfg(schedule="warmup_cosine", warmup_steps=10, lr=1e-2, **{"skip_step.enabled": True,
                                                                           "skip_step.window": 8})  # fmt: skip
    tx = optim.make_optimizer(cfg, 100)
    state, history = feed(tx, [3.0, 3.1, 2.9, 3.0, 3.05, 40.0, 3.0])
    skipped = [bool(s.inner.skipped) for _, s in history]
    assert skipped == [False] * 5 + [True, False]
    assert int(state.count) == 7  # the schedule's step
    assert int(state.inner.inner[1].count) == 6  # Adam's count: one update skipped
    metrics = optim.state_metrics(state)
    assert int(metrics["skipped_total"]) == 1 and not bool(metrics["skipped"])
    # constant gradient 1: Adam's direction is 1/(1 + ε), so the last update is −lr at the schedule's step 6
    # (6e-3), not at 5 (5e-3) as it would be if the skipped update had frozen the schedule
    np.testing.assert_allclose(np.asarray(history[-1][0]["w"]), [-6e-3], rtol=1e-5)


def test_skip_step_requires_loss_and_window():
    tx = optim.skip_step(inner_adam())
    with pytest.raises(TypeError):
        tx.update(ONE, tx.init(ONE), ONE)
    with pytest.raises(ValueError, match="window"):
        optim.skip_step(inner_adam(), window=1)
