"""Spike No More: embedding scale under small init in an LR sweep (Takase et al. 2023, arXiv 2312.16903; spec §7).

Claim to check (§7(d)): with Megatron-style small init (every weight N(0, 2/(5d)), Wo and W2 / sqrt(2L)) the
"Vanilla" model (std(x0) ≈ 0.02) shows gradient-norm and loss spikes at aggressive LRs; Scaled Embed (x sqrt(d),
std(x0) ≈ 0.63) and Embed LN (std(x0) = 1) show none and end at equal or better loss. Count spikes as loss > 1.2x
its 100-step EMA [D] from the runs' metrics.jsonl.

Presets (`get_config(arg)`; the config is Scaled Embed):
  tiny  CPU minutes: the base tiny model on `classics`, init=small, 300 steps.
  gpu   one H200: the 151M ladder shape (d=1024, 12 layers, 16 heads of 64; the paper's smallest is 350M [R]),
        init=small, no qk-layernorm (the paper's models have none), batch 256 x 512, 10k steps, warmup 1k; the LR
        grid reaches 2-4x the usual Megatron LR.

Sweep: model.embed_scale in {none, scaled, layernorm} x the LR grid.

    python -m launch.sweep --config=experiments/spike_no_more.py:tiny --workdir=runs/spike_no_more_tiny
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product

LRS = {"tiny": (3e-3, 1e-2, 3e-2, 1e-1), "gpu": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)}
EMBED_SCALES = ("none", "scaled", "layernorm")


def get_config(arg: str | None = None):
    c = base.variant_study(arg or "tiny", gpu_size="151m")
    c.model.update(init="small", embed_scale="scaled")
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    return product(**{"model.embed_scale": list(EMBED_SCALES)}, lr=LRS[arg or "tiny"])
