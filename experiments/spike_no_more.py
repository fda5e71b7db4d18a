"""Spike No More: embedding scale under small init in an LR sweep (Takase et al. 2023, arXiv 2312.16903; spec §7).

Claim to check (§7(d)): with Megatron-style small init (every weight N(0, 2/(5d)), Wo and W2 / sqrt(2L)) the
"Vanilla" model (std(x0) ≈ 0.02) shows gradient-norm and loss spikes at aggressive LRs; Scaled Embed (x sqrt(d),
std(x0) ≈ 0.63) and Embed LN (std(x0) = 1) show none and end at equal or better loss. Count spikes as loss > 1.2x
its 100-step EMA [D] from the runs' metrics.jsonl.

Recipe (`RECIPE`, the Vanilla baseline's stabilisers; every arm shares them; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init  | Adam ε |
  |--------|--------------|------|---------|--------------|-------|--------|
  | 0      | 0            | 1.0  | off     | 1000 steps   | small | 1e-8   |

  The init is the paper's condition 1 (`small`: N(0, 2/(5d)), Wo and W2 / sqrt(2L), Megatron style [R]); its
  models have no qk-norm or z-loss. Its optimizer recipe (Megatron defaults [R]) is not pinned down [U]: no weight
  decay [D], because decay on the embedding shrinks std(x0), the very quantity that separates the arms (Megatron's
  own "Spike No More" option excludes the embedding from decay [S]); clipping at 1 and warmup + cosine [D].

Presets (`get_config(arg)`; the config is Scaled Embed):
  tiny  CPU minutes: the base tiny model on `classics`, init=small, 300 steps.
  gpu   one H200: the 151M ladder shape (d=1024, 12 layers, 16 heads of 64; the paper's smallest is 350M [R]),
        init=small, no qk-layernorm (the paper's models have none), batch 256 x 512, 10k steps, warmup 1k; the LR
        grid reaches 2-4x the usual Megatron LR; 3 seeds per point. Memory (launch/memory.py): ~87 GiB a member,
        so every block is rematerialised (~46 GiB) and a group's 15 members (5 LRs x 3 seeds) train as programs
        of `train.max_members` = 2 (~92 GiB each).

Sweep: model.embed_scale in {none, scaled, layernorm} x the LR grid.

    python -m launch.sweep --config=experiments/spike_no_more.py:tiny --workdir=runs/spike_no_more_tiny
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

LRS = {"tiny": (3e-3, 1e-2, 3e-2, 1e-1), "gpu": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)}
EMBED_SCALES = ("none", "scaled", "layernorm")
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.clip": 1.0, "model.qk_norm": False,
    "optim.warmup_steps": 1000, "model.init": "small", "optim.eps": 1e-8,
}
BASELINE = {"model.embed_scale": "none"}  # the arm that RECIPE describes (Vanilla)


def get_config(arg: str | None = None):
    c = base.variant_study(arg or "tiny", gpu_size="151m")
    c.model.update(init="small", embed_scale="scaled")
    if arg == "gpu":
        c.model.remat = True
        c.train.max_members = 2
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = arg or "tiny"
    return product(**{"model.embed_scale": list(EMBED_SCALES)}, lr=LRS[preset], **seed_axis(preset))
