"""Diagnostics that read model internals (DESIGN §5), next to the model: pure functions of a model or a pytree, and
the names a model config reports (`diagnostic_names`, `diagnostic_meanings`), built from the registries' metadata.

The training loop composes them (launch/) on diagnostic steps; names are stable (metrics.jsonl, TensorBoard and
launch.report use them). `/layer_i` is a block index, `<module>` a module path such as blocks/0/attn/q.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models import attention, fp8, layers, mlp, transformer

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


FP8_DIAGNOSTICS = {
    "fp8_amax": "FP8: the newest amax of the quantized tensor <linear>/{x,w,grad} in the scaling state",
    "fp8_scale": "FP8: the scale the latest step used for <linear>/{x,w,grad}",
    "fp8_saturated": "FP8: fraction of entries of <linear>/{x,w,grad} with |t·scale| >= fmax on the diagnosed batch, "
                     "at the scales the next step uses",
}

SWIGLU_DIAGNOSTICS = {
    "swiglu_cos_absmax": "SwiGLU: max over hidden channels of |cos(w1_i, w2_i)| (Fishman et al. 2024's alignment)",
    "swiglu_cos_abs_p999": "SwiGLU: 99.9th percentile over hidden channels of |cos(w1_i, w2_i)|",
    "swiglu_down_absmax": "SwiGLU: max |h| of the activation entering the down projection W3 (before smoothing)",
}


def capture_metrics(loss_fn, model: nnx.Module) -> dict:
    """What only the tensors of a step show, from one forward and backward of `loss_fn(model)` (a scalar) under
    `nnx.capture`: `fp8.saturation_metrics` (per FP8 tensor the saturated fraction) and `mlp.swiglu_down_metrics`
    (per SwiGLU layer max |h| entering W3). For the diagnostic pass only: the train step never captures, so the
    modules' sow/perturb calls are no-ops there and XLA drops what they would have computed. `model` is not
    changed. The backward is taken w.r.t. the FP8 outputs' zero perturbations alone (no parameter gradients)."""
    graphdef, state = nnx.split(model)
    state = nnx.to_pure_dict(state)  # arrays, so that each merge below builds Variables of its own trace
    _, zeros = nnx.capture(loss_fn, nnx.Perturbation)(nnx.merge(graphdef, state))  # one zero per FP8 output

    def perturbed(perturbations):
        return nnx.capture(loss_fn, nnx.Intermediate, init=perturbations)(nnx.merge(graphdef, state))

    output_grads, intermediates = jax.grad(perturbed, has_aux=True)(zeros)
    return {**fp8.saturation_metrics(model, intermediates, output_grads), **mlp.swiglu_down_metrics(intermediates)}


def _module_paths(cfg, kind) -> list[str]:
    """Module paths of the `kind` modules of the model config `cfg` (built abstractly: no arrays allocated)."""
    model = nnx.eval_shape(lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
    return [path_name(p) for p, m in nnx.iter_graph(model) if isinstance(m, kind)]


# Spectral alignment (Qiu et al. 2025, arXiv 2510.04202; spec optimizers §8(a), reconstructed from the abstract [D])
SPECTRAL_ALIGNMENT_DIAGNOSTICS = {
    "sa_sign_diversity": "spectral alignment: min(p+, 1 - p+), p+ the fraction of the layer's input tokens x with "
    "<x, v1> > 0, v1 the top input-space singular vector of W; collapses towards 0 before a loss explosion",
    "sa_abs_mean": "spectral alignment: mean over the layer's input tokens of |<x, v1>| / ||x||",
}
SUBLAYER_INPUTS = {"attn": "norm1", "mlp": "norm2"}  # a block's sub-layer -> the norm whose output it reads


def top_input_singular_vector(w_IxO: jax.Array) -> jax.Array:
    """Unit top left-singular vector of a kernel [I, O] (y = x·W: the input direction W stretches most), the top
    eigenvector of the Gram matrix W Wᵀ [I, I] (float32 `eigh`; sign arbitrary). Exact rather than the spec's
    warm-started power iteration: the diagnostic keeps no state, and at init the top singular values of a random
    kernel are too close for a cold power iteration to converge."""
    w = w_IxO.astype(jnp.float32)
    return jnp.linalg.eigh(w @ w.T)[1][:, -1]


def spectral_alignment(w_IxO: jax.Array, x_NxI: jax.Array) -> dict:
    """SA_i = <x_i, v1>/||x_i|| of every input row (spec §8(a)) summarised sign-invariantly: sign diversity
    min(p+, 1 - p+) with p+ = mean(SA_i > 0), and mean |SA_i| (`SPECTRAL_ALIGNMENT_DIAGNOSTICS`)."""
    x = x_NxI.astype(jnp.float32)
    sa = x @ top_input_singular_vector(w_IxO) / jnp.maximum(jnp.linalg.norm(x, axis=-1), 1e-30)
    p_pos = jnp.mean(sa > 0)
    return {"sa_sign_diversity": jnp.minimum(p_pos, 1.0 - p_pos), "sa_abs_mean": jnp.mean(jnp.abs(sa))}


def _input_projections(model) -> list[tuple[str, int, str, layers.Linear]]:
    """(module path, block index, sub-layer, layer) of every block linear that reads the block's normed residual
    stream: its kernel's first logical axis is "embed" (q, k, v, fc1, SwiGLU's w1 and w2; not o, fc2)."""
    out = []
    for path, module in nnx.iter_graph(model):
        if (isinstance(module, layers.Linear) and len(path) == 4 and path[0] == "blocks" and path[2] in SUBLAYER_INPUTS
                and module.n_in == 1 and module.kernel.get_metadata()["axes"][0] == "embed"):
            out.append((path_name(path), path[1], path[2], module))
    return out


def spectral_alignment_modules(cfg) -> list[str]:
    """Module paths whose spectral alignment a model config reports (built abstractly)."""
    model = nnx.eval_shape(lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
    return [name for name, *_ in _input_projections(model)]


def spectral_alignment_metrics(model, tokens_BxT) -> dict:
    """`SPECTRAL_ALIGNMENT_DIAGNOSTICS` per input projection ("sa_sign_diversity/blocks/0/attn/q"), its inputs the
    tokens of one forward pass (the outputs of the sub-layer's norm, read with nnx.capture) against its effective
    kernel (σReparam's W_hat included), the kernel flattened to [d_model, outputs]."""
    _, captured = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)(tokens_BxT)
    outputs = {path_name(k): v for k, v in nnx.to_flat_state(captured)}
    out = {}
    for name, block, sublayer, module in _input_projections(model):
        x = outputs[f"blocks/{block}/{SUBLAYER_INPUTS[sublayer]}/__call__"]
        x = (x.get_value() if hasattr(x, "get_value") else x)[0]
        w = module.weight()
        for key, value in spectral_alignment(w.reshape(w.shape[0], -1), x.reshape(-1, x.shape[-1])).items():
            out[f"{key}/{name}"] = value
    return out


def sigma_reparam_modules(cfg) -> list[str]:
    """Module paths of the σReparam layers of the model config `cfg` (built abstractly: no arrays allocated)."""
    return _module_paths(cfg, layers.SigmaReparamLinear) if cfg.sigma_reparam else []


def diagnostic_names(cfg) -> list[str]:
    """Every model diagnostic that the model config `cfg` reports on a diagnostic step, per-layer names expanded:
    the attention variant's names and the residual-stream statistics (attention sinks, massive activations) per
    layer, the output-logit statistics, TEV, (with model.sigma_reparam) σ, γ, γ/σ per σReparam module, (with
    model.fp8) amax, scale and saturated fraction per quantized tensor, and (with a SwiGLU MLP) the w1/w2 alignment
    and max |h| per SwiGLU layer. Optimizer-side diagnostics (param_rms, grad_rms, update_rms, adam_attenuation) are
    the loop's: `per_tensor_rms` names them from the parameter tree."""
    attn = attention.ATTENTIONS[cfg.attention].diagnostic_names(cfg)
    names = [f"{k}/layer_{i}" for i in range(cfg.n_layers) for k in (*attn, *transformer.RESIDUAL_DIAGNOSTICS)]
    names += [*transformer.OUTPUT_LOGIT_DIAGNOSTICS, *TEV_DIAGNOSTICS]
    names += [f"{k}/{m}" for m in sigma_reparam_modules(cfg) for k in SIGMA_REPARAM_DIAGNOSTICS]
    linears = [p.rpartition("/")[0] for p in _module_paths(cfg, fp8.FP8Dot)] if cfg.fp8.enabled else []
    names += [f"{k}/{m}/{t}" for m in linears for k in FP8_DIAGNOSTICS for t in ("x", "w", "grad")]
    names += [f"{k}/{m}" for m in _module_paths(cfg, mlp.SwiGLU) for k in SWIGLU_DIAGNOSTICS]
    names += [f"{k}/{m}" for m in spectral_alignment_modules(cfg) for k in SPECTRAL_ALIGNMENT_DIAGNOSTICS]
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
        **{f"{k}/<module>": v for k, v in FP8_DIAGNOSTICS.items()},
        **{f"{k}/<module>": v for k, v in SWIGLU_DIAGNOSTICS.items()},
        **{f"{k}/<module>": v for k, v in SPECTRAL_ALIGNMENT_DIAGNOSTICS.items()},
    }
