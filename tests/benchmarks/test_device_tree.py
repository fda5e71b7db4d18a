"""benchmarks/device_tree.sh: holds back the sweep directories a device call does not need, and puts them back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_tree.sh"


def run(cwd, *args, held):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env={**os.environ, "HELD": str(held)}).stdout


def test_out_keeps_the_named_and_back_restores_all(tmp_path):
    repo, held = tmp_path / "repo", tmp_path / "held"
    sweeps = repo / "experiments" / "results" / "sweeps"
    for name in ["a_code11", "b_code11", "c_tiny"]:
        (sweeps / name / "trials").mkdir(parents=True)
        (sweeps / name / "trials" / "metrics.jsonl").write_text(name * 1000)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    out = run(repo, "out", "b_code11", held=held)
    assert sorted(p.name for p in sweeps.iterdir()) == ["b_code11"]
    assert sorted(p.name for p in held.iterdir()) == ["a_code11", "c_tiny"]
    assert "held 2 sweep directories" in out and "left: 8000 bytes" in out  # b_code11 alone travels
    run(repo, "back", held=held)
    assert sorted(p.name for p in sweeps.iterdir()) == ["a_code11", "b_code11", "c_tiny"]
    assert (sweeps / "a_code11" / "trials" / "metrics.jsonl").read_text() == "a_code11" * 1000
    assert not held.exists()
