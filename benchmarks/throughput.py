"""Training throughput and MFU of the real train step for any config.

    python -m benchmarks.throughput --config=experiments/base.py:42m [--config.x.y=v ...] [--steps=20] [--out=f.jsonl]

Times `launch.train`'s jitted train step (forward, backward, clipping, AdamW; donated state) on random tokens that
already live on the device, after `--warmup` untimed steps (compilation). Reports:

    tokens/s      batch_size * seq_len * steps / wall time (block_until_ready at both ends)
    MFU           model FLOPs/s over the peak, with model FLOPs per token = 6 N + 12 L H Dh T   (PaLM, App. B)
                  N = every parameter that takes part in a matmul: all non-embedding parameters plus the output
                  head (V d, also when tied); the input-embedding lookup is not a matmul. The attention term
                  counts the full T x T score and value matmuls (not halved for causality), as PaLM does.
    peak memory   the device allocator's high-water mark, where the backend reports it

`--peak_tflops` defaults to 790, the bf16 dense matmul rate measured on our H200 (DESIGN §7).
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
from absl import flags

from launch import cli, configs, mesh as mesh_lib, train
from models import transformer

flags.DEFINE_integer("steps", 20, "timed steps")
flags.DEFINE_integer("warmup", 3, "untimed steps before timing (compilation, autotuning)")
flags.DEFINE_float("peak_tflops", 790.0, "peak bf16 TFLOP/s of the device for MFU")
flags.DEFINE_string("out", "", "append the result as one JSON line to this file")
flags.DEFINE_string("label", "", "a name for this measurement, stored in the result")
FLAGS = flags.FLAGS


def model_flops_per_token(cfg, n_matmul_params: int) -> float:
    head_dim, _ = transformer.dims(cfg.model)
    return 6.0 * n_matmul_params + 12.0 * cfg.model.n_layers * cfg.model.n_heads * head_dim * cfg.data.seq_len


def matmul_params(cfg, params) -> int:
    embed = int(params["embed"]["embedding"].size)
    tied_head = embed if cfg.model.tie_embeddings else 0
    return transformer.count_params(params) - embed + tied_head


def benchmark(cfg, steps: int, warmup: int, peak_tflops: float) -> dict:
    mesh = mesh_lib.make_mesh(cfg.mesh)
    prog = train.build_program(cfg, mesh)
    init, step_fn, _, _ = train.jit_program(prog)
    state = init()
    hparams = train.hparams_array(cfg)
    batch_sharding = jax.sharding.NamedSharding(mesh, mesh_lib.batch_spec())
    shape = (cfg.data.batch_size, cfg.data.seq_len + 1)
    batches = [
        jax.device_put(jax.random.randint(jax.random.key(i), shape, 0, cfg.model.vocab_size, jnp.int32), batch_sharding)
        for i in range(4)
    ]
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

    n_matmul = matmul_params(cfg, state["params"])
    tokens_per_s = cfg.data.batch_size * cfg.data.seq_len * steps / seconds
    flops_per_token = model_flops_per_token(cfg, n_matmul)
    stats = jax.devices()[0].memory_stats() or {}
    return dict(
        device=jax.devices()[0].device_kind,
        n_devices=jax.device_count(),
        params=transformer.count_params(state["params"]),
        matmul_params=n_matmul,
        batch_size=cfg.data.batch_size,
        seq_len=cfg.data.seq_len,
        step_ms=1e3 * seconds / steps,
        tokens_per_second=tokens_per_s,
        model_tflops_per_second=tokens_per_s * flops_per_token / 1e12,
        mfu=tokens_per_s * flops_per_token / (peak_tflops * 1e12 * jax.device_count()),
        peak_memory_gib=stats.get("peak_bytes_in_use", 0) / 2**30,
        warmup_seconds=compile_s,
        final_loss=float(m["loss"]),
    )


def main(argv) -> None:
    del argv
    cfg = FLAGS.config
    configs.validate(cfg, n_devices=jax.device_count())
    result = dict(label=FLAGS.label, **benchmark(cfg, FLAGS.steps, FLAGS.warmup, FLAGS.peak_tflops))
    line = json.dumps(result)
    print(line, flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    cli.run(main, config="file")
