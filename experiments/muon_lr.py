"""Muon vs AdamW: is Muon's final loss less sensitive to the learning rate? (issue 16; Jordan et al. 2024,
"Muon: an optimizer for hidden layers"; Liu et al. 2025, "Muon is scalable for LLM training").

The study: the same model and data under `optim.name=adamw` and `optim.name=muon` over one LR grid, and the LR
sensitivity of each curve (Wortsman et al. 2023 §2, `launch.report`). Muon orthogonalises the momentum of every
block matrix by Newton–Schulz iterations and, with `optim.muon.rms_scale=0.2` (Liu et al.), scales the update to
AdamW's RMS, so one `optim.lr` axis is shared: the embedding, head and vectors stay on Adam at the same LR
(`optim.muon.adam_lr_ratio=1`). Claims to check: Liu et al. report that with the RMS matching Muon's optimal LR
sits near AdamW's and that Muon reaches a lower loss at equal compute [R]; whether its loss-vs-LR curve is flatter
is what this sweep measures (no paper number to compare with).

    python -m launch.sweep --config=experiments/muon_lr.py:tiny --workdir=runs/muon_lr
    python -m launch.report runs/muon_lr

Presets:
  tiny  CPU minutes: the base tiny model (d 64, 2 layers) in float32, 200 steps of 16 x 64 on `classics`,
        LR {1e-3, 3e-3, 1e-2, 3e-2, 1e-1} x {adamw, muon}: 10 trials, one seed.
  gpu   one H200: the 9.4m ladder shape, batch 64 x 512, 1000 steps after a 100-step warmup (32.8M tokens: 0.72
        epochs of the code11 corpus, `--config.data.source=prepared`), the paper grid of Wortsman et al.
        {3e-4 ... 3e-1} x {adamw, muon} x 3 seeds: 42 trials, 6 programs of 7 members (~130 s each at 2.4m, more at
        9.4m; not yet run).

Recipe (`RECIPE`, both arms; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init   | Adam ε |
  |--------|--------------|------|---------|--------------|--------|--------|
  | 1e-4   | 1e-4 independent | 1.0 | off  | 100 steps    | fan_in | 1e-8   |

  Wortsman et al.'s proxy recipe without qk-layernorm (the intervention whose absence makes AdamW LR-sensitive),
  so that what Muon changes is visible; the arms differ in `optim.name` alone.
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

PRESETS = ("tiny", "gpu")
PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
TINY_LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
RECIPE = {
    "loss.z_loss": 1e-4, "optim.weight_decay": 1e-4, "optim.independent_wd": True, "optim.clip": 1.0,
    "model.qk_norm": False, "optim.warmup_steps": 100, "model.init": "fan_in", "optim.eps": 1e-8,
}
BASELINE = {"optim.name": "adamw"}


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "gpu":
        c = base.get_config("9.4m")
        c.data.batch_size = 64
        c.train.update(steps=1000, log_every=50, eval_every=250, eval_batches=16, diag_every=100, ckpt_every=500,
                       max_members=7)
    else:
        c = base.get_config("tiny")
        c.model.dtype = "float32"
        c.data.update(seq_len=64, batch_size=16)
        c.train.update(steps=200, log_every=10, eval_every=200, eval_batches=8, ckpt_every=100, progress=False)
    c.model.update(qk_norm=False, init="fan_in")
    c.loss.z_loss = 1e-4
    c.optim.update(weight_decay=1e-4, independent_wd=True, clip=1.0, eps=1e-8,
                   warmup_steps=100 if preset == "gpu" else 20)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    lrs = PAPER_LRS if preset == "gpu" else TINY_LRS
    return product(**{"optim.name": ["adamw", "muon"]}, lr=lrs, **seed_axis(preset))
