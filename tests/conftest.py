"""Shared pytest set-up: tests/ on sys.path (so a test in any sub-folder can `import helpers`), the tiny configs
and a session-wide cache of compiled runtimes."""

import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(**overrides)`: experiments/base.py:tiny on the synthetic language, 40 steps logged every 5,
    evaluated every 20 on 2 batches, checkpointed every 10 (the end-to-end tests' run)."""
    from experiments import base
    from launch import configs

    def make(**overrides):
        return configs.apply_overrides(base.get_config("tiny"), {
            "data.source": "synthetic", "train.steps": 40, "train.log_every": 5, "train.eval_every": 20,
            "train.ckpt_every": 10, "train.eval_batches": 2, **overrides,
        })

    return make


@pytest.fixture(scope="session")
def runtime():
    """`runtime(cfg)`: a `loop.Runtime` shared by every test whose config has the same program (launch.sweep's
    `program_key`), so each program compiles once per session."""
    from launch import loop, sweep

    cache = {}

    def get(cfg):
        key = sweep.program_key(cfg)
        if key not in cache:
            cache[key] = loop.Runtime(cfg)
        return cache[key]

    return get


# ---- the fault suite's counts (tests/faults/conftest.py writes them per process) -------------------------------------

FAULT_COUNTS_ENV = "PROXYLAB_FAULT_COUNTS_DIR"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist), before any worker starts
        os.environ[FAULT_COUNTS_ENV] = tempfile.mkdtemp(prefix="proxylab_fault_counts_")


def pytest_terminal_summary(terminalreporter):
    injected, lost = collections.Counter(), collections.Counter()
    for f in Path(os.environ.get(FAULT_COUNTS_ENV, "/nonexistent")).glob("*.json"):
        rows = json.loads(f.read_text())
        injected.update(rows["injected"])
        lost.update(rows["lost"])
    if injected:
        terminalreporter.write_sep("-", "faults injected (tests/faults)")
        for kind, n in sorted(injected.items()):
            terminalreporter.write_line(f"{n:4d}  {kind}")
        terminalreporter.write_line(f"results lost: {sum(lost.values())}")
