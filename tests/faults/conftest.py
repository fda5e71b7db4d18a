"""The fault-injection suite (issue 13): uninterrupted reference runs shared by its tests, and the count of faults
injected per kind and of results lost, printed in pytest's terminal summary."""

from __future__ import annotations

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


def pytest_terminal_summary(terminalreporter):
    if not faultkit.INJECTED:
        return
    terminalreporter.write_sep("-", "faults injected")
    for kind, n in sorted(faultkit.INJECTED.items()):
        terminalreporter.write_line(f"{n:4d}  {kind}")
    terminalreporter.write_line(f"results lost: {sum(faultkit.LOST.values())}")
