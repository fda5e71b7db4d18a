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
        Paper scale: 1.31B tokens a run (29 epochs of code11), 54 runs: not one session.
  gpu_slice  what one H200 session runs (docs/reproductions/sigma_reparam.md): the 2.4m ladder shape (d=256,
        3 layers, 4 heads of 64, vocab 32101), batch 64 x 512, 1000 steps after a 100-step warmup (the gpu
        preset's 10 %), the baseline and σReparam arms (the qk_norm reference arm is left out) x LR {3e-3, 1e-2,
        3e-2, 1e-1} (2.4m's best LR without qk-layernorm was 3e-3 on page 1; 1e-2 is the claim's 2-4x, 3e-2 and
        1e-1 reach past it) x 3 seeds = 24 trials: 2 groups of 12, as 4 programs of `train.max_members` = 6
        (~55 GiB each by launch/memory.py; 12 would be ~110 GiB). Diagnostics every 50 steps (20 points a run)
        on `train.diag_rows` = 16 rows; eval every 250 steps.
        Tokens: 1000 x 64 x 512 = 32.8M a run = 0.72 epochs of code11's 45.71M training tokens.
        Time (H200, bf16, cuDNN; a 2.4m step 10.1 ms, a member-step 1.05x, σReparam +0.3 %): a program of 6
        is 6 x 1000 x 10.6 ms = 64 s of steps + 20 diagnostic steps of ~3 member-steps (4 s) + ~55 s for the
        first program of a group (compiling the train, eval and diagnostic programs, evals, checkpoints) or
        ~25 s for the second (same shapes: the compilation cache hits), i.e. ~123 s + ~93 s = ~215 s a group,
        ~430 s = ~7.2 minutes for both (measured for calibration: page 1's 9-member 2.4m programs of 1000 steps
        took 120-158 s, the cache-hit one ~35 s less).
        Deviations beyond the gpu preset's: the 2.4m shape instead of 19m, 1000 steps of 64 x 512 instead of
        10k of 256 x 512 (warmup scaled alike), 4 LRs instead of 6 (1e-3 and 3e-1 dropped), no qk_norm arm.

Sweep: arm (baseline | sigma_reparam | qk_norm) x the LR grid. Diagnostics log attn_entropy/layer_i,
sigma/<module>, gamma/<module>, gamma_over_sigma/<module>.

    python -m launch.sweep --config=experiments/sigma_reparam.py:tiny --workdir=runs/sigma_reparam_tiny
    python3 -m launch.sweep --config=experiments/sigma_reparam.py:gpu_slice --workdir=/tmp/runs/sigma_reparam \
      --executor=batched --config.data.source=prepared --config.data.prepared_dir=/tmp/code11
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import GPU_SEEDS, product, seed_axis, seeds

PRESETS = ("tiny", "gpu", "gpu_slice")
LRS = {"tiny": (3e-3, 1e-2, 3e-2, 1e-1, 3e-1), "gpu": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
       "gpu_slice": (3e-3, 1e-2, 3e-2, 1e-1)}
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
PRESET_ARMS = {"tiny": tuple(ARMS), "gpu": tuple(ARMS), "gpu_slice": ("baseline", "sigma_reparam")}
SLICE_STEPS = 1000  # gpu_slice: steps of 64 x 512 tokens (warmup 10 % of them, as the gpu preset's 1000 of 10k)


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "gpu_slice":
        c = base.variant_study("gpu", gpu_size="2.4m")
        c.data.batch_size = 64
        c.optim.warmup_steps = SLICE_STEPS // 10
        c.train.update(steps=SLICE_STEPS, log_every=10, eval_every=250, eval_batches=16, diag_every=50,
                       diag_rows=16, ckpt_every=500, max_members=6)
    else:
        c = base.variant_study(preset, gpu_size="19m", tiny_diag_every=10)
        if preset == "gpu":
            c.train.max_members = 2
    c.model.update(sigma_reparam=True, sigma_reparam_gamma_init="sigma0", sigma_reparam_head=False, qk_norm=False)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    seed = seeds(GPU_SEEDS) if preset == "gpu_slice" else seed_axis(preset)
    return product(arm=[ARMS[a] for a in PRESET_ARMS[preset]], lr=LRS[preset], **seed)
