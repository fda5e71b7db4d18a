"""Kunstner, Yadav, Milligan, Schmidt & Bietti 2024, "Heavy-Tailed Class Imbalance and Why Adam Outperforms
Gradient Descent on Language Models" (NeurIPS 2024, arXiv 2402.19449; spec optimizers-and-metrics §5), Fig. 1.

The study: Adam against SGD with momentum 0.9 (`optim.name=sgd`, optim/sgd.py), the eval loss tracked per
equal-mass frequency group of the target tokens (`train.freq_buckets`: 10 groups of ~10% of the training targets
each, and 10 rank deciles). The paper's claim (§5(c)): SGD makes almost no progress on the rare groups, whose loss
stays near its initial value (≈ ln V), while Adam lowers the loss of every group, the rarest included; the gap in
the overall loss comes mostly from the rare groups. Each optimizer is one batched program over its LRs.

    python -m launch.sweep --config=experiments/class_imbalance.py:tiny --workdir=runs/imbalance --executor=batched

The report (launch/report/buckets.py) draws report/bucket_loss_over_steps.png in Fig. 1's layout (the overall eval
loss of every trial, then one panel per trial with one line per group, ln V dotted), buckets_vs_name+lr.png (final
loss per group for each optimizer and LR) and the per-group table in summary.md.

The recipe follows the official code (§5(b)): torch.optim.Adam(0.9, 0.999, ε 1e-8) = adamw with λ = 0 here, and
torch.optim.SGD(momentum=0.9) with neither dampening nor weight decay; constant LR, no warmup, no gradient clipping.
The paper picks each optimizer's LR by a sweep on a half-decade grid; we train each at the two best points of a
half-decade grid found on the tiny preset (Adam: 1e-3 was worse than 3e-3 and 1e-2; SGD: 1.0 diverged), so the
figure also shows that SGD's rare groups stay high at its best stable LR and not only at a poorly tuned one.

Recipe (`RECIPE`, both optimizers'; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup | init | Adam ε |
  |--------|--------------|------|---------|--------|------|--------|
  | 0      | 0            | 0    | off     | 0      | gpt2 | 1e-8   |

  The official code (spec §5(b)): GPT-2 small with init std 0.02 scaled by depth (`model.init=gpt2`), plain
  cross-entropy (no z-loss), no qk-norm (GPT-2 has none), no weight decay, no clipping, constant LR. The tiny
  line below is measured with this recipe (docs/reproductions/weight_decay_fairness.md); the gpu line's 400-step
  trial was taken with z-loss 1e-4, the fan_in init and qk-layernorm (the recipe before issue 10) and is not
  re-measured yet. The gpu preset runs 3 seeds per point: two programs of 9 members.

Presets:

  tiny   CPU, ~90 s on 2 cores: 2 layers, d=64, vocab 2048 on `classics` (a heavier tail than vocab 512),
         400 steps of 16 x 64 tokens, float32, eval every 50 steps; Adam LR {3e-3, 1e-2}, SGD LR {0.1, 0.3}.
         What it shows (each optimizer at its best LR, Adam 3e-3 and SGD 0.1): SGD ends 0.15 above Adam on the
         most frequent equal-mass group and 1.09 above it on the rarest, the gap growing with rarity; SGD's
         rarest group stays above ln V = 7.6 at every eval (8.6 at step 50, 8.1 at the end) while Adam takes it
         from 8.5 to 7.05, below ln V.
  gpu    one H200, ~4-5 minutes (two batched programs of 3 members at ~590k tokens/s per member, before
         issue 10; now 9 members each: 3 seeds): the 9.4m ladder shape (d=512, 3 layers, vocab 32101) on
         `classics`, 3000 steps of 32 x 512 tokens,
         eval every 200 steps; Adam LR {3e-4, 1e-3, 3e-3}, SGD LR {3e-3, 1e-2, 3e-2} (the paper's 1e-2 in the
         middle). In a 400-step trial run on an H200, Adam 1e-3 beat 3e-4 and 3e-3, unclipped SGD diverged within
         4 steps at LR 0.1 and 0.3, and at 0.03 it already trailed Adam by 0.2 on the most frequent group and
         by 2.9 on group 8.
         On code11 (the queue's `data.source=prepared`): 3000 x 32 x 512 = 49.2M tokens a run = 1.08 epochs of its
         45,709,465 training tokens. Time (H200, a member-step of the 9.4m shape at 32 x 512 in a batched group
         ~8.7 ms, as weight_decay_fairness'): a program is 9 x 3000 x 8.7 ms = 234 s + ~55 s = ~290 s; both
         ~664 s with a 15 % margin, more than one queue call, hence the slices.
  gpu_<optimizer>  one optimizer's slice of `gpu` (`SLICES`: gpu_adamw, gpu_sgd; the same base config, trials and
         trial ids): its 3 LRs x 3 seeds, the one program of 9 that gpu trains for it, ~332 s (5.5 minutes) with
         the margin, into one directory:
             BUDGET=560 bash benchmarks/h200_queue.sh class_imbalance:gpu_adamw@class_imbalance_code11
             BUDGET=560 bash benchmarks/h200_queue.sh class_imbalance:gpu_sgd@class_imbalance_code11

Deviations from the paper: GPT-2 small on WikiText-103 for 15k steps (micro-batches 16 x 8 and 16 x 16 of 1024
tokens) -> our decoder at CPU/9.4M scale on the embedded `classics` corpus, the same batch for both optimizers; our
init was fan-in before issue 10 (initial loss ~0.5 above ln V); it is now GPT-2's. Eval is on the held-out split only
(the paper also plots the training split), grouped by training-split counts (the paper groups its validation
curves by validation counts, §5(a)). The per-group losses are logged from the first eval on, not at step 0.
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis, slice_presets, slice_trials

LRS = {  # optim.name -> its LR grid, per preset
    "tiny": {"adamw": (3e-3, 1e-2), "sgd": (0.1, 0.3)},
    "gpu": {"adamw": (3e-4, 1e-3, 3e-3), "sgd": (3e-3, 1e-2, 3e-2)},
}
N_BUCKETS = 10  # Fig. 1: 10 groups of ~10% of the tokens each (spec §5(a))
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.clip": 0.0, "model.qk_norm": False,
    "optim.warmup_steps": 0, "model.init": "gpt2", "optim.eps": 1e-8,
}
SLICES = slice_presets(LRS["gpu"])  # gpu_adamw, gpu_sgd: one optimizer's program each
PRESETS = (*LRS, *SLICES)
BASELINE = {"optim.name": "adamw"}  # RECIPE describes both optimizers; Adam is the reference


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "tiny":
        c = base.get_config("tiny")
        c.model.update(vocab_size=2048, d_model=64, n_layers=2, n_heads=2, dtype="float32")
        c.data.update(seq_len=64, batch_size=16)
        c.train.update(steps=400, log_every=50, eval_every=50, eval_batches=8, ckpt_every=0, progress=False)
    else:
        c = base.get_config("9.4m")
        c.data.batch_size = 32
        c.train.update(steps=3000, log_every=50, eval_every=200, eval_batches=16, ckpt_every=0)
    # torch.optim.Adam(0.9, 0.999, 1e-8) and SGD(momentum=0.9) at a constant LR, unclipped, undecayed (spec §5(b))
    c.optim.update(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, clip=0.0, schedule="constant", warmup_steps=0)
    c.model.update(qk_norm=False, init="gpt2")
    c.loss.z_loss = 0.0
    c.train.freq_buckets = N_BUCKETS
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    grid = "tiny" if preset == "tiny" else "gpu"
    labelled = [(name, t) for name, lrs in LRS[grid].items() for lr in lrs
                for t in product(trial=[{"optim.name": name, "optim.lr": lr}], **seed_axis(grid))]
    return [t for _, t in labelled] if grid == "tiny" else slice_trials(preset, labelled)
