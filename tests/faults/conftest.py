"""The fault-injection suite (issue 13): uninterrupted reference runs shared by its tests, and the count of faults
injected per kind and of results lost, written for tests/conftest.py, which prints them in pytest's terminal
summary (added up over pytest-xdist workers: the controller never loads this file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import faultkit


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, runtime):
    """(run directory, outputs) of the uninterrupted run of `faultkit.config()`."""
    from launch import loop

    cfg = faultkit.config()
    workdir = tmp_path_factory.mktemp("reference") / "run"
    loop.train(cfg, workdir, rt=runtime(cfg), verbose=False)
    return workdir, faultkit.outputs(workdir, cfg)


@pytest.fixture(scope="session")
def reference_sweeps(tmp_path_factory):
    """`reference_sweeps(executor)`: the directory of the uninterrupted sweep of `faultkit.study_file` (run once)."""
    from launch import sweep

    done = {}

    def get(executor: str):
        if executor not in done:
            workdir = tmp_path_factory.mktemp(f"reference_{executor}")
            sweep.run_sweep(faultkit.config(), [{"optim.lr": lr} for lr in faultkit.LRS], workdir, executor)
            done[executor] = workdir
        return done[executor]

    return get


def pytest_sessionfinish(session):
    """This process's counts, for tests/conftest.py's terminal summary (which adds up every xdist worker's)."""
    if os.environ.get("PROXYLAB_FAULT_COUNTS_DIR") and faultkit.INJECTED:
        worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
        rows = {"injected": dict(faultkit.INJECTED), "lost": dict(faultkit.LOST)}
        (Path(os.environ["PROXYLAB_FAULT_COUNTS_DIR"]) / f"{worker}.json").write_text(json.dumps(rows))
