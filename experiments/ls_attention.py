"""LS-attention vs MHSA in an LR sweep (Hajra 2025, arXiv 2505.15548; spec model-variants §1).

Claim to check (§1(d) [S]): at long sequence length and high LR, MHSA's max pre-softmax logit grows ("logit
explosion") and training destabilises; LS-attention (one global head, the rest local with a window of w keys)
keeps the max logit bounded and trains smoothly. Same parameters as MHSA; only the per-head mask differs.

Presets (`get_config(arg)`; the config is the LS model, the sweep puts MHSA beside it):
  tiny  CPU minutes: d=64, 2 layers, 4 heads (1 global + 3 local, window 16 keys) at sequence length 256 on the
        embedded `classics` data, 300 steps.
  gpu   one H200: GPT-2-small shape (d=768, 12 layers, 12 heads of 64: 1 global + 11 local, window 100 [S]) at
        length 4096 (§1(b): T 4-8K, [U] -> [D]), batch 32 x 4096 = 131k tokens, 10k steps, warmup 1k. No
        qk-layernorm: it is one of the competing stabilisers, not part of either arm.

Sweep: model.attention in {softmax, ls} x the LR grid. Diagnostics (train.diag_every) log attn_max_logit/layer_i
for both arms and attn_max_logit_{global,local}/layer_i for ls.

    python -m launch.sweep --config=experiments/ls_attention.py:tiny --workdir=runs/ls_attention_tiny
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product

LRS = {"tiny": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "gpu": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}


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
    c.model.attention = "ls"
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    return product(**{"model.attention": ["softmax", "ls"]}, lr=LRS[arg or "tiny"])
