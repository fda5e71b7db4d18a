"""Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities", Figure 1.

The study: final eval loss against the peak learning rate, baseline vs qk-layernorm, z-loss on vs off, at several
model sizes, and the LR sensitivity of each curve (spec model-variants §6, optimizers-and-metrics §4).

    python -m launch.sweep --config=experiments/small_scale_proxies.py:tiny --workdir=runs/proxies --executor=batched
    python -m launch.report runs/proxies --metric=attn_max_logit/layer_0 --log_y   # the why: Figure 2

Presets (`get_config(arg)` is the base of every trial, `get_sweep(arg)` the trials):

  tiny       the README demo, CPU minutes: sizes d=32 and d=64 (2 layers, 2 heads), qk-layernorm {off, on} x
             z-loss {1e-4, 0} x LR {3e-3, 3e-2, 3e-1, 3}: 32 trials of 150 steps of 8 x 64 tokens on `classics`.
             Shows, qualitatively (Figs. 1-2): at LR 0.3 the baseline's layer-0 max attention logit grows to ~1e5
             and its loss ends far above qk-layernorm's, whose logits stay bounded. At LR 3 every arm ends near its
             initial loss (eval 5.8-5.9 against ℓ0 6.7 at d=32) and counts almost as ℓ0; whether it also turns
             NaN depends on float rounding: the members of a batched group did (before issue 15's `auto`), the
             standalone runs of `--executor=local` (what `auto` picks on CPU) do not.
  tiny_full  the same models on the paper's full 7-point grid {3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1}
             (56 trials, ~4 minutes on 2 CPU cores): qk-layernorm lowers the LR sensitivity at both sizes.
  gpu        for H200s with --executor=batched: the ladder sizes 2.4m, 9.4m, 19m of experiments/base.py
             (head dim 64, vocab 32101, seq 512) x qk-layernorm {off, on} x the 7-point grid, z-loss 1e-4 and
             independent weight decay 1e-4 on, 3 seeds per point: 126 trials, 18 programs of 7 members (6
             groups of 21 capped by train.max_members; programs of ~3x the pre-seed time). On a host with n
             GPUs run n copies with --shard=i/n and CUDA_VISIBLE_DEVICES=i (launch/sweep.py).
  gpu_2.4m, gpu_9.4m, gpu_19m
             one size's slice of `gpu` (the same base config, trials and trial ids), for a session that cannot run
             all of it; `launch.report DIR_A DIR_B ...` draws the slices together.
  gpu_timing the executor benchmark (benchmarks/sweep_executors.sh): the 9.4m model with qk-layernorm over the
             7-point grid for 300 steps, once with each executor.

Recipe (`RECIPE`, the baseline: qk-layernorm off, z-loss on; the sweep varies both; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init | Adam ε |
  |--------|--------------|------|---------|--------------|------|--------|
  | 1e-4   | 1e-4 independent, every tensor | 1.0 | off (swept) | 100 steps | fan_in | 1e-8 |

  The paper's own recipe (§6(b) [V-text]): z-loss 1e-4 and independent weight decay 1e-4 are part of it, and
  NanoDO decays every parameter (`optim.decay_all`; no exclusion list [V-code]). Warmup is the one deviation (5e3
  in the paper, see below). Before issue 10 only tensors with ndim >= 2 were decayed; the tiny figures quoted
  above were measured that way (a 1e-4 decay of the norm scales over 150 steps moves them by < 2%).
  The gpu preset runs 3 seeds per point, a group's 21 members (7 LRs x 3 seeds) as
  programs of `train.max_members` = 7 (~85 GiB at 19m by launch/memory.py).

Deviations from the paper (DESIGN: say which): C4 with the T5 vocabulary -> the embedded `classics` corpus (set
`--config.data.source=tfds` for C4); the gpu preset trains 1000 steps of 64 x 512 tokens with a 100-step warmup
instead of 1e5 steps of 256 x 512 with 5e3 (the paper found 5e4-2e5 steps and batch 256-1024 give similar LR
sensitivity; 1000 steps is far below that tested range, chosen so that the 42 trials fit one session of GPU time).
On classics (2.7M tokens) those 33M tokens are 12 epochs: the 2.4m-19m models memorise it and the eval loss then
rises with the LR for reasons unrelated to stability (seen on the H200, benchmarks/RESULTS.md). Use a corpus of
>= 30M tokens there; RESULTS.md records the one we used (`data.source=prepared`). The
CPU presets are far smaller still: d 32-64, 150 steps, a 50-step warmup, float32 matmuls (faster than bf16 on
CPU, and batched members then equal standalone runs to float tolerance). The `tiny` grid keeps 3e-3, 3e-2 and 3e-1
of the paper's and adds LR 3, beyond its range, so that the demo shows diverged points (LR 1 sits on the edge at
this size: whether it diverges or stalls changes with float rounding). Its LR sensitivity is therefore over
[3e-3, 3] and not comparable in value with the paper's over [3e-4, 3e-1]; `tiny_full` is.
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # spec optimizers-and-metrics §4(a)
TINY_WIDTHS = (32, 64)  # d_model; 2 layers, 2 heads
GPU_SIZES = ("2.4m", "9.4m", "19m")  # names in base.LADDER

SIZE_PRESETS = tuple(f"gpu_{n}" for n in GPU_SIZES)  # one size's slice of `gpu`: the same trials, configs and ids
PRESETS = ("tiny", "tiny_full", "gpu", *SIZE_PRESETS, "gpu_timing")
RECIPE = {
    "loss.z_loss": 1e-4, "optim.weight_decay": 1e-4, "optim.independent_wd": True, "optim.decay_all": True,
    "optim.clip": 1.0, "model.qk_norm": False, "optim.warmup_steps": 100, "model.init": "fan_in", "optim.eps": 1e-8,
}
BASELINE = {"model.qk_norm": False, "loss.z_loss": 1e-4}  # the arm that RECIPE describes


def _sizes(preset: str) -> list[dict]:
    if preset.startswith("tiny"):
        return [{"model.d_model": d} for d in TINY_WIDTHS]
    return [dict(zip(("model.d_model", "model.n_layers", "model.n_heads"), base.LADDER[n])) for n in GPU_SIZES]


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "gpu" or preset in SIZE_PRESETS:
        c = base.get_config(GPU_SIZES[0])
        c.data.batch_size = 64
        c.optim.update(warmup_steps=100, decay_all=True)
        c.train.update(steps=1000, log_every=50, eval_every=250, eval_batches=16, diag_every=100, ckpt_every=500,
                       max_members=7)
        return c
    if preset == "gpu_timing":
        c = base.get_config("9.4m")
        c.data.batch_size = 64
        c.optim.warmup_steps = 100
        c.train.update(steps=300, log_every=50, eval_every=300, eval_batches=16, ckpt_every=300)
        return c
    c = base.get_config("tiny")
    c.model.update(d_model=TINY_WIDTHS[0], n_layers=2, n_heads=2, dtype="float32")
    c.data.update(seq_len=64, batch_size=8)
    c.optim.update(warmup_steps=50, decay_all=True)
    c.train.update(
        steps=150, log_every=10, eval_every=150, eval_batches=8, diag_every=25, ckpt_every=50, progress=False
    )
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    lrs = (3e-3, 3e-2, 3e-1, 3.0) if preset == "tiny" else PAPER_LRS
    if preset == "gpu_timing":
        return product(lr=lrs)
    if preset in SIZE_PRESETS:
        size = dict(zip(("model.d_model", "model.n_layers", "model.n_heads"), base.LADDER[preset[len("gpu_"):]]))
        return [t for t in get_sweep("gpu") if all(t.get(k) == v for k, v in size.items())]
    z_losses = (1e-4,) if preset == "gpu" else (1e-4, 0.0)
    return product(
        size=_sizes(preset), **{"model.qk_norm": [False, True], "loss.z_loss": z_losses}, lr=lrs, **seed_axis(preset)
    )
