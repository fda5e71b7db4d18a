"""`python -m launch.sweep --config=experiments/<study>.py:<preset> --workdir=DIR [--executor=auto|local|batched|ray]`.

A study is one experiment file: `get_config(arg)` is the base config (plus any `--config.a.b=v` of the command
line) and `get_sweep(arg)` lists the trials as dotted-key override dicts (experiments/sweeps.py builds them).
Every trial is checked (unknown field, bad value) before anything runs; a bad one stops the sweep with one line.

The sweep directory (DESIGN §3):

    DIR/config.json            the base config (a rerun with another base config is refused)
    DIR/sweep.json             every trial of the sweep (id, overrides), all shards, and of the slices run into DIR
                               before: what the report expects
    DIR/trials/<trial_id>/     one run directory per trial; the id is a slug of its overrides
    DIR/groups/<hash>/         a batched group's checkpoints while it trains (removed when it is done)
    DIR/results.jsonl          one row per finished trial, appended atomically (one line, one write, fsync)
    DIR/status.json            trials done / running / diverged / failed / remaining and an ETA, rewritten as
                               trials start and finish (`Recorder`)
    DIR/report/                plots and tables of launch.report, written at the end

Both executors run the one training loop (launch/loop.py). Trials whose configs differ only in
`configs.MEMBER_FIELDS` (optimizer scalars and train.seed) form a program group:
  local    the trials one after another, each a group of one member (exactly `launch.train`); the trials of a
           program group share one compiled program. A killed trial resumes from its checkpoints.
  batched  each program group as ONE program over its M members: the train step is vmapped over (state,
           hparams), the batch shared by members of one seed (an LR sweep's protocol: same init, same data), one
           init and data order per seed otherwise. A diverged member is frozen and recorded at once; the others go
           on. The group checkpoints every train.ckpt_every steps; a killed group resumes as the same group from
           its checkpoint, so its numbers equal an uninterrupted sweep's. Rewind needs one member: such trials
           run one at a time.
  auto     (the default) each program group by the one of the two that measured faster for its platform, model
           size and member count (`auto_executor`, which holds the measurements); it logs which and why.

  ray      each program group as one Ray task (launch/ray_executor.py), on a local Ray instance or a cluster
           (--ray_address); the driver appends the rows; a failing task is retried, then recorded as failed.

Rerunning the command skips the trials in results.jsonl; a kill loses only the trials in flight.

`--shard=i/n` runs every n-th program group from group i: n processes with the same command and workdir, one per
GPU (CUDA_VISIBLE_DEVICES=i), split a sweep between the GPUs of one host without a trial running twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import re
import time
from pathlib import Path

import jax
import ml_collections
from absl import logging

import optim
from launch import cli, configs, data, loop, metrics as metrics_lib, plan, progress, records, report

MAX_SLUG = 100  # characters of a trial id before a hash replaces the rest


@dataclasses.dataclass(frozen=True)
class Trial:
    id: str
    overrides: dict
    cfg: ml_collections.ConfigDict


# ---- sweep definition -------------------------------------------------------------------------------------------


def short_key(key: str) -> str:
    """`optim.lr` -> `lr` (optimizer scalars); every other dotted key stays as it is."""
    section, _, leaf = key.rpartition(".")
    return leaf if section == "optim" and leaf in optim.HPARAM_KEYS else key


def trial_id(overrides: dict) -> str:
    """A readable, deterministic, filesystem-safe slug, e.g. `model.qk_norm=True,lr=0.003`.

    Keys are sorted, so the order an experiment file lists them in does not matter. A slug that had to be
    sanitised or shortened gets a hash of the exact overrides, so distinct trials never share an id.
    """
    if not overrides:
        return "base"
    raw = ",".join(f"{short_key(k)}={repr(v) if isinstance(v, float) else v}" for k, v in sorted(overrides.items()))
    slug = re.sub(r"[^A-Za-z0-9._=,+-]", "_", raw)
    if slug == raw and len(slug) <= MAX_SLUG:
        return slug
    digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{slug[:MAX_SLUG]}-{digest}"


def load_sweep(config_name: str) -> list[dict]:
    """`get_sweep(arg)` of the experiment file `path[:arg]`."""
    path, _, arg = config_name.partition(":")
    spec = importlib.util.spec_from_file_location("proxylab_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise configs.ConfigError(f"{path} defines no get_sweep(arg): it is not a study file")
    try:
        sweep = module.get_sweep(arg or None)
    except (ValueError, KeyError, TypeError) as e:
        raise configs.ConfigError(f"{path}: get_sweep({arg!r}): {e}") from None
    if not sweep or not all(isinstance(o, dict) for o in sweep):
        raise configs.ConfigError(f"{path}: get_sweep({arg!r}) must return a non-empty list of override dicts")
    return sweep


def make_trials(base: ml_collections.ConfigDict, sweep: list[dict]) -> list[Trial]:
    """One validated Trial per override dict; any bad trial is a ConfigError naming it, before anything runs."""
    trials, seen = [], set()
    for overrides in sweep:
        tid = trial_id(overrides)
        try:
            cfg = configs.apply_overrides(base, overrides)
            configs.validate(cfg, n_devices=jax.device_count(), n_processes=jax.process_count())
        except configs.ConfigError as e:
            raise configs.ConfigError(f"trial {tid}: {e}") from None
        if tid in seen:
            raise configs.ConfigError(f"trial {tid} appears twice in the sweep")
        seen.add(tid)
        trials.append(Trial(tid, dict(overrides), cfg))
    return trials


def program_key(cfg) -> str:
    """The config without the fields members of a group may differ in (`configs.MEMBER_FIELDS`: optimizer
    scalars, the seed, cosmetic fields): trials with equal keys share one compiled program."""
    drop = configs.MEMBER_FIELDS
    return json.dumps({k: v for k, v in configs.flatten(cfg).items() if k not in drop}, sort_keys=True, default=str)


def group_trials(trials: list[Trial]) -> list[list[Trial]]:
    """Trials grouped by `program_key`, in order of first appearance; a group larger than its
    `train.max_members` (> 0) is cut into consecutive programs of at most that many (memory, launch/memory.py)."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(program_key(t.cfg), []).append(t)
    out = []
    for g in groups.values():
        size = g[0].cfg.train.max_members or len(g)
        out += [g[i:i + size] for i in range(0, len(g), size)]
    return out


# ---- results.jsonl ------------------------------------------------------------------------------------------------


class Recorder:
    """Appends a finished trial to results.jsonl, prints its line and keeps DIR/status.json, e.g.

        [3/14] qk_norm=True lr=0.01 ... eval 3.2100 (12.3s) | 3 done (1 diverged), 2 running, 9 left, eta 1m40s

    status.json (rewritten atomically as trials start and finish) counts the trials of this process's shard:
    `done` (finished, diverged included), `diverged`, `running` (their ids), `failed` (ids whose training raised, or
    with a `failed` row), `remaining` (neither done nor failed) and `eta_seconds`: the wall time per trial finished
    by this process so far times the trials remaining (None before the first); `started` and `updated`: when this
    invocation began and when the file was written (seconds since the epoch); `state` is running, finished or
    failed (the sweep stopped on an error). A shard (`--shard=i/n`) keeps status.shard<i>of<n>.json instead, so
    shards never overwrite each other. An executor calls `start` when trials begin and `fail` for trials it gives
    up on; finishing is the call itself.
    """

    def __init__(self, path: Path, n_trials: int, n_done: int, status_path: Path | None = None, n_diverged: int = 0,
                 failed: list[str] = ()):
        """`n_done` of the `n_trials` are finished already, `n_diverged` of them diverged; `failed`: recorded failed."""
        self.path, self.n_trials, self.n_done, self.n_diverged = path, n_trials, n_done, n_diverged
        self.status_path = status_path
        self.running: list[str] = []
        self.failed: list[str] = list(failed)
        self.t0, self.n_done_here = time.time(), 0
        self.write_status("running")

    def status(self, state: str) -> dict:
        remaining = self.n_trials - self.n_done - len(self.failed)
        per_trial = (time.time() - self.t0) / self.n_done_here if self.n_done_here else None
        return dict(
            state=state, total=self.n_trials, done=self.n_done, diverged=self.n_diverged, running=list(self.running),
            failed=list(self.failed), remaining=remaining,
            eta_seconds=None if per_trial is None else per_trial * remaining, started=self.t0, updated=time.time(),
        )

    def write_status(self, state: str = "running") -> None:
        if self.status_path is not None and jax.process_index() == 0:
            metrics_lib.write_json_atomic(self.status_path, self.status(state))

    def start(self, trials: list[Trial]) -> None:
        """`trials` began training (one, or a batched group's members)."""
        self.running += [t.id for t in trials if t.id not in self.running]
        self.write_status()

    def fail(self, ids: list[str] | None = None) -> None:
        """Trials `ids` failed and the sweep goes on; None: every running trial raised and the sweep stops."""
        gone = list(self.running) if ids is None else list(ids)
        self.failed += [i for i in gone if i not in self.failed]
        self.running = [i for i in self.running if i not in gone]
        self.write_status("failed" if ids is None else "running")

    def line(self) -> str:
        s = self.status("running")
        eta = "" if s["eta_seconds"] is None else f", eta {progress.duration(s['eta_seconds'])}"
        return (f"{s['done']} done ({s['diverged']} diverged), {len(s['running'])} running, {s['remaining']} left"
                + eta)

    def __call__(self, trial: Trial, summary: dict) -> None:
        if jax.process_index() == 0:
            fields = {k: v for k, v in summary.items() if k != "finished"}
            records.append_result(self.path, {"id": trial.id, "overrides": trial.overrides, **fields})
        self.n_done += 1
        self.n_done_here += 1
        self.n_diverged += bool(summary["diverged"])
        if trial.id in self.running:
            self.running.remove(trial.id)
        self.write_status()
        what = " ".join(f"{k.rpartition('.')[2]}={v}" for k, v in trial.overrides.items()) or "base"
        if summary["diverged"]:
            outcome = f"DIVERGED at step {summary['diverged_at_step']}"
        else:
            loss = summary["eval_loss"] if summary["eval_loss"] is not None else summary["final_loss"]
            outcome = f"{'eval' if summary['eval_loss'] is not None else 'train'} {loss:.4f}"
        logging.info("[%d/%d] %s ... %s (%.1fs) | %s", self.n_done, self.n_trials, what, outcome,
                     summary["wall_seconds"], self.line())


def trial_dir(workdir: Path, trial: Trial) -> Path:
    return workdir / "trials" / trial.id


# ---- executors ----------------------------------------------------------------------------------------------------


def run_local(trials: list[Trial], workdir: Path, record: Recorder) -> None:
    """One trial after another, each a group of one; trials of one `program_key` share one compiled program.
    Trials already in results.jsonl are skipped."""
    runtimes: dict[str, loop.Runtime] = {}
    finished = {r["id"] for r in records.read_results(record.path)}
    for t in [t for t in trials if t.id not in finished]:
        key = program_key(t.cfg)
        if key not in runtimes:
            runtimes[key] = loop.Runtime(t.cfg)
        rt = runtimes[key]
        record.start([t])
        record(t, loop.train(t.cfg, trial_dir(workdir, t), rt=rt, verbose=t.cfg.train.progress))


def group_dir(workdir: Path, group: list[Trial]) -> Path:
    """Where a batched group keeps its checkpoints while it trains: named by its members, in order."""
    digest = hashlib.sha1(json.dumps([t.id for t in group]).encode()).hexdigest()[:12]
    return workdir / "groups" / digest


def run_batched(trials: list[Trial], workdir: Path, record: Recorder) -> None:
    """Each group of trials that differ only in optimizer scalars and seed as ONE program (launch/loop.py).

    The groups are those of the whole sweep (`group_trials`), never of what is left to do, so a resumed group is the
    same group and its members' numbers do not depend on when the sweep was killed.
    """
    groups = group_trials(trials)
    for g, group in enumerate(groups):
        finished = {r["id"] for r in records.read_results(record.path)}
        todo = [t for t in group if t.id not in finished]
        if not todo:
            continue
        recovered = set()
        for t in todo:  # finished runs whose results row a kill prevented
            summary = records.finished_summary(trial_dir(workdir, t))
            if summary is not None:
                record(t, summary)
                recovered.add(t.id)
        if len(group) == 1 or group[0].cfg.train.rewind.enabled:
            if len(group) > 1:
                logging.info("group %d/%d: train.rewind restores one run's checkpoint: its %d trials run one at a "
                             "time", g + 1, len(groups), len(group))
            run_local(todo, workdir, record)
            continue
        gdir = group_dir(workdir, group)
        if jax.process_index() == 0:
            gdir.mkdir(parents=True, exist_ok=True)
            metrics_lib.write_json_atomic(gdir / "group.json", {"members": [t.id for t in group]})
        logging.info("group %d/%d: %d trials in one batched program", g + 1, len(groups), len(group))
        members = [loop.Member(t.cfg, trial_dir(workdir, t)) for t in group]
        record.start([t for t in todo if t.id not in recovered])
        loop.train_group(members, loop.Runtime(group[0].cfg), group_dir=gdir,
                         on_done=lambda i, summary: record(group[i], summary))


@dataclasses.dataclass(frozen=True)
class ExecutorTiming:
    """One measured sweep: the same trials by both executors, one after the other on one device."""

    platform: str  # jax platform: cpu | gpu
    device: str  # what it ran on
    n_params: int  # parameters of the model (embeddings included)
    members: int  # trials per program group
    batched_over_local: float  # batched wall time / local wall time, compilation included
    source: str


# Every measured executor comparison (benchmarks/RESULTS.md "LR sweeps on the H200: batched vs local executor",
# README "Batched vs local"); add a row when benchmarks/sweep_executors.sh is rerun.
EXECUTOR_TIMINGS = (
    ExecutorTiming("cpu", "2 CPU cores", 57_504, 4, 139 / 127, "README demo, small_scale_proxies:tiny, 32 trials"),
    ExecutorTiming("gpu", "H200", 18_797_184, 7, 77.9 / 59.5, "RESULTS.md session 11, 2.4m, 7 LRs x 300 steps of 64 x 512"),
    ExecutorTiming("gpu", "H200", 42_300_000, 7, 83.2 / 67.2, "RESULTS.md session 10, 9.4m, 7 LRs x 300 steps of 64 x 512"),
)


def auto_executor(platform: str, n_params: int, members: int, timings=EXECUTOR_TIMINGS) -> tuple[str, str]:
    """(executor, why) of `--executor=auto` for a program group of `members` trials of an `n_params` model.

    The rule: batched where a measured sweep on the same platform, of the model size nearest to this one (in
    log-parameters), with at least as many members per group, ran faster batched than local; local otherwise (a
    group of one, no measurement on this platform). Measured so far (`EXECUTOR_TIMINGS`):

        platform  device       params  members  batched / local wall time
        cpu       2 cores      57.5K   4        1.09   (139 s vs 127 s; the README demo's 32 trials)
        gpu       H200         18.8M   7        1.31   (2.4m: 77.9 s vs 59.5 s, session 11)
        gpu       H200         42.3M   7        1.24   (9.4m: 83.2 s vs 67.2 s, session 10)

    so today auto picks local everywhere: one trial already keeps the device busy, and batching saves only
    per-trial host work. Fewer members than the measurement amortise less, so they never extrapolate to batched.
    """
    if members < 2:
        return "local", "a group of one trial"
    same = [t for t in timings if t.platform == platform]
    if not same:
        return "local", f"no executor timing measured on {platform}"
    t = min(same, key=lambda t: abs(math.log(n_params / t.n_params)))
    verdict = f"batched took {t.batched_over_local:.2f}x local's wall time at {t.n_params / 1e6:.3g}M params, " \
              f"{t.members} members on {t.device} ({t.source})"
    if t.batched_over_local < 1.0 and members >= t.members:
        return "batched", verdict
    return "local", verdict


def run_auto(trials: list[Trial], workdir: Path, record: Recorder) -> None:
    """Each program group by the executor `auto_executor` picks for it (logged with the reason): the local groups
    first, then the batched ones. The pick depends on the platform and the group alone, so a rerun on the same
    machine resumes every group with the executor it started with."""
    from launch import memory

    platform = jax.devices()[0].platform
    picked: dict[str, list[Trial]] = {"local": [], "batched": []}
    groups = group_trials(trials)
    for g, group in enumerate(groups):
        name, why = auto_executor(platform, memory.n_params(group[0].cfg.model), len(group), EXECUTOR_TIMINGS)
        logging.info("executor auto: group %d/%d (%d trials): %s (%s)", g + 1, len(groups), len(group), name, why)
        picked[name] += group
    if picked["local"]:
        run_local(picked["local"], workdir, record)
    if picked["batched"]:
        run_batched(picked["batched"], workdir, record)


def ray_group_task(payload: list[tuple[str, dict, dict]], workdir: str, results: str) -> list[tuple[str, dict]]:
    """The body of a Ray group task: rebuilds the group's trials from (id, overrides, flat config), trains them as
    `--executor=batched` does and returns [(trial id, summary)]; the driver records them (launch/ray_executor.py)."""
    from launch import ray_executor

    logging.set_verbosity(logging.INFO)  # the loop's progress and resume lines, forwarded to the driver by Ray
    trials = [Trial(tid, overrides, configs.unflatten(flat)) for tid, overrides, flat in payload]
    collect = ray_executor.Collect(Path(results))
    run_batched(trials, Path(workdir), collect)
    return collect.rows


def run_ray(trials: list[Trial], workdir: Path, record: Recorder, task=ray_group_task, **options) -> None:
    """Each program group as one Ray task (launch/ray_executor.py); `options`: its address, retries, resources."""
    from launch import ray_executor

    ray_executor.run(group_trials(trials), workdir, record, task, lambda t: trial_dir(workdir, t), **options)


EXECUTORS = {"auto": run_auto, "local": run_local, "batched": run_batched, "ray": run_ray}


# ---- the sweep ----------------------------------------------------------------------------------------------------


def parse_shard(shard: str) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n; "" -> (0, 1), the whole sweep."""
    if not shard:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", shard)
    if not m or not int(m[1]) < int(m[2]):
        raise configs.ConfigError(f"--shard={shard!r} must be i/n with 0 <= i < n, e.g. 0/2")
    return int(m[1]), int(m[2])


def shard_trials(trials: list[Trial], index: int, count: int) -> list[Trial]:
    """The trials of every `count`-th program group, starting at group `index` (`group_trials` order).

    Whole groups, so a batched group is never split; the assignment depends on the sweep alone, not on what has
    finished, so shards started together (one process per GPU, each with its own CUDA_VISIBLE_DEVICES) share the
    sweep directory without running a trial twice. results.jsonl appends are one write each, safe across them.
    """
    return [t for g, group in enumerate(group_trials(trials)) if g % count == index for t in group]


def write_listing(workdir: Path, trials: list) -> None:
    """DIR/sweep.json: the trials listed there before (the other slices of a study run into this directory, e.g.
    `experiments/spam.py:gpu_adam` then `:gpu_spam`) and then `trials`' new ids, so that the report expects every
    slice's trials, not only the last command's."""
    path = workdir / "sweep.json"
    listing = json.loads(path.read_text())["trials"] if path.exists() else []
    known = {t["id"] for t in listing}
    listing += [{"id": t.id, "overrides": t.overrides} for t in trials if t.id not in known]
    metrics_lib.write_json_atomic(path, json.loads(json.dumps({"trials": listing}, default=list)))


def run_sweep(
    base: ml_collections.ConfigDict, sweep: list[dict], workdir: str | Path, executor: str = "auto", shard: str = "",
    executor_options: dict | None = None,
):
    """Runs the trials of `sweep` (of shard `shard`, "i/n") not yet in `workdir/results.jsonl`, writes the report
    of everything finished so far; returns all result rows. `executor_options` go to the executor (ray's)."""
    workdir = Path(workdir)
    if executor not in EXECUTORS:
        raise configs.ConfigError(f"--executor={executor!r} is unknown; choose one of {', '.join(EXECUTORS)}")
    all_trials = make_trials(base, sweep)
    trials = shard_trials(all_trials, *parse_shard(shard))
    data.check_sources([t.cfg for t in trials])  # a data error writes nothing into the sweep directory
    configs.claim_workdir(base, workdir, write=jax.process_index() == 0)
    if jax.process_index() == 0:  # every trial of the sweep (all shards): the report flags the missing ones
        write_listing(workdir, all_trials)
    results = workdir / "results.jsonl"
    records.drop_torn_tail(results)
    finished = {r["id"]: r for r in records.read_results(results)}
    todo = [t for t in trials if t.id not in finished]
    n_done = len(trials) - len(todo)
    failed = [t.id for t in trials if finished.get(t.id, {}).get("failed")]  # rows of trials an executor gave up on
    what = f"{len(trials)} trials" + (f" (shard {shard} of {len(sweep)})" if shard else "")
    logging.info("%s: %s, %d already finished; executor %s", workdir, what, n_done, executor)
    status = workdir / ("status.json" if not shard else "status.shard{}of{}.json".format(*parse_shard(shard)))
    n_diverged = sum(bool(finished[t.id].get("diverged")) for t in trials if t.id in finished)
    record = Recorder(results, len(trials), n_done - len(failed), status, n_diverged, failed)
    try:  # every trial of the shard, not only those left to do: a batched group is always the same group
        EXECUTORS[executor](trials, workdir, record, **(executor_options or {}))
    except Exception:
        record.fail()
        raise
    record.write_status("finished")
    if jax.process_index() == 0:
        out = report.write_report(workdir)
        logging.info("report: %s (loss_vs_lr.png, lr_sensitivity.csv)", out / "summary.md")
    return records.read_results(results)


def main(argv) -> None:
    del argv
    from absl import flags

    from launch import ray_executor

    sweep = load_sweep(flags.FLAGS["config"].config_filename)
    if flags.FLAGS.dry_run:  # every trial validated, the plan printed; nothing compiled or written
        groups = group_trials(shard_trials(make_trials(flags.FLAGS.config, sweep), *parse_shard(flags.FLAGS.shard)))
        print(plan.describe([[(t.id, t.cfg) for t in g] for g in groups], batched=flags.FLAGS.executor == "batched",
                            tokens_per_second=flags.FLAGS.tokens_per_second))
        return
    options = ray_executor.options_from_flags() if flags.FLAGS.executor == "ray" else None
    run_sweep(flags.FLAGS.config, sweep, flags.FLAGS.workdir, flags.FLAGS.executor, flags.FLAGS.shard, options)


if __name__ == "__main__":
    from absl import flags

    from launch import distributed, ray_executor

    flags.DEFINE_enum("executor", "auto", list(EXECUTORS),
                      "auto: per program group, what was measured faster (sweep.auto_executor); local: trials one "
                      "after another; batched: vmapped groups; ray: one Ray task per group")
    flags.DEFINE_string("shard", "", "i/n: run only every n-th program group from group i (one process per GPU)")
    plan.define_flags()
    ray_executor.define_flags()
    distributed.define_flags()
    cli.run(main, config="file", workdir=True)
