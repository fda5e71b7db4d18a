"""σReparam vs the pre-LN baseline in an LR sweep (Zhai et al. 2023, arXiv 2303.06296; spec model-variants §3).

Claim to check (§3(d)): at 2-4x the best LR the baseline's per-layer mean attention entropy drops toward 0 in at
least one layer while the loss spikes or diverges; with σReparam on every block linear (γ0 = σ(W0) [D]) entropy
stays away from 0 and training does not diverge (a final loss equal to the tuned baseline is not the claim).
qk-layernorm runs beside them as the reference stabiliser; it is never stacked with σReparam (spec §9).

Presets (`get_config(arg)`; the config is the σReparam model):
  tiny  CPU minutes: the base tiny model on `classics`, 300 steps, diagnostics every 10 steps.
  gpu   one H200: the 19M ladder shape (d=512, 6 layers, 8 heads of 64), batch 256 x 512, 10k steps, warmup 1k.

Sweep: arm (baseline | sigma_reparam | qk_norm) x the LR grid. Diagnostics log attn_entropy/layer_i,
sigma/<module>, gamma/<module>, gamma_over_sigma/<module>.

    python -m launch.sweep --config=experiments/sigma_reparam.py:tiny --workdir=runs/sigma_reparam_tiny
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product

LRS = {"tiny": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1), "gpu": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)}
ARMS = {
    "baseline": {"model.sigma_reparam": False, "model.qk_norm": False},
    "sigma_reparam": {"model.sigma_reparam": True, "model.qk_norm": False},
    "qk_norm": {"model.sigma_reparam": False, "model.qk_norm": True},
}


def get_config(arg: str | None = None):
    c = base.variant_study(arg or "tiny", gpu_size="19m", tiny_diag_every=10)
    c.model.update(sigma_reparam=True, sigma_reparam_gamma_init="sigma0", sigma_reparam_head=False, qk_norm=False)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    return product(arm=list(ARMS.values()), lr=LRS[arg or "tiny"])
