"""LS-attention vs MHSA in an LR sweep (Hajra 2025, arXiv 2505.15548; spec model-variants §1).

Claim to check (§1(d) [S]): at long sequence length and high LR, MHSA's max pre-softmax logit grows ("logit
explosion") and training destabilises; LS-attention (one global head, the rest local with a window of w keys)
keeps the max logit bounded and trains smoothly. Same parameters as MHSA; only the per-head mask differs.

Recipe (`RECIPE`, the MHSA baseline's stabilisers; both arms share it; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init | Adam ε |
  |--------|--------------|------|---------|--------------|------|--------|
  | 0      | 0            | 1.0  | off     | 1000 steps   | gpt2 | 1e-8   |

  qk-norm and z-loss are among the stabilisers the paper compares LS-attention against (§1(b) [S]), so neither
  arm has them; the decoder is GPT-2 style [S], hence GPT-2's init (N(0, 0.02²), output projections / sqrt(2L));
  weight decay, clipping, LR and schedule are not reported [U]: no decay [D] (nothing that shrinks the logits the
  study measures), global-norm clipping at 1 and warmup + cosine as the harness [D].

Presets (`get_config(arg)`; the config is the LS model, the sweep puts MHSA beside it):
  tiny  CPU minutes: d=64, 2 layers, 4 heads (1 global + 3 local, window 16 keys) at sequence length 256 on the
        embedded `classics` data, 300 steps.
  gpu   one H200: GPT-2-small shape (d=768, 12 layers, 12 heads of 64: 1 global + 11 local, window 100 [S]) at
        length 4096 (§1(b): T 4-8K, [U] -> [D]), batch 32 x 4096 = 131k tokens, 10k steps, warmup 1k, 3 seeds
        per point. Memory (launch/memory.py; was ≳ 500 GiB): the diagnostics' explicit float32 [B, H, T, T]
        attention runs forward-only on `train.diag_rows` = 4 rows (the gradient RMS still comes from the whole
        batch through the fused kernel), every block is rematerialised, and a group's 18 members (6 LRs x 3
        seeds) train as programs of `train.max_members` = 2, ~84 GiB each. What the study measures (the max
        logit per layer and head group at T = 4096, the loss over the LR grid) is unchanged.

Sweep: model.attention in {softmax, ls} x the LR grid. Diagnostics (train.diag_every) log attn_max_logit/layer_i
for both arms and attn_max_logit_{global,local}/layer_i for ls.

    python -m launch.sweep --config=experiments/ls_attention.py:tiny --workdir=runs/ls_attention_tiny
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

LRS = {"tiny": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "gpu": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.clip": 1.0, "model.qk_norm": False,
    "optim.warmup_steps": 1000, "model.init": "gpt2", "optim.eps": 1e-8,
}
BASELINE = {"model.attention": "softmax"}  # the arm that RECIPE describes


def get_config(arg: str | None = None):
    preset = arg or "tiny"
    c = base.variant_study(preset, gpu_size="85m")
    if preset == "tiny":
        c.model.n_heads = 4
        c.model.ls.update(n_global=1, window=16)
        c.data.update(seq_len=256, batch_size=8)
    else:
        c.model.ls.update(n_global=1, window=100)
        c.data.update(seq_len=4096, batch_size=32)
        c.model.remat = True
        c.train.update(diag_rows=4, max_members=2)
    c.model.update(attention="ls", init="gpt2")
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = arg or "tiny"
    return product(**{"model.attention": ["softmax", "ls"]}, lr=LRS[preset], **seed_axis(preset))
