"""Helpers shared by the end-to-end tests (imported as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from launch import loop, mesh as mesh_lib, step as step_lib

REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *args, timeout=240) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repo root, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def final_params(workdir: Path, cfg):
    """(step, parameters as host numpy arrays) of the newest checkpoint of the run in `workdir`."""
    step, state = loop.restore_newest(step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh)), workdir)
    return step, jax.tree.map(np.asarray, state["params"])


def restore(directory: Path, step: int, cfg) -> dict:
    """The member state saved at `step` in an orbax checkpoint directory (checkpoints/ or decayed/), on the host."""
    from launch import checkpoint

    prog = step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh))
    ckpt = checkpoint.Checkpointer(directory, keep=None)
    try:
        return jax.tree.map(np.asarray, ckpt.restore(step, prog.abstract_state()))
    finally:
        ckpt.close()


def largest_intermediate(fn, *args) -> int:
    """The element count of the largest array any equation of `fn(*args)`'s jaxpr produces, nested jaxprs (scan
    bodies, checkpoints, custom rules) included: what a memory claim such as "never T x T" is checked against."""
    from jax.extend import core

    def walk(jaxpr) -> int:
        biggest = 0
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                biggest = max(biggest, int(np.prod(getattr(v.aval, "shape", ()))))
            for p in eqn.params.values():
                for sub in p if isinstance(p, (tuple, list)) else (p,):
                    if isinstance(sub, core.ClosedJaxpr):
                        biggest = max(biggest, walk(sub.jaxpr))
                    elif isinstance(sub, core.Jaxpr):
                        biggest = max(biggest, walk(sub))
        return biggest

    return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def triton_calls_on_h200(fn, *args) -> int:
    """How many Triton kernels (Pallas calls) `jax.jit(fn)(*args)` lowers to for an H200, on a machine without a
    GPU (an abstract device; compiling that IR with ptxas needs the GPU itself). `args`: ShapeDtypeStructs."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=132, platform="gpu")
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device)):
        lowered = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))
    return lowered.as_text().count("__gpu$xla.gpu.triton")
