"""`python -m launch.sweep --config=experiments/<study>.py:<preset> --workdir=DIR [--executor=local|batched]`.

A study is one experiment file: `get_config(arg)` is the base config (plus any `--config.a.b=v` of the command
line) and `get_sweep(arg)` lists the trials as dotted-key override dicts (experiments/sweeps.py builds them).
Every trial is checked (unknown field, bad value) before anything runs; a bad one stops the sweep with one line.

The sweep directory (DESIGN §3):

    DIR/config.json            the base config (a rerun with another base config is refused)
    DIR/trials/<trial_id>/     one launch.train run directory per trial; the id is a slug of its overrides
    DIR/results.jsonl          one row per finished trial, appended atomically (one line, one write, fsync)
    DIR/report/                plots and tables of launch.report, written at the end

Executors:
  local    trials one after another in this process through `launch.train.train`, which resumes a killed trial
           from its checkpoints. Trials that differ only in optimizer scalars (optim.HPARAM_KEYS) share one
           compiled program: a cache keyed by the config without those scalars.
  batched  trials that differ only in optimizer scalars form a group trained as ONE program: the train step is
           `jax.vmap`ped over (state, hparams) with the batch shared, exactly an LR sweep's protocol (same init,
           same data). A member that diverges is frozen (its state stops changing) and recorded without touching
           the others. The member axis is sharded over the `data` mesh axis when it divides. Every member gets its
           own run directory (metrics.jsonl, summary.json, a final checkpoint), written by the same
           `train.RunRecord` that launch.train uses, with the same eval metrics (the per-frequency-bucket losses
           of `train.freq_buckets` too). A group of one runs as in `local`. A killed group restarts.

Rerunning the command skips the trials in results.jsonl; a kill loses only the trials in flight.

`--shard=i/n` runs every n-th program group from group i: n processes with the same command and workdir, one per
GPU (CUDA_VISIBLE_DEVICES=i), split a sweep between the GPUs of one host without a trial running twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

import optim
from launch import checkpoint, cli, configs, mesh as mesh_lib, records, report, train
from models import transformer

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
    """The config without optimizer scalars and cosmetic fields: trials with equal keys share one program."""
    drop = {f"optim.{k}" for k in optim.HPARAM_KEYS} | configs.COSMETIC_FIELDS
    return json.dumps({k: v for k, v in configs.flatten(cfg).items() if k not in drop}, sort_keys=True, default=str)


def group_trials(trials: list[Trial]) -> list[list[Trial]]:
    """Trials grouped by `program_key`, in order of first appearance."""
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(program_key(t.cfg), []).append(t)
    return list(groups.values())


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
        print(f"[{self.n_done}/{self.n_trials}] {what} ... {outcome} ({summary['wall_seconds']:.1f}s)", flush=True)


def trial_dir(workdir: Path, trial: Trial) -> Path:
    return workdir / "trials" / trial.id


# ---- executors ----------------------------------------------------------------------------------------------------


def run_local(trials: list[Trial], workdir: Path, record: Recorder) -> None:
    """One trial after another through `train.train`; one Runtime (compiled program) per `program_key`."""
    runtimes: dict[str, train.Runtime] = {}
    for t in trials:
        key = program_key(t.cfg)
        if key not in runtimes:
            runtimes[key] = train.make_runtime(t.cfg)
        record(t, train.train(t.cfg, trial_dir(workdir, t), runtimes[key], verbose=t.cfg.train.progress))


def run_batched(trials: list[Trial], workdir: Path, record: Recorder) -> None:
    """Each group of trials that differ only in optimizer scalars as one vmapped program (`train_group`)."""
    groups = group_trials(trials)
    for g, group in enumerate(groups):
        done = {t.id: train.finished_summary(trial_dir(workdir, t)) for t in group}
        for t in group:  # finished runs whose results row a kill prevented
            if done[t.id] is not None:
                record(t, done[t.id])
        group = [t for t in group if done[t.id] is None]
        if len(group) == 1 or group[0].cfg.train.rewind.enabled:  # a rewind restores one run's checkpoint
            run_local(group, workdir, record)
        elif group:
            print(f"group {g + 1}/{len(groups)}: {len(group)} trials in one batched program", flush=True)
            for t, summary in zip(group, train_group(group, workdir)):
                record(t, summary)


EXECUTORS = {"local": run_local, "batched": run_batched}


@dataclasses.dataclass(frozen=True)
class BatchedProgram:
    """The jitted functions of a group of `n` members; every array has the member axis first."""

    broadcast: Callable  # state -> states_M (n copies)
    step: Callable  # (states_M, batch, hparams_M, alive_M, threshold) -> (states_M, alive_M, metrics_M)
    evaluate: Callable  # (states_M, batch) -> ce_M
    eval_buckets: Callable  # (states_M, batch, bucket_ids_NxV) -> (ce sums, target counts), float32[n, N, K] each
    diagnose: Callable  # (states_M, batch, hparams_M) -> diagnostics with a leading member axis
    member: NamedSharding  # sharding of a [n, ...] array


def batched_program(prog: train.Program, n: int) -> BatchedProgram:
    """vmaps the program's pure functions over `n` members: `in_axes=(0, None, 0)` for (state, batch, hparams).

    The member axis is sharded over the `data` mesh axis when n is a multiple of its size (otherwise replicated);
    parameter axes keep their shardings. The shared batch keeps its own; XLA gathers it where members need it.
    """
    mesh = prog.mesh
    ways = mesh.shape["data"]
    axis = "data" if ways > 1 and n % ways == 0 else None
    states = jax.tree.map(lambda s: NamedSharding(mesh, P(axis, *s.spec)), prog.state_shardings)
    member = NamedSharding(mesh, P(axis))
    batch, replicated = NamedSharding(mesh, mesh_lib.batch_spec()), NamedSharding(mesh, P())

    def step(states_M, batch_BxS, hparams_M, alive_M, threshold):
        new_M, metrics_M = jax.vmap(prog.train_step, in_axes=(0, None, 0))(states_M, batch_BxS, hparams_M)
        alive_M = alive_M & ~train.diverged(metrics_M["loss"], metrics_M["ce"], threshold)

        def keep(new, old):  # a member that diverges at this step keeps its previous state from now on
            return jnp.where(alive_M.reshape(alive_M.shape + (1,) * (new.ndim - 1)), new, old)

        return jax.tree.map(keep, new_M, states_M), alive_M, metrics_M

    return BatchedProgram(
        broadcast=jax.jit(
            lambda state: jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), state), out_shardings=states
        ),
        step=jax.jit(
            step,
            in_shardings=(states, batch, member, member, replicated),
            out_shardings=(states, member, member),
            donate_argnums=(0,),
        ),
        evaluate=jax.jit(
            jax.vmap(prog.eval_step, in_axes=(0, None)), in_shardings=(states, batch), out_shardings=member
        ),
        eval_buckets=jax.jit(
            jax.vmap(prog.eval_buckets, in_axes=(0, None, None)),
            in_shardings=(states, batch, replicated),
            out_shardings=(member, member),
        ),
        diagnose=jax.jit(jax.vmap(prog.diagnose, in_axes=(0, None, 0)), in_shardings=(states, batch, member)),
        member=member,
    )


def _member(tree, i: int):
    """Member i's slice of a tree whose leaves have the member axis first."""
    return jax.tree.map(lambda x: x[i], tree)


def train_group(trials: list[Trial], workdir: Path) -> list[dict]:
    """Trains trials whose configs differ only in optimizer scalars as one program; returns their summaries.

    All members start from the same initialised state and see the same batches, so each member computes what
    its standalone run computes (launch.train); divergence freezes a member and stops its records, not the group.
    """
    cfg, n = trials[0].cfg, len(trials)
    dirs = [trial_dir(workdir, t) for t in trials]
    for t, d in zip(trials, dirs):
        configs.claim_workdir(t.cfg, d, write=jax.process_index() == 0)
        shutil.rmtree(d / "checkpoints", ignore_errors=True)  # a member restarts from scratch: older ones are stale
    rt = train.make_runtime(cfg)
    bp = batched_program(rt.prog, n)
    mesh, source, total = rt.mesh, rt.source, int(cfg.train.steps)

    state = train.fresh_state(rt, cfg)
    initial_loss, n_params = float(state["initial_loss"]), transformer.count_params(state["params"])
    states_M = bp.broadcast(state)
    hparams = [train.hparams_array(t.cfg) for t in trials]
    hparams_M = jax.device_put(jax.tree.map(lambda *h: np.stack(h), *hparams), bp.member)
    records = [
        train.RunRecord(t.cfg, d, start=0, initial_loss=initial_loss, n_params=n_params, verbose=False)
        for t, d in zip(trials, dirs)
    ]
    threshold = jnp.float32(records[0].threshold)
    n_buckets = cfg.train.freq_buckets
    bucket_table = train.frequency_buckets(source.token_counts(), n_buckets) if n_buckets else None
    live = np.ones(n, bool)  # members still training (host view); the step keeps `alive_M` in step with it
    alive_M = jax.device_put(live, bp.member)

    t0, pending = time.time(), []
    for step in range(total):
        step_num = step + 1
        batch = mesh_lib.global_batch(mesh, source.batch(step))
        if cfg.train.diag_every and step_num % cfg.train.diag_every == 0:
            diag_M = jax.device_get(bp.diagnose(states_M, batch, hparams_M))
            for i in np.flatnonzero(live):
                records[i].write(step_num, _member(diag_M, i))
        states_M, alive_M, metrics_M = bp.step(states_M, batch, hparams_M, alive_M, threshold)
        pending.append((step_num, metrics_M))
        was_live = live.copy()
        if train.due(cfg.train.log_every, step_num, total):
            rows = jax.device_get(pending)
            pending = []
            for i in np.flatnonzero(live):
                live[i] = not records[i].log_window([(s, _member(r, i)) for s, r in rows])
            if cfg.train.progress:
                best = min((float(rows[-1][1]["loss"][i]) for i in np.flatnonzero(live)), default=float("nan"))
                elapsed = time.time() - t0
                print(f"  step {step_num}/{total} | {live.sum()}/{n} alive | best loss {best:.4f} | {elapsed:.0f}s", flush=True)
        if cfg.train.eval_every and train.due(cfg.train.eval_every, step_num, total):
            eval_M = train.evaluate_loss(bp.evaluate, states_M, source, cfg, mesh)
            buckets_M = (
                train.evaluate_buckets(bp.eval_buckets, states_M, source, cfg, mesh, bucket_table) if n_buckets else {}
            )
            for i in np.flatnonzero(live):
                live[i] = not records[i].log_eval(step_num, eval_M[i], _member(buckets_M, i))
        if not live.any():
            break
        if (live != was_live).any():  # e.g. a non-finite eval: freeze those members in the program too
            alive_M = jax.device_put(np.asarray(alive_M) & live, bp.member)

    for i in np.flatnonzero(live):  # the final parameters of every finished member, as launch.train leaves them
        ckpt = checkpoint.Checkpointer(dirs[i] / "checkpoints", keep=trials[i].cfg.train.keep_ckpts)
        ckpt.save(total, _member(states_M, i))
        ckpt.close()
    return [r.finish() for r in records]


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
    base: ml_collections.ConfigDict, sweep: list[dict], workdir: str | Path, executor: str = "local", shard: str = ""
):
    """Runs the trials of `sweep` (of shard `shard`, "i/n") not yet in `workdir/results.jsonl`, writes the report
    of everything finished so far; returns all result rows."""
    workdir = Path(workdir)
    if executor not in EXECUTORS:
        raise configs.ConfigError(f"--executor={executor!r} is unknown; choose one of {', '.join(EXECUTORS)}")
    trials = shard_trials(make_trials(base, sweep), *parse_shard(shard))
    configs.claim_workdir(base, workdir, write=jax.process_index() == 0)
    results = workdir / "results.jsonl"
    records.drop_torn_tail(results)
    finished = {r["id"] for r in records.read_results(results)}
    todo = [t for t in trials if t.id not in finished]
    n_done = len(trials) - len(todo)
    what = f"{len(trials)} trials" + (f" (shard {shard} of {len(sweep)})" if shard else "")
    print(f"{workdir}: {what}, {n_done} already finished; executor {executor}", flush=True)
    EXECUTORS[executor](todo, workdir, Recorder(results, len(trials), n_done))
    if jax.process_index() == 0:
        out = report.write_report(workdir)
        print(f"report: {out / 'summary.md'} (loss_vs_lr.png, lr_sensitivity.csv)", flush=True)
    return records.read_results(results)


def main(argv) -> None:
    del argv
    from absl import flags

    sweep = load_sweep(flags.FLAGS["config"].config_filename)
    run_sweep(flags.FLAGS.config, sweep, flags.FLAGS.workdir, flags.FLAGS.executor, flags.FLAGS.shard)


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_enum("executor", "local", list(EXECUTORS), "local: trials one after another; batched: vmapped groups")
    flags.DEFINE_string("shard", "", "i/n: run only every n-th program group from group i (one process per GPU)")
    cli.run(main, config="file", workdir=True)
