"""optim/sgd.py: heavy-ball SGD (Kunstner et al. 2024, spec optimizers §5(b)) as optax.trace, against a float64
numpy reference, bitwise under vmap, and with its state in the parameters' dtype. (Moved here from
tests/test_frequency_studies.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import test_optim  # tests/optim/test_optim.py: optim_cfg and the batched-vs-standalone harness

import optim


def np_sgd(params, grads_seq, *, lrs, peak, b1, wd, clip, independent, decayed):
    """Hand-written float64 torch-style momentum SGD: global-norm clip, m ← b1·m + g, u = m, then weight decay as
    for AdamW (coupled θ ← θ − lr·(u + λθ), or independent θ ← θ − lr·u − λ·(lr/peak)·θ)."""
    p = {k: np.array(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    for g, lr in zip(grads_seq, lrs):
        norm = np.sqrt(sum(np.sum(np.square(x)) for x in g.values()))
        for n in p:
            m[n] = b1 * m[n] + g[n] * min(1.0, clip / norm)
            lam = wd if n in decayed else 0.0
            p[n] = p[n] - lr * m[n] - lam * (lr / peak if independent else lr) * p[n]
    return p


@pytest.mark.parametrize(("b1", "independent"), [(0.9, False), (0.0, True)])
def test_sgd_steps_match_numpy(b1, independent):
    """Kunstner et al.'s SGD (momentum 0.9; b1 = 0: plain SGD) composed with clipping, decay and schedule."""
    rng = np.random.default_rng(3)
    params0 = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=(3,))}
    grads_seq = [{n: rng.normal(size=x.shape) * s for n, x in params0.items()} for s in (0.1, 1.0, 0.2, 3.0, 0.3)]
    hp = dict(lr=3e-2, b1=b1, weight_decay=0.5, clip=1.0)
    cfg = test_optim.optim_cfg(
        name="sgd", schedule="warmup_cosine", warmup_steps=2, min_lr=1e-3, independent_wd=independent, **hp
    )
    lrs = [test_optim.np_warmup_cosine(t, hp["lr"], 2, 1e-3, 5) for t in range(5)]
    ref = np_sgd(params0, grads_seq, lrs=lrs, peak=hp["lr"], b1=b1, wd=hp["weight_decay"], clip=hp["clip"],
                 independent=independent, decayed={"w"})
    with jax.enable_x64(True):
        tx = optim.make_optimizer(cfg, 5)
        params = {n: jnp.asarray(x) for n, x in params0.items()}
        state, update = tx.init(params), jax.jit(tx.update)
        for g in grads_seq:
            updates, state = update({n: jnp.asarray(x) for n, x in g.items()}, state, params)
            params = jax.tree.map(lambda p, u: p + u, params, updates)
    for n in ref:
        np.testing.assert_allclose(np.asarray(params[n]), ref[n], rtol=1e-7, atol=1e-9, err_msg=n)  # float32 lr_t
    assert not optax.tree_utils.tree_get_all_with_path(state, "ScaleByAdamState")
    assert optim.adam_attenuation(state, 1e-8, 0.9, 0.95) == {}  # nothing to report for SGD


def test_sgd_vmap_over_hparams_equals_unbatched(monkeypatch):
    """3 members whose every HPARAM_KEY differs (b1 = the momentum among them) in one jit(vmap) program: each
    member's params and momentum are bitwise equal to its own unbatched run (test_optim's harness)."""
    monkeypatch.setitem(test_optim.VARIANTS, "sgd", {"name": "sgd"})
    batched, runs = test_optim._batched_and_single_runs("sgd", per_member_grads=False)
    assert optax.tree_utils.tree_get_all_with_path(batched[1], "TraceState")
    for i, run in enumerate(runs):
        for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(run)):
            np.testing.assert_array_equal(np.asarray(b)[i], np.asarray(s))


def test_sgd_keeps_bfloat16_momentum_with_a_traced_b1():
    """model.param_dtype = bfloat16 with a batched member's float32 b1: the momentum and the update stay
    bfloat16 and equal (b1·m + g) rounded to bfloat16. Bare optax.trace promotes both to float32, which is why
    optim.sgd_momentum casts them back."""
    params = {"w": jnp.ones((3,), jnp.bfloat16)}
    grads = {"w": jnp.asarray([0.5, -1.25, 3.0], jnp.bfloat16)}
    b1 = jnp.asarray(0.9, jnp.float32)

    def two_steps(tx):
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, params)
        return updates, state

    updates, state = jax.jit(lambda b: two_steps(optim.sgd_momentum(b)))(b1)
    assert updates["w"].dtype == state.trace["w"].dtype == jnp.bfloat16
    g = np.asarray(grads["w"], np.float32)
    m1 = np.asarray(jnp.asarray(g, jnp.bfloat16), np.float32)
    m2 = np.asarray(jnp.asarray(np.float32(0.9) * m1 + g, jnp.bfloat16), np.float32)
    np.testing.assert_array_equal(np.asarray(updates["w"], np.float32), m2)
    bare_updates, bare_state = jax.jit(lambda b: two_steps(optax.trace(b)))(b1)
    assert bare_state.trace["w"].dtype == jnp.float32  # what the cast is for
