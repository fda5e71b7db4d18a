"""`python -m launch.sweep --config=experiments/<study>.py:<preset> --workdir=DIR [--executor=local|batched|ray]`.

A study is one experiment file: `get_config(arg)` is the base config (plus any `--config.a.b=v` of the command
line) and `get_sweep(arg)` lists the trials as dotted-key override dicts (experiments/sweeps.py builds them).
Every trial is checked (unknown field, bad value) before anything runs; a bad one stops the sweep with one line.

The sweep directory (DESIGN §3):

    DIR/config.json            the base config (a rerun with another base config is refused)
    DIR/sweep.json             every trial of the sweep (id, overrides), all shards: what the report expects
    DIR/trials/<trial_id>/     one run directory per trial; the id is a slug of its overrides
    DIR/groups/<hash>/         a batched group's checkpoints while it trains (removed when it is done)
    DIR/results.jsonl          one row per finished trial, appended atomically (one line, one write, fsync)
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
import re
from pathlib import Path

import jax
import ml_collections
from absl import logging

import optim
from launch import cli, configs, loop, metrics as metrics_lib, records, report

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
    """Appends a finished trial to results.jsonl and prints its line, e.g.

        [3/14] qk_norm=True lr=0.01 ... eval 3.2100 (12.3s)
    """

    def __init__(self, path: Path, n_trials: int, n_done: int):
        self.path, self.n_trials, self.n_done = path, n_trials, n_done

    def __call__(self, trial: Trial, summary: dict) -> None:
        if jax.process_index() == 0:
            fields = {k: v for k, v in summary.items() if k != "finished"}
            records.append_result(self.path, {"id": trial.id, "overrides": trial.overrides, **fields})
        self.n_done += 1
        what = " ".join(f"{k.rpartition('.')[2]}={v}" for k, v in trial.overrides.items()) or "base"
        if summary["diverged"]:
            outcome = f"DIVERGED at step {summary['diverged_at_step']}"
        else:
            loss = summary["eval_loss"] if summary["eval_loss"] is not None else summary["final_loss"]
            outcome = f"{'eval' if summary['eval_loss'] is not None else 'train'} {loss:.4f}"
        logging.info("[%d/%d] %s ... %s (%.1fs)", self.n_done, self.n_trials, what, outcome, summary["wall_seconds"])


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
        for t in todo:  # finished runs whose results row a kill prevented
            summary = records.finished_summary(trial_dir(workdir, t))
            if summary is not None:
                record(t, summary)
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
        loop.train_group(members, loop.Runtime(group[0].cfg), group_dir=gdir,
                         on_done=lambda i, summary: record(group[i], summary))


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


EXECUTORS = {"local": run_local, "batched": run_batched, "ray": run_ray}


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


def run_sweep(
    base: ml_collections.ConfigDict, sweep: list[dict], workdir: str | Path, executor: str = "local", shard: str = "",
    executor_options: dict | None = None,
):
    """Runs the trials of `sweep` (of shard `shard`, "i/n") not yet in `workdir/results.jsonl`, writes the report
    of everything finished so far; returns all result rows. `executor_options` go to the executor (ray's)."""
    workdir = Path(workdir)
    if executor not in EXECUTORS:
        raise configs.ConfigError(f"--executor={executor!r} is unknown; choose one of {', '.join(EXECUTORS)}")
    all_trials = make_trials(base, sweep)
    trials = shard_trials(all_trials, *parse_shard(shard))
    configs.claim_workdir(base, workdir, write=jax.process_index() == 0)
    if jax.process_index() == 0:  # every trial of the sweep (all shards): the report flags the missing ones
        listing = [{"id": t.id, "overrides": t.overrides} for t in all_trials]
        metrics_lib.write_json_atomic(workdir / "sweep.json", json.loads(json.dumps({"trials": listing}, default=list)))
    results = workdir / "results.jsonl"
    records.drop_torn_tail(results)
    finished = {r["id"] for r in records.read_results(results)}
    todo = [t for t in trials if t.id not in finished]
    n_done = len(trials) - len(todo)
    what = f"{len(trials)} trials" + (f" (shard {shard} of {len(sweep)})" if shard else "")
    logging.info("%s: %s, %d already finished; executor %s", workdir, what, n_done, executor)
    # every trial of the shard, not only those left to do: a batched group is always the same group
    EXECUTORS[executor](trials, workdir, Recorder(results, len(trials), n_done), **(executor_options or {}))
    if jax.process_index() == 0:
        out = report.write_report(workdir)
        logging.info("report: %s (loss_vs_lr.png, lr_sensitivity.csv)", out / "summary.md")
    return records.read_results(results)


def main(argv) -> None:
    del argv
    from absl import flags

    from launch import ray_executor

    sweep = load_sweep(flags.FLAGS["config"].config_filename)
    options = ray_executor.options_from_flags() if flags.FLAGS.executor == "ray" else None
    run_sweep(flags.FLAGS.config, sweep, flags.FLAGS.workdir, flags.FLAGS.executor, flags.FLAGS.shard, options)


if __name__ == "__main__":
    from absl import flags

    from launch import distributed, ray_executor

    flags.DEFINE_enum("executor", "local", list(EXECUTORS),
                      "local: trials one after another; batched: vmapped groups; ray: one Ray task per group")
    flags.DEFINE_string("shard", "", "i/n: run only every n-th program group from group i (one process per GPU)")
    ray_executor.define_flags()
    distributed.define_flags()
    cli.run(main, config="file", workdir=True)
