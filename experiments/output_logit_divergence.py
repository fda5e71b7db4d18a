"""Output-logit divergence without weight decay or z-loss, and its two fixes (Wortsman et al. 2023, "Small-scale
proxies for large-scale Transformer training instabilities", §3.2, Figs. 3-4; spec model-variants §6(d) item 4,
optimizers-and-metrics §4).

Claim (Figs. 3-4): with neither weight decay nor z-loss, at high LR the output logits drift far negative (the
mean output logit falls steadily) towards the end of training and the loss diverges; the paper's example is the
2.4m model at LR 0.1. z-loss 1e-4 (a penalty on log² Z) removes the drift and the divergence; weight decay mitigates it
(for the larger models, spec §6(d)). qk-layernorm stays on in every arm so that the attention-
logit growth of Figure 1 (page 1) is not what diverges ([D]: the spec does not record Fig. 3's qk-layernorm setting).

    python -m launch.sweep --config=experiments/output_logit_divergence.py:tiny --workdir=runs/old --executor=batched
    python -m launch.report runs/old --metric=logit_mean     # the drift (also logz_mean, logit_min)

Arms (`ARMS`) x the LR grid (`LRS`): none (no weight decay, no z-loss: the diverging recipe), z_loss (z-loss 1e-4),
weight_decay (independent weight decay 1e-4 on every tensor). Weight decay is an optimizer scalar, so the `none`
and `weight_decay` arms of one LR grid train as one batched program; z-loss is a loss field and splits off its own.
Diagnostics (`train.diag_every`) log logit_mean, logit_min, logit_max, logz_mean (models/transformer.py
`output_logit_stats`) on the first diag_rows rows of the batch.

Presets (`get_config(arg)`):
  tiny  CPU seconds: the base tiny model (d 64, 2 layers, seq 64) in float32 on `classics`, 300 steps of 16 x 64
        after a 30-step warmup, LR {3e-2, 1e-1, 3e-1}, diagnostics every 25 steps: 9 trials.
        Measured (2 CPU cores, 2 batched programs, 100 s + 60 s; docs/reproductions/output_logit_divergence.md):
        it does NOT show the divergence at this scale. No run diverges; at LR 0.1 / 0.3 every arm ends at eval
        loss 3.97-3.99 (3.82-3.83 at 3e-2). The mean output logit falls in every arm alike, -1.4 at step 75 to
        -2.5..-2.7 at step 300, and log Z rises to 8.1-8.5; z-loss lowers the final log Z by only ~0.1-0.2 and
        weight decay 1e-4 changes nothing visible in 300 steps. The tiny preset checks that the arms run and the
        diagnostics are logged; the claim needs the gpu preset.
  gpu   one H200: the 2.4m ladder shape (d 256, 3 layers, 4 heads of 64, vocab 32101), batch 64 x 512, 1000 steps
        after a 100-step warmup (32.8M tokens: 0.72 epochs of the 45.7M-token `code11` training split,
        docs/reproductions/README.md; page 2's runs were on code10),
        LR {3e-2, 1e-1, 3e-1} (the paper's example, 0.1, in the middle) x 3 arms x 3 seeds = 27 trials, as 3
        programs of `train.max_members` = 9 (the none + weight_decay group of 18 members, the z-loss group of 9).
        Estimate from page 1's 125-135 s per 7-member 2.4m program: ~170 s a program, ~9 minutes in all (the
        measured time is on docs/reproductions/output_logit_divergence.md).

Recipe (`RECIPE`, the `none` arm; the others change only their own field; tests/experiments/test_recipes.py):

  | z-loss | weight decay | clip | qk-norm | warmup (gpu) | init   | Adam ε |
  |--------|--------------|------|---------|--------------|--------|--------|
  | 0      | 0            | 1.0  | on      | 100 steps    | fan_in | 1e-8   |

  The paper's recipe (page 1, spec §6(b)) with its two output-logit stabilisers removed; the weight_decay arm
  restores its independent 1e-4 on every tensor (`optim.decay_all`, NanoDO), the z_loss arm its 1e-4.

Deviations: 1000 steps of 64 x 512 after a 100-step warmup instead of 1e5 of 256 x 512 after 5e3 (page 1); the
drift grows with training length, so a run this short may show it without the divergence the paper reaches. The
cosine ends at optim.min_lr = 1e-5 (the paper's), so "towards the end" is at a small LR: the drift is integrated
over the run. Data: the code11 corpus (page 2's runs: code10), not C4 (its page says what that may change).
"""

from __future__ import annotations

from experiments import base
from experiments.sweeps import product, seed_axis

PRESETS = ("tiny", "gpu")
LRS = {"tiny": (3e-2, 1e-1, 3e-1), "gpu": (3e-2, 1e-1, 3e-1)}
ARMS = {  # name -> overrides; every arm names both fields so no arm inherits another's stabiliser
    "none": {"loss.z_loss": 0.0, "optim.weight_decay": 0.0},
    "z_loss": {"loss.z_loss": 1e-4, "optim.weight_decay": 0.0},
    "weight_decay": {"loss.z_loss": 0.0, "optim.weight_decay": 1e-4},
}
RECIPE = {
    "loss.z_loss": 0.0, "optim.weight_decay": 0.0, "optim.independent_wd": True, "optim.decay_all": True,
    "optim.clip": 1.0, "model.qk_norm": True, "optim.warmup_steps": 100, "model.init": "fan_in", "optim.eps": 1e-8,
}
BASELINE = ARMS["none"]  # the arm that RECIPE describes


def get_config(arg: str | None = None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "tiny":
        c = base.get_config("tiny")
        c.model.update(dtype="float32", qk_norm=True)
        c.optim.warmup_steps = 30
        c.train.update(steps=300, log_every=10, eval_every=100, eval_batches=8, diag_every=25, ckpt_every=0,
                       progress=False)
    else:
        c = base.get_config("2.4m")
        c.data.batch_size = 64
        c.optim.warmup_steps = 100
        c.train.update(steps=1000, log_every=50, eval_every=250, eval_batches=16, diag_every=50, ckpt_every=500,
                       max_members=9)
    c.loss.z_loss = 0.0
    c.optim.update(weight_decay=0.0, independent_wd=True, decay_all=True, clip=1.0, eps=1e-8)
    return c


def get_sweep(arg: str | None = None) -> list[dict]:
    preset = base.preset_name(arg, PRESETS)
    return product(arm=list(ARMS.values()), lr=LRS[preset], **seed_axis(preset))
