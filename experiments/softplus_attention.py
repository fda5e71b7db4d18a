"""LSSA / LSSAR (softplus attention with re-weighting) vs softmax (Gao & Spratling 2025, arXiv 2501.13428; spec §4).

Claims to check (§4(d) [S]): at the training length every variant ends within ~0.03 of softmax; past it the softmax
loss rises steeply while LSSAR with p = 15 stays nearly flat up to 8x the training length. The sweep trains the
arms over the LR grid; the length claim is then measured per finished trial with

    python -m launch.sweep --config=experiments/softplus_attention.py:tiny --workdir=runs/softplus_tiny
    python -m launch.eval_length --workdir=runs/softplus_tiny/trials/<trial> --lengths=64,128,256,512

Presets (`get_config(arg)`; the config is LSSAR p = 15):
  tiny  CPU minutes: the base tiny model at length 64 on `classics`, 300 steps.
  gpu   one H200: GPT-2-small shape with RoPE (d=768, 12 layers, 12 heads of 64) at length 1024, batch 128,
        10k steps, warmup 1k; queries chunked by 1024 so evaluation at 8K fits. No qk-layernorm (spec §9: it would
        stack with LSSA's L2 normalisation).

Sweep: arm (softmax | lssar p=15 | lssar p=3 | lssa = stage 1 only) x the LR grid; tiny: softmax and p=15 only.
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product

LRS = {"tiny": (1e-3, 3e-3, 1e-2, 3e-2), "gpu": (3e-4, 1e-3, 3e-3, 1e-2)}
ARMS = {
    "softmax": {"model.attention": "softmax"},
    "lssar_p15": {"model.attention": "softplus", "model.softplus.reweight": True, "model.softplus.power": 15},
    "lssar_p3": {"model.attention": "softplus", "model.softplus.reweight": True, "model.softplus.power": 3},
    "lssa": {"model.attention": "softplus", "model.softplus.reweight": False, "model.softplus.power": 15},
}
PRESET_ARMS = {"tiny": ("softmax", "lssar_p15"), "gpu": tuple(ARMS)}


def get_config(arg: str | None = None):
    preset = arg or "tiny"
    c = base.variant_study(preset, gpu_size="85m")
    if preset == "gpu":
        c.model.softplus.query_chunk = 1024
        c.data.update(seq_len=1024, batch_size=128)
    c.model.attention = "softplus"
    c.model.softplus.update(reweight=True, power=15)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = arg or "tiny"
    return product(arm=[ARMS[a] for a in PRESET_ARMS[preset]], lr=LRS[preset])
