"""`launch.sweep --executor=ray [--ray_address=HOST:PORT] [--ray_retries=N] [--ray_gpus=G] [--ray_tpus=T]`.

One Ray task per program group of the sweep (`sweep.group_trials`: a batched group of M trials, or a single
trial), each asking Ray for `--ray_gpus` GPUs or `--ray_tpus` TPU chips (plus one CPU). A task runs the group
exactly as `--executor=batched` does (`sweep.run_batched` on that group: one vmapped program, or trials one after
another under a rewind) and returns its members' summaries; the DRIVER appends them to results.jsonl, so there is
one writer and the rows are those of the other executors. Ray runs the tasks wherever it has resources; the sweep
directory must be on a filesystem every Ray node sees (workers write the trial and group directories).

Failures: a task that raises (or whose worker dies) is retried `--ray_retries` times by Ray (`max_retries`,
`retry_exceptions`); a retried group resumes from its checkpoints. After the last attempt each of its unfinished
trials gets a row `failed: true` with the error and the sweep goes on; a rerun skips such a trial like any
recorded one (delete its row to run it again). A killed driver loses nothing finished: the rerun skips the trials
in results.jsonl, records finished runs whose row the kill prevented, and groups in flight resume from their
checkpoints.

Without --ray_address the driver starts a private local Ray instance on this machine's CPUs (and GPUs), bound to
127.0.0.1, with the dashboard off; `ray start --head` on a cluster (`python -m launch.cluster` prints how) and
`--ray_address=HEAD:6379` connect to an existing one instead. Ray is an optional dependency: `pip install -e ".[ray]"`.
"""

from __future__ import annotations

import os
from pathlib import Path

from absl import flags, logging

from launch import configs, records

DEFAULT_RETRIES = 2  # attempts after the first one for a failing group task


def define_flags() -> None:
    flags.DEFINE_string("ray_address", None, "--executor=ray: address of a running Ray cluster (default: a local one)")
    flags.DEFINE_integer("ray_retries", DEFAULT_RETRIES, "--executor=ray: retries of a failing group task",
                         lower_bound=0)
    flags.DEFINE_float("ray_gpus", 0, "--executor=ray: GPUs per group task", lower_bound=0)
    flags.DEFINE_float("ray_tpus", 0, "--executor=ray: TPU chips per group task (the TPU resource)", lower_bound=0)


def options_from_flags() -> dict:
    fl = flags.FLAGS
    return dict(address=fl.ray_address, retries=fl.ray_retries, gpus=fl.ray_gpus, tpus=fl.ray_tpus)


class Collect:
    """The `record` of a task: run_batched's summaries kept for the driver; `path` is the sweep's results.jsonl,
    which the task only reads (trials already recorded are skipped)."""

    def __init__(self, path: Path):
        self.path, self.rows = path, []

    def __call__(self, trial, summary: dict) -> None:
        self.rows.append((trial.id, summary))

    def start(self, trials) -> None:
        """Nothing in the task: the driver's Recorder marks a group running when it submits it."""

    def fail(self, ids=None) -> None:
        """Nothing in the task: a raising task fails its Ray attempt, and the driver records it."""


LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
"""Set before `import ray` for a private instance: Ray then takes 127.0.0.1 as the node address (as on a laptop)
and binds its servers (GCS, raylet, workers, agents) there instead of on every interface."""


def _import_ray(local: bool):
    if local:
        for k, v in LOOPBACK_ENV.items():
            os.environ.setdefault(k, v)
    try:
        import ray
    except ImportError:
        raise configs.ConfigError('--executor=ray needs Ray: pip install -e ".[ray]"') from None
    return ray


def run(groups, workdir: Path, record, task, trial_dir, *, address: str | None = None,
        retries: int = DEFAULT_RETRIES, gpus: float = 0, tpus: float = 0) -> None:
    """Runs every program group (a list of sweep Trials) with unfinished trials as one Ray task `task(payload,
    workdir, results)` (`sweep.ray_group_task`; tests inject faults); `record` (the sweep's Recorder) appends each
    returned summary; `trial_dir(trial)` is a trial's run directory."""
    ray = _import_ray(local=not address)
    by_id = {t.id: t for group in groups for t in group}
    # the dashboard off; a private instance gets the machine's CPUs / GPUs (num_cpus etc. left to Ray)
    ray.init(address=address, include_dashboard=False)
    try:
        remote = ray.remote(task).options(
            num_cpus=1, num_gpus=gpus, resources={"TPU": tpus} if tpus else None,
            max_retries=retries, retry_exceptions=True,
        )
        finished = {r["id"] for r in records.read_results(record.path)}
        pending = {}
        for group in groups:
            if all(t.id in finished for t in group):
                continue
            payload = [(t.id, t.overrides, configs.flatten(t.cfg)) for t in group]
            pending[remote.remote(payload, str(workdir), str(record.path))] = group
            record.start([t for t in group if t.id not in finished])
        logging.info("ray: %d group tasks submitted (%s)", len(pending), address or "local instance")
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            group = pending.pop(ref)
            try:
                rows = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the task failed its last attempt: record, go on
                _record_failed(group, trial_dir, record, e, retries)
                continue
            for tid, summary in rows:
                record(by_id[tid], summary)
    finally:
        ray.shutdown()


def _record_failed(group, trial_dir, record, error: Exception, retries: int) -> None:
    """Rows for the trials of a failed group: a finished run's own summary, else `failed: true` with the error."""
    cause = getattr(error, "cause", None) or error
    message = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [""])[0]}"
    finished = {r["id"] for r in records.read_results(record.path)}
    for t in group:
        if t.id in finished:
            continue
        summary = records.finished_summary(trial_dir(t))
        if summary is not None:
            record(t, summary)
            continue
        logging.warning("[failed] %s after %d attempts: %s", t.id, retries + 1, message)
        record.fail([t.id])
        records.append_result(record.path, {
            "id": t.id, "overrides": t.overrides, "failed": True, "error": message, "attempts": retries + 1,
            "diverged": False, "diverged_at_step": None, "initial_loss": None, "final_loss": None, "eval_loss": None,
            "lr": float(t.cfg.optim.lr), "seed": int(t.cfg.train.seed),
        })
