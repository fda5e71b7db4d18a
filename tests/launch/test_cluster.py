"""`launch.cluster` prints valid shell: `bash -n` on every script, the flags present, the config path quoted."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from helpers import run_module

CONFIG = "experiments/base.py:tiny"
WORKDIR = "/shared/my runs/a b"  # a space: it must survive the quoting of every layer


def script(tmp_path, *args) -> str:
    r = run_module("launch.cluster", *args, f"--config={CONFIG}", f"--workdir={WORKDIR}", "--config.optim.lr=0.003",
                   timeout=120)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "script.sh"
    path.write_text(r.stdout)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr + r.stdout
    return r.stdout


def remote_command(line: str) -> list[str]:
    """The argv a host runs: the gcloud line's --command=, split like the remote shell splits it."""
    command = next(a for a in shlex.split(line) if a.startswith("--command="))[len("--command="):]
    return shlex.split(command.split(" && ", 1)[1])


@pytest.mark.parametrize("run", ["train", "sweep"])
def test_tpu_line_runs_the_command_on_every_worker(tmp_path, run):
    out = script(tmp_path, "tpu", "--name=pod", "--zone=us-central2-b", f"--run={run}")
    [line] = [l for l in out.splitlines() if l.startswith("gcloud")]
    assert line.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --worker=all ")
    argv = remote_command(line)
    assert argv[:3] == ["PROXYLAB_DISTRIBUTED=1", ".venv/bin/python", "-m"]
    assert argv[3] == f"launch.{run}"
    assert f"--config={CONFIG}" in argv and f"--workdir={WORKDIR}" in argv and "--config.optim.lr=0.003" in argv
    assert ("--executor=batched" in argv) == (run == "sweep")


def test_tpu_ray_starts_a_head_joins_the_workers_and_drives_the_sweep(tmp_path):
    out = script(tmp_path, "tpu", "--name=pod", "--zone=z", "--ray", "--ray_tpus=4")
    lines = [l for l in out.splitlines() if "gcloud" in l]
    assert "--worker=0" in lines[0] and "ray start --head --port=6379 --include-dashboard=false" in lines[0]
    assert "--worker=all" in lines[2] and '"$HEAD:6379"' in lines[2]
    argv = remote_command(lines[3])
    assert argv[2:] == ["launch.sweep", f"--config={CONFIG}", f"--workdir={WORKDIR}", "--config.optim.lr=0.003",
                        "--executor=ray", "--ray_address=auto", "--ray_tpus=4.0"]


def test_tpu_needs_a_zone(tmp_path):
    r = run_module("launch.cluster", "tpu", f"--config={CONFIG}", f"--workdir={WORKDIR}", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error:") and "--zone" in r.stderr


def test_slurm_script_has_one_task_per_node(tmp_path):
    out = script(tmp_path, "slurm", "--nodes=4", "--gpus_per_node=8", "--partition=gpu", "--run=sweep")
    assert out.startswith("#!/bin/bash\n")
    for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu"):
        assert f"#SBATCH {directive}\n" in out
    [srun] = [l for l in out.splitlines() if l.startswith("srun ")]
    argv = shlex.split(srun)
    assert argv[1:4] == [".venv/bin/python", "-m", "launch.sweep"] and f"--workdir={WORKDIR}" in argv
    assert f"--config={CONFIG}" in argv and "--executor=batched" in argv


def test_slurm_ray_script_starts_the_cluster_then_the_driver(tmp_path):
    out = script(tmp_path, "slurm", "--nodes=3", "--ray", "--ray_gpus=1")
    assert "ray start --head --port=6379" in out and 'ray start --address="$HEAD:6379" --block &' in out
    argv = shlex.split(out.strip().splitlines()[-1])
    assert argv[2] == "launch.sweep" and f"--workdir={WORKDIR}" in argv
    assert argv[-3:] == ["--executor=ray", "--ray_address=auto", "--ray_gpus=1.0"]
