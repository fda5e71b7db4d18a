"""Diagnostics of DESIGN §5 computed by the program's `diagnose` (launch/step.py): values against float64
references, the names documented by the registries, and their defining effect in a forced-instability run
(Wortsman et al. Fig. 2)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import optim
from experiments import attention_logit_growth, base
from launch import configs, loop, mesh as mesh_lib, step as step_lib
from models import probes


def small_program(**model_overrides):
    cfg = base.get_config("tiny")
    cfg.model.update(dtype="float32", vocab_size=96, **model_overrides)
    cfg.data.update(batch_size=4, seq_len=16)
    return cfg, step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1]))


def attenuation_ref(mu, nu, count, b1, b2, eps):
    m_hat = mu.astype(np.float64) / (1 - b1**count)
    v_hat = nu.astype(np.float64) / (1 - b2**count)
    rms = lambda x: np.sqrt(np.mean(x**2))
    safe = np.where(v_hat > 0, m_hat / np.sqrt(np.where(v_hat > 0, v_hat, 1.0)), 0.0)
    return rms(m_hat / (np.sqrt(v_hat) + eps)) / rms(safe)


@pytest.mark.parametrize("r, eps, expected", [(1e-8, 1e-8, 0.5), (1e-9, 1e-8, 1 / 11), (1e-8, 1e-15, 0.9999999)])
def test_adam_attenuation_constant_gradient(r, eps, expected):
    """Spec optimizers §4(d): a constant gradient r for many steps gives m̂ = r, v̂ = r²: the ratio is r/(r+ε)."""
    cfg = base.get_config("tiny").optim
    cfg.update(eps=eps, clip=0.0)
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    tx = optim.make_optimizer(cfg, 100)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, r), params)
    for _ in range(30):
        _, state = tx.update(grads, state, params)
    out = optim.adam_attenuation(state, eps, cfg.b1, cfg.b2)
    assert set(out) == {"adam_attenuation/w", "adam_attenuation/b"}
    for v in out.values():
        assert float(v) == pytest.approx(expected, rel=1e-4)


def test_adam_attenuation_matches_reference_on_random_moments():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(5, 7)).astype(np.float32) * 1e-7
    nu = (rng.uniform(size=(5, 7)) ** 4).astype(np.float32) * 1e-14
    nu[0, :3] = 0.0  # entries never updated
    mu[0, :3] = 0.0
    state = optax_state(mu, nu, count=7)
    got = float(optim.adam_attenuation(state, 1e-8, 0.9, 0.95)["adam_attenuation/x"])
    assert got == pytest.approx(attenuation_ref(mu, nu, 7, 0.9, 0.95, 1e-8), rel=1e-5)
    empty = optax_state(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.float32), count=3)
    assert float(optim.adam_attenuation(empty, 1e-8, 0.9, 0.95)["adam_attenuation/x"]) == 1.0


def optax_state(mu, nu, count):
    import optax

    return (optax.ScaleByAdamState(jnp.asarray(count, jnp.int32), {"x": jnp.asarray(mu)}, {"x": jnp.asarray(nu)}),)


def test_diagnose_values_and_documented_names():
    """TEV (all rows, and the batch's rows), output-logit stats and attenuation agree with references; every name
    `diagnose` emits is documented (launch.report plots metrics by these names)."""
    cfg, prog = small_program()
    state = jax.jit(prog.init)(jnp.int32(0))
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 40, (4, 17)).astype(np.int32)  # ids 40..95 never appear: their rows are "unseen"
    hp = step_lib.hparams_array(cfg)
    out = jax.device_get(jax.jit(prog.diagnose)(state, jnp.asarray(batch), hp))
    E = np.asarray(state["params"]["embed"]["embedding"], np.float64)
    tev_rows = E.std(-1)
    seen = np.zeros(96, bool)
    seen[np.unique(batch[:, :-1])] = True
    assert float(out["tev_mu"]) == pytest.approx(tev_rows.mean(), rel=1e-5)
    assert float(out["tev_sigma"]) == pytest.approx(tev_rows.std(), rel=1e-4)
    assert float(out["tev_batch_mu"]) == pytest.approx(tev_rows[seen].mean(), rel=1e-5)
    assert float(out["tev_batch_sigma"]) == pytest.approx(tev_rows[seen].std(), rel=1e-4)
    # output-logit statistics: float64 numpy from the logits of the same forward (the model's float32 logits)
    model = nnx.merge(prog.graphdef, state["params"], state["rest"])
    y = np.asarray(model(jnp.asarray(batch[:, :-1]))[0], np.float64)
    logz = np.log(np.exp(y - y.max(-1, keepdims=True)).sum(-1)) + y.max(-1)
    ref = {"logz_mean": logz.mean(), "logz_sq_mean": (logz**2).mean(), "logit_mean": y.mean(), "logit_min": y.min(),
           "logit_max": y.max()}
    for k, v in ref.items():
        assert float(out[k]) == pytest.approx(v, rel=1e-5, abs=1e-6), k
    # the model diagnostics it emits are exactly those the registries declare for this config
    optimizer_side = ("param_rms/", "grad_rms/", "update_rms/", "adam_attenuation/")
    assert {k for k in out if not k.startswith(optimizer_side)} == set(probes.diagnostic_names(cfg.model))
    # attenuation after one step at the first update: m̂ = g, v̂ = g², so the ratio is ~1 for ordinary gradients
    assert all(0.99 < float(v) <= 1.0 + 1e-6 for k, v in out.items() if k.startswith("adam_attenuation/"))
    assert len([k for k in out if k.startswith("adam_attenuation/")]) == len(jax.tree.leaves(state["params"]))

    # every name it emits is documented: a model diagnostic by its pattern in the registries' table of meanings
    # (probes.diagnostic_meanings, the docs' table), an optimizer-side one per parameter tensor, named by its path
    meanings = probes.diagnostic_meanings()
    for key in out:
        if not key.startswith(optimizer_side):
            stem = key.split("/")[0] + ("/layer_i" if "/layer_" in key else "/<module>" if "/" in key else "")
            assert stem in meanings and meanings[stem], key
    leaf_name = lambda path: "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    tensors = {leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
    for prefix in optimizer_side:
        assert {k[len(prefix):] for k in out if k.startswith(prefix)} == tensors, prefix


def _instability_run(tmp_path, qk_norm: bool):
    cfg = configs.apply_overrides(attention_logit_growth.get_config("tiny"), {
        "model.qk_norm": qk_norm, "data.source": "synthetic", "data.synthetic_tokens": 200_000,
        "train.steps": 30, "train.eval_every": 30, "train.ckpt_every": 0, "train.eval_batches": 1,
    })
    workdir = tmp_path / ("qk" if qk_norm else "no_qk")
    summary = loop.train(cfg, workdir)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    diag = [r for r in rows if "attn_max_logit/layer_0" in r]
    logit = np.array([max(r[f"attn_max_logit/layer_{i}"] for i in range(2)) for r in diag])
    entropy = np.array([min(r[f"attn_entropy/layer_{i}"] for i in range(2)) for r in diag])
    return summary, [r["step"] for r in diag], logit, entropy


def test_forced_instability_logit_growth_and_entropy_collapse(tmp_path):
    """Wortsman et al. Fig. 2 in miniature (experiments/attention_logit_growth.py:tiny on synthetic data, LR 0.3,
    30 steps, fixed seed): without qk-layernorm the max attention logit grows by >= 2 orders of magnitude and the
    attention entropy collapses to ~0 while the loss is still finite and below the divergence threshold (measured:
    4.4 -> 1.7e3 in 30 steps); with qk-layernorm the logit grows < 10x (measured 4.0 -> 17) and the entropy stays
    up."""
    summary, steps, logit, entropy = _instability_run(tmp_path, qk_norm=False)
    collapsed = np.flatnonzero((logit >= 100 * logit[0]) & (entropy <= 0.05 * entropy[0]))
    assert collapsed.size, (logit, entropy)
    if summary["diverged"]:
        assert steps[collapsed[0]] < summary["diverged_at_step"]
    summary_qk, _, logit_qk, entropy_qk = _instability_run(tmp_path, qk_norm=True)
    assert not summary_qk["diverged"]
    assert logit_qk.max() <= 10 * logit_qk[0] and logit_qk.max() < logit.max() / 20
    assert entropy_qk.min() >= 0.3 * entropy_qk[0]
    assert math.isfinite(summary_qk["eval_loss"])
