"""The fault-injection suite (issue 13): uninterrupted reference runs shared by its tests, and the count of faults
injected per kind and of results lost, printed in pytest's terminal summary. Under pytest-xdist each worker writes
its counts into a directory the controller made (`COUNTS_ENV`), and the controller adds them up."""

from __future__ import annotations

import collections
import json
import os
import tempfile
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


COUNTS_ENV = "PROXYLAB_FAULT_COUNTS_DIR"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist): before any worker starts
        os.environ[COUNTS_ENV] = tempfile.mkdtemp(prefix="proxylab_fault_counts_")


def pytest_sessionfinish(session):
    worker = getattr(session.config, "workerinput", {}).get("workerid")
    if worker and os.environ.get(COUNTS_ENV):
        rows = {"injected": dict(faultkit.INJECTED), "lost": dict(faultkit.LOST)}
        (Path(os.environ[COUNTS_ENV]) / f"{worker}.json").write_text(json.dumps(rows))


def pytest_terminal_summary(terminalreporter):
    injected, lost = collections.Counter(faultkit.INJECTED), collections.Counter(faultkit.LOST)
    for f in Path(os.environ.get(COUNTS_ENV, "/nonexistent")).glob("*.json"):
        rows = json.loads(f.read_text())
        injected.update(rows["injected"])
        lost.update(rows["lost"])
    if not injected:
        return
    terminalreporter.write_sep("-", "faults injected")
    for kind, n in sorted(injected.items()):
        terminalreporter.write_line(f"{n:4d}  {kind}")
    terminalreporter.write_line(f"results lost: {sum(lost.values())}")
