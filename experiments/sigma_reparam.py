"""σReparam vs the pre-LN baseline in an LR sweep (Zhai et al. 2023, arXiv 2303.06296; spec model-variants §3).

Claim to check (§3(d)): at 2-4x the best LR the baseline's per-layer mean attention entropy drops toward 0 in at
least one layer while the loss spikes or diverges; with σReparam on every block linear (γ0 = σ(W0) [D]) entropy
stays away from 0 and training does not diverge (a final loss equal to the tuned baseline is not the claim).
qk-layernorm runs beside them as the reference stabiliser; it is never stacked with σReparam (spec §9).

Recipe (`RECIPE`, the baseline's stabilisers; the σReparam arm shares them, the qk_norm arm adds qk-layernorm;
tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init   | Adam ε |
  |--------|--------------|------|---------|--------------|--------|--------|
  | 0      | 0            | 1.0  | off     | 1000 steps   | fan_in | 1e-8   |

  The paper's LM recipe is not reachable [U]; its claim is training without warmup, weight decay or adaptive
  optimizers, and z-loss is not part of it, so the harness keeps only AdamW, clipping at 1 and warmup + cosine
  [D], and no weight decay or z-loss (both would damp the logit growth behind the entropy collapse it measures).
  The official LM init is unreachable too; fan_in as the harness [D].

Presets (`get_config(arg)`; the config is the σReparam model):
  tiny  CPU minutes: the base tiny model on `classics`, 300 steps, diagnostics every 10 steps.
  gpu   one H200: the 19M ladder shape (d=512, 6 layers, 8 heads of 64), batch 256 x 512, 10k steps, warmup 1k,
        3 seeds per point. Memory (launch/memory.py): ~46 GiB a member (the [B, T, V] logits and their gradient
        are 2/3 of it), so a group's 18 members (6 LRs x 3 seeds) train as programs of `train.max_members` = 2.

Sweep: arm (baseline | sigma_reparam | qk_norm) x the LR grid. Diagnostics log attn_entropy/layer_i,
sigma/<module>, gamma/<module>, gamma_over_sigma/<module>.

    python -m launch.sweep --config=experiments/sigma_reparam.py:tiny --workdir=runs/sigma_reparam_tiny
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

LRS = {"tiny": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1), "gpu": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)}
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.clip": 1.0, "model.qk_norm": False,
    "optim.warmup_steps": 1000, "model.init": "fan_in", "optim.eps": 1e-8,
}
BASELINE = {"model.sigma_reparam": False, "model.qk_norm": False}  # the arm that RECIPE describes
ARMS = {
    "baseline": {"model.sigma_reparam": False, "model.qk_norm": False},
    "sigma_reparam": {"model.sigma_reparam": True, "model.qk_norm": False},
    "qk_norm": {"model.sigma_reparam": False, "model.qk_norm": True},
}


def get_config(arg: str | None = None):
    c = base.variant_study(arg or "tiny", gpu_size="19m", tiny_diag_every=10)
    c.model.update(sigma_reparam=True, sigma_reparam_gamma_init="sigma0", sigma_reparam_head=False, qk_norm=False)
    if arg == "gpu":
        c.train.max_members = 2
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = arg or "tiny"
    return product(arm=list(ARMS.values()), lr=LRS[preset], **seed_axis(preset))
