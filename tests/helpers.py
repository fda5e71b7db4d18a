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
