"""The other interventions of Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities" (§3.4-§3.5, Figs. 5-8, 11-13; spec model-variants §6(d) items 5-6, optimizers-and-metrics §4(c)
items 4-5): independent vs coupled weight decay, warmup length, AdamW ε vs the gradient RMS, and μParam's LR
transfer across widths. Each arm is an LR sweep over the paper's 7-point grid, scored by LR sensitivity (page 1).

Claims:
  - independent weight decay 1e-4 gives a lower LR sensitivity than coupled 0.1 (Figs. 5-8; with coupled decay an
    LR sweep also sweeps the effective decay lr·λ; the two coincide at LR 1e-3) [V-text];
  - a longer warmup lowers LR sensitivity, most for the largest models [V-text];
  - μParam (simple: every matrix's LR x base_width / d_model, base width 256) stabilises the optimal LR across
    widths but reduces neither the loss nor the LR sensitivity [V-text];
  - the gradient RMS of the first MLP layer falls with scale and LR toward ε = 1e-8, and the update RMS then
    collapses; ε = 1e-15 removes the attenuation (Figs. 11-13: at 4.8B, LR 0.3) [V-text]. The diagnostics log
    grad_rms/<param> and adam_attenuation/<param> (launch/step.py) on diagnostic steps for every arm.

    python -m launch.sweep --config=experiments/proxy_ablations.py:tiny --workdir=runs/ablations --executor=batched
    python -m launch.report runs/ablations --metric=grad_rms/blocks/0/mlp/fc1/kernel --log_y

Arms (`ARMS`; each changes one thing against the baseline, page 1's qk-layernorm arm):
  baseline      page 1's recipe with qk-layernorm: independent decay 1e-4, warmup WARMUP, ε 1e-8
  coupled_wd    coupled AdamW decay 0.1 (optim.independent_wd = False)
  short_warmup  warmup SHORT_WARMUP steps instead of WARMUP (1 % of the gpu run vs 10 %)
  eps_1e-15     Adam ε 1e-15
  mup           model.mup = True at a width MUP_WIDTH_FACTOR x the base width; the baseline at the base width is
                μParam's base (at d_model = mup_base_width the two are the same model), and `baseline_wide` is
                the baseline at the wide width: the transfer claim compares the three curves' best LRs.

Presets (`get_config(arg)`):
  tiny  CPU: d 64 (the base width; μParam arms at d 128 with mup_base_width 64), 2 layers, 2 heads, float32,
        300 steps of 8 x 64 on `classics` after a 100-step warmup (the same WARMUP as gpu, so one BASELINE
        describes both presets), LR {3e-3, 3e-2, 3e-1}, diagnostics every 50 steps: 18 trials, ~5 minutes on 2
        CPU cores (4 batched programs). Measured (1 seed; docs/reproductions/proxy_ablations.md): μParam keeps the
        best LR at 3e-2 from d 64 to d 128 while the baseline's moves to 3e-3; the grad RMS of blocks/0/mlp/fc1
        falls with LR and width (1.5e-5 at LR 0.3, d 64; 3.2e-6 at d 128) and ε 1e-8's attenuation with it (0.998,
        0.994), which ε 1e-15 removes; the short warmup is worse at every LR; coupled vs independent decay differ
        by noise (LR sensitivity 0.166 vs 0.187).
  gpu   the whole study on one H200: the 2.4m ladder shape (d 256, the paper's μParam base width) for
        baseline / coupled_wd / short_warmup / eps_1e-15 and 9.4m (d 512) for mup / baseline_wide, each x the
        7-point grid x 3 seeds: 126 trials, batch 64 x 512, 1000 steps (0.72 epochs of the 45.7M-token code11
        training split, docs/reproductions/README.md), programs of `train.max_members` = 7. Estimated from page 1's measurements
        (125-135 s per 7-member 2.4m program; ~18 minutes for 42 trials at 9.4m): ~45 minutes of H200 in all.
  gpu_<arm>  one arm's slice of `gpu` (same base config, trials and ids), each <= 10 minutes on one H200 by the
        same estimate (3 programs): gpu_baseline (= page 1's qk-layernorm arm at 2.4m; its rows in
        experiments/results/sweeps/proxies_2.4m_code9 are on the older code9 corpus, so a comparison on code11
        runs it again), gpu_coupled_wd,
        gpu_short_warmup, gpu_eps_1e-15, gpu_mup, gpu_baseline_wide (= page 1's 9.4m qk-layernorm arm).
        The smallest informative pair is gpu_baseline + gpu_coupled_wd: claim 1 at 3 seeds.
        They share the base config, so all run into one directory, one queue call each:
            BUDGET=560 bash benchmarks/h200_queue.sh proxy_ablations:gpu_baseline@proxy_ablations_code11
        (then gpu_coupled_wd, ...); experiments/results/sweeps/proxy_ablations_code11 comes back as
        proxy_ablations_code11.tgz and `launch.report` draws it whole (docs/reproductions/proxy_ablations.md).

Recipe (`RECIPE`, the baseline; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init | Adam ε |
  |--------|--------------|------|---------|--------------|------|--------|
  | 1e-4   | 1e-4 independent, every tensor | 1.0 | on | 100 steps | fan_in | 1e-8 |

  Page 1's recipe (the paper's, spec §6(b)) with qk-layernorm on: the paper studies these interventions with
  qk-layernorm (its default "in most sections"), so that attention-logit growth does not dominate the LR
  sensitivity they are meant to change.

Deviations: as page 1 (1000 steps of 64 x 512 after a 100-step warmup instead of 1e5 of 256 x 512 after 5e3; the
code11 corpus, not C4). The paper's warmup lengths are unresolved (spec: sweep {1e3, 5e3, 1e4} of 1e5 steps); ours
compare 1 % with 10 % of the run. The ε claim is about 1.2B-4.8B models; at 2.4m the gradient RMS is far above
1e-15 and 1e-8 alike, so the ε arm measures the attenuation trend (grad_rms per width and LR), not the loss gain.
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis, slice_presets, slice_trials

PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # spec optimizers-and-metrics §4(a)
TINY_LRS = (3e-3, 3e-2, 3e-1)
WARMUP = 100  # baseline warmup steps, both presets
SHORT_WARMUP = 10
MUP_WIDTH_FACTOR = 2  # the μParam arms' width over the base width
GPU_SIZES = ("2.4m", "9.4m")  # base width 256, wide width 512 (base.LADDER)
ARMS = {  # name -> overrides (besides the size); every arm changes one thing against `baseline`
    "baseline": {},
    "coupled_wd": {"optim.weight_decay": 0.1, "optim.independent_wd": False},
    "short_warmup": {"optim.warmup_steps": SHORT_WARMUP},
    "eps_1e-15": {"optim.eps": 1e-15},
    "mup": {"model.mup": True},
    "baseline_wide": {},
}
WIDE_ARMS = ("mup", "baseline_wide")  # trained at the wide width
SLICES = slice_presets(ARMS)
PRESETS = ("tiny", "gpu", *SLICES)
RECIPE = {
    "loss.z_loss": 1e-4, "optim.weight_decay": 1e-4, "optim.independent_wd": True, "optim.decay_all": True,
    "optim.clip": 1.0, "model.qk_norm": True, "optim.warmup_steps": WARMUP, "model.init": "fan_in", "optim.eps": 1e-8,
}
BASELINE = {"optim.weight_decay": 1e-4, "optim.independent_wd": True, "optim.warmup_steps": WARMUP,
            "optim.eps": 1e-8, "model.mup": False}  # the baseline and baseline_wide trials


def _size(preset: str, wide: bool) -> dict:
    if preset == "tiny":
        return {"model.d_model": 64 * (MUP_WIDTH_FACTOR if wide else 1)}
    return dict(zip(("model.d_model", "model.n_layers", "model.n_heads"), base.LADDER[GPU_SIZES[int(wide)]]))


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "tiny":
        c = base.get_config("tiny")
        c.model.update(d_model=64, n_layers=2, n_heads=2, dtype="float32", mup_base_width=64)
        c.data.update(seq_len=64, batch_size=8)
        c.train.update(steps=300, log_every=10, eval_every=150, eval_batches=8, diag_every=50, ckpt_every=0,
                       progress=False)
    else:
        c = base.get_config(GPU_SIZES[0])
        c.data.batch_size = 64
        c.train.update(steps=1000, log_every=50, eval_every=250, eval_batches=16, diag_every=100, ckpt_every=500,
                       max_members=7)
    c.model.update(qk_norm=True, mup=False)
    c.loss.z_loss = 1e-4
    c.optim.update(weight_decay=1e-4, independent_wd=True, decay_all=True, clip=1.0, eps=1e-8, warmup_steps=WARMUP)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    if preset == "tiny":
        return [t for _, t in _trials(preset)]
    return slice_trials(preset, _trials("gpu"))


def _trials(preset: str) -> list[tuple[str, dict]]:
    lrs = TINY_LRS if preset == "tiny" else PAPER_LRS
    return [(name, trial) for name, overrides in ARMS.items()
            for trial in product(arm=[{**_size(preset, name in WIDE_ARMS), **overrides}], lr=lrs, **seed_axis(preset))]
