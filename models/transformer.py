"""Decoder-only LM of Wortsman et al. 2023 (spec model-variants §6): embed -> pre-LN blocks -> final norm -> head.

Pre-LN, no biases, RoPE, untied embedding/head by default, 4d GELU MLP, attention scale 1/sqrt(Dh), optional
per-head qk-layernorm. The stability variants plug in by config: `model.attention` (models/attention.py),
`model.sigma_reparam` (every block linear, and the head with `model.sigma_reparam_head`), `model.embed_scale` and
`model.init` (models/layers.py), `model.mlp` (gelu | swiglu | smooth_swiglu, models/mlp.py) and `model.fp8`
(models/fp8.py); with all of them off the model is the baseline, op for op. Matmuls in
`model.dtype`; norms, softmax and logsumexp in float32; logits in `model.logits_dtype` (float32 by default).

`Transformer(cfg, rngs)(tokens)` returns `(logits_BxTxV, diagnostics)`; `lm_loss` adds the z-loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models import attention, fp8, layers, mlp


def dims(cfg) -> tuple[int, int]:
    """(head_dim, d_ff) with the config's 0 = default rules applied (d_ff: the `model.mlp` entry's width rule)."""
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    return head_dim, mlp.hidden_width(cfg)


class Block(nnx.Module):
    """x + Attn(LN1(x)), then + MLP(LN2(x))."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        head_dim, d_ff = dims(cfg)
        self.norm1 = layers.make_norm(cfg, cfg.d_model, "embed")
        self.attn = attention.Attention(cfg, d_model=cfg.d_model, n_heads=cfg.n_heads, head_dim=head_dim, rngs=rngs)
        self.norm2 = layers.make_norm(cfg, cfg.d_model, "embed")
        self.mlp = mlp.make_mlp(cfg, d_model=cfg.d_model, d_ff=d_ff, rngs=rngs)

    def __call__(self, x_BxTxD: jax.Array, diagnostics: bool = False) -> tuple[jax.Array, dict]:
        a, diag = self.attn(self.norm1(x_BxTxD), diagnostics)
        x_BxTxD = x_BxTxD + a
        return x_BxTxD + self.mlp(self.norm2(x_BxTxD)), diag


class Transformer(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        fp8.validate(cfg)
        init = layers.get_init(cfg)
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed = layers.Embed(cfg.vocab_size, cfg.d_model, init=init.embed, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.embed_scale = nnx.data(layers.make_embed_scale(cfg))  # Spike No More (spec §7); None for "none"
        self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = layers.make_norm(cfg, cfg.d_model, "embed")
        self.head = nnx.data(
            None
            if cfg.tie_embeddings
            else layers.make_linear(
                cfg, (cfg.d_model,), (cfg.vocab_size,), ("embed", "vocab"), init=init.kernel(cfg.d_model), rngs=rngs,
                reparam=cfg.sigma_reparam and cfg.sigma_reparam_head, out_dtype=jnp.dtype(cfg.logits_dtype),
                fp8_target="head",
            )
        )
        self.remat = cfg.remat
        self.logits_dtype = jnp.dtype(cfg.logits_dtype)

    def embed_tokens(self, tokens_BxT: jax.Array) -> jax.Array:
        """x0: what enters block 0 (the embedding, then `model.embed_scale`)."""
        x_BxTxD = self.embed(tokens_BxT)
        return x_BxTxD if self.embed_scale is None else self.embed_scale(x_BxTxD)

    def __call__(self, tokens_BxT: jax.Array, diagnostics: bool = False, head_gate=None) -> tuple[jax.Array, dict]:
        """Logits (`model.logits_dtype`) for every position, and per-layer diagnostics when `diagnostics` is set.

        `head_gate(logits, logits of the detached hidden states) -> logits` (optim.agg's AGG) reshapes the head's
        weight gradient; None (the default) leaves the model op for op."""
        x_BxTxD = self.embed_tokens(tokens_BxT)
        diag = {}
        for i, block in enumerate(self.blocks):
            if self.remat and not diagnostics:
                x_BxTxD, d = nnx.remat(lambda b, x: b(x))(block, x_BxTxD)
            else:
                x_BxTxD, d = block(x_BxTxD, diagnostics)
            diag.update({f"{k}/layer_{i}": v for k, v in d.items()})
        x_BxTxD = self.final_norm(x_BxTxD)
        if self.head is None:
            logits_BxTxV = self.embed.attend(x_BxTxD, self.logits_dtype)
        else:
            logits_BxTxV = self.head(x_BxTxD)
        if head_gate is not None:  # the same head on sg(h): AGG gates only the head weights' gradient
            x_sg = jax.lax.stop_gradient(x_BxTxD)
            logits_BxTxV = head_gate(
                logits_BxTxV, self.embed.attend(x_sg, self.logits_dtype) if self.head is None else self.head(x_sg)
            )
        return logits_BxTxV, diag


# name -> meaning of `output_logit_stats` (what `lm_loss` adds on diagnostic steps)
OUTPUT_LOGIT_DIAGNOSTICS = {
    "logz_mean": "mean log Z of the output logits",
    "logz_sq_mean": "mean log² Z of the output logits",
    "logit_mean": "mean output logit",
    "logit_min": "min output logit",
    "logit_max": "max output logit",
}


def output_logit_stats(logits_BxTxV: jax.Array, logz_BxT: jax.Array) -> dict:
    """Output-logit drift statistics (spec §0; Wortsman et al. Fig. 4): `OUTPUT_LOGIT_DIAGNOSTICS`."""
    return {
        "logz_mean": logz_BxT.mean(),
        "logz_sq_mean": jnp.square(logz_BxT).mean(),
        "logit_mean": logits_BxTxV.mean(),
        "logit_min": logits_BxTxV.min(),
        "logit_max": logits_BxTxV.max(),
    }


def lm_loss(
    logits_BxTxV: jax.Array, targets_BxT: jax.Array, z_loss: float, diagnostics: bool = False
) -> tuple[jax.Array, dict]:
    """Mean next-token cross-entropy plus `z_loss * mean(log^2 Z)` (PaLM; Wortsman et al. §3.2).

    Returns (total loss, metrics) with metrics["ce"] the cross-entropy alone (what eval and LR sensitivity use).
    """
    logits = logits_BxTxV.astype(jnp.float32)
    ce_BxT, logz_BxT = token_ce(logits, targets_BxT)
    ce = ce_BxT.mean()
    zl = jnp.square(logz_BxT).mean()
    metrics = {"ce": ce, "z_loss": zl}
    if diagnostics:
        metrics.update(output_logit_stats(logits, logz_BxT))
    return ce + z_loss * zl, metrics


def token_ce(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy per position, log Z per position), in float32; `lm_loss`'s CE is the mean of the first."""
    logits = logits_BxTxV.astype(jnp.float32)
    logz_BxT = jax.nn.logsumexp(logits, axis=-1)
    # The target logit as a masked sum rather than a gather: its gradient is then an elementwise select that XLA
    # fuses into the softmax backward, instead of a scatter into a [B, T, V] zero tensor.
    vocab_BxTxV = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 2)
    target_logit_BxT = jnp.sum(jnp.where(vocab_BxTxV == targets_BxT[..., None], logits, 0.0), axis=-1)
    return logz_BxT - target_logit_BxT, logz_BxT


def count_params(state) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(state))
