"""Memory estimate of a config on one device: pure arithmetic on the config, nothing built or compiled.

`estimate(cfg, members=M)` returns (breakdown, total bytes); `summary(cfg, members=M)` is the one-line form that
`--dry_run` prints. It is an ESTIMATE: tests/launch/test_memory.py compares it with the compiled
`memory_analysis()` (temp + argument bytes) of tiny CPU steps, where it came out at 0.95-1.5x XLA's train step
and 1.5-2x its eval step (the constants below were fitted there; GPU fusion differs); use it to tell "fits" from "cannot fit",
not to pack a device to the last GiB. The rules, with N = B·T tokens on the device (B = data.batch_size over the
data·fsdp mesh axes), a = bytes of model.dtype, p = bytes of model.param_dtype:

  state        params·p (counted from the shapes, `n_params`), optimizer state (adamw, spam: m and v; sgd: m) in
               p, gradients in float32 (the parameters' dtype when wider); params and state over fsdp·tensor.
  train step   state + the activations the backward keeps + the backward's working set, or the optimizer's
               update tree, whichever is larger (the state is donated, so the new state reuses its buffers).
    per layer  N·(4d + 4·H·Dh + 2·d_ff)·a: the two norms' inputs and outputs, q/k/v, the mixed heads, the MLP
               pre- and post-activation (mlra adds 3·N·H·r·a for its latents). Attention adds what its kernel
               keeps: a fused kernel (cuDNN: softmax, ls, mlra on GPU in bf16/fp16; softplus with
               model.softplus.impl=pallas or key_chunk) B·H·T·4 of row statistics; an explicit one (XLA, softplus
               otherwise) `EXPLICIT_TT[kernel]` float32 [B, H, T, T] tensors (softmax probabilities; LSSA/LSSAR's
               stage-1 and stage-2 weights).
    remat      (model.remat) each layer keeps only its input N·d·a; one layer's activations are rebuilt at a time.
    head       the final norm's output N·d·a, the logits N·V in model.logits_dtype and their float32 gradient.
    working    one layer's activations (its backward's cotangents) while the backward runs.
  eval step    state (the train state is the argument) + one layer's forward activations N·(2d + 3·H·Dh + d_ff)·a
               (with an explicit kernel `FORWARD_TT` float32 [B, H, T, T]) + the float32 logits.
  diagnose     the design of issue 10: gradients through the fused path (the train step's activations) and the
               optimizer's new state and updates (not donated), plus one forward-only pass with the explicit
               float32 attention on the first `train.diag_rows` rows (0 = all) that holds one layer's
               `FORWARD_TT` float32 [B_diag, H, T, T] tensors (the logits, then the weights) at a time.
  members      a batched group of M members multiplies the state and every activation by M (the batch is shared).

Not counted: σReparam's power-iteration vectors and the optimizer's scalars (< 0.1%), the data batch, XLA's
fusion buffers beyond the above, and tensor parallelism's split of the activations (an overestimate there).
"""

from __future__ import annotations

import numpy as np

import optim
from launch import mesh as mesh_lib
from models.attention import softplus_impl
from models.transformer import dims

# float32 [B, H, T, T] tensors an explicit (materialised) attention keeps per layer for the backward
EXPLICIT_TT = {"softmax": 2, "ls": 2, "mlra": 2, "lssa": 4, "lssar": 5}
# float32 [B, H, T, T] tensors alive at once in one layer of a forward-only explicit pass (logits, weights)
FORWARD_TT = 2
GIB = 2**30


def _bytes(dtype: str) -> int:
    return np.dtype(dtype).itemsize if dtype != "bfloat16" else 2


def n_params(m) -> int:
    """Number of parameters of the model config `m` (what models/transformer.py builds; tested equal)."""
    head_dim, d_ff = dims(m)
    d, H, V = m.d_model, m.n_heads, m.vocab_size
    if m.attention == "mlra":
        r = m.mlra.rank or head_dim // 2
        qkv = 3 * (r * (d + H * head_dim) if m.mlra.shared_latent else H * r * (d + head_dim))
    else:
        qkv = 3 * d * H * head_dim
    linears = 3 if m.attention == "mlra" else 4  # sigma_reparam: one γ per reparametrised linear
    gammas = (linears + 2) * bool(m.sigma_reparam)
    block = qkv + H * head_dim * d + 2 * d * d_ff + 2 * d + 2 * head_dim * bool(m.qk_norm) + gammas
    head = 0 if m.tie_embeddings else d * V + bool(m.sigma_reparam and m.sigma_reparam_head)
    embed_ln = d if m.embed_scale == "layernorm" else 0
    return V * d + embed_ln + m.n_layers * block + d + head


def _kernel(m, backend: str) -> tuple[str, bool]:
    """(name in EXPLICIT_TT, whether the training path materialises [B, H, T, T]) of the model's attention."""
    if m.attention == "softplus":  # the fused kernel and the key blocks never hold [B, H, T, T] (RESULTS.md session 9)
        sp = m.softplus
        return ("lssar" if sp.reweight else "lssa"), softplus_impl(sp) == "xla" and not sp.key_chunk
    impl = m.attention_impl
    if impl == "auto":
        impl = "cudnn" if backend == "gpu" and m.dtype in ("bfloat16", "float16") else "xla"
    return m.attention, impl == "xla"


def estimate(cfg, members: int = 1, backend: str = "gpu", n_devices: int = 1) -> tuple[dict[str, int], int]:
    """(breakdown in bytes, total = the largest of the train step, eval step and diagnose) on one device."""
    m, t = cfg.model, cfg.train
    shape = mesh_lib.mesh_shape(cfg.mesh, n_devices)
    batch_ways, state_ways = shape["members"] * shape["data"] * shape["fsdp"], shape["fsdp"] * shape["tensor"]
    B, T = cfg.data.batch_size // batch_ways, cfg.data.seq_len
    head_dim, d_ff = dims(m)
    d, H, V, L = m.d_model, m.n_heads, m.vocab_size, m.n_layers
    a, p = _bytes(m.dtype), _bytes(m.param_dtype)
    N = B * T

    n = n_params(m) / state_ways
    moments = optim.STATE_COPIES[cfg.optim.name]
    params, opt_state, grads = n * p, moments * n * p, n * max(p, 4)
    state = params + opt_state

    kernel, explicit = _kernel(m, backend)
    layer = N * (4 * d + 4 * H * head_dim + 2 * d_ff) * a
    if m.attention == "mlra":
        layer += 3 * N * H * (m.mlra.rank or head_dim // 2) * a
    tt = B * H * T * T * 4
    layer += EXPLICIT_TT[kernel] * tt if explicit else B * H * T * 4
    kept = L * N * d * a + layer if m.remat else L * layer
    head = N * d * a + N * V * (_bytes(m.logits_dtype) + 4)
    train_acts = kept + head + layer

    def forward(rows, explicit):  # one layer of a forward-only pass over `rows` rows, and the logits
        acts = rows * T * (2 * d + 3 * H * head_dim + d_ff) * a
        return acts + (FORWARD_TT * rows * H * T * T * 4 if explicit else rows * H * T * 4) + rows * T * V * 4

    diag_forward = forward(t.diag_rows if 0 < t.diag_rows < B else B, True)
    breakdown = dict(
        params=params, opt_state=opt_state, grads=grads, train_activations=train_acts,
        train_step=state + grads + max(train_acts, params),
        eval_step=state + forward(B, explicit),
        diagnose=state + grads + max(train_acts, opt_state + params, diag_forward),
    )
    breakdown = {k: int(members * v) for k, v in breakdown.items()}
    return breakdown, max(breakdown["train_step"], breakdown["eval_step"], breakdown["diagnose"])


def summary(cfg, members: int = 1, backend: str = "gpu", n_devices: int = 1) -> str:
    """One line: the estimate's parts and total in GiB, e.g. for `--dry_run`."""
    b, total = estimate(cfg, members, backend, n_devices)
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in b.items())
    return f"memory estimate ({n_devices} device(s), {members} member(s), {backend}): {parts}; peak {total / GIB:.2f} GiB"
