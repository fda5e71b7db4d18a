"""SPAM vs Adam vs Adam + gradient clipping, with an optional injected gradient spike (Huang et al., ICLR 2025,
arXiv 2501.06842; spec optimizers-and-metrics §1).

Claim (§1(c), Table 1): at every size SPAM ends with a lower eval loss than Adam + GradClip, which ends lower
than Adam (60M on C4: ppl 30.46 < 33.33 < 34.09). The mechanism: a gradient spike inflates Adam's second moment
v for ~1/(1-b2) = 1000 steps, which shrinks every later update; SPAM clips entries with g^2 > theta v (theta 5000)
and resets the moments every 500 updates, so one spike cannot stall training.

    python -m launch.sweep --config=experiments/spam.py:tiny --workdir=runs/spam_tiny --executor=batched
    # -> report/loss_over_tokens.png (train and eval loss per method, the spike marked), loss_vs_lr.png, summary.md

Sweep: method {adam (no clipping), adam+clip (global norm 1.0), spam (no global clipping, as the paper)} x
spike {none, one gradient spike of x1000 at step SPIKE_FRACTION * steps (train.spike_at_step)} x the LR grid.
Adam and Adam + clip differ only in optim.clip, so the batched executor trains them as one program key (at gpu,
`train.max_members` cuts that group into its two methods).

Presets (`get_config(arg)`):
  tiny  CPU minutes: the base tiny model (d 64, 2 layers) in float32 on `classics`, 300 steps of 16 x 64.
  gpu   one H200: the 9.4m ladder shape (the smallest of the spec's SPAM sizes is 60M), batch 64 x 512,
        1500 steps after a 150-step warmup; 3 methods x spike {none, x1000 at step 600} x LR {1e-3, 3e-3} x 3 seeds
        = 36 trials, 6 programs of `train.max_members` = 6 (Adam and Adam + clip share a program key; that group
        of 12 is cut into its two methods). Corpus: code11, as benchmarks/h200_queue.sh passes it
        (`--config.data.source=prepared`): 1500 x 64 x 512 = 49.2M tokens a run = 1.08 epochs of its 45,709,465
        training tokens (docs/reproductions/README.md). `classics`, the default source, is for CPU only (1500 steps
        would repeat it 18 times). The single-seed run in benchmarks/RESULTS.md (before issue 10's recipe) was on
        session 7's 29M-token corpus: 1.7 epochs.
        Time (estimate; H200, bf16: the 9.4m step at 64 x 512 is 16.5 ms, a member-step in a batched group 1.05x =
        17.3 ms): a program is 6 x 1500 x 17.3 ms = 156 s of steps + ~55 s of compilation, evals and checkpoints =
        ~211 s; the six ~1266 s = ~21 minutes, ~24 with the +15 % session 12 measured (spike_no_more's gpu_slice:
        474 s against 402 s). More than a 10-minute call and most of a 30-minute session, hence the slices.
  gpu_<method>  one method's slice of `gpu` (`SLICES`; the same base config, trials and trial ids):
        gpu_adam, gpu_adam_clip (Adam + clip), gpu_spam: 12 trials each (spike {none, x1000} x 2 LRs x 3 seeds),
        2 programs of 6, the very programs `gpu` trains (tests/experiments/test_gpu_slices.py): 2 x 211 s = 422 s =
        ~7.0 minutes, ~8.1 (485 s) with +15 %; one queue call each:
            BUDGET=560 bash benchmarks/h200_queue.sh spam:gpu_adam@spam_code11   # then gpu_adam_clip, gpu_spam
        All run into one directory (same config.json), experiments/results/sweeps/spam_code11, which comes back
        as spam_code11.tgz and `launch.report` draws whole (docs/reproductions/spam.md has the commands).

Recipe (`RECIPE`, the Adam baseline; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init   | Adam ε |
  |--------|--------------|------|---------|--------------|--------|--------|
  | 0      | 0            | 0    | off     | 150 steps    | fan_in | 1e-8   |

  Spec §1(b): betas (0.9, 0.999) for every method, no weight decay, no z-loss, no qk-layernorm (LLaMA has none),
  warmup then cosine. The Adam baseline is torch.optim.Adam, ε 1e-8; Adam + clip adds global-norm clipping at 1;
  SPAM uses its own ε 1e-6 (E2 placement) and no global clipping. LLaMA's init (N(0, 0.02²) without the residual
  1/sqrt(2L)) is not GPT-2's; we keep fan_in [D]. The gpu preset runs 3 seeds per point; the Adam / Adam + clip
  group of 12 members trains as programs of `train.max_members` = 6 (~63 GiB by launch/memory.py).

Deviations: the cosine ends at optim.min_lr = 1e-5, not 0.1 x peak (a per-LR floor would split the report's LR
groups), and the models, data and step counts are far smaller than the paper's.
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis, slice_presets, slice_trials

LRS = {"tiny": (3e-3, 1e-2, 3e-2), "gpu": (1e-3, 3e-3)}
SPIKE_FRACTION = 0.4  # the injected spike lands at this fraction of the run
SPIKE_SCALE = 1000.0  # gradient multiplier of the injected spike
METHODS = {  # name -> overrides; one list entry per method keeps the trial ids readable
    "adam": {"optim.name": "adamw", "optim.clip": 0.0, "optim.eps": 1e-8},
    "adam+clip": {"optim.name": "adamw", "optim.clip": 1.0, "optim.eps": 1e-8},
    "spam": {"optim.name": "spam", "optim.clip": 0.0, "optim.eps": 1e-6},
}
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.clip": 0.0, "model.qk_norm": False,
    "optim.warmup_steps": 150, "model.init": "fan_in", "optim.eps": 1e-8,
}
BASELINE = {**METHODS["adam"], "train.spike_at_step": 0}  # the trials that RECIPE describes
SLICE_OF = {"adam": "adam", "adam+clip": "adam_clip", "spam": "spam"}  # method -> slice label ('+' kept out of
#                                                                        preset names: they name dirs and archives)
SLICES = slice_presets(SLICE_OF.values())
PRESETS = ("tiny", "gpu", *SLICES)


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "tiny":
        c = base.get_config("tiny")
        c.model.dtype = "float32"
        c.train.update(steps=300, log_every=5, eval_every=50, progress=False)
        c.optim.warmup_steps = 30
    else:
        c = base.get_config("9.4m")
        c.data.batch_size = 64
        c.optim.warmup_steps = 150
        c.train.update(steps=1500, log_every=10, eval_every=100, eval_batches=16, ckpt_every=500, max_members=6)
    c.model.qk_norm = False
    c.loss.z_loss = 0.0
    c.optim.update(b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, min_lr=1e-5, clip=0.0)
    c.train.spike_scale = SPIKE_SCALE
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    if preset == "tiny":
        return [t for _, t in _trials(preset)]
    return slice_trials(preset, _trials("gpu"))


def _trials(preset: str) -> list[tuple[str, dict]]:
    """(slice label, trial) in sweep order: method x spike x LR x seed, the method varying slowest."""
    spike_step = int(SPIKE_FRACTION * get_config(preset).train.steps)
    return [(SLICE_OF[name], trial) for name, method in METHODS.items()
            for trial in product(method=[method], **{"train.spike_at_step": [0, spike_step]}, lr=LRS[preset],
                                 **seed_axis(preset))]
