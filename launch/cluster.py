"""`python -m launch.cluster tpu|slurm --config=FILE.py[:preset] --workdir=DIR [--config.a.b=v ...] [flags]`.

PRINTS (never runs) the commands that start a proxylab run or sweep on a cluster, with every argument quoted:

  tpu     the `gcloud compute tpus tpu-vm ssh NAME --zone=Z --worker=all --command=...` line that runs the same
          command on every host of a TPU pod slice (one JAX process per host, joined through
          PROXYLAB_DISTRIBUTED=1: launch/distributed.py); with --ray, the lines that start a Ray cluster on the
          slice (head on worker 0) and the sweep driver on worker 0 (`--ray_address=auto`).
  slurm   an sbatch script with one task per node (`srun` starts one JAX process per host; JAX reads SLURM's
          environment); with --ray, an sbatch script that starts a Ray head and workers on the allocation and
          runs the sweep driver against them.

`--run=train` (default) prints `launch.train`, `--run=sweep` `launch.sweep --executor=E` (batched by default: a
multi-controller sweep trains each program group over the whole slice; with --ray: one Ray task per group on
`--ray_gpus` GPUs or `--ray_tpus` chips). The workdir must be on storage every host sees (NFS, a bucket mount).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from absl import flags

from launch import cli, configs

FLAGS = flags.FLAGS
ROOT = Path(__file__).resolve().parents[1]
RAY_PORT = 6379


def proxylab_command(run: str, executor: str, extra: list[str] = ()) -> list[str]:
    """argv of the proxylab command every host (or the Ray driver) runs: this invocation's config, overrides and
    workdir."""
    args = [f"--config={FLAGS['config'].config_filename}", f"--workdir={FLAGS.workdir}"]
    args += [f"--config.{k}={v}" for k, v in sorted(cli.config_overrides().items())]
    if run == "train":
        return [FLAGS.python, "-m", "launch.train", *args]
    return [FLAGS.python, "-m", "launch.sweep", *args, f"--executor={executor}", *extra]


def _line(argv) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def tpu_script() -> str:
    repo = FLAGS.repo or "proxylab"  # relative to the home directory ssh starts in
    ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", FLAGS.name, f"--zone={FLAGS.zone}"]
    if not FLAGS.ray:
        command = _line(proxylab_command(FLAGS.run, FLAGS.executor))
        remote = f"cd {shlex.quote(repo)} && PROXYLAB_DISTRIBUTED=1 {command}"
        return "\n".join([
            "#!/bin/bash",
            f"# {FLAGS.name}: the same command on every host of the slice, one JAX process per host",
            "set -euo pipefail",
            _line([*ssh, "--worker=all", f"--command={remote}"]),
            "",
        ])
    cd = f"cd {shlex.quote(repo)} && "
    head = cd + f".venv/bin/ray start --head --port={RAY_PORT} --include-dashboard=false"
    # every host but the head joins; $HEAD is expanded here, the rest of the command on the hosts
    join = (shlex.quote(f"--command={cd}if [ \"$(hostname -I | cut -d' ' -f1)\" != ") + '"$HEAD"'
            + shlex.quote(" ]; then .venv/bin/ray start --address=") + f'"$HEAD:{RAY_PORT}"' + shlex.quote("; fi"))
    driver = proxylab_command("sweep", "ray", ["--ray_address=auto", f"--ray_tpus={FLAGS.ray_tpus}"])
    return "\n".join([
        "#!/bin/bash",
        f"# {FLAGS.name}: a Ray cluster on the slice (head on worker 0, every other host joins), then the driver",
        "set -euo pipefail",
        _line([*ssh, "--worker=0", f"--command={head}"]),
        "HEAD=$(" + _line([*ssh, "--worker=0", "--command=hostname -I | cut -d' ' -f1"]) + ")",
        _line([*ssh, "--worker=all"]) + " " + join,
        _line([*ssh, "--worker=0", f"--command={cd}{_line(driver)}"]),
        "",
    ])


def slurm_script() -> str:
    repo = FLAGS.repo or str(ROOT)
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={FLAGS.name}",
        f"#SBATCH --nodes={FLAGS.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={FLAGS.cpus_per_task}",
        *([f"#SBATCH --gpus-per-node={FLAGS.gpus_per_node}"] if FLAGS.gpus_per_node else []),
        *([f"#SBATCH --partition={FLAGS.partition}"] if FLAGS.partition else []),
        f"#SBATCH --time={FLAGS.time}",
        "set -euo pipefail",
        f"cd {shlex.quote(repo)}",
    ]
    if not FLAGS.ray:  # one task per node: one JAX process per host, joined through SLURM's environment
        return "\n".join([*header, f"srun {_line(proxylab_command(FLAGS.run, FLAGS.executor))}", ""])
    driver = proxylab_command("sweep", "ray", ["--ray_address=auto", f"--ray_gpus={FLAGS.ray_gpus}"])
    return "\n".join([
        *header,
        "# a Ray head on the first node, a Ray worker on every other one; the sweep driver then runs on the head",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f'srun --nodes=1 --ntasks=1 -w "$HEAD" .venv/bin/ray start --head --port={RAY_PORT} '
        "--include-dashboard=false --block &",
        "sleep 20",
        'if [ "$SLURM_JOB_NUM_NODES" -gt 1 ]; then',
        f'  srun --nodes=$((SLURM_JOB_NUM_NODES - 1)) --ntasks=$((SLURM_JOB_NUM_NODES - 1)) --exclude="$HEAD" '
        f'.venv/bin/ray start --address="$HEAD:{RAY_PORT}" --block &',
        "  sleep 20",
        "fi",
        _line(driver),  # on the head node, whose Ray cluster --ray_address=auto finds
        "",
    ])


SCRIPTS = {"tpu": tpu_script, "slurm": slurm_script}


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in SCRIPTS:
        raise configs.ConfigError(f"usage: python -m launch.cluster {'|'.join(SCRIPTS)} --config=... --workdir=...")
    if argv[1] == "tpu" and not (FLAGS.name and FLAGS.zone):
        raise configs.ConfigError("launch.cluster tpu needs --name (the TPU VM) and --zone")
    print(SCRIPTS[argv[1]](), end="")


if __name__ == "__main__":
    flags.DEFINE_enum("run", "train", ["train", "sweep"], "what every host runs: launch.train or launch.sweep")
    flags.DEFINE_enum("executor", "batched", ["local", "batched"], "--run=sweep without --ray: the sweep executor")
    flags.DEFINE_bool("ray", False, "start a Ray cluster on the hosts and run the sweep with --executor=ray")
    flags.DEFINE_string("name", "proxylab", "tpu: the TPU VM (pod slice) name; slurm: the job name")
    flags.DEFINE_string("zone", None, "tpu: the slice's zone, e.g. us-central2-b")
    flags.DEFINE_string("repo", None, "proxylab checkout on the hosts (tpu: ~/proxylab; slurm: this checkout)")
    flags.DEFINE_string("python", ".venv/bin/python", "the interpreter, relative to --repo")
    flags.DEFINE_integer("nodes", 2, "slurm: nodes (one task, i.e. one JAX process or Ray node, per node)")
    flags.DEFINE_integer("gpus_per_node", 0, "slurm: GPUs per node (0: no --gpus-per-node line)")
    flags.DEFINE_integer("cpus_per_task", 8, "slurm: CPUs per task")
    flags.DEFINE_string("partition", None, "slurm: the partition")
    flags.DEFINE_string("time", "24:00:00", "slurm: the time limit")
    flags.DEFINE_float("ray_gpus", 1, "--ray: GPUs per group task")
    flags.DEFINE_float("ray_tpus", 4, "--ray on tpu: TPU chips per group task")
    cli.run(main, config="file", workdir=True)
