"""Diagnostics that read model internals (DESIGN §5), next to the model: pure functions of a model or a pytree, and
the names a model config reports (`diagnostic_names`, `diagnostic_meanings`), built from the registries' metadata.

The training loop composes them (launch/) on diagnostic steps; names are stable (metrics.jsonl, TensorBoard and
launch.report use them). `/layer_i` is a block index, `<module>` a module path such as blocks/0/attn/q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models import attention, layers, transformer

TEV_DIAGNOSTICS = {
    "tev_mu": "token-embedding variability: mean over all rows of std_j E_ij (Chung et al. 2024)",
    "tev_sigma": "token-embedding variability: std over all rows of std_j E_ij",
    "tev_batch_mu": "tev_mu over the rows of the tokens in the diagnosed batch",
    "tev_batch_sigma": "tev_sigma over the rows of the tokens in the diagnosed batch",
}

SIGMA_REPARAM_DIAGNOSTICS = {
    "sigma": "σReparam: power-iteration estimate of σ(W) (one step from the stored u)",
    "gamma": "σReparam: the learned γ",
    "gamma_over_sigma": "σReparam: γ/σ, the scale applied to W",
}


def rms(x) -> jax.Array:
    """sqrt(mean(x²)) in float32."""
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def path_name(path) -> str:
    """A pytree key path (DictKey, SequenceKey, ...) or an nnx graph path (str / int keys) as "a/b/0/c"."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def per_tensor_rms(tree, prefix: str) -> dict:
    """{"<prefix>/<path>": RMS of the leaf} for every leaf of `tree` (parameters, gradients, updates)."""
    return {f"{prefix}/{path_name(p)}": rms(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def embedding_metrics(model, batch_BxS) -> dict:
    """TEV of the input embedding table (Chung et al. 2024; spec §2(a)): over all rows, and over the rows of the
    tokens in the diagnosed batch (a subset of the tokens seen in training: never-seen rows stay near their init)."""
    table_VxD = model.embed.embedding[...]
    seen_V = jnp.zeros(table_VxD.shape[0], bool).at[batch_BxS.reshape(-1)].set(True)
    (mu, sigma), (mu_b, sigma_b) = layers.tev(table_VxD), layers.tev(table_VxD, seen_V)
    return {"tev_mu": mu, "tev_sigma": sigma, "tev_batch_mu": mu_b, "tev_batch_sigma": sigma_b}


def sigma_reparam_metrics(model: nnx.Module) -> dict:
    """σ, γ and γ/σ (the scale applied to W) of every σReparam layer, keyed by module path (spec §3(c))."""
    out = {}
    for path, module in nnx.iter_graph(model):
        if isinstance(module, layers.SigmaReparamLinear):
            name = path_name(path)
            sigma, gamma = module.sigma[...], module.gamma[...].astype(jnp.float32)
            out.update({f"sigma/{name}": sigma, f"gamma/{name}": gamma, f"gamma_over_sigma/{name}": gamma / sigma})
    return out


def sigma_reparam_modules(cfg) -> list[str]:
    """Module paths of the σReparam layers of the model config `cfg` (built abstractly: no arrays allocated)."""
    if not cfg.sigma_reparam:
        return []
    model = nnx.eval_shape(lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
    return [path_name(p) for p, m in nnx.iter_graph(model) if isinstance(m, layers.SigmaReparamLinear)]


def diagnostic_names(cfg) -> list[str]:
    """Every model diagnostic that the model config `cfg` reports on a diagnostic step, per-layer names expanded:
    the attention variant's names and the residual-stream statistics (attention sinks, massive activations) per
    layer, the output-logit statistics, TEV and (with model.sigma_reparam) σ, γ,
    γ/σ per σReparam module. Optimizer-side diagnostics (param_rms, grad_rms, update_rms, adam_attenuation) are
    the loop's: `per_tensor_rms` names them from the parameter tree."""
    attn = attention.ATTENTIONS[cfg.attention].diagnostic_names(cfg)
    names = [f"{k}/layer_{i}" for i in range(cfg.n_layers) for k in (*attn, *transformer.RESIDUAL_DIAGNOSTICS)]
    names += [*transformer.OUTPUT_LOGIT_DIAGNOSTICS, *TEV_DIAGNOSTICS]
    names += [f"{k}/{m}" for m in sigma_reparam_modules(cfg) for k in SIGMA_REPARAM_DIAGNOSTICS]
    return names


def diagnostic_meanings() -> dict[str, str]:
    """name pattern -> meaning of every model diagnostic any config can report (the docs' diagnostic table)."""
    attn = dict(attention.ATTENTION_DIAGNOSTICS)
    for variant in attention.ATTENTIONS.values():
        attn.update(variant.diagnostics)
    return {
        **{f"{k}/layer_i": v for k, v in {**attn, **transformer.RESIDUAL_DIAGNOSTICS}.items()},
        **transformer.OUTPUT_LOGIT_DIAGNOSTICS,
        **TEV_DIAGNOSTICS,
        **{f"{k}/<module>": v for k, v in SIGMA_REPARAM_DIAGNOSTICS.items()},
    }
