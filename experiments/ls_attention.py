"""LS-attention vs MHSA in an LR sweep (Hajra 2025, arXiv 2505.15548; spec model-variants §1).

Claim to check (§1(d) [S]): at long sequence length and high LR, MHSA's max pre-softmax logit grows ("logit
explosion") and training destabilises; LS-attention (one global head, the rest local with a window of w keys)
keeps the max logit bounded and trains smoothly. Same parameters as MHSA; only the per-head mask differs.

Recipe (`RECIPE`, the MHSA baseline's stabilisers; both arms share it; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init | Adam ε |
  |--------|--------------|------|---------|--------------|------|--------|
  | 0      | 0            | 1.0  | off     | 1000 steps   | gpt2 | 1e-8   |

  qk-norm and z-loss are among the stabilisers the paper compares LS-attention against (§1(b) [S]), so neither
  arm has them; the decoder is GPT-2 style [S], hence GPT-2's init (N(0, 0.02²), output projections / sqrt(2L));
  weight decay, clipping, LR and schedule are not reported [U]: no decay [D] (nothing that shrinks the logits the
  study measures), global-norm clipping at 1 and warmup + cosine as the harness [D].

Presets (`get_config(arg)`; the config is the LS model, the sweep puts MHSA beside it):
  tiny  CPU minutes: d=64, 2 layers, 4 heads (1 global + 3 local, window 16 keys) at sequence length 256 on the
        embedded `classics` data, 300 steps.
  gpu   one H200: GPT-2-small shape (d=768, 12 layers, 12 heads of 64: 1 global + 11 local, window 100 [S]) at
        length 4096 (§1(b): T 4-8K, [U] -> [D]), batch 32 x 4096 = 131k tokens, 10k steps, warmup 1k, 3 seeds
        per point. Memory (launch/memory.py; was ≳ 500 GiB): the diagnostics' explicit float32 [B, H, T, T]
        attention runs forward-only on `train.diag_rows` = 4 rows (the gradient RMS still comes from the whole
        batch through the fused kernel), every block is rematerialised, and a group's 18 members (6 LRs x 3
        seeds) train as programs of `train.max_members` = 2, ~84 GiB each. What the study measures (the max
        logit per layer and head group at T = 4096, the loss over the LR grid) is unchanged.
        Paper scale: 1.31B tokens a run (29 epochs of code11), 36 runs: not one session.
  gpu_slice  what one H200 session runs (docs/reproductions/ls_attention.md): the 9.4m ladder shape (d=512,
        3 layers, 8 heads of 64: 1 global + 7 local with window 100) at length 4096, batch 8 x 4096 = 32,768
        tokens, 800 steps after an 80-step warmup (the gpu preset's 10 %), MHSA and LS x LR {1e-3, 1e-2, 1e-1}
        x 3 seeds = 18 trials: 2 programs of 9 (`train.max_members` = 9, ~95 GiB each by launch/memory.py; at
        this size no remat). Diagnostics every 40 steps (20 points a run), their explicit float32 [B, H, T, T]
        attention on `train.diag_rows` = 2 rows; eval every 200 steps.
        Tokens: 800 x 8 x 4096 = 26.2M a run = 0.57 epochs of code11's 45.71M training tokens.
        Time (H200, bf16, cuDNN; the 9.4m step at 8 x 4096 is 18.8 ms for softmax, LS's sliding window costs
        no more; a member-step 1.05x): a program is 9 x 800 x 19.7 ms = 142 s of steps + 20 diagnostic steps of
        ~3 member-steps (11 s) + ~55 s of compilation, evals and checkpoints = ~208 s; two: ~416 s = ~7 minutes.
        Deviations beyond the gpu preset's: the 9.4m shape (3 layers, 1 + 7 heads) instead of GPT-2 small
        (12 layers, 1 + 11 heads), batch 8 instead of 32 sequences, 800 steps instead of 10k (warmup scaled
        alike), 3 LRs instead of 6, a decade apart (page 1's 9.4m baseline without qk-layernorm grew its max
        logit to 1e3-1e8 at every LR >= 1e-2, at T = 512 with fan_in init and z-loss: 1e-3 lies below that).
  gpu_slice_fill  gpu_slice at LRs 3e-4 and 3e-3, the gpu grid's neighbours of gpu_slice's best (1e-3, the
        lowest of its grid for both arms, docs/reproductions/ls_attention.md): whether 1e-3 is the optimum, and
        whether the logits start to grow between 1e-3 (bounded) and 1e-2 (grown in both arms). The same base
        config (get_config returns gpu_slice's), arms and seeds = 12 trials, 2 programs of 6; its trial ids
        (lr=0.0003, lr=0.003) are disjoint from gpu_slice's, so it runs into the committed directory:
            BUDGET=560 bash benchmarks/h200_queue.sh ls_attention:gpu_slice_fill@ls_attention_code11
        Tokens: 26.2M a run = 0.57 epochs, as gpu_slice. Time (gpu_slice's arithmetic): a program is 6 x 800 x
        19.7 ms = 95 s of steps + 7 s of diagnostics + ~55 s = ~157 s; two: ~313 s, ~6 minutes with a 15 % margin
        (gpu_slice's two programs of 9 measured 419 s against this arithmetic's 416 s).

Sweep: model.attention in {softmax, ls} x the LR grid. Diagnostics (train.diag_every) log attn_max_logit/layer_i
for both arms and attn_max_logit_{global,local}/layer_i for ls.

    python -m launch.sweep --config=experiments/ls_attention.py:tiny --workdir=runs/ls_attention_tiny
    python3 -m launch.sweep --config=experiments/ls_attention.py:gpu_slice --workdir=/tmp/runs/ls_attention \
      --executor=batched --config.data.source=prepared --config.data.prepared_dir=/tmp/code11
    BUDGET=560 bash benchmarks/h200_queue.sh ls_attention:gpu_slice_fill@ls_attention_code11  # into the committed rows
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import GPU_SEEDS, product, seed_axis, seeds

GPU_SLICES = ("gpu_slice", "gpu_slice_fill")  # one config, one workdir (ls_attention_code11), LRs of the gpu grid apart
PRESETS = ("tiny", "gpu", *GPU_SLICES)
LRS = {"tiny": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1), "gpu": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
       "gpu_slice": (1e-3, 1e-2, 1e-1), "gpu_slice_fill": (3e-4, 3e-3)}
SLICE_STEPS = 800  # gpu_slice: steps of 8 x 4096 tokens (warmup 10 % of them, as the gpu preset's 1000 of 10k)
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.clip": 1.0, "model.qk_norm": False,
    "optim.warmup_steps": 1000, "model.init": "gpt2", "optim.eps": 1e-8,
}
BASELINE = {"model.attention": "softmax"}  # the arm that RECIPE describes


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset in GPU_SLICES:
        c = base.variant_study("gpu", gpu_size="9.4m")
        c.model.ls.update(n_global=1, window=100)
        c.data.update(seq_len=4096, batch_size=8)
        c.optim.warmup_steps = SLICE_STEPS // 10
        c.train.update(steps=SLICE_STEPS, log_every=10, eval_every=200, eval_batches=16, diag_every=40,
                       diag_rows=2, ckpt_every=400, max_members=9)
        c.model.update(attention="ls", init="gpt2")
        return c
    c = base.variant_study(preset, gpu_size="85m")
    if preset == "tiny":
        c.model.n_heads = 4
        c.model.ls.update(n_global=1, window=16)
        c.data.update(seq_len=256, batch_size=8)
    else:
        c.model.ls.update(n_global=1, window=100)
        c.data.update(seq_len=4096, batch_size=32)
        c.model.remat = True
        c.train.update(diag_rows=4, max_members=2)
    c.model.update(attention="ls", init="gpt2")
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    seed = seeds(GPU_SEEDS) if preset in GPU_SLICES else seed_axis(preset)
    return product(**{"model.attention": ["softmax", "ls"]}, lr=LRS[preset], **seed)
