"""Decoder-only LM of Wortsman et al. 2023 (spec model-variants §6): embed -> pre-LN blocks -> final norm -> head.

Pre-LN, no biases, RoPE, untied embedding/head by default, 4d GELU MLP, attention scale 1/sqrt(Dh), optional
per-head qk-layernorm. The stability variants plug in by config: `model.attention` (models/attention.py),
`model.sigma_reparam` (every block linear, and the head with `model.sigma_reparam_head`), `model.embed_scale` and
`model.init` (models/layers.py), `model.mlp` (gelu | swiglu | smooth_swiglu, models/mlp.py) and `model.fp8`
(models/fp8.py); and the levers of issue 16: `model.mup` (μParam simple: `layers.mup_init`, `mup_lr_multipliers`),
`model.attn_softcap` / `model.final_softcap` (Gemma 2 soft-caps), `model.qk_clip` (QK-clip, `post_update`),
`model.norm_position=peri` (Peri-LN, `Block`), `model.position` (rope | sinusoidal | learned) and
`model.embed_detach` (GLM-130B's embedding gradient shrink). With all of them off the model is the baseline, op for
op (tests/models/test_levers.py). Matmuls in
`model.dtype`; norms, softmax and logsumexp in float32; logits in `model.logits_dtype` (float32 by default).

`Transformer(cfg, rngs)(tokens)` returns `(logits_BxTxV, diagnostics)`; `lm_loss` adds the z-loss.
`Transformer.loss(tokens, targets, z_loss)` is the train/eval objective: the same loss, through `chunked_lm_loss`
when `model.loss_chunk` / `model.pad_vocab_to` apply (the head's logits by position chunks and over the vocabulary
padded to a GEMM-friendly width; never the full [B, T, V] float32 logits with chunks).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from models import attention, fp8, layers, mlp


def padded_vocab(cfg) -> int:
    """V' = V rounded up to a multiple of `model.pad_vocab_to` (>= 1): the head's width inside `chunked_lm_loss`."""
    for field in ("pad_vocab_to", "loss_chunk"):
        if not isinstance(cfg[field], int) or cfg[field] < (field == "pad_vocab_to"):
            raise ValueError(f"model.{field}={cfg[field]!r} must be an integer >= {int(field == 'pad_vocab_to')}")
    return -(-cfg.vocab_size // cfg.pad_vocab_to) * cfg.pad_vocab_to


def dims(cfg) -> tuple[int, int]:
    """(head_dim, d_ff) with the config's 0 = default rules applied (d_ff: the `model.mlp` entry's width rule)."""
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    return head_dim, mlp.hidden_width(cfg)


NORM_POSITIONS = ("pre", "peri")  # model.norm_position


class Block(nnx.Module):
    """pre (`model.norm_position=pre`): x + Attn(LN1(x)), then + MLP(LN2(x)).

    peri: x + LN1'(Attn(LN1(x))), then + LN2'(MLP(LN2(x))): Peri-LN (Kim et al. 2025, "Peri-LN: Revisiting Layer
    Normalization in the Transformer Architecture", arXiv 2502.02732), a second norm of the same kind
    (`model.norm`) on each sub-layer's output before the residual add, so every residual increment has a
    normalised scale (OLMo 2 and Gemma 2 use output norms too). The final norm before the head stays as in pre-LN.
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        if cfg.norm_position not in NORM_POSITIONS:
            raise ValueError(f"model.norm_position={cfg.norm_position!r} is unknown; choose one of {NORM_POSITIONS}")
        head_dim, d_ff = dims(cfg)
        self.norm1 = layers.make_norm(cfg, cfg.d_model, "embed")
        self.attn = attention.Attention(cfg, d_model=cfg.d_model, n_heads=cfg.n_heads, head_dim=head_dim, rngs=rngs)
        self.norm2 = layers.make_norm(cfg, cfg.d_model, "embed")
        self.mlp = mlp.make_mlp(cfg, d_model=cfg.d_model, d_ff=d_ff, rngs=rngs)
        peri = cfg.norm_position == "peri"
        self.attn_out_norm = nnx.data(layers.make_norm(cfg, cfg.d_model, "embed") if peri else None)
        self.mlp_out_norm = nnx.data(layers.make_norm(cfg, cfg.d_model, "embed") if peri else None)

    def __call__(self, x_BxTxD: jax.Array, diagnostics: bool = False) -> tuple[jax.Array, dict]:
        a, diag = self.attn(self.norm1(x_BxTxD), diagnostics)
        if self.attn_out_norm is not None:
            a = self.attn_out_norm(a)
        x_BxTxD = x_BxTxD + a
        f = self.mlp(self.norm2(x_BxTxD))
        if self.mlp_out_norm is not None:
            f = self.mlp_out_norm(f)
        return x_BxTxD + f, diag


class Transformer(nnx.Module):
    def __init__(self, cfg, *, rngs: nnx.Rngs):
        fp8.validate(cfg)
        init = layers.get_init(cfg)
        dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.embed = layers.Embed(cfg.vocab_size, cfg.d_model, init=init.embed, dtype=dt, param_dtype=pdt, rngs=rngs)
        self.embed_scale = nnx.data(layers.make_embed_scale(cfg))  # Spike No More (spec §7); None for "none"
        self.positions = nnx.data(layers.make_positions(cfg, rngs))  # absolute positions; None for RoPE
        if not 0 <= cfg.embed_detach <= 1:
            raise ValueError(f"model.embed_detach={cfg.embed_detach} must be in [0, 1] (0 = off; GLM-130B: 0.1)")
        self.embed_detach = float(cfg.embed_detach)
        if cfg.final_softcap < 0:
            raise ValueError(f"model.final_softcap={cfg.final_softcap} must be >= 0 (0 = off)")
        self.final_softcap = float(cfg.final_softcap)
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
        self.vocab_size, self.loss_chunk = cfg.vocab_size, cfg.loss_chunk
        self.fused_ce = cfg.get("fused_ce", False)  # run configs written before the field existed: the unfused CE
        self.padded_vocab = padded_vocab(cfg)
        if cfg.loss_chunk and "head" in fp8.targets(cfg):
            raise ValueError(
                f"model.loss_chunk={cfg.loss_chunk} needs a non-FP8 head (an FP8 head scales the whole logits tensor"
                " at once): set model.loss_chunk=0 or drop head from model.fp8.targets"
            )

    def embed_tokens(self, tokens_BxT: jax.Array) -> jax.Array:
        """x0: what enters block 0 (the embedding, `model.embed_detach`, `model.embed_scale`, then absolute positions,
        added after the scaling as spec §7(a) [D])."""
        x_BxTxD = self.embed(tokens_BxT)
        if self.embed_detach:
            x_BxTxD = layers.embed_detach(x_BxTxD, self.embed_detach)
        if self.embed_scale is not None:
            x_BxTxD = self.embed_scale(x_BxTxD)
        return x_BxTxD if self.positions is None else self.positions(x_BxTxD)

    def __call__(self, tokens_BxT: jax.Array, diagnostics: bool = False, head_gate=None) -> tuple[jax.Array, dict]:
        """Logits (`model.logits_dtype`) for every position, and per-layer diagnostics when `diagnostics` is set.

        `head_gate(logits, logits of the detached hidden states) -> logits` (optim.agg's AGG) reshapes the head's
        weight gradient; None (the default) leaves the model op for op."""
        x_BxTxD, diag = self.features(tokens_BxT, diagnostics)
        if self.head is None:
            logits_BxTxV = self.embed.attend(x_BxTxD, self.logits_dtype)
        else:
            logits_BxTxV = self.head(x_BxTxD)
        if head_gate is not None:  # the same head on sg(h): AGG gates only the head weights' gradient
            x_sg = jax.lax.stop_gradient(x_BxTxD)
            logits_BxTxV = head_gate(
                logits_BxTxV, self.embed.attend(x_sg, self.logits_dtype) if self.head is None else self.head(x_sg)
            )
        return self.capped(logits_BxTxV), diag

    def features(self, tokens_BxT: jax.Array, diagnostics: bool = False) -> tuple[jax.Array, dict]:
        """What enters the output head (the final norm's output), and per-layer diagnostics."""
        x_BxTxD = self.embed_tokens(tokens_BxT)
        diag = {}
        for i, block in enumerate(self.blocks):
            if self.remat and not diagnostics:
                x_BxTxD, d = nnx.remat(lambda b, x: b(x))(block, x_BxTxD)
            else:
                x_BxTxD, d = block(x_BxTxD, diagnostics)
            if diagnostics:
                d.update(residual_stats(x_BxTxD))
            diag.update({f"{k}/layer_{i}": v for k, v in d.items()})
        return self.final_norm(x_BxTxD), diag

    def loss(
        self, tokens_BxT: jax.Array, targets_BxT: jax.Array, z_loss: float, diagnostics: bool = False, head_gate=None
    ) -> tuple[jax.Array, dict, dict]:
        """(`lm_loss`'s total loss, its metrics, the per-layer diagnostics): the objective of the train and eval steps.

        With `model.loss_chunk` > 0 or a vocabulary that `model.pad_vocab_to` pads, and not on a diagnostic pass,
        through `chunked_lm_loss`: the head's logits exist only chunk by chunk and over the padded vocabulary.
        Otherwise (and on diagnostic passes, whose output-logit statistics need every logit) the reference: the
        full logits of `__call__`, then `lm_loss`. Both give the same loss and gradients up to float rounding
        (tests/models/test_chunked_loss.py states the tolerances). AGG's `head_gate` takes the reference path too.
        """
        if diagnostics or head_gate is not None or not (
            self.loss_chunk or self.fused_ce or self.padded_vocab > self.vocab_size
        ):
            logits_BxTxV, diag = self(tokens_BxT, diagnostics, head_gate)
            return (*lm_loss(logits_BxTxV, targets_BxT, z_loss, diagnostics), diag)
        x_BxTxD, diag = self.features(tokens_BxT)
        # the [d, V] kernel as the head's matmul uses it (σReparam applied once per forward, as in `__call__`),
        # zero-padded to [d, V'] in its storage dtype, so each chunk's kernel gradient adds up in that dtype
        w_DxV = self.embed.embedding[...].T if self.head is None else self.head.weight()
        w_DxV = jnp.pad(w_DxV, ((0, 0), (0, self.padded_vocab - self.vocab_size)))
        loss, metrics = chunked_lm_loss(
            lambda x: self.capped(self.head_matmul(x, w_DxV)), x_BxTxD, targets_BxT, z_loss, self.loss_chunk,
            self.vocab_size, fused=self.fused_ce,
        )
        return loss, metrics, diag

    def head_matmul(self, x_BxTxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
        """x . w in `model.logits_dtype` for a head kernel w (the chunked loss's, possibly padded): the untied head's
        own matmul (FP8 or not); for a tied head, like the untied one (float32 logits, backward in `model.dtype`)."""
        if self.head is not None:
            return self.head.apply(x_BxTxD, w_DxV)
        x_BxTxD, w_DxV = x_BxTxD.astype(self.embed.dtype), w_DxV.astype(self.embed.dtype)
        if self.logits_dtype == jnp.float32 and self.embed.dtype != jnp.float32:
            return layers.dot_wide_out(x_BxTxD, w_DxV, 1)
        return jnp.einsum("btd,dv->btv", x_BxTxD, w_DxV, preferred_element_type=self.logits_dtype)

    def capped(self, logits_BxTxV: jax.Array) -> jax.Array:
        """Gemma 2's final-logit soft-cap c·tanh(x/c) in float32 (`model.final_softcap`; layers.softcap), or x."""
        if not self.final_softcap:
            return logits_BxTxV
        return layers.softcap(logits_BxTxV, self.final_softcap).astype(self.logits_dtype)


# name -> meaning of `residual_stats` (per layer: "<name>/layer_i", the residual stream after block i)
RESIDUAL_DIAGNOSTICS = {
    "resid_max_abs": "max |x| of the residual stream after the block, over batch, positions and channels (massive "
                     "activations; Guo et al. 2024 residual-state peaks)",
    "resid_first_token_ratio": "||x_0|| / median_j ||x_j||: the first token's residual norm over the median "
                               "token's, mean over the batch (spec model-variants §8.4 residual peak)",
}


def residual_stats(x_BxTxD: jax.Array) -> dict:
    """`RESIDUAL_DIAGNOSTICS` of the residual stream after a block (spec model-variants §8.4), in float32."""
    x = x_BxTxD.astype(jnp.float32)
    norm_BxT = jnp.linalg.norm(x, axis=-1)
    return {
        "resid_max_abs": jnp.max(jnp.abs(x)),
        "resid_first_token_ratio": (norm_BxT[:, 0] / jnp.median(norm_BxT, axis=-1)).mean(),
    }


def mup_lr_multipliers(cfg, params) -> dict | None:
    """μParam (simple)'s per-parameter LR multipliers for a pure-dict `params` tree (Wortsman et al. 2023, spec
    model-variants §6(d)5: the LR of each linear layer × base_fan_in / fan_in), or None when `model.mup` is off.

    Every matrix of a block and the head has a fan-in that grows with d_model along a width ladder (d, H·Dh = d,
    d_ff = 4d or the SwiGLU rule), so base_fan_in / fan_in = b / d with b = `model.mup_base_width`; the token and
    position tables (input weights: μP's LR is width-independent for Adam, Yang et al. 2022 Table 3) and every
    vector (norm scales, σReparam γ) keep 1. `optim.scale_by_multipliers` applies the tree (optim/mup.py)."""
    if not cfg.mup:
        return None
    layers.check_mup(cfg)
    ratio = cfg.mup_base_width / cfg.d_model

    def multiplier(path, leaf) -> float:
        return ratio if leaf.ndim >= 2 and path[0].key not in ("embed", "positions") else 1.0

    return jax.tree_util.tree_map_with_path(multiplier, params)


def post_update(cfg):
    """The model's step after the optimizer update, or None: `model.qk_clip` = τ > 0 (Kimi K2's QK-clip; see
    `attention.qk_clip_scales`) rescales, per layer, the Wq and Wk heads whose max logit in this step's forward
    exceeded τ. Returns (params, stats) -> (params, metrics) for pure-dict params and the training forward's
    per-layer stats; metrics["qk_clip_heads"] counts the heads rescaled (over all layers)."""
    if not cfg.qk_clip:
        return None
    tau = float(cfg.qk_clip)

    def clip(params, stats):
        blocks, clipped = dict(params["blocks"]), 0
        for i in range(cfg.n_layers):
            scale_H = attention.qk_clip_scales(stats[f"attn_max_logit_per_head/layer_{i}"], tau)
            block = blocks[i]
            blocks[i] = dict(block, attn=attention.clip_qk(block["attn"], scale_H))
            clipped = clipped + jnp.sum(scale_H < 1.0)
        return dict(params, blocks=blocks), {"qk_clip_heads": clipped}

    return clip


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
    logits = logits_BxTxV.astype(loss_dtype(logits_BxTxV))
    ce_BxT, logz_BxT = token_ce(logits, targets_BxT)
    ce = ce_BxT.mean()
    zl = jnp.square(logz_BxT).mean()
    metrics = {"ce": ce, "z_loss": zl}
    if diagnostics:
        metrics.update(output_logit_stats(logits, logz_BxT))
    return ce + z_loss * zl, metrics


def chunked_lm_loss(
    logits_fn, x_BxTxD: jax.Array, targets_BxT: jax.Array, z_loss: float, chunk: int, vocab_size: int,
    fused: bool = False,
) -> tuple[jax.Array, dict]:
    """`lm_loss` of the logits `logits_fn(x)` without the [B, T, V] float32 logits of the whole batch.

    `logits_fn` maps features [B, C, D] to logits [B, C, V'] with V' >= `vocab_size`; the columns from
    `vocab_size` on (the head's padding, `model.pad_vocab_to`) are set to -inf, so they add exp(-inf) = 0 to Z and
    get a zero gradient. With `chunk` > 0 the positions go `chunk` at a time (every batch row in each chunk, so a
    batch sharded over rows stays sharded) through a `lax.scan` whose body is `jax.checkpoint`ed: the forward
    keeps two running float32 sums (CE and log² Z), the backward recomputes each chunk's logits, so the live
    logits are [B, chunk, V'] (the "chunked cross-entropy" of Liger-Kernel / Wijmans et al. 2024, "Cut your losses
    in large-vocabulary language models", in jnp). A `chunk` that does not divide T pads the last chunk with
    positions of weight 0. `chunk` = 0: one chunk. Equal to `lm_loss` up to the order of the sums, except that
    each chunk's head-kernel gradient is formed in the matmul's dtype before the sum over chunks (bf16 compute:
    bf16-rounded partials summed in float32 where the reference rounds the whole sum once). `fused`: each
    chunk's CE by `fused_token_ce`.
    """
    B, T, D = x_BxTxD.shape

    def sums(x_BxCxD, t_BxC, weight_C):
        logits = logits_fn(x_BxCxD)
        if fused:
            ce_BxC, logz_BxC = fused_token_ce(logits, t_BxC, vocab_size)
        else:
            ce_BxC, logz_BxC = token_ce(_columns(logits, vocab_size)[0], t_BxC)
        zsq_BxC = jnp.square(logz_BxC)
        if weight_C is not None:
            ce_BxC, zsq_BxC = ce_BxC * weight_C, zsq_BxC * weight_C
        return ce_BxC.sum(), zsq_BxC.sum()

    if not chunk or chunk >= T:
        ce_sum, zsq_sum = sums(x_BxTxD, targets_BxT, None)
    else:
        n = -(-T // chunk)
        pad = n * chunk - T
        x_NxBxCxD = jnp.pad(x_BxTxD, ((0, 0), (0, pad), (0, 0))).reshape(B, n, chunk, D).swapaxes(0, 1)
        t_NxBxC = jnp.pad(targets_BxT, ((0, 0), (0, pad))).reshape(B, n, chunk).swapaxes(0, 1)
        weight_NxC = (jnp.arange(n * chunk) < T).astype(jnp.float32).reshape(n, chunk)

        @jax.checkpoint
        def body(carry, chunk_inputs):
            ce, zsq = sums(*chunk_inputs)
            return (carry[0] + ce, carry[1] + zsq), None

        zero = jnp.zeros([], loss_dtype(jax.eval_shape(logits_fn, x_NxBxCxD[0])))
        (ce_sum, zsq_sum), _ = jax.lax.scan(body, (zero, zero), (x_NxBxCxD, t_NxBxC, weight_NxC))
    ce, zl = ce_sum / (B * T), zsq_sum / (B * T)
    return ce + z_loss * zl, {"ce": ce, "z_loss": zl}


def loss_dtype(x: jax.Array) -> jnp.dtype:
    """The dtype the loss reduces in: float32, or float64 for float64 logits (the tests' exact references)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def token_ce(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy per position, log Z per position), in `loss_dtype`; `lm_loss`'s CE is the mean of the first."""
    logits = logits_BxTxV.astype(loss_dtype(logits_BxTxV))
    logz_BxT = jax.nn.logsumexp(logits, axis=-1)
    # The target logit as a masked sum rather than a gather: its gradient is then an elementwise select that XLA
    # fuses into the softmax backward, instead of a scatter into a [B, T, V] zero tensor.
    vocab_BxTxV = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    target_logit_BxT = jnp.sum(jnp.where(vocab_BxTxV == targets_BxT[..., None], logits, 0.0), axis=-1)
    return logz_BxT - target_logit_BxT, logz_BxT


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def fused_token_ce(logits_BxTxV: jax.Array, targets_BxT: jax.Array, vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """`token_ce` of the first `vocab_size` columns of the logits (the rest, the head's padding, count as -inf), in
    one read of the logits each way: XLA computes `token_ce` as two dependent reductions (max, then Σ exp) plus
    the target's masked sum and, in the backward, a float32 copy of the logits; this forward is one variadic
    reduction (the online log-sum-exp of Milakov & Gimelshein 2018, "Online normalizer calculation for softmax":
    pairs (m, s) combined as (max, s₁e^(m₁−M) + s₂e^(m₂−M)), with the target logit as a third operand), and the
    custom backward one elementwise pass, dlogits = (g_ce + g_logz)·softmax − g_ce·onehot, in the logits' dtype.
    Equal to `token_ce` up to summation order (tests/models/test_chunked_loss.py)."""
    return _fused_ce_fwd(logits_BxTxV, targets_BxT, vocab_size)[0]


def _columns(logits_BxTxV: jax.Array, vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """(the logits in `loss_dtype` with columns >= vocab_size at -inf, the column index)."""
    x = logits_BxTxV.astype(loss_dtype(logits_BxTxV))
    vocab = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return (jnp.where(vocab < vocab_size, x, -jnp.inf) if x.shape[-1] > vocab_size else x), vocab


def _fused_ce_fwd(logits_BxTxV, targets_BxT, vocab_size):
    x, vocab = _columns(logits_BxTxV, vocab_size)
    target = jnp.where(vocab == targets_BxT[..., None], x, 0.0)

    def combine(a, b):
        (m1, s1, t1), (m2, s2, t2) = a, b
        m = jnp.maximum(m1, m2)
        scaled = lambda mi, si: jnp.where(mi == -jnp.inf, 0.0, si * jnp.exp(mi - m))  # an all -inf side adds 0
        return m, scaled(m1, s1) + scaled(m2, s2), t1 + t2

    zero, one = jnp.zeros((), x.dtype), jnp.ones((), x.dtype)
    m, s, t = jax.lax.reduce((x, jnp.ones_like(x), target), (-jnp.inf * one, zero, zero), combine, (x.ndim - 1,))
    logz_BxT = m + jnp.log(s)
    return (logz_BxT - t, logz_BxT), (logits_BxTxV, targets_BxT, logz_BxT)


def _fused_ce_bwd(vocab_size, residuals, grads):
    logits_BxTxV, targets_BxT, logz_BxT = residuals
    g_ce, g_logz = grads
    x, vocab = _columns(logits_BxTxV, vocab_size)
    p = jnp.exp(x - logz_BxT[..., None])  # softmax; 0 on the padding
    d = (g_ce + g_logz)[..., None] * p - jnp.where(vocab == targets_BxT[..., None], g_ce[..., None], 0.0)
    return d.astype(logits_BxTxV.dtype), None


fused_token_ce.defvjp(_fused_ce_fwd, _fused_ce_bwd)


def count_params(state) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(state))
