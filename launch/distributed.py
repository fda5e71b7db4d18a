"""Multi-controller runs: one JAX process per host (or per accelerator), every one running the same command.

`initialize()` joins the processes with `jax.distributed.initialize()` when the launcher says so:
  explicit   --coordinator_address=HOST:PORT --num_processes=N --process_id=I (launch.train, launch.sweep), or
             JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID in the environment (read by JAX)
  TPU pod    a multi-host slice (TPU_WORKER_HOSTNAMES lists several hosts, or MEGASCALE_COORDINATOR_ADDRESS is set;
             `python -m launch.cluster tpu` also sets PROXYLAB_DISTRIBUTED=1): JAX finds the coordinator itself
  SLURM      a job step of more than one task (SLURM_NTASKS > 1 with SLURM_STEP_NODELIST): JAX reads SLURM's env
A single-process run (none of these) starts nothing and opens no port.

The processes then form one mesh over all their devices (launch/mesh.py): each reads only its devices' rows of
every batch (loop.GroupData), all of them write and restore each checkpoint together (Orbax's multi-process
path; the workdir must be on a filesystem every host sees), and only process 0 writes config.json, metrics,
summaries, results.jsonl and reports. `check_agreement` refuses to start when the processes were given different
configs or run different code, which would otherwise hang or silently mix runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import jax
import numpy as np
from absl import flags

from launch import configs

_ROOT = Path(__file__).resolve().parents[1]
_CODE = ("launch", "models", "optim", "experiments")  # the packages whose source is the code version


def define_flags() -> None:
    """The explicit coordinator flags of a command that trains (launch.train, launch.sweep)."""
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 in a multi-process run (explicit set-up)")
    flags.DEFINE_integer("num_processes", None, "number of processes of a multi-process run (with the address)")
    flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes) (with --coordinator_address)")


def detected(env=os.environ) -> str | None:
    """Which launcher asks for a multi-process start ("env", "tpu", "slurm"), or None for a single process."""
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "env"
    if env.get("PROXYLAB_DISTRIBUTED") == "1" or env.get("MEGASCALE_COORDINATOR_ADDRESS") \
            or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu"
    if "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return "slurm"
    return None


def initialize() -> None:
    """Joins a multi-process job when the flags or the environment ask for one (module docstring)."""
    fl = flags.FLAGS
    explicit = "coordinator_address" in fl and fl.coordinator_address
    if explicit:
        if fl.num_processes is None or fl.process_id is None:
            raise configs.ConfigError("--coordinator_address needs --num_processes and --process_id too")
        if not 0 <= fl.process_id < fl.num_processes:
            raise configs.ConfigError(
                f"--process_id={fl.process_id} must be in [0, --num_processes={fl.num_processes})"
            )
        jax.distributed.initialize(fl.coordinator_address, fl.num_processes, fl.process_id)
    elif detected() is not None:
        jax.distributed.initialize()


@functools.cache
def code_version() -> str:
    """sha256 of proxylab's own source files (path and bytes): equal on two hosts iff they run the same code."""
    h = hashlib.sha256()
    for pkg in _CODE:
        for path in sorted((_ROOT / pkg).rglob("*.py")):
            h.update(str(path.relative_to(_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _digest(text: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)


def check_agreement(cfg) -> None:
    """Raises a ConfigError when the processes of a multi-process run differ in `cfg` or in `code_version()`.

    Every process contributes the sha256 of its flattened config and of its code (multihost_utils all-gather);
    all of them see the same table, so all of them stop with the same message.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    mine = np.stack([_digest(json.dumps(configs.flatten(cfg), sort_keys=True, default=str)), _digest(code_version())])
    table = np.asarray(multihost_utils.process_allgather(mine))  # [processes, 2, 32]
    fixes = ((0, "config", "pass the same --config and overrides"), (1, "code", "check out the same commit"))
    for row, what, fix in fixes:
        differ = [p for p in range(table.shape[0]) if not np.array_equal(table[p, row], table[0, row])]
        if differ:
            raise configs.ConfigError(
                f"processes {differ} run a different {what} than process 0 (sha256 {table[0, row].tobytes().hex()[:12]}"
                f" vs {table[differ[0], row].tobytes().hex()[:12]}); {fix} on every host"
            )
