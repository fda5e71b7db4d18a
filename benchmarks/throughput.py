"""Training throughput and MFU of the real train step for any config.

    python -m benchmarks.throughput --config=experiments/base.py:42m [--config.x.y=v ...] [--steps=20] [--out=f.jsonl]

Times `launch.train`'s jitted train step (forward, backward, clipping, AdamW; donated state) on random tokens that
already live on the device, after `--warmup` untimed steps (compilation). Reports:

    tokens/s      batch_size * seq_len * steps / wall time (block_until_ready at both ends)
    mfu           model FLOPs/s over the datasheet peak (`--peak_tflops`, default 989: H200 dense bf16), with model
                  FLOPs per token from launch/flops.py: 6 N_matmul + 12 Σ_heads Dh T_eff per layer, T_eff the
                  mean number of keys a query attends to ((T + 1) / 2 causal; a local head of window w: ≈ w)
    mfu_measured_peak   the same over the measured bf16 GEMM peak (`--measured_peak_tflops`, default 790, DESIGN §7)
    peak memory   the device allocator's high-water mark, where the backend reports it

Rows written before this rule (RESULTS.md says which) have `mfu` over 790 TFLOP/s with 6 N + 12 L H Dh T.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
import jax.numpy as jnp
from absl import flags

from launch import cli, configs, flops, mesh as mesh_lib, step as step_lib
from launch.plan import matmul_params, model_flops_per_token  # the one FLOP count of a config
from models import transformer


def step_setup(cfg, members: int = 1):
    """(group, states, hparams, batches): the loop's compiled train step over `members` members sharing the batch
    (launch/step.py; members = 1 is a single run), initialised states and 4 batches of random tokens on the device."""
    group = step_lib.compile_group(step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh)), members)
    states = group.init(jax.device_put(np.zeros(members, np.int32), group.member_sharding))
    hparams = step_lib.stacked_hparams(group, [cfg] * members)
    shape = (cfg.data.batch_size, cfg.data.seq_len + 1)
    batches = [
        jax.device_put(jax.random.randint(jax.random.key(i), shape, 0, cfg.model.vocab_size, jnp.int32),
                       group.batch_sharding)
        for i in range(4)
    ]
    return group, states, hparams, batches


def benchmark(cfg, steps: int, warmup: int, peak_tflops: float, measured_peak_tflops: float, members: int = 1) -> dict:
    """Times the train step; with members > 1, the batched step of a group (tokens count every member's)."""
    group, state, hparams, batches = step_setup(cfg, members)
    step_fn = group.step
    t0 = time.perf_counter()
    for i in range(warmup):
        state, m = step_fn(state, batches[i % 4], hparams)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(steps):
        state, m = step_fn(state, batches[i % 4], hparams)
    jax.block_until_ready((state, m))
    seconds = time.perf_counter() - t0

    params = jax.tree.map(lambda x: x[0], state["params"])
    n_matmul = matmul_params(cfg, params)
    tokens_per_s = members * cfg.data.batch_size * cfg.data.seq_len * steps / seconds
    flops_per_token = model_flops_per_token(cfg, n_matmul)
    stats = jax.devices()[0].memory_stats() or {}
    return dict(
        device=jax.devices()[0].device_kind,
        n_devices=jax.device_count(),
        params=transformer.count_params(params),
        members=members,
        matmul_params=n_matmul,
        batch_size=cfg.data.batch_size,
        seq_len=cfg.data.seq_len,
        step_ms=1e3 * seconds / steps,
        tokens_per_second=tokens_per_s,
        flops_per_token=flops_per_token,
        model_tflops_per_second=tokens_per_s * flops_per_token / 1e12,
        mfu=flops.mfu(tokens_per_s, flops_per_token, peak_tflops, jax.device_count()),
        mfu_measured_peak=flops.mfu(tokens_per_s, flops_per_token, measured_peak_tflops, jax.device_count()),
        peak_tflops=peak_tflops,
        measured_peak_tflops=measured_peak_tflops,
        peak_memory_gib=stats.get("peak_bytes_in_use", 0) / 2**30,
        warmup_seconds=compile_s,
        final_loss=float(np.mean(m["loss"])),  # over members
    )


def main(argv) -> None:
    del argv
    cfg = FLAGS.config
    configs.validate(cfg, n_devices=jax.device_count())
    result = dict(label=FLAGS.label, **benchmark(cfg, FLAGS.steps, FLAGS.warmup, FLAGS.peak_tflops, FLAGS.measured_peak_tflops, FLAGS.members))
    line = json.dumps(result)
    print(line, flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    flags.DEFINE_integer("steps", 20, "timed steps")
    flags.DEFINE_integer("warmup", 3, "untimed steps before timing (compilation, autotuning)")
    flags.DEFINE_float("peak_tflops", flops.DATASHEET_PEAK_TFLOPS, "datasheet peak TFLOP/s per device: the headline `mfu`")
    flags.DEFINE_float("measured_peak_tflops", flops.MEASURED_PEAK_TFLOPS, "measured GEMM peak TFLOP/s: `mfu_measured_peak`")
    flags.DEFINE_string("out", "", "append the result as one JSON line to this file")
    flags.DEFINE_string("label", "", "a name for this measurement, stored in the result")
    flags.DEFINE_integer("members", 1, "time the batched step of a group of this many members (tokens count all of them)")
    FLAGS = flags.FLAGS
    cli.run(main, config="file")
