"""A full disk (a 1 MB tmpfs) and a read-only workdir: one clear line at the failed write (no traceback), exit
status 2, nothing corrupted, and the rerun once the filesystem takes writes again resumes and ends bitwise equal to
an uninterrupted run. Skipped where mounting a tmpfs is not permitted (not root)."""

from __future__ import annotations

import json
import subprocess

import pytest

import faultkit
from launch import checkpoint


@pytest.fixture
def tmpfs(tmp_path):
    """A 1 MB tmpfs mounted at tmp_path/disk (unmounted after the test); `remount(options)` changes it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)

    yield mnt, remount
    subprocess.run(["umount", str(mnt)], check=True)


def error_lines(stderr: str) -> list[str]:
    """The error lines of stderr (not absl's INFO/WARNING lines, library warnings or the plain progress lines)."""
    return [line for line in stderr.splitlines() if line.startswith("error")]


def test_full_then_read_only_disk_resumes_bitwise(tmpfs, reference_run):
    mnt, remount = tmpfs
    _, ref = reference_run
    run = mnt / "run"
    args = faultkit.train_args(run)

    full = faultkit.run("launch.train", *args)  # a checkpoint is ~0.7 MB: the second one fills the disk
    faultkit.INJECTED["full disk (ENOSPC)"] += 1
    assert full.returncode == 2, full.stderr
    [line] = error_lines(full.stderr)  # which write fails first may vary (usually checkpoints/10)
    assert line.startswith(f"error: {run}/") and line.endswith("No space left on device"), full.stderr
    assert "Traceback" not in full.stderr
    config = json.loads((run / "config.json").read_text())  # intact: the files written before the failure
    assert config["model.d_model"] == 32 and config["provenance"]["jax"]
    assert checkpoint.problem(run / "checkpoints" / "5") is None

    remount("ro")  # now an unwritable workdir: the first write (config.json) fails, nothing changes
    before = faultkit.tree_digest(run)
    ro = faultkit.run("launch.train", *args)
    faultkit.INJECTED["read-only workdir (EROFS)"] += 1
    assert ro.returncode == 2 and len(error_lines(ro.stderr)) == 1, ro.stderr
    assert "Read-only file system" in ro.stderr and "Traceback" not in ro.stderr
    assert faultkit.tree_digest(run) == before

    remount("rw,size=16m")  # space freed
    again = faultkit.run("launch.train", *args)
    assert again.returncode == 0, again.stderr
    assert "resuming from step 5" in again.stderr
    faultkit.assert_same_run(faultkit.outputs(run, faultkit.config()), ref)
