"""SwiGLU and Smooth-SwiGLU under FP8 training (Fishman, Chmiel, Banner, Soudry, "Scaling FP8 training to
trillion-token LLMs", ICLR 2025, arXiv 2409.12517; spec model-variants §5).

Claim (§5(d)): with standard FP8 (delayed per-tensor scaling, SwiGLU, float32 moments) Llama-2-7B's loss diverges
after about 200B tokens, because over long training with weight decay some channels' w1_i and w2_i align, h_i turns
quadratic in x and sporadic outliers entering W3 overflow the delayed amax; Smooth-SwiGLU (a per-channel scale
before W3's quantisation, undone after) with FP8 moments follows the BF16 curve.

    python -m launch.sweep --config=experiments/fp8_smooth_swiglu.py:tiny --workdir=runs/fp8_tiny --executor=batched
    python -m launch.report runs/fp8_tiny --metric=swiglu_down_absmax/blocks/1/mlp --log_y    # max |h| into W3
    python -m launch.report runs/fp8_tiny --metric=swiglu_cos_abs_p999/blocks/1/mlp           # w1/w2 alignment
    python -m launch.report runs/fp8_tiny --metric=fp8_saturated/blocks/1/mlp/w3/x            # FP8 saturation

The sweep writes report/loss_over_steps.png (loss per arm) and summary.md; `launch.report` draws one metric per
call (`--metric`), each call adding its `<metric>_over_steps.png` to the same report (one panel per arm; the
GELU arm has no SwiGLU metric, the non-FP8 arms no fp8_* metric). Use blocks/2/mlp (the last block) for `gpu`.

Arms (`ARMS`): GELU BF16 (the reference), SwiGLU BF16, SwiGLU FP8, Smooth-SwiGLU FP8 (per-channel scale, the
paper's form; `--config.model.smooth_swiglu.mode=token` for the official code's per-token form). FP8 is the one
value `model.fp8.enabled=True` (E4M3 x and W, E5M2 gradients, delayed scaling from the previous step's amax, in
the MLP and attention projections as the official code; models/fp8.py). `--config.optim.fp8_moments=True` adds the
paper's FP8 Adam moments (optim/fp8_moments.py) to every arm; `--config.model.fp8.e4m3_max=240` replicates Gaudi2.

Presets (`get_config(arg)`):
  tiny  CPU: the base tiny model (d 64, 2 layers) computing in float32 (faster than bf16 on CPU; the "BF16" arms
        are then float32, and the FP8 arms' float32 inputs are rounded to E4M3/E5M2 exactly as bf16 ones would
        be), 200 steps of 16 x 64 on `classics`, diagnostics every 20 steps.
  gpu   one H200: the 9.4m ladder shape (d 512, 3 layers, 8 heads of 64, vocab 32101) in bf16, batch 64 x 512,
        700 steps after a 100-step warmup (23M tokens), diagnostics every 50 steps (14 points), 3 seeds per arm
        (each arm one batched program of 3 members). Estimate from the measured 16.5 ms BF16 step of one 9.4m run
        (FP8 ~1.2x; a member of a batched group ~1.05x): ~2.8 min of steps for the 4 x 3 members plus ~40 s
        compilation per arm, about 5.5 minutes for all arms (the measured time is on docs/reproductions/fp8_smooth_swiglu.md). Data:
        `classics` (2.7M tokens) would repeat 8.5 times; use a corpus of >= 16M tokens (`--config.data.source=prepared`;
        docs/reproductions/README.md describes the one we use).

What each preset can show. The paper's divergence appears after ~200B tokens at 7B; these runs see 0.2M (tiny) and
23M (gpu) tokens, 4 orders of magnitude fewer, so neither is expected to reproduce the FP8 divergence. Both can
show: FP8 (simulated on CPU, native on the H200) trains and tracks the non-FP8 loss; Smooth-SwiGLU computes
SwiGLU's function, so its loss tracks SwiGLU's; its W3 input amax is 1 (`fp8_amax/.../w3/x`) while plain
SwiGLU's follows max |h|; the saturated fractions stay ~0 while no tensor outgrows its delayed amax. The `gpu`
run can show the start of the mechanism (spec §5(d) "mechanism check"): whether max |h| and the tail of
|cos(w1_i, w2_i)| grow over training with weight decay 0.1, and whether any saturation appears; a positive
failure result needs a divergence that coincides with a max |h| jump in an aligned channel, far longer training
(or higher LR / weight decay), which this preset does not attempt.

Recipe (`RECIPE`, every arm; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init   | Adam ε |
  |--------|--------------|------|---------|--------------|--------|--------|
  | 0      | 0.1 coupled, matrices | 1 | off | 100 steps | fan_in | 1e-8 |

  The released 7B recipe (spec §5(b) [V-code]): AdamW β (0.9, 0.95), ε 1e-8, weight decay 0.1 (Megatron's AdamW:
  λ·lr, the decayed matrices), clip 1, RMSNorm, no z-loss, no qk-layernorm, warmup then cosine (to 0.1 x peak).
  Weight decay is part of the mechanism (ℓ2 regularisation drives the alignment), so it stays on.

Deviations: Llama-2-7B over 2T tokens -> 9.4M parameters over 23M tokens; LR 3e-3 (gpu) / 1e-2 (tiny), not 3e-4
(a small model's LR); warmup 100 steps, not 2000, and the cosine ends at optim.min_lr = 1e-5; E4M3 max 448 (H200)
rather than Gaudi2's 240; gradients rounded to nearest rather than stochastically (models/fp8.py); learned
untied embeddings and the fan_in init of the harness [D].
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

PRESETS = ("tiny", "gpu")
GPU_SIZE = "9.4m"
ARMS = {  # name -> overrides
    "gelu_bf16": {"model.mlp": "gelu", "model.fp8.enabled": False},
    "swiglu_bf16": {"model.mlp": "swiglu", "model.fp8.enabled": False},
    "swiglu_fp8": {"model.mlp": "swiglu", "model.fp8.enabled": True},
    "smooth_swiglu_fp8": {"model.mlp": "smooth_swiglu", "model.fp8.enabled": True},
}
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.1, "optim.independent_wd": False, "optim.decay_all": False,
    "optim.clip": 1.0, "model.qk_norm": False, "optim.warmup_steps": 100, "model.init": "fan_in", "optim.eps": 1e-8,
}
BASELINE = ARMS["gelu_bf16"]  # the arm that RECIPE describes (every arm shares it)


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "tiny":
        c = base.variant_study("tiny", GPU_SIZE, tiny_diag_every=20)
        c.optim.update(lr=1e-2, warmup_steps=20)
        c.train.update(steps=200, log_every=10, eval_every=100, ckpt_every=100, progress=False)
    else:
        c = base.variant_study("gpu", GPU_SIZE)
        c.data.batch_size = 64
        c.optim.update(lr=3e-3, warmup_steps=100)
        c.train.update(steps=700, log_every=10, eval_every=100, eval_batches=16, diag_every=50, ckpt_every=350)
    c.model.norm = "rmsnorm"
    c.loss.z_loss = 0.0
    c.optim.update(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, independent_wd=False, decay_all=False, clip=1.0)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    return product(arm=list(ARMS.values()), **seed_axis(preset))
