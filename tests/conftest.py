"""Shared pytest set-up: tests/ on sys.path (so a test in any sub-folder can `import helpers`), the tiny configs
and a session-wide cache of compiled runtimes."""

import sys
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
