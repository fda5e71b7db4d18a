"""What the fault-injection tests share (imported as `faultkit`; pytest puts this folder on sys.path): the tiny
config, the commands with a fault (`PROXYLAB_FAULT`, launch/faults.py), and bitwise comparisons of run outputs."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np

import helpers
from experiments import base
from launch import configs, metrics as metrics_lib, records

# Faults injected per kind and results lost (trials missing from results.jsonl), printed by conftest.py.
INJECTED: collections.Counter = collections.Counter()
LOST: collections.Counter = collections.Counter()

# d 32, 2 layers, seq 32, batch 4, 20 steps: checkpoints at 5, 10, 15, 20 (the newest 3 kept), evals at 10 and 20
OVERRIDES = {
    "data.source": "synthetic", "model.d_model": 32, "data.seq_len": 32, "data.batch_size": 4, "train.steps": 20,
    "train.log_every": 5, "train.eval_every": 10, "train.ckpt_every": 5, "train.eval_batches": 2,
    "train.keep_ckpts": 3, "train.progress": False,
}
LRS = (1e-3, 1e-2)  # a sweep's trials: one program group
TIMING = ("tokens_per_second", "wall_seconds")


def config(**extra):
    return configs.apply_overrides(base.get_config("tiny"), {**OVERRIDES, **extra})


def train_args(workdir: Path) -> list[str]:
    return ["--config=experiments/base.py:tiny", *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
            f"--workdir={workdir}"]


def study_file(directory: Path) -> Path:
    """A study of the tiny config with `OVERRIDES` over `LRS`."""
    path = directory / "study.py"
    path.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(helpers.REPO)!r})
        from experiments import base
        from launch import configs

        def get_config(arg=None):
            return configs.apply_overrides(base.get_config("tiny"), {OVERRIDES!r})

        def get_sweep(arg=None):
            return {[{"optim.lr": lr} for lr in LRS]!r}
    """))
    return path


def run(module: str, *args, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m module args` from the repo root with PROXYLAB_FAULT=`fault` (unset when None)."""
    env = {k: v for k, v in os.environ.items() if k != "PROXYLAB_FAULT"}
    if fault is not None:
        env["PROXYLAB_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", module, *args], cwd=helpers.REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def outputs(workdir: Path, cfg) -> dict:
    """A run directory's summary and metrics rows (timing dropped) and its final parameters (host arrays)."""
    summary = records.finished_summary(workdir)
    step, params = helpers.final_params(workdir, cfg) if summary and not summary["diverged"] else (None, None)
    return dict(summary=summary and untimed(summary), step=step, params=params,
                rows=[untimed(r) for r in metrics_lib.read_jsonl(workdir / "metrics.jsonl")])


def assert_same_run(a: dict, b: dict) -> None:
    """Bitwise: summaries, metrics rows and final parameters."""
    assert a["summary"] == b["summary"]
    assert a["rows"] == b["rows"]
    assert a["step"] == b["step"]
    if a["params"] is not None:
        jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


def tree_digest(directory: Path) -> dict:
    """{relative path: sha256} of every file under `directory`: "nothing changed" is equality of two of these."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}
