"""Spike No More: embedding scale under small init in an LR sweep (Takase et al. 2023, arXiv 2312.16903; spec §7).

Claim to check (§7(d)): with Megatron-style small init (every weight N(0, 2/(5d)), Wo and W2 / sqrt(2L)) the
"Vanilla" model (std(x0) ≈ 0.02) shows gradient-norm and loss spikes at aggressive LRs; Scaled Embed (x sqrt(d),
std(x0) ≈ 0.63) and Embed LN (std(x0) = 1) show none and end at equal or better loss. Count spikes as loss > 1.2x
its 100-step EMA [D] from the runs' metrics.jsonl.

Recipe (`RECIPE`, the Vanilla baseline's stabilisers; every arm shares them; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init  | Adam ε |
  |--------|--------------|------|---------|--------------|-------|--------|
  | 0      | 0            | 1.0  | off     | 1000 steps   | small | 1e-8   |

  The init is the paper's condition 1 (`small`: N(0, 2/(5d)), Wo and W2 / sqrt(2L), Megatron style [R]); its
  models have no qk-norm or z-loss. Its optimizer recipe (Megatron defaults [R]) is not pinned down [U]: no weight
  decay [D], because decay on the embedding shrinks std(x0), the very quantity that separates the arms (Megatron's
  own "Spike No More" option excludes the embedding from decay [S]); clipping at 1 and warmup + cosine [D].

Presets (`get_config(arg)`; the config is Scaled Embed):
  tiny  CPU, ~2 minutes on 2 cores: the base tiny model on `classics`, init=small, 300 steps; the 3 arms x LR
        {3e-3, 1e-2, 3e-2, 1e-1}. What it shows (one seed; docs/reproductions/spike_no_more.md): every arm best
        at 1e-2, Vanilla degrading 3-8x more above it, with the only gradient-norm spikes (at 1e-1).
  gpu   one H200: the 151M ladder shape (d=1024, 12 layers, 16 heads of 64; the paper's smallest is 350M [R]),
        init=small, no qk-layernorm (the paper's models have none), batch 256 x 512, 10k steps, warmup 1k; the LR
        grid reaches 2-4x the usual Megatron LR; 3 seeds per point. Memory (launch/memory.py): ~87 GiB a member,
        so every block is rematerialised (~46 GiB) and a group's 15 members (5 LRs x 3 seeds) train as programs
        of `train.max_members` = 2 (~92 GiB each).
        Paper scale: 1.31B tokens a run (29 epochs of code11), 45 runs: not one session.
  gpu_slice  what one H200 session runs (docs/reproductions/spike_no_more.md): the 9.4m ladder shape (d=512,
        3 layers, 8 heads of 64, vocab 32101; init=small gives Vanilla std(x0) = sqrt(2/(5·512)) = 0.028 and
        Scaled Embed 0.63, the paper's values), batch 64 x 512, 700 steps after a 70-step warmup (the gpu
        preset's 10 %), Vanilla / Scaled Embed / Embed LN x LR {1e-2, 3e-2} (the gpu grid's two highest, where
        the spikes are claimed) x 3 seeds = 18 trials: 3 programs of 6 (~63 GiB each by launch/memory.py, no
        remat). Metrics every 5 steps (140 rows: loss, grad_norm for the spike count), diagnostics every 35
        steps (20 points a run) on `train.diag_rows` = 16 rows, eval every 175 steps.
        Tokens: 700 x 64 x 512 = 22.9M a run = 0.50 epochs of code11's 45.71M training tokens.
        Time (H200, bf16, cuDNN; the 9.4m step at 64 x 512 is 16.5 ms, the embedding options cost <= 2 %, a
        member-step 1.05x): a program is 6 x 700 x 17.3 ms = 73 s of steps + 20 diagnostic steps of ~3
        member-steps (6 s) + ~55 s of compilation, evals and checkpoints = ~134 s; three: ~402 s = ~7 minutes.
        Component-wise clipping (Yang & Ma) is the same command with --config.optim.clip_mode=component: a
        second run of the same ~7 minutes, not part of this one.
        Deviations beyond the gpu preset's: the 9.4m shape instead of 151m, batch 64 instead of 256, 700 steps
        instead of 10k (warmup scaled alike), 2 LRs instead of 5.
  gpu_slice_low  gpu_slice at LR {1e-3, 3e-3}, the gpu grid's next two down: the same base config (get_config
        returns gpu_slice's), arms and seeds = 18 trials, 3 programs of 6, the very programs gpu_slice trains (the
        LR is a traced scalar). Why: at 3e-2 every arm fails alike (attention entropy collapsed by step 35, no
        qk-norm) and 1e-2 is the gpu grid's only other LR run (docs/reproductions/spike_no_more.md), so Vanilla's
        best LR, and what "2-4x the usual LR" means at 9.4m, is not known. Its trial ids (lr=0.001, lr=0.003) are
        disjoint from gpu_slice's (lr=0.01, lr=0.03), so it runs into gpu_slice's directory, which starts as the
        committed experiments/results/sweeps/spike_no_more_code11 (finished trials skipped, sweep.json lists both):
            BUDGET=560 bash benchmarks/h200_queue.sh spike_no_more:gpu_slice_low@spike_no_more_code11
        Tokens: 22.9M a run = 0.50 epochs of code11's 45,709,465 training tokens, as gpu_slice.
        Time (gpu_slice's arithmetic, the diagnostics counted as 3 member-steps each): a program is 6 members x
        (700 + 3 x 20) member-steps x 17.3 ms = 79 s + ~55 s = ~134 s; three ~402 s, ~462 s = 7.7 minutes with
        the +15 % margin (tests/experiments/test_gpu_slices.py); gpu_slice's same programs measured 474 s (7.9
        minutes). 3e-3 alone would be 3 programs of 3: 3 x (3 x 760 x 17.3 ms + 55 s) = ~283 s, ~326 s with the
        margin; 1e-3 adds ~136 s and still fits one 560 s queue call.
  Both slices pin `model.norm_impl=xla`, the norm kernels session 12's rows ran under (the default became `auto`,
  the Pallas norms on one GPU, after them): the committed spike_no_more_code11/config.json says xla, and
  launch.sweep refuses a workdir whose config differs.

Sweep: model.embed_scale in {none, scaled, layernorm} x the LR grid.

    python -m launch.sweep --config=experiments/spike_no_more.py:tiny --workdir=runs/spike_no_more_tiny
    python3 -m launch.sweep --config=experiments/spike_no_more.py:gpu_slice --workdir=/tmp/runs/spike_no_more \
      --executor=batched --config.data.source=prepared --config.data.prepared_dir=/tmp/code11
    BUDGET=560 bash benchmarks/h200_queue.sh spike_no_more:gpu_slice_low@spike_no_more_code11   # LRs 1e-3, 3e-3
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import GPU_SEEDS, product, seed_axis, seeds

GPU_SLICES = ("gpu_slice", "gpu_slice_low")  # one config, one workdir (spike_no_more_code11), LRs of the gpu grid apart
PRESETS = ("tiny", "gpu", *GPU_SLICES)
LRS = {"tiny": (3e-3, 1e-2, 3e-2, 1e-1), "gpu": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2), "gpu_slice": (1e-2, 3e-2),
       "gpu_slice_low": (1e-3, 3e-3)}
SLICE_STEPS = 700  # gpu_slice: steps of 64 x 512 tokens (warmup 10 % of them, as the gpu preset's 1000 of 10k)
EMBED_SCALES = ("none", "scaled", "layernorm")
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.clip": 1.0, "model.qk_norm": False,
    "optim.warmup_steps": 1000, "model.init": "small", "optim.eps": 1e-8,
}
BASELINE = {"model.embed_scale": "none"}  # the arm that RECIPE describes (Vanilla)


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset in GPU_SLICES:
        c = base.variant_study("gpu", gpu_size="9.4m")
        c.data.batch_size = 64
        c.optim.warmup_steps = SLICE_STEPS // 10
        c.train.update(steps=SLICE_STEPS, log_every=5, eval_every=175, eval_batches=16, diag_every=35,
                       diag_rows=16, ckpt_every=350, max_members=6)
        c.model.norm_impl = "xla"  # what session 12's rows ran (before norm_impl=auto): the committed config.json
    else:
        c = base.variant_study(preset, gpu_size="151m")
    c.model.update(init="small", embed_scale="scaled")
    if preset == "gpu":
        c.model.remat = True
        c.train.max_members = 2
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    seed = seeds(GPU_SEEDS) if preset in GPU_SLICES else seed_axis(preset)
    return product(**{"model.embed_scale": list(EMBED_SCALES)}, lr=LRS[preset], **seed)
