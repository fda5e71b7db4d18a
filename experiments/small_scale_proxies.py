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
  gpu_<size>_<arm>  (`SLICES`) one size's and one qk-layernorm arm's slice of `gpu`, one or two device calls each:
             gpu_2.4m_baseline, gpu_2.4m_qk_norm, gpu_9.4m_baseline, gpu_9.4m_qk_norm, gpu_19m_baseline,
             gpu_19m_qk_norm (baseline: qk-layernorm off, RECIPE; qk_norm: on). Each is 21 trials (7 LRs x 3 seeds),
             one program group cut into 3 programs of 7: the very programs `gpu` trains, with the same base config,
             trials and trial ids (tests/experiments/test_gpu_slices.py), so all six run into one directory:
                 BUDGET=560 bash benchmarks/h200_queue.sh small_scale_proxies:gpu_2.4m_baseline@proxies_code11
             (then gpu_2.4m_qk_norm, gpu_9.4m_baseline, ...); experiments/results/sweeps/proxies_code11 comes back
             as proxies_code11.tgz and `launch.report` draws it whole (docs/reproductions/small_scale_proxies.md).
             Time per slice, H200, bf16, with the +15 % session 12 measured (spike_no_more's gpu_slice: 474 s
             against 402 s):
               2.4m  measured: a 7-member program is 125-135 s with compilation (session 9: 795 s for the 42 trials,
                     6 programs, 132.5 s each): 3 x 132.5 = 398 s (375-405), x 1.15 = ~457 s (431-466), 7.6
                     minutes: one call.
               9.4m  estimate: the single-member step is 16.5 ms at 64 x 512, a member-step in a batched group
                     1.05x = 17.3 ms; a program is 7 x 1000 x 17.3 ms = 121 s of steps + ~55 s of compilation,
                     evals and checkpoints = 176 s; 3 x 176 = 529 s, x 1.15 = ~608 s (10.1 minutes): over a
                     560-s call by the margin, so count on two calls in one session.
               19m   estimate from FLOPs, not measured: launch/flops.py's training FLOPs per token (launch.plan
                     `config_flops_per_token`) are 221.3M at 19m (LADDER (512, 6, 8)) against 160.0M at 9.4m
                     ((512, 3, 8)), 1.38x, so a member-step ~1.38 x 17.3 = 24.0 ms; a program 7 x 1000 x 24.0 ms =
                     168 s + ~55 s (9.4m's; compilation grows with the depth, the least certain part) = 223 s;
                     3 x 223 = 668 s, x 1.15 = ~769 s (12.8 minutes): two calls in one session.
             A slice cut off at BUDGET resumes in the next call on the same warm machine (/tmp/runs stays) from
             its program's last checkpoint (train.ckpt_every 500): the second call redoes at most 500 steps (~70 s
             at 9.4m, ~96 s at 19m with the margin) and ~55 s of compilation besides the rest (9.4m: ~50 s, 19m:
             ~210 s). On a fresh machine finished programs are skipped (results.jsonl) and the cut-off one starts
             again from step 0 (checkpoints do not come back in the .tgz).
  gpu_2.4m, gpu_9.4m, gpu_19m
             one size's slice of `gpu` (`SIZE_PRESETS`): its two arm slices, baseline then qk_norm (42 trials, 6
             programs, the same base config and ids; session 9 ran gpu_2.4m). Two calls or more each by the
             estimates above: ~914 s (2.4m), ~1216 s (9.4m), ~1537 s (19m); `gpu` whole ~3668 s (61 minutes).
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
from experiments.sweeps import product, seed_axis, slice_presets, slice_trials

PAPER_LRS = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # spec optimizers-and-metrics §4(a)
TINY_WIDTHS = (32, 64)  # d_model; 2 layers, 2 heads
GPU_SIZES = ("2.4m", "9.4m", "19m")  # names in base.LADDER

ARMS = {"baseline": False, "qk_norm": True}  # slice label -> model.qk_norm
SLICES = slice_presets(f"{n}_{arm}" for n in GPU_SIZES for arm in ARMS)  # gpu_<size>_<arm>: partition `gpu`
SIZE_PRESETS = tuple(f"gpu_{n}" for n in GPU_SIZES)  # one size's slice of `gpu`: its two arm slices
PRESETS = ("tiny", "tiny_full", "gpu", *SLICES, *SIZE_PRESETS, "gpu_timing")
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
    if preset == "gpu" or preset in SLICES or preset in SIZE_PRESETS:
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
        return [t for s in SLICES if s.startswith(f"{preset}_") for t in get_sweep(s)]
    if preset == "gpu" or preset in SLICES:
        return slice_trials(preset, _gpu_trials())
    return product(
        size=_sizes(preset), **{"model.qk_norm": [False, True], "loss.z_loss": (1e-4, 0.0)}, lr=lrs,
        **seed_axis(preset)
    )


def _gpu_trials() -> list[tuple[str, dict]]:
    """(slice label `<size>_<arm>`, trial) in the gpu sweep's order: size x qk-layernorm x LR x seed, the size
    varying slowest (z-loss fixed at 1e-4)."""
    return [(f"{n}_{arm}", trial) for n, size in zip(GPU_SIZES, _sizes("gpu")) for arm, qk in ARMS.items()
            for trial in product(size=[size], **{"model.qk_norm": [qk], "loss.z_loss": [1e-4]}, lr=PAPER_LRS,
                                 **seed_axis("gpu"))]
