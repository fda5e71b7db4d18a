"""`--dry_run` of launch.train and launch.sweep: what the command would run, from the validated configs alone.

Nothing is compiled, no data is opened and nothing is written. For each program group (launch/sweep.py
`group_trials`; a run is one group of one) the plan prints its trials, the model and batch shapes, the parameter
count (launch/memory.py `n_params`, from the config), the training FLOPs per step (launch/flops.py: 6·N_matmul + the
attended-pairs attention term, N_matmul from the abstract parameter shapes of `nnx.eval_shape`), the memory estimate
per device (launch/memory.py) and an estimated wall time:

    steps · batch · seq_len · members / tokens_per_second      with --tokens_per_second (measured, e.g. by
                                                                benchmarks/throughput.py), else
    FLOPs of all steps / (n_devices · SUSTAINED_FLOPS[backend]) a rough default: an assumed sustained rate

The default is a guess to tell minutes from days, not a prediction; measure the throughput for anything better.
"""

from __future__ import annotations

import jax
from absl import flags

from launch import flops, memory, progress
from models import transformer

# Assumed sustained training FLOP/s per device for the default wall-time estimate: GPU 30% MFU of the H200's
# dense BF16 datasheet peak (launch/flops.py); CPU about what the tiny presets reach on one core of our 2-core CI box.
SUSTAINED_FLOPS = {"gpu": 0.3 * flops.DATASHEET_PEAK_TFLOPS * 1e12, "cpu": 2e10, "tpu": 1e14}


def define_flags() -> None:
    """--dry_run and --tokens_per_second, for launch.train and launch.sweep."""
    flags.DEFINE_bool("dry_run", False, "validate every trial and print the plan (groups, shapes, parameters, FLOPs, "
                      "memory, wall time); compile and write nothing")
    flags.DEFINE_float("tokens_per_second", 0.0, "--dry_run: the throughput of one member for the wall-time "
                       "estimate (0 = launch/plan.py's default FLOP rate)")


def matmul_params(cfg, params) -> int:
    """N_matmul: every kernel of >= 2 axes except the embedding table, plus V·d when the head is tied to it."""
    embed = params["embed"]["embedding"]
    others = [x.shape for x in jax.tree.leaves(params) if x is not embed]
    return flops.matmul_params(others, tied_head_size=int(embed.size) if cfg.model.tie_embeddings else 0)


def model_flops_per_token(cfg, n_matmul_params: int) -> float:
    """launch/flops.py's training FLOPs per token for `cfg` (attention=ls local heads cost their window)."""
    head_dim, _ = transformer.dims(cfg.model)
    return flops.model_flops_per_token(
        n_matmul_params, n_layers=cfg.model.n_layers, head_dim=head_dim, seq_len=cfg.data.seq_len,
        windows=flops.head_windows(cfg.model),
    )


def config_flops_per_token(cfg) -> float:
    """`model_flops_per_token` of `cfg`'s model, from its shapes alone."""
    return model_flops_per_token(cfg, matmul_params(cfg, abstract_params(cfg)))


def abstract_params(cfg):
    """The parameters' shapes (jax.ShapeDtypeStruct leaves), nothing allocated or compiled."""
    from flax import nnx

    model = nnx.eval_shape(lambda: transformer.Transformer(cfg.model, rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param).to_pure_dict()


def describe(groups: list[list[tuple[str, object]]], *, batched: bool, tokens_per_second: float = 0.0,
             n_devices: int | None = None, backend: str | None = None) -> str:
    """The plan of program groups of (trial id, validated config) pairs. `batched`: each group trains as one
    program of its members (launch.sweep --executor=batched), else its trials one after another."""
    n_devices = n_devices or jax.device_count()
    backend = backend or jax.default_backend()
    n_trials = sum(len(g) for g in groups)
    lines = [f"plan: {n_trials} trial(s) in {len(groups)} program group(s), "
             f"{'batched' if batched else 'one trial at a time'}, on {n_devices} {backend} device(s)"]
    total_s = total_flops = 0.0
    for k, group in enumerate(groups, 1):
        cfg = group[0][1]
        m, d, t = cfg.model, cfg.data, cfg.train
        members = len(group) if batched and len(group) > 1 and not t.rewind.enabled else 1
        head_dim, d_ff = transformer.dims(m)
        per_token = model_flops_per_token(cfg, matmul_params(cfg, abstract_params(cfg)))
        tokens = d.batch_size * d.seq_len
        group_flops = per_token * tokens * t.steps * len(group)
        seconds = (tokens * t.steps * len(group) / tokens_per_second if tokens_per_second
                   else group_flops / (n_devices * SUSTAINED_FLOPS.get(backend, SUSTAINED_FLOPS["cpu"])))
        total_s, total_flops = total_s + seconds, total_flops + group_flops
        lines += [
            f"group {k}/{len(groups)}: {len(group)} trial(s)"
            + (f" as one program of {members} members" if members > 1 else ""),
            *(f"  trial {tid}" for tid, _ in group),
            f"  model d={m.d_model} L={m.n_layers} H={m.n_heads} Dh={head_dim} d_ff={d_ff} V={m.vocab_size} "
            f"attention={m.attention} mlp={m.mlp} {m.dtype}; {t.steps} steps of batch {d.batch_size} x seq "
            f"{d.seq_len} ({d.source})",
            f"  params {memory.n_params(m) / 1e6:.2f}M; {per_token * tokens / 1e9:.3g} GFLOP per step per trial "
            f"({per_token / 1e6:.3g} MFLOP/token)",
            f"  {memory.summary(cfg, members=members, backend=backend, n_devices=n_devices)}",
            f"  wall time ~{progress.duration(seconds)}",
        ]
    rate = (f"at {tokens_per_second:.4g} tokens/s per trial" if tokens_per_second else
            f"at an assumed {SUSTAINED_FLOPS.get(backend, SUSTAINED_FLOPS['cpu']) / 1e12:.3g} TFLOP/s per device "
            "(--tokens_per_second for a measured rate)")
    lines.append(f"total: {total_flops:.3g} FLOPs, wall time ~{progress.duration(total_s)} {rate}; "
                 "dry run: nothing compiled or written")
    return "\n".join(lines)
