"""models/probes.py: the diagnostics that read model internals against float64 numpy references, and the names a
config reports (`diagnostic_names`, from the registries' metadata) equal to what the model actually returns."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import base
from models import attention, layers, probes, transformer


def model_cfg(**overrides):
    cfg = base.get_config("tiny").model
    cfg.update(dtype="float32", vocab_size=96, n_heads=4, **overrides)
    return cfg


CONFIGS = {
    "softmax": {},
    "softmax+qk_norm": dict(qk_norm=True),
    "ls": dict(attention="ls", ls=dict(n_global=1, window=4)),
    "ls_all_local": dict(attention="ls", ls=dict(n_global=0, window=4)),
    "ls_all_global": dict(attention="ls", ls=dict(n_global=4, window=4)),
    "softplus": dict(attention="softplus"),
    "softplus_no_reweight": dict(attention="softplus", softplus=dict(reweight=False, power=15, eps=1e-8, query_chunk=0)),
    "mlra": dict(attention="mlra"),
    "sigma_reparam": dict(sigma_reparam=True, sigma_reparam_head=True),
}


def reported(cfg, model, tokens_BxS):
    """Every model diagnostic the forward, the loss and the probes return on a diagnostic step."""
    logits, diag = model(tokens_BxS[:, :-1], diagnostics=True)
    _, metrics = transformer.lm_loss(logits, tokens_BxS[:, 1:], 0.0, diagnostics=True)
    out = {**diag, **{k: v for k, v in metrics.items() if k not in ("ce", "z_loss")}}
    out.update(probes.embedding_metrics(model, tokens_BxS[:, :-1]))
    out.update(probes.sigma_reparam_metrics(model))
    out.update(probes.spectral_alignment_metrics(model, tokens_BxS[:, :-1]))
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_diagnostic_names_are_exactly_what_the_model_reports(name):
    cfg = model_cfg(**CONFIGS[name])
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 17), 0, cfg.vocab_size)
    names = probes.diagnostic_names(cfg)
    assert len(names) == len(set(names))
    assert set(names) == set(reported(cfg, model, tokens))
    meanings = probes.diagnostic_meanings()
    for n in names:  # every reported name has a documented meaning
        pattern = re.sub(r"/layer_\d+$", "/layer_i", n)
        assert pattern in meanings or n.split("/")[0] + "/<module>" in meanings, n


def test_stacking_rule_reads_the_registry_metadata(monkeypatch):
    """A new entry that declares bounds_logits is refused with qk_norm or sigma_reparam, and allowed alone or with
    model.allow_stacking; an entry that does not declare it stacks freely."""
    bounded = dataclasses.replace(attention.ATTENTIONS["softmax"], bounds_logits=True)
    monkeypatch.setitem(attention.ATTENTIONS, "bounded_softmax", bounded)
    for extra in (dict(qk_norm=True), dict(sigma_reparam=True)):
        with pytest.raises(ValueError, match="allow_stacking"):
            attention.check_stacking(model_cfg(attention="bounded_softmax", **extra))
        attention.check_stacking(model_cfg(attention="bounded_softmax", allow_stacking=True, **extra))
        attention.check_stacking(model_cfg(attention="mlra", **extra))
    attention.check_stacking(model_cfg(attention="bounded_softmax"))
    assert [k for k, v in attention.ATTENTIONS.items() if v.bounds_logits] == ["softplus", "bounded_softmax"]


def test_output_logit_stats_match_float64():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 5, 11)) * 4 + rng.normal(size=(3, 5, 1))).astype(np.float32)
    targets = rng.integers(0, 11, (3, 5))
    _, m = transformer.lm_loss(jnp.asarray(logits), jnp.asarray(targets), 0.0, diagnostics=True)
    y = logits.astype(np.float64)
    logz = np.log(np.exp(y).sum(-1))
    ref = {"logz_mean": logz.mean(), "logz_sq_mean": (logz**2).mean(), "logit_mean": y.mean(), "logit_min": y.min(),
           "logit_max": y.max()}
    assert set(ref) == set(transformer.OUTPUT_LOGIT_DIAGNOSTICS)
    for k, v in ref.items():
        assert float(m[k]) == pytest.approx(v, rel=1e-6), k


def test_rms_per_tensor_rms_and_path_names():
    rng = np.random.default_rng(1)
    tree = {"blocks": [{"w": rng.normal(size=(3, 4)).astype(np.float32)}], "b": rng.normal(size=5).astype(np.float32)}
    out = probes.per_tensor_rms(jax.tree.map(jnp.asarray, tree), "param_rms")
    ref = {"param_rms/blocks/0/w": tree["blocks"][0]["w"], "param_rms/b": tree["b"]}
    assert set(out) == set(ref)
    for k, x in ref.items():
        assert float(out[k]) == pytest.approx(np.sqrt(np.mean(x.astype(np.float64) ** 2)), rel=1e-6)
    assert probes.path_name(("blocks", 0, "attn", "q")) == "blocks/0/attn/q"


def test_embedding_and_sigma_reparam_metrics_match_float64():
    cfg = model_cfg(sigma_reparam=True)
    model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
    batch = np.random.default_rng(2).integers(0, 40, (4, 16)).astype(np.int32)  # rows 40..95 unseen
    out = probes.embedding_metrics(model, jnp.asarray(batch))
    tev_V = np.asarray(model.embed.embedding[...], np.float64).std(-1)
    seen = np.zeros(cfg.vocab_size, bool)
    seen[np.unique(batch)] = True
    ref = {"tev_mu": tev_V.mean(), "tev_sigma": tev_V.std(), "tev_batch_mu": tev_V[seen].mean(),
           "tev_batch_sigma": tev_V[seen].std()}
    assert set(out) == set(ref) == set(probes.TEV_DIAGNOSTICS)
    for k, v in ref.items():
        assert float(out[k]) == pytest.approx(v, rel=1e-4), k

    sr = probes.sigma_reparam_metrics(model)
    q = model.blocks[1].attn.q
    w = np.asarray(q.kernel[...], np.float64).reshape(q.fan_in, -1)
    sigma_true = np.linalg.svd(w, compute_uv=False)[0]
    assert float(sr["sigma/blocks/1/attn/q"]) == pytest.approx(sigma_true, rel=1e-5)  # exact at init (SVD u)
    assert float(sr["gamma/blocks/1/attn/q"]) == pytest.approx(sigma_true, rel=1e-5)  # gamma_init sigma0
    assert float(sr["gamma_over_sigma/blocks/1/attn/q"]) == pytest.approx(1.0, rel=1e-5)
    assert len(sr) == 3 * len(probes.sigma_reparam_modules(cfg)) == 3 * 6 * cfg.n_layers
    assert isinstance(q, layers.SigmaReparamLinear)
