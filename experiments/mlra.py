"""TEV depth study: MLRA vs pre-LN baselines over depth and LR (Chung et al. 2024, arXiv 2409.07787; spec §2).

Claim to check (§2(d) [R]): at fixed width, as depth grows the baseline's token-embedding variability (tev_mu,
tev_sigma) rises together with loss spikes; MLRA (low-rank Wq, Wk, Wv) keeps TEV lower and ends at a lower loss,
and the gap widens with depth. The paper's other baselines, Scaled Embed and Embed LN (Spike No More), are arms
too. MLRA's parameterisation (per-head factors, rank Dh/2, N(0, 0.02²) factors) is our [D] reading of an
unreachable text [U].

Recipe (`RECIPE`, the vanilla baseline's stabilisers; every arm shares them; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init | Adam ε |
  |--------|--------------|------|---------|--------------|------|--------|
  | 0      | 0            | 1.0  | off     | 1000 steps   | gpt2 | 1e-8   |

  The models are GPT-2 pre-LN with GPT-2's init N(0, 0.02²) [R] (`model.init=gpt2`; the MLRA factors keep their
  own N(0, 0.02²), `model.mlra.init_std`). The optimizer recipe is not reachable [U]: no weight decay [D], because
  decay on the embedding lowers TEV, the quantity the study compares; no z-loss or qk-norm (not in the paper, and
  both bound the growth that precedes the spikes); clipping at 1 and warmup + cosine as the harness [D].

Presets (`get_config(arg)`; the config is the MLRA model at the first depth):
  tiny  CPU minutes: d=64, 2 heads, depths 2 / 4 / 8 on `classics`, 300 steps.
  gpu   one H200: GPT-2-small width (d=768, 12 heads of 64), depths 12 / 24 / 48 [R], length 1024, batch 128,
        10k steps, warmup 1k, 3 seeds per point. Memory (launch/memory.py): at depth 48 one member's activations
        are ~190 GiB, so every block is rematerialised (~52 GiB a member) and a group's 12 members (4 LRs x 3
        seeds) train as programs of `train.max_members` = 2 (~105 GiB each).

Sweep: arm (vanilla | mlra | scaled_embed | embed_ln) x model.n_layers x the LR grid. Diagnostics log tev_mu,
tev_sigma (all rows) and tev_batch_mu, tev_batch_sigma (rows of the batch's tokens) every train.diag_every steps.

    python -m launch.sweep --config=experiments/mlra.py:tiny --workdir=runs/mlra_tiny
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

DEPTHS = {"tiny": (2, 4, 8), "gpu": (12, 24, 48)}
LRS = {"tiny": (3e-3, 1e-2, 3e-2), "gpu": (3e-4, 1e-3, 3e-3, 1e-2)}
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.clip": 1.0, "model.qk_norm": False,
    "optim.warmup_steps": 1000, "model.init": "gpt2", "optim.eps": 1e-8,
}
BASELINE = {"model.attention": "softmax", "model.embed_scale": "none"}  # the arm that RECIPE describes (vanilla)
ARMS = {
    "vanilla": {"model.attention": "softmax", "model.embed_scale": "none"},
    "mlra": {"model.attention": "mlra", "model.embed_scale": "none"},
    "scaled_embed": {"model.attention": "softmax", "model.embed_scale": "scaled"},
    "embed_ln": {"model.attention": "softmax", "model.embed_scale": "layernorm"},
}


def get_config(arg: str | None = None):
    preset = arg or "tiny"
    c = base.variant_study(preset, gpu_size="85m")
    if preset == "gpu":
        c.data.update(seq_len=1024, batch_size=128)
        c.model.remat = True
        c.train.max_members = 2
    c.model.update(attention="mlra", n_layers=DEPTHS[preset][0], init="gpt2")
    c.model.mlra.update(rank=0, shared_latent=False, init_std=0.02)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = arg or "tiny"
    return product(arm=list(ARMS.values()), **{"model.n_layers": DEPTHS[preset]}, lr=LRS[preset], **seed_axis(preset))
