"""THE training loop (DESIGN §4), over a group of M >= 1 members that share the compiled program and the data.

A run (`launch.train`, a trial of `launch.sweep --executor=local`) is a group of one; a batched sweep group
(`--executor=batched`) is M trials whose configs differ only in optimizer scalars (`optim.HPARAM_KEYS`) and
`train.seed`. Members with one seed share every batch; members of different seeds get their own init and data
order (the batch then has a member axis). Everything a run does, the group does for each member: metrics rows,
diagnostics, evals and frequency buckets, WSD-S decay-end models, spike injection, skip-step, the divergence rule
(a diverged member is frozen and recorded at once; the others go on), periodic checkpoints and exact resume.
Rewind (PaLM) restores one run's checkpoint and data position, so it needs M = 1.

Where the resumable state lives:
  M = 1   the run directory's checkpoints/ (one member's state): what launch.branch and launch.eval_length read.
  M > 1   `group_dir/checkpoints/` (the member-stacked state, with each member's `alive` flag), every
          `train.ckpt_every` steps; at the end each finished member's final state goes to its own run directory's
          checkpoints/ and the group directory is removed. A rerun of a killed group restores the same group (same
          members, same order, diverged members carried frozen) from its newest checkpoint, so every member ends
          bitwise equal (on CPU) to an uninterrupted run of the group.

A member's run directory (DESIGN §3): config.json, metrics.jsonl, summary.json, tb/, checkpoints/ (and decayed/
with WSD-S). Re-running the same command resumes from the newest checkpoint; a finished run does nothing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from absl import logging

import optim
from launch import checkpoint, configs, corpus, data, distributed, evaluation, faults, mesh as mesh_lib
from launch import metrics as metrics_lib
from launch import records, rewind
from launch import step as step_lib
from launch import undertrained
from models import transformer


@dataclasses.dataclass(frozen=True)
class Member:
    """One member of a group: its config and its run directory."""

    cfg: object
    workdir: Path


def enable_compilation_cache(cfg) -> None:
    """`train.compilation_cache`: jax's persistent compilation cache in `<data cache root>/xla` ("", the default),
    in the given directory, or "off"; every program is cached, however small or fast to compile, so a rerun, a
    resumed sweep or a second sweep of the same shapes loads its executables instead of compiling them
    (benchmarks/compile_cache.py measures it). The cache directory is per process: the first Runtime sets it, and
    a process that has one (a Runtime before, or JAX_COMPILATION_CACHE_DIR) keeps it."""
    setting = cfg.train.compilation_cache
    if setting == "off" or jax.config.jax_compilation_cache_dir:
        return
    path = Path(setting).expanduser() if setting else corpus.cache_root(cfg.data) / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class Runtime:
    """What runs of one program share: the mesh, the data source and the program, and its compiled groups.

    Runs whose configs differ only in optimizer scalars and the seed (launch.sweep's `program_key`) may share one
    Runtime, so each group size compiles once.
    """

    def __init__(self, cfg):
        enable_compilation_cache(cfg)
        self.mesh = mesh_lib.make_mesh(cfg.mesh)
        self.source = data.make_source(
            cfg.data, vocab_size=cfg.model.vocab_size, seed=cfg.train.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
        self.prog = step_lib.build_program(cfg, self.mesh)
        self._groups: dict[tuple[int, bool], step_lib.Group] = {}

    def group(self, m: int, shared_batch: bool) -> step_lib.Group:
        key = (m, shared_batch)
        if key not in self._groups:
            self._groups[key] = step_lib.compile_group(self.prog, m, shared_batch)
        return self._groups[key]


class GroupData:
    """The batches of a group: one stream when the members share `train.seed`, else one per member, stacked.

    A batch is placed as the group's `batch_sharding`; each process reads only the rows (and members) of its own
    devices' blocks (`data.TokenSource.rows`), so no process ever holds a whole global batch."""

    def __init__(self, rt: Runtime, seeds: list[int]):
        self.shared = len(set(seeds)) == 1
        self.sources = [rt.source.with_seed(seeds[0])] if self.shared else [rt.source.with_seed(s) for s in seeds]
        self.sharding = rt.group(len(seeds), self.shared).batch_sharding
        src = self.sources[0]
        self.shape = (src.batch_size, src.seq_len + 1) if self.shared else (len(seeds), src.batch_size, src.seq_len + 1)

    def _batch(self, step: int, split: str) -> jax.Array:
        def fetch(index):
            lo, hi, _ = index[-2].indices(self.shape[-2])
            if self.shared:
                return self.sources[0].rows(step, split, lo, hi)[:, index[-1]]
            members = range(len(self.sources))[index[0]]
            return np.stack([self.sources[i].rows(step, split, lo, hi) for i in members])[..., index[-1]]

        return mesh_lib.assemble(self.sharding, self.shape, fetch)

    def train_batch(self, step: int) -> jax.Array:
        return self._batch(step, "train")

    def eval_batch(self, i: int) -> jax.Array:
        return self._batch(i, "eval")

    def token_counts(self) -> np.ndarray:
        return self.sources[0].token_counts()


class Store:
    """The resumable checkpoints of a group (see the module docstring for where they live)."""

    def __init__(self, group: step_lib.Group, members: list[Member], group_dir: Path | None):
        self.group, self.single = group, group.m == 1
        directory = members[0].workdir if self.single else group_dir
        self.ckpt = checkpoint.Checkpointer(directory / "checkpoints", keep=members[0].cfg.train.keep_ckpts)

    def restore_latest(self):
        if self.single:
            step, state = self.ckpt.restore_latest(self.group.prog.abstract_state())
            return step, None if state is None else self.group.stack(state)
        return self.ckpt.restore_latest(self.group.abstract_state())

    def save(self, step: int, states_M) -> None:
        self.ckpt.save(step, self.group.member(states_M, 0) if self.single else states_M)

    def close(self) -> None:
        self.ckpt.close()


def member_slice(tree, i: int):
    """Member i's slice of a host tree whose leaves have the member axis first."""
    return jax.tree.map(lambda x: x[i], tree)


def fresh_states(group: step_lib.Group, gdata: GroupData, cfgs) -> dict:
    """The initialised states of the members (`train.seed` each) with `initial_loss` measured: the eval loss of
    the untrained model (ℓ0 of the LR-sensitivity metric)."""
    seeds = jax.device_put(np.asarray([c.train.seed for c in cfgs], np.int32), group.member_sharding)
    states = group.init(seeds)
    initial = evaluation.evaluate_loss(group, states, gdata, cfgs[0].train.eval_batches).astype(np.float32)
    return group.set_initial_loss(states, jax.device_put(initial, group.member_sharding))


def state_from_run(prog: step_lib.Program, workdir: Path, source: Path, step: int) -> dict:
    """The state saved at `step` in the run directory `source`, with `source`'s metrics rows up to `step` copied into
    `workdir`, so that a run started from it reads as one run from step 0 (a WSD branch: launch/branch.py)."""
    ckpt = checkpoint.Checkpointer(source / "checkpoints", keep=None)
    try:
        state = ckpt.restore(step, prog.abstract_state())
    except Exception as e:  # noqa: BLE001 - a missing step, or a checkpoint of a different model or state
        raise configs.ConfigError(f"cannot restore step {step} of {source}: {str(e).strip().splitlines()[0]}") from None
    finally:
        ckpt.close()
    if jax.process_index() == 0:
        rows = metrics_lib.read_jsonl(source / "metrics.jsonl")
        metrics_lib.write_jsonl_atomic(workdir / "metrics.jsonl", [r for r in rows if r.get("step", 0) <= step])
    return state


def restore_newest(prog: step_lib.Program, workdir: Path) -> tuple[int | None, dict | None]:
    """(step, state) of the newest complete checkpoint of the run in `workdir`, or (None, None); read-only (a broken
    newer step is skipped with a warning, not moved aside: that is the resume's job)."""
    ckpt = checkpoint.Checkpointer(Path(workdir) / "checkpoints", keep=prog.cfg.train.keep_ckpts)
    try:
        return ckpt.restore_latest(prog.abstract_state(), move_aside=False)
    finally:
        ckpt.close()


def save_member(cfg, directory: Path, step: int, state) -> None:
    """One member's state at `step` into `directory` (its checkpoints/ or decayed/), unless a replay already did."""
    ckpt = checkpoint.Checkpointer(directory, keep=None if directory.name == "decayed" else cfg.train.keep_ckpts)
    try:
        ckpt.ensure(step, state)
    finally:
        ckpt.close()


def refuse(members: list[Member], start_from) -> None:
    """What a group of M > 1 cannot do, refused before anything runs."""
    if len(members) > 1 and members[0].cfg.train.rewind.enabled:
        raise configs.ConfigError(
            "train.rewind restores one run's checkpoint and data position: a batched group cannot rewind "
            "(launch.sweep runs such trials one at a time)"
        )
    if len(members) > 1 and start_from is not None:
        raise configs.ConfigError("a branch (start_from) starts one run, not a batched group")
    key = {json.dumps({k: v for k, v in configs.flatten(m.cfg).items() if k not in configs.MEMBER_FIELDS},
                      sort_keys=True, default=str) for m in members}
    if len(key) > 1:
        raise configs.ConfigError("the members of a group may differ only in optimizer scalars and train.seed")


def train_group(
    members: list[Member],
    rt: Runtime,
    *,
    group_dir: Path | None = None,
    on_done: Callable[[int, dict], None] | None = None,
    start_from: tuple[Path, int] | None = None,
    verbose: bool = True,
) -> list[dict]:
    """Trains (or resumes, or does nothing for finished members) the group; returns the members' summaries.

    `group_dir` holds the group's checkpoints when M > 1. `on_done(i, summary)` is called once per member as soon
    as it finishes or diverges (the sweep appends its results row). `start_from` = (run directory, step): a run
    (M = 1) without checkpoints of its own starts from that run's state at that step instead of a fresh one
    (launch.branch). `verbose=False` silences a single run's start and progress lines.

    Step t trains on batch t + data_offset of the data stream (a train-state scalar, changed only by rewinds).
    With optim.schedule = wsd_s, the state at the end of every decay (`optim.decay_ends`) is saved to the member's
    `decayed/<step>/`, kept for good, with a `decayed_eval_loss` row; training goes on from it untouched (spec
    optimizers §3(a)). With train.freq_buckets, each eval adds the `evaluation.BUCKET_METRICS`.
    """
    refuse(members, start_from)
    distributed.check_agreement(members[0].cfg)
    cfg, m, is_main = members[0].cfg, len(members), jax.process_index() == 0
    cfgs = [mem.cfg for mem in members]
    for mem in members:
        configs.claim_workdir(mem.cfg, mem.workdir, write=is_main)
    summaries = [records.finished_summary(mem.workdir) for mem in members]
    if all(s is not None for s in summaries):
        if verbose and m == 1:
            logging.info("%s: already finished (summary.json); nothing to do", members[0].workdir)
        return summaries

    gdata = GroupData(rt, [c.train.seed for c in cfgs])
    group = rt.group(m, gdata.shared)
    store = Store(group, members, group_dir)
    start, states = store.restore_latest()
    if states is None and start_from is not None:
        start, states = start_from[1], group.stack(
            state_from_run(rt.prog, members[0].workdir, Path(start_from[0]), start_from[1])
        )
        store.save(start, states)
    elif states is None:
        start, states = 0, fresh_states(group, gdata, cfgs)
        if cfg.train.rewind.enabled:  # what a spike within steps_back of the start rewinds to
            store.save(0, states)
    else:
        logging.info("%s: resuming from step %d", members[0].workdir if m == 1 else group_dir, start)
    host = mesh_lib.to_host({k: states[k] for k in ("initial_loss", "data_offset", "alive")})
    n_params = transformer.count_params(rt.prog.abstract_state()["params"])
    total = int(cfg.train.steps)
    single_verbose = verbose and m == 1
    if start == 0 and single_verbose and is_main:
        logging.info(
            "%s: %.2fM params, mesh %s, %d steps of %dx%d tokens, initial loss %.4f", members[0].workdir,
            n_params / 1e6, dict(rt.mesh.shape), total, cfg.data.batch_size, cfg.data.seq_len, host["initial_loss"][0],
        )
    recs = [
        None if done is not None else records.RunRecord(
            c, mem.workdir, start=start, initial_loss=float(host["initial_loss"][i]), n_params=n_params,
            verbose=single_verbose, data_offset=int(host["data_offset"][i]),
        )
        for i, (c, mem, done) in enumerate(zip(cfgs, members, summaries))
    ]
    live = np.array([r is not None and bool(a) for r, a in zip(recs, host["alive"])])
    hparams_M = step_lib.stacked_hparams(group, cfgs)
    offset = int(host["data_offset"][0])  # members of a group share it (no rewinds for M > 1)
    rewind_cfg = cfg.train.rewind
    ends = optim.decay_ends(cfg.optim, total)
    # a decayed model of its own at every end of a multi-budget schedule (WSD-S, cyclic cosine); a one-budget
    # schedule's only end is the final state, already checkpointed
    decay_ends = set(ends) if len(ends) > 1 else set()
    decayed = checkpoint.Checkpointer(members[0].workdir / "decayed", keep=None) if decay_ends and m == 1 else None
    n_buckets = cfg.train.freq_buckets
    table = evaluation.frequency_buckets(gdata.token_counts(), n_buckets) if n_buckets else None

    def done(i: int, extra: dict | None = None) -> None:
        live[i] = False
        faults.maybe_fail("summary")
        summaries[i] = recs[i].finish(extra)
        if on_done is not None:
            on_done(i, summaries[i])

    poison = faults.nonfinite("params")
    t0, pending, step = time.time(), [], start
    while step < total and live.any():
        step_num = step + 1  # steps completed after this update
        batch = gdata.train_batch(step + offset)
        if cfg.train.diag_every and step_num % cfg.train.diag_every == 0:
            diag_M = jax.device_get(group.diagnose(states, batch, hparams_M))
            for i in np.flatnonzero(live):
                recs[i].write(step_num, member_slice(diag_M, i))
        if poison is not None and step_num == poison.step:  # an injected fault (launch/faults.py)
            params = jax.tree.map(lambda p: p.at[poison.member].set(poison.value), states["params"])
            states = dict(states, params=jax.device_put(params, group.state_shardings["params"]))
        states, metrics_M = group.step(states, batch, hparams_M)
        faults.maybe_fail("step")
        pending.append((step_num, metrics_M))
        was_live = live.copy()
        if records.due(cfg.train.log_every, step_num, total):
            rows, pending = jax.device_get(pending), []
            rewinds_left = rewind_cfg.enabled and offset // rewind_cfg.skip_batches < rewind_cfg.max_rewinds
            spike = rewind.first_spike([(s, member_slice(r, 0)) for s, r in rows], recs[0].threshold) \
                if rewinds_left else None
            if spike is not None:
                offset += rewind_cfg.skip_batches
                step, state = rewind.rewind_state(rt.prog, store.ckpt, decayed, spike, rewind_cfg.steps_back, offset)
                states = group.stack(state)
                recs[0].rewound(spike, member_slice(dict(rows)[spike], 0), step, offset)
                continue
            for i in np.flatnonzero(live):
                if recs[i].log_window([(s, member_slice(r, i)) for s, r in rows]):
                    done(i)
            if m > 1 and cfg.train.progress:
                losses = [float(rows[-1][1]["loss"][i]) for i in np.flatnonzero(live)]
                logging.info("  step %d/%d | %d/%d alive | best loss %.4f | %.0fs", step_num, total, live.sum(), m,
                             min(losses, default=float("nan")), time.time() - t0)
        eval_due = cfg.train.eval_every and records.due(cfg.train.eval_every, step_num, total)
        if live.any() and (eval_due or step_num in decay_ends):
            eval_M = evaluation.evaluate_loss(group, states, gdata, cfg.train.eval_batches)
            faults.maybe_fail("eval")
        if live.any() and eval_due:
            buckets_M = evaluation.evaluate_buckets(group, states, gdata, cfg.train.eval_batches, table) \
                if n_buckets else {}
            for i in np.flatnonzero(live):
                if recs[i].log_eval(step_num, eval_M[i], member_slice(buckets_M, i)):
                    done(i)
        if live.any() and step_num in decay_ends:
            for i in np.flatnonzero(live):
                recs[i].write(step_num, {"decayed_eval_loss": eval_M[i]})
                save_member(cfgs[i], members[i].workdir / "decayed", step_num, group.member(states, i))
        if (live != was_live).any() and live.any():  # e.g. a non-finite eval: freeze those members in the step too
            states = group.freeze(states, jax.device_put(live, group.member_sharding))
        if live.any() and records.due(cfg.train.ckpt_every, step_num, total) and (m == 1 or step_num < total):
            store.save(step_num, states)
        step = step_num
    store.close()
    if decayed is not None:
        decayed.close()

    for i in np.flatnonzero(live):  # finished members: the final state in their own run directory, then the summary
        if m > 1:
            save_member(cfgs[i], members[i].workdir / "checkpoints", total, group.member(states, i))
        extra = {}
        if cfg.train.undertrained_tokens:  # Land & Bartolo 2024 (launch/undertrained.py)
            rows = undertrained.unembedding(jax.device_get(group.member(states, i)["params"]), cfg.model)
            extra["undertrained_tokens"] = undertrained.undertrained_tokens(
                rows, gdata.token_counts(), cfg.train.undertrained_tokens
            )
        done(i, extra)
    if m > 1 and is_main and group_dir is not None:
        shutil.rmtree(group_dir / "checkpoints", ignore_errors=True)
    return summaries


def train(cfg, workdir, *, rt: Runtime | None = None, start_from=None, verbose: bool = True) -> dict:
    """Trains (or resumes, or does nothing if finished) the run of `cfg` in `workdir`: a group of one member."""
    configs.validate(cfg, n_devices=jax.device_count(), n_processes=jax.process_count())
    rt = rt or Runtime(cfg)
    return train_group([Member(cfg, Path(workdir))], rt, start_from=start_from, verbose=verbose)[0]
