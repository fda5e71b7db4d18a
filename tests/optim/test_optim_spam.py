"""optim/spam.py against spec optimizers §1(d) and a float64 numpy SPAM written here from the §1(a) pseudocode.

Setup of every check (§1(d)): scalar parameter p0 = 0, lr = 1e-3 constant, wd = 0, β = (0.9, 0.999), ε = 1e-6,
θ = 5000, ΔT = 500, W = 150, N = 20, g = 1 everywhere except the listed spikes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optim
from optim.spam import reset_warmup_scale
from test_optim import optim_cfg  # tests/optim/test_optim.py (pytest puts its folder on sys.path)

LR = 1e-3


def np_spam(grads, lr=LR, b1=0.9, b2=0.999, eps=1e-6, theta=5000.0, delta_t=500, warmup=150, no_clip=20,
            restart_bias_correction=False):  # fmt: skip
    """The official step() of §1(a) on a scalar, in float64. One row per call k = 1, 2, ...

    `restart_bias_correction` resets the bias-correction step at every momentum reset: the wrong variant of
    check 2, kept to show that the test tells the two apart.
    """
    p = m = v = 0.0
    step, rows = 0, []
    for k, g in enumerate(grads, start=1):
        j = k % delta_t
        scale = 1 - 0.99 * (1 + math.cos(math.pi * j / (warmup + 1))) / 2 if k >= delta_t and j < warmup else 1.0
        if j == 0:
            m = v = 0.0
            step = 0 if restart_bias_correction else step
        step += 1
        v_prev = v
        if theta != 0 and k >= no_clip and j >= no_clip and g * g > theta * v:
            g = math.copysign(math.sqrt(theta * v), g)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        update = -lr * math.sqrt(1 - b2**step) / (1 - b1**step) * scale * m / (math.sqrt(v) + eps)
        p += update
        rows.append(dict(k=k, g=g, v_prev=v_prev, m=m, v=v, update=update, p=p, scale=scale))
    return rows


def run_spam(grads, **kwargs):
    """optim.spam on a scalar parameter over `grads`, jitted with lax.scan: per-call arrays (index k-1)."""
    tx = optim.spam(LR, **kwargs)

    def body(carry, g):
        p, state = carry
        update, state = tx.update(g, state, p)
        s = state[0]
        return (p + update, state), dict(update=update, p=p + update, m=s.mu, v=s.nu, clipped=s.clipped,
                                         clipped_total=s.clipped_total, resets=s.resets)  # fmt: skip

    p0 = jnp.zeros([], jnp.float32)
    _, out = jax.jit(lambda gs: jax.lax.scan(body, (p0, tx.init(p0)), gs))(jnp.asarray(grads, jnp.float32))
    return {k: np.asarray(v) for k, v in out.items()}


def ones(n, **spikes):
    g = np.ones(n)
    for k, value in spikes.items():
        g[int(k[1:]) - 1] = value  # spikes given as k100=1000.0 (1-based call index)
    return g


def printed(value, text):
    """value equals the number printed as `text` in the spec, to the last printed digit."""
    mantissa = text.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(text.lower().split("e")[1]) if "e" in text.lower() else 0
    assert abs(value - float(text)) <= 0.5 * 10.0 ** (exponent - decimals) * (1 + 1e-9), (value, text)


def test_check1_clip_value_uses_raw_previous_v():
    grads = ones(100, k100=1000.0)
    ref, ours = np_spam(grads), run_spam(grads)
    r = ref[99]
    printed(ref[98]["v"], "0.0943022")  # v_99 = 1 − 0.999^99
    printed(r["g"], "21.714299")  # sqrt(5000 · v_99), not sqrt(5000) · ... of a bias-corrected v
    printed(r["m"], "3.071403")
    printed(r["v"], "0.5657186")
    printed(r["update"], "-1.260039e-3")
    printed(r["p"], "-0.100259449")
    g_used = (ours["m"][99] - 0.9 * ours["m"][98]) / 0.1
    np.testing.assert_allclose(g_used, 21.714299, rtol=2e-5)
    for key in ("m", "v", "update", "p"):
        np.testing.assert_allclose(ours[key][99], r[key], rtol=2e-5, err_msg=key)
    assert ours["clipped"][99] == 1 and ours["clipped_total"][99] == 1 and ours["clipped"][98] == 0
    plain = np_spam(grads, theta=0.0)[99]["p"]  # the same optimizer without spike clipping
    printed(plain, "-0.099983917")
    np.testing.assert_allclose(run_spam(grads, threshold=0.0)["p"][99], plain, rtol=2e-5)


def test_check2_reset_and_post_reset_warmup():
    grads = ones(501)
    ref, ours = np_spam(grads), run_spam(grads)
    r = ref[499]
    printed(r["scale"], "0.010000")
    printed(r["m"], "0.1")
    printed(r["v"], "0.001")
    printed(r["update"], "-1.983926e-05")  # the global-k bias correction sqrt(1 − 0.999^500) = 0.62740 is in it
    printed(ref[500]["scale"], "0.010107")
    printed(np_spam(grads, restart_bias_correction=True)[499]["update"], "-9.9997e-06")  # the wrong variant
    np.testing.assert_allclose(ours["update"][499], r["update"], rtol=2e-5)
    np.testing.assert_allclose(ours["update"][500], ref[500]["update"], rtol=2e-5)
    np.testing.assert_allclose([ours["m"][499], ours["v"][499]], [0.1, 0.001], rtol=1e-6)
    assert ours["resets"][498] == 0 and ours["resets"][499] == 1
    for j, text in [(0, "0.010000"), (1, "0.010107"), (75, "0.499851"), (149, "0.999572"), (150, "1.000000")]:
        printed(float(reset_warmup_scale(500 + j, 500, 150)), text)
        printed(float(reset_warmup_scale(1000 + j, 500, 150)), text)
    assert float(reset_warmup_scale(499, 500, 150)) == 1.0  # no warmup before the first reset


def test_check3_eps_placement_e2():
    ours = run_spam([1e-7])["update"][0]
    printed(np_spam([1e-7])[0]["update"], "-3.152e-06")
    printed(float(ours), "-3.152e-06")
    adam = optax.chain(optax.scale_by_adam(0.9, 0.999, 1e-6), optax.scale(-LR))  # placement E1
    e1, _ = adam.update(jnp.asarray(1e-7), adam.init(jnp.zeros([])))
    printed(float(e1), "-9.091e-05")  # 29x larger
    # far from that regime (k = 500, g = 1, no reset) E1 and E2 agree to 1e-5
    e2 = run_spam(np.ones(500), threshold=0.0, reset_interval=10**9)["update"][-1]
    state, u = adam.init(jnp.zeros([])), None
    for _ in range(500):
        u, state = adam.update(jnp.asarray(1.0), state)
    assert abs(e2 / float(u) - 1) < 1e-5


def test_check4_no_clip_window():
    grads = ones(505, k505=1000.0)
    ref, ours = np_spam(grads), run_spam(grads)
    printed(ref[504]["g"], "1000")  # inside the window after the reset at 500: not clipped
    printed(ref[504]["v"], "1000.005")
    printed(ref[504]["m"], "100.3686")
    np.testing.assert_allclose([ours["m"][504], ours["v"][504]], [ref[504]["m"], ref[504]["v"]], rtol=1e-6)
    assert ours["clipped"][504] == 0
    grads = ones(525, k525=1000.0)
    ref, ours = np_spam(grads), run_spam(grads)
    printed(ref[524]["v_prev"], "0.02470")
    printed(ref[524]["g"], "11.113570")
    np.testing.assert_allclose((ours["m"][524] - 0.9 * ours["m"][523]) / 0.1, 11.113570, rtol=2e-5)
    assert ours["clipped"][524] == 1


def test_check5_reset_warmup_is_independent_of_lr_warmup():
    """W = 1000 (the HEAD driver passing the LR warmup) never returns to 1; we refuse W >= ΔT and keep W in
    its own config field."""
    for k, text in [(999, "0.50267"), (1000, "0.01"), (1499, "0.50267"), (1500, "0.01")]:
        printed(float(reset_warmup_scale(k, 500, 1000)), text)
    with pytest.raises(ValueError, match="reset_warmup=1000 must be in"):
        optim.scale_by_spam(reset_warmup=1000, reset_interval=500)
    cfg = optim_cfg(name="spam", warmup_steps=1000)
    assert cfg.spam.reset_warmup == 150
    optim.make_optimizer(cfg, 2000)  # the LR warmup does not leak into W


def test_counters_and_state_metrics():
    grads = ones(1001, k100=1000.0, k525=1000.0, k700=-1000.0)
    ours, ref = run_spam(grads), np_spam(grads)
    clipped_at = [r["k"] for r in ref if abs(r["g"]) not in (1.0, 1000.0)]
    assert clipped_at == [100, 525, 700]
    np.testing.assert_array_equal(np.nonzero(ours["clipped"])[0] + 1, clipped_at)
    assert ours["clipped_total"][-1] == 3 and ours["clipped"][-1] == 0
    assert ours["resets"][-1] == 2  # k = 500 and 1000
    tx = optim.make_optimizer(optim_cfg(name="spam"), 10)
    metrics = optim.state_metrics(tx.init({"w": jnp.zeros((2, 2))}))
    assert sorted(metrics) == ["spam_clipped", "spam_clipped_total", "spam_resets"]


def test_fp32_state_and_schedule_learning_rate():
    params = {"w": jnp.ones((2, 2), jnp.bfloat16)}
    tx = optim.spam(optax.linear_schedule(1e-3, 0.0, 10), weight_decay=0.1)
    state = tx.init(params)
    assert state[0].mu["w"].dtype == jnp.float32 and state[0].nu["w"].dtype == jnp.float32
    updates, state = tx.update({"w": jnp.full((2, 2), 0.5, jnp.bfloat16)}, state, params)
    # first call: u = sqrt(1 − β2)/(1 − β1)·0.1·0.5/(sqrt(0.001·0.25) + ε); decoupled decay −lr·(u + λθ)
    u = math.sqrt(0.001) / 0.1 * 0.05 / (math.sqrt(0.00025) + 1e-6)
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), -1e-3 * (u + 0.1), rtol=1e-2)  # bf16 update


def test_registry_spam_equals_standalone():
    cfg = optim_cfg(name="spam", schedule="constant", lr=LR, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.0, clip=0.0)
    ours, ref = optim.make_optimizer(cfg, 100), optim.spam(LR)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)}
    s_ours, s_ref = ours.init(params), ref.init(params)
    for _ in range(30):
        g = {"w": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)}
        u_ours, s_ours = ours.update(g, s_ours, params)
        u_ref, s_ref = ref.update(g, s_ref, params)
        np.testing.assert_allclose(u_ours["w"], u_ref["w"], rtol=1e-7)
