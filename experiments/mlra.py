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
        Paper scale: 1.31B tokens a run (29 epochs of code11), 144 runs: not one session.
  gpu_slice  what one H200 session runs (docs/reproductions/mlra.md): the 2.4m ladder width (d=256, 4 heads of
        64, vocab 32101) at depths 3 and 12 (the paper's 4x, 12 -> 48), batch 64 x 512, 500 steps after a
        50-step warmup (the gpu preset's 10 %), vanilla vs MLRA (Scaled Embed and Embed LN left out) at LR 1e-2
        (the top of the gpu grid, where spikes are likeliest) x 3 seeds = 12 trials: 4 programs of 3 (arm x
        depth; ~35 GiB each at depth 12 by launch/memory.py, no remat). Diagnostics every 25 steps (20 points a
        run: tev_mu, tev_sigma, ...) on `train.diag_rows` = 16 rows; eval every 125 steps.
        Tokens: 500 x 64 x 512 = 16.4M a run = 0.36 epochs of code11's 45.71M training tokens.
        Time (H200, bf16, cuDNN): depth 3 is the measured 2.4m step, 10.1 ms; depth 12 is not measured: from
        the 2.4m step's FLOPs (66 MFLOP/token, 74 % of them the head) we put the head at ~4 ms and a d=256 layer
        at ~2 ms, so ~28 ms (pessimistic: FLOPs alone give 18 ms); MLRA +4 %; a member-step 1.05x. Steps: 3 x 500
        x (10.6 + 29.8) ms x 1.02 (MLRA) x 2 arms = ~124 s; 20 diagnostic steps of ~3 member-steps: ~10 s;
        compilation, evals, checkpoints: ~55 s a depth-3 program, ~90 s a depth-12 one (its 12 unrolled blocks
        compile longer) = ~290 s. Total ~425 s = ~7 minutes.
        Deviations beyond the gpu preset's: width 256 instead of 768, depths 3 / 12 instead of 12 / 24 / 48,
        length 512 and batch 64 instead of 1024 and 128, 500 steps instead of 10k (warmup scaled alike), one LR
        instead of 4, two arms instead of 4.
  gpu_slice_low  gpu_slice at LR 3e-3, the gpu grid's next LR down: the same base config (get_config returns
        gpu_slice's), arms, depths and seeds = 12 trials, 4 programs of 3, the very programs gpu_slice trains (the
        LR is a traced scalar). Why: at 1e-2 attention entropy collapses in nearly every layer at depth 12 and both
        depth-12 arms end ~1.1 nats worse than depth 3 (docs/reproductions/mlra.md), so the slice could not say
        whether depth 12 is merely above its stable LR; gpu_slice_low is the first run that can. Its trial ids
        (lr=0.003) are disjoint from gpu_slice's (lr=0.01), so it runs into gpu_slice's directory, which starts
        as the committed experiments/results/sweeps/mlra_code11 (finished trials skipped, sweep.json lists both):
            BUDGET=560 bash benchmarks/h200_queue.sh mlra:gpu_slice_low@mlra_code11
        Tokens: 16.4M a run = 0.36 epochs of code11's 45,709,465 training tokens, as gpu_slice.
        Time (gpu_slice's arithmetic, the diagnostics counted as 3 member-steps each): 3 members x (500 + 3 x 20)
        member-steps x (10.6 + 29.4) ms (depth 3 + depth 12, x 1.05 a member-step) x 1.02 (MLRA) x 2 arms = 137 s,
        + 290 s of compilation, evals and checkpoints = ~427 s, ~491 s = 8.2 minutes with the +15 % margin
        (tests/experiments/test_gpu_slices.py); gpu_slice's same programs measured ~486 s. One 560 s queue call.
  Both slices pin `model.norm_impl=xla`, the norm kernels session 12's rows ran under (the default became `auto`,
  the Pallas norms on one GPU, after them): the committed mlra_code11/config.json says xla, and launch.sweep
  refuses a workdir whose config differs.

Sweep: arm (vanilla | mlra | scaled_embed | embed_ln) x model.n_layers x the LR grid. Diagnostics log tev_mu,
tev_sigma (all rows) and tev_batch_mu, tev_batch_sigma (rows of the batch's tokens) every train.diag_every steps.

    python -m launch.sweep --config=experiments/mlra.py:tiny --workdir=runs/mlra_tiny
    python3 -m launch.sweep --config=experiments/mlra.py:gpu_slice --workdir=/tmp/runs/mlra --executor=batched \
      --config.data.source=prepared --config.data.prepared_dir=/tmp/code11
    BUDGET=560 bash benchmarks/h200_queue.sh mlra:gpu_slice_low@mlra_code11   # LR 3e-3 into the committed rows
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import GPU_SEEDS, product, seed_axis, seeds

GPU_SLICES = ("gpu_slice", "gpu_slice_low")  # one config, one workdir (mlra_code11), LRs of the gpu grid apart
PRESETS = ("tiny", "gpu", *GPU_SLICES)
DEPTHS = {"tiny": (2, 4, 8), "gpu": (12, 24, 48), "gpu_slice": (3, 12), "gpu_slice_low": (3, 12)}
LRS = {"tiny": (3e-3, 1e-2, 3e-2), "gpu": (3e-4, 1e-3, 3e-3, 1e-2), "gpu_slice": (1e-2,), "gpu_slice_low": (3e-3,)}
SLICE_STEPS = 500  # gpu_slice: steps of 64 x 512 tokens (warmup 10 % of them, as the gpu preset's 1000 of 10k)
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
PRESET_ARMS = {"tiny": tuple(ARMS), "gpu": tuple(ARMS), **{s: ("vanilla", "mlra") for s in GPU_SLICES}}


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset in GPU_SLICES:
        c = base.variant_study("gpu", gpu_size="2.4m")
        c.data.batch_size = 64
        c.optim.warmup_steps = SLICE_STEPS // 10
        c.train.update(steps=SLICE_STEPS, log_every=10, eval_every=125, eval_batches=16, diag_every=25,
                       diag_rows=16, ckpt_every=250, max_members=3)
        c.model.norm_impl = "xla"  # what session 12's rows ran (before norm_impl=auto): the committed config.json
    else:
        c = base.variant_study(preset, gpu_size="85m")
    if preset == "gpu":
        c.data.update(seq_len=1024, batch_size=128)
        c.model.remat = True
        c.train.max_members = 2
    c.model.update(attention="mlra", n_layers=DEPTHS[preset][0], init="gpt2")
    c.model.mlra.update(rank=0, shared_latent=False, init_std=0.02)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    seed = seeds(GPU_SEEDS) if preset in GPU_SLICES else seed_axis(preset)
    return product(arm=[ARMS[a] for a in PRESET_ARMS[preset]], **{"model.n_layers": DEPTHS[preset]}, lr=LRS[preset],
                   **seed)
