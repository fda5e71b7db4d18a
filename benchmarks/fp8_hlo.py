"""Does one FP8 linear (models/fp8.py) lower to FP8 GEMMs? Jits forward + backward of x . W at N x K x K, prints
the FP8 GEMM custom calls found in the optimized HLO, and writes the HLO text to --out.

    python -m benchmarks.fp8_hlo --size=4096 --out=/tmp/fp8_linear.hlo.txt

On an H100/H200 expect three f8 GEMMs (y, dx, dW): cuBLASLt custom calls whose target names f8
(`__cublas$lt$matmul$f8`). On CPU the dots are upcast and none is found (the numerics are simulated, not lowered).
Exit status 0 either way; the printed verdict is the result.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp

from absl import flags

from experiments import base
from launch import cli
from models import fp8


def main(argv) -> None:
    del argv
    args = flags.FLAGS

    cfg = base.get_config("tiny").model
    cfg.fp8.update(enabled=True, scaling=args.scaling)
    r = fp8.recipe(cfg)
    dt, n = jnp.dtype(args.dtype), args.size
    x = jax.random.normal(jax.random.key(0), (n, n), dt)
    w = jax.random.normal(jax.random.key(1), (n, n), dt) * n**-0.5
    hist, one = jnp.zeros((r.amax_history,), jnp.float32), jnp.ones((), jnp.float32)

    def loss(x, w, gh, gs):
        sx, _ = fp8.next_scale(x, hist, one, r.e4m3, r)
        sw, _ = fp8.next_scale(w, hist, one, r.e4m3, r)
        y = fp8.fp8_dot(r, 1, dt, dt, x, w, sx, sw, gh, gs)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))
    hlo = step.lower(x, w, hist, one).compile().as_text()
    Path(args.out).write_text(hlo)
    targets = re.findall(r'custom_call_target="([^"]+)"', hlo)
    f8_calls = [t for t in targets if "f8" in t.lower()]
    print(f"device: {jax.devices()[0].device_kind}; custom calls: {sorted(set(targets)) or 'none'}")
    print(f"FP8 GEMM custom calls: {len(f8_calls)} {sorted(set(f8_calls))}")
    print("verdict:", "FP8 GEMMs" if f8_calls else "no FP8 GEMM (simulated or upcast)", f"-> HLO in {args.out}")


if __name__ == "__main__":
    flags.DEFINE_integer("size", 4096, "N = K = M of the [N, K] x [K, M] linear")
    flags.DEFINE_string("dtype", "bfloat16", "the model's compute dtype (x, W and dx)")
    flags.DEFINE_enum("scaling", "delayed", list(fp8.SCALINGS), "FP8 scaling recipe")
    flags.DEFINE_string("out", "fp8_linear.hlo.txt", "where the optimized HLO text goes")
    cli.run(main)
