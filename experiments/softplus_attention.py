"""LSSA / LSSAR (softplus attention with re-weighting) vs softmax (Gao & Spratling 2025, arXiv 2501.13428; spec §4).

Claims to check (§4(d) [S]): at the training length every variant ends within ~0.03 of softmax; past it the softmax
loss rises steeply while LSSAR with p = 15 stays nearly flat up to 8x the training length. The sweep trains the
arms over the LR grid; the length claim is then measured per finished trial with

    python -m launch.sweep --config=experiments/softplus_attention.py:tiny --workdir=runs/softplus_tiny
    python -m launch.eval_length --workdir=runs/softplus_tiny/trials/<trial> --lengths=64,128,256,512
    python3 -m launch.sweep --config=experiments/softplus_attention.py:gpu_slice --workdir=/tmp/runs/softplus \
      --executor=batched --config.data.source=prepared --config.data.prepared_dir=/tmp/code11

Recipe (`RECIPE`, the softmax baseline's stabilisers; every arm shares them; tests/experiments/test_recipes.py):

  | z-loss | weight decay                        | clip | qk-norm | warmup (gpu) | init | Adam ε |
  |--------|-------------------------------------|------|---------|--------------|------|--------|
  | 0      | 0.1 coupled, tensors with ndim >= 2 | 1.0  | off     | 1000 steps   | gpt2 | 1e-8   |

  The paper leaves everything but the attention at GPT-2 defaults (§4(b) [S]): nanoGPT's GPT-2 recipe [R] is
  AdamW(0.9, 0.95, 1e-8) with coupled weight decay 0.1 on the matrices (the embedding included), clipping at 1,
  warmup + cosine and GPT-2's init (`model.init=gpt2`); no z-loss, and no qk-norm (spec §9: it would stack with
  LSSA's L2 normalisation).

Presets (`get_config(arg)`; the config is LSSAR p = 15):
  tiny  CPU minutes: the base tiny model at length 64 on `classics`, 300 steps.
  gpu   one H200: GPT-2-small shape with RoPE (d=768, 12 layers, 12 heads of 64) at length 1024, batch 128,
        10k steps, warmup 1k, 3 seeds per point; queries chunked by 1024 so evaluation at 8K fits. Memory
        (launch/memory.py; was ≈ 460 GiB a member by our estimate, ≈ 230 GiB by the issue's): LSSAR keeps ~5
        float32 [B, H, T, T] tensors per layer for its backward, so every block is rematerialised (one layer's
        at a time, ~100 GiB a member), each member trains as its own program (`train.max_members` = 1), and the
        diagnostics run forward-only on `train.diag_rows` = 32 rows. Batch and length are the study's.
        Paper scale: 1.31B tokens a run (29 epochs of code11), 48 runs: not one session.
  gpu_slice  what one H200 session runs (docs/reproductions/softplus_attention.md): the 9.4m ladder shape (d=512,
        3 layers, 8 heads of 64, RoPE, vocab 32101) trained at length 512, batch 64 x 512, 700 steps after a
        70-step warmup (the gpu preset's 10 %), softmax vs LSSAR p = 15 (keys in blocks of
        `model.softplus.key_chunk` = 128: no [B, H, T, T] weights) at LR 3e-3 (page 1's best 9.4m LR without
        qk-layernorm) x 3 seeds = 6 trials: 2 programs of 3. Diagnostics every 35 steps (20 points a run) on
        `train.diag_rows` = 16 rows; eval every 175 steps. The length claim is then `launch.eval_length` on
        each finished trial at 512, 1024, 2048, 4096 (1x, 2x, 4x, 8x the training length), 16 batches of 16
        sequences (131k tokens at 1x, 1.05M at 8x, of code11's 2.40M eval tokens):
            for t in DIR/trials/*/; do python3 -m launch.eval_length --workdir=$t \
              --lengths=512,1024,2048,4096 --batch_size=16 --batches=16; done
        (on the H200: `bash benchmarks/h200_queue.sh softplus_attention:gpu_slice
        eval_length:softplus_attention_gpu_slice`, the sweep and then this loop, length_eval.json in the tarball).
        Tokens: 700 x 64 x 512 = 22.9M a run = 0.50 epochs of code11's 45.71M training tokens.
        Time (H200, bf16; measured 9.4m steps at 64 x 512: softmax 16.5 ms, LSSAR with key_chunk 128 2.2x =
        36.3 ms; a member-step 1.05x): steps 3 x 700 x (17.3 + 38.1) ms = 116 s, 20 diagnostic steps of ~3
        member-steps 10 s, ~55 s a program of compilation, evals and checkpoints: ~236 s = ~4 minutes for the
        sweep (measured 2026-12-04: 251 s, programs of 91-93 s softmax and 128-130 s LSSAR). eval_length (not
        measured yet): ~50 s for an arm's first trial (process start, restore, 4 eval
        compilations; 16 LSSAR forwards of 16 x 4096 at ~90 ms, twice a third of its 131 ms train step at
        8 x 4096, are ~1.5 s) and ~20 s for the others (the compilation cache hits): 2 x 50 + 4 x 20 s = ~3
        minutes. Together ~7 minutes.
        Deviations beyond the gpu preset's: the 9.4m shape instead of GPT-2 small, training length 512 instead
        of 1024 (so 8x is 4096, not 8192), batch 64 instead of 128, 700 steps instead of 10k (warmup scaled
        alike), one LR instead of 4, two arms (softmax, LSSAR p = 15) instead of 4 (LSSAR p = 3 and LSSA left out).

Sweep: arm (softmax | lssar p=15 | lssar p=3 | lssa = stage 1 only) x the LR grid; tiny: softmax and p=15 only.
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import GPU_SEEDS, product, seed_axis, seeds

PRESETS = ("tiny", "gpu", "gpu_slice")
LRS = {"tiny": (1e-3, 3e-3, 1e-2, 3e-2), "gpu": (3e-4, 1e-3, 3e-3, 1e-2), "gpu_slice": (3e-3,)}
SLICE_STEPS = 700  # gpu_slice: steps of 64 x 512 tokens (warmup 10 % of them, as the gpu preset's 1000 of 10k)
SLICE_EVAL_LENGTHS = (512, 1024, 2048, 4096)  # gpu_slice: launch.eval_length's 1x, 2x, 4x, 8x the training length
ARMS = {
    "softmax": {"model.attention": "softmax"},
    "lssar_p15": {"model.attention": "softplus", "model.softplus.reweight": True, "model.softplus.power": 15},
    "lssar_p3": {"model.attention": "softplus", "model.softplus.reweight": True, "model.softplus.power": 3},
    "lssa": {"model.attention": "softplus", "model.softplus.reweight": False, "model.softplus.power": 15},
}
PRESET_ARMS = {"tiny": ("softmax", "lssar_p15"), "gpu": tuple(ARMS), "gpu_slice": ("softmax", "lssar_p15")}
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.1, "optim.independent_wd": False, "optim.decay_all": False,
    "optim.clip": 1.0, "model.qk_norm": False, "optim.warmup_steps": 1000, "model.init": "gpt2", "optim.eps": 1e-8,
}
BASELINE = ARMS["softmax"]  # the arm that RECIPE describes


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "gpu_slice":
        c = base.variant_study("gpu", gpu_size="9.4m")
        c.model.softplus.key_chunk = 128
        c.data.batch_size = 64
        c.optim.warmup_steps = SLICE_STEPS // 10
        c.train.update(steps=SLICE_STEPS, log_every=10, eval_every=175, eval_batches=16, diag_every=35,
                       diag_rows=16, ckpt_every=350, max_members=3)
    else:
        c = base.variant_study(preset, gpu_size="85m")
    if preset == "gpu":
        c.model.softplus.query_chunk = 1024
        c.data.update(seq_len=1024, batch_size=128)
        c.model.remat = True
        c.train.update(diag_rows=32, max_members=1)
    c.model.update(attention="softplus", init="gpt2")
    c.optim.update(weight_decay=0.1, independent_wd=False, decay_all=False)
    c.model.softplus.update(reweight=True, power=15)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    seed = seeds(GPU_SEEDS) if preset == "gpu_slice" else seed_axis(preset)
    return product(arm=[ARMS[a] for a in PRESET_ARMS[preset]], lr=LRS[preset], **seed)
