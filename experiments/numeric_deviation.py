"""Numeric deviation of attention kernels and precisions ("Is Flash Attention Stable?", Golden et al. 2024, arXiv
2405.02803; spec model-variants §8.1 [R]).

The paper's training-level question: does an optimisation (a fused attention kernel, a lower precision) change
training more than a difference no one would call a change? Two runs identical but for the `variant` overrides
(same init, same data order) are compared with the yardstick of the paper, the same baseline run with its init
moved by one ULP. Every `train.log_every` steps, `launch/deviation.py` records the parameter difference of both
pairs: the RMS over all parameters, the max |Δ| over tensors, and the mean over tensors of the 1-D Wasserstein
distance between the flattened weights (the paper's metric).

    python -m launch.deviation --config=experiments/numeric_deviation.py:tiny --workdir=runs/deviation_tiny
    # -> deviation.jsonl (a row per logged step), deviation.json (the arms and the final ratio)

Presets (`get_config(arg)`, the baseline run; `get_arms(arg)`, the (baseline, variant) overrides):
  tiny  CPU seconds: the tiny model (d 64, 2 layers) on the synthetic language, 60 steps; float32 vs bfloat16
        matmuls and attention (`model.dtype`): CPU has one attention kernel, so precision stands in for it.
  gpu   one H200: the 9.4m ladder shape in bfloat16, 2000 steps of 64 x 512; XLA attention vs cuDNN flash
        attention (`model.attention_impl`), the paper's comparison.

Deviations: no microbenchmark against an FP64 golden attention (the paper's part 1), one seed per pair, and a
1-ULP move of every parameter element (towards +inf) as the init perturbation [D].
"""

from __future__ import annotations

from experiments import base

PRESETS = ("tiny", "gpu")

ARMS = {  # preset -> (baseline overrides, variant overrides); the 1-ULP run is the baseline's
    "tiny": ({"model.dtype": "float32"}, {"model.dtype": "bfloat16"}),
    "gpu": ({"model.attention_impl": "xla"}, {"model.attention_impl": "cudnn"}),
}


def get_config(arg=None):
    preset = base.preset_name(arg, PRESETS)
    if preset == "tiny":
        c = base.get_config("tiny")
        c.data.source = "synthetic"
        c.train.update(steps=60, log_every=5, eval_every=60, ckpt_every=0, progress=False)
    else:
        c = base.get_config("9.4m")
        c.data.batch_size = 64
        c.optim.warmup_steps = 200
        c.train.update(steps=2000, log_every=50, eval_every=2000, ckpt_every=0)
    return c


def get_arms(arg=None) -> tuple[dict, dict]:
    return ARMS[base.preset_name(arg, PRESETS)]
