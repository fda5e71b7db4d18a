"""LSSA / LSSAR (softplus attention with re-weighting) vs softmax (Gao & Spratling 2025, arXiv 2501.13428; spec §4).

Claims to check (§4(d) [S]): at the training length every variant ends within ~0.03 of softmax; past it the softmax
loss rises steeply while LSSAR with p = 15 stays nearly flat up to 8x the training length. The sweep trains the
arms over the LR grid; the length claim is then measured per finished trial with

    python -m launch.sweep --config=experiments/softplus_attention.py:tiny --workdir=runs/softplus_tiny
    python -m launch.eval_length --workdir=runs/softplus_tiny/trials/<trial> --lengths=64,128,256,512

Recipe (`RECIPE`, the softmax baseline's stabilisers; every arm shares them; tests/experiments/test_recipes.py):

  | z-loss | weight decay                        | clip | qk-norm | warmup (gpu) | init | Adam ε |
  |--------|-------------------------------------|------|---------|--------------|------|--------|
  | 0      | 0.1 coupled, tensors with ndim >= 2 | 1.0  | off     | 1000 steps   | gpt2 | 1e-8   |

  The paper leaves everything but the attention at GPT-2 defaults (§4(b) [S]): nanoGPT's GPT-2 recipe [R] is
  AdamW(0.9, 0.95, 1e-8) with coupled weight decay 0.1 on the matrices (the embedding included), clipping at 1,
  warmup + cosine and GPT-2's init (`model.init=gpt2`); no z-loss, and no qk-norm (spec §9: it would stack with
  LSSA's L2 normalisation).

Presets (`get_config(arg)`; the config is LSSAR p = 15):
  tiny  CPU minutes: the base tiny model at length 64 on `classics`, 300 steps.
  gpu   one H200: GPT-2-small shape with RoPE (d=768, 12 layers, 12 heads of 64) at length 1024, batch 128,
        10k steps, warmup 1k, 3 seeds per point; queries chunked by 1024 so evaluation at 8K fits. Memory
        (launch/memory.py; was ≈ 460 GiB a member by our estimate, ≈ 230 GiB by the issue's): LSSAR keeps ~5
        float32 [B, H, T, T] tensors per layer for its backward, so every block is rematerialised (one layer's
        at a time, ~100 GiB a member), each member trains as its own program (`train.max_members` = 1), and the
        diagnostics run forward-only on `train.diag_rows` = 32 rows. Batch and length are the study's.

Sweep: arm (softmax | lssar p=15 | lssar p=3 | lssa = stage 1 only) x the LR grid; tiny: softmax and p=15 only.
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

LRS = {"tiny": (1e-3, 3e-3, 1e-2, 3e-2), "gpu": (3e-4, 1e-3, 3e-3, 1e-2)}
ARMS = {
    "softmax": {"model.attention": "softmax"},
    "lssar_p15": {"model.attention": "softplus", "model.softplus.reweight": True, "model.softplus.power": 15},
    "lssar_p3": {"model.attention": "softplus", "model.softplus.reweight": True, "model.softplus.power": 3},
    "lssa": {"model.attention": "softplus", "model.softplus.reweight": False, "model.softplus.power": 15},
}
PRESET_ARMS = {"tiny": ("softmax", "lssar_p15"), "gpu": tuple(ARMS)}
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.1, "optim.independent_wd": False, "optim.decay_all": False,
    "optim.clip": 1.0, "model.qk_norm": False, "optim.warmup_steps": 1000, "model.init": "gpt2", "optim.eps": 1e-8,
}
BASELINE = ARMS["softmax"]  # the arm that RECIPE describes


def get_config(arg: str | None = None):
    preset = arg or "tiny"
    c = base.variant_study(preset, gpu_size="85m")
    if preset == "gpu":
        c.model.softplus.query_chunk = 1024
        c.data.update(seq_len=1024, batch_size=128)
        c.model.remat = True
        c.train.update(diag_rows=32, max_members=1)
    c.model.update(attention="softplus", init="gpt2")
    c.optim.update(weight_decay=0.1, independent_wd=False, decay_all=False)
    c.model.softplus.update(reweight=True, power=15)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = arg or "tiny"
    return product(arm=[ARMS[a] for a in PRESET_ARMS[preset]], lr=LRS[preset], **seed_axis(preset))
