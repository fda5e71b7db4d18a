"""What runs and sweeps leave on disk (DESIGN §3): a run's metrics rows and summary.json (`RunRecord`), and a
sweep's results.jsonl.

results.jsonl holds one JSON row per finished trial, appended as one write of one line followed by fsync, so a
kill leaves whole lines (or one torn last line, which readers ignore and the next writer cuts).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from launch import configs, evaluation, metrics as metrics_lib, plan, progress, step as step_lib


def drop_torn_tail(path: Path) -> None:
    """Cuts a last line without its newline, so the next append starts a line of its own."""
    if path.exists():
        text = path.read_bytes()
        if text and not text.endswith(b"\n"):
            with path.open("r+b") as f:
                f.truncate(text.rfind(b"\n") + 1)


def append_result(path: Path, row: dict) -> None:
    """Appends one row as one write of one line, then fsync: a kill leaves whole lines (or one torn last line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


_NUMBER = (int, float, type(None))
# a results.jsonl row's keys that the sweep and the report read, with their types; a row without them (or with
# another type) is skipped with a warning
RESULT_KEYS = {
    "id": str, "overrides": dict, "diverged": bool, "eval_loss": _NUMBER, "final_loss": _NUMBER,
    "initial_loss": _NUMBER, "lr": _NUMBER, "n_params": _NUMBER, "wall_seconds": _NUMBER,
}


def read_results(path: Path) -> list[dict]:
    """The rows of a sweep's results.jsonl, the first per trial id. A torn last line (a kill mid-write) is ignored;
    a malformed or incomplete row elsewhere is skipped with a warning naming file:line (the trial then counts as
    not finished, so a rerun trains it again)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    lines = text.splitlines()
    rows, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not text.endswith("\n"):
                continue  # a line cut by a kill
            row = None
        why = "is not a JSON object"
        if isinstance(row, dict):
            # a trial the Ray executor gave up on (`failed: true`, its error): recorded, with no losses
            keys = {k: RESULT_KEYS[k] for k in ("id", "overrides")} if row.get("failed") is True else RESULT_KEYS
            missing = [k for k in keys if k not in row]
            wrong = [k for k, t in keys.items() if k in row and not isinstance(row[k], t)]
            why = f"lacks {', '.join(missing)}" if missing else f"has a malformed {', '.join(wrong)}" if wrong else ""
        if why:
            print(f"warning: {path}:{n} {why}; skipped", file=sys.stderr)
            continue
        if row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows


def read_summary(workdir: Path) -> dict | None:
    """`workdir/summary.json`, None when absent; a corrupt one is a ConfigError naming it."""
    path = Path(workdir) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        summary = None
    if not isinstance(summary, dict):
        raise configs.ConfigError(f"{path} is corrupt (not a JSON object); delete it and rerun the command to "
                                  "finish the run again from its checkpoints")
    return summary


def finished_summary(workdir: Path) -> dict | None:
    """The summary of a finished run in `workdir`, or None."""
    summary = read_summary(workdir)
    return summary if summary and summary.get("finished") else None


def due(every: int, step_num: int, total: int) -> bool:
    """Whether a periodic action (log, eval, checkpoint) runs after `step_num` steps: every `every`, and at the end."""
    return step_num == total or (every > 0 and step_num % every == 0)


def _finite_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# A rewind's record: a metrics row at the restored step with these as rewind_<field>, and summary.json's `rewinds`.
REWIND_FIELDS = ("detected_at", "restored_step", "data_offset")


class RunRecord:
    """The host side of one member's run: metrics rows, progress lines, the divergence rule, and summary.json.

    The loop (launch/loop.py) feeds one per member with the member's slice of the group's metrics, so a run and a
    batched sweep's trials write the same files by the same rules. Progress lines (absl INFO) only with `verbose`.
    """

    def __init__(
        self, cfg, workdir: Path, *, start: int, initial_loss: float, n_params: int, verbose: bool, data_offset: int = 0
    ):
        self.cfg, self.workdir, self.start = cfg, Path(workdir), start
        self.is_main = jax.process_index() == 0
        self.verbose = verbose and self.is_main
        self.initial_loss, self.n_params = initial_loss, n_params
        self.total = int(cfg.train.steps)
        self.tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        self.threshold = float(step_lib.divergence_threshold(cfg, initial_loss))
        if start == 0 and self.is_main:  # rows of an attempt killed before its first checkpoint are stale
            (self.workdir / "metrics.jsonl").unlink(missing_ok=True)
        self.wandb = metrics_lib.WandbRun.open(cfg, self.workdir) if self.is_main else None  # train.wandb.project
        self.writer = self._open_writer(start, data_offset)
        if start == 0:
            self.writer.write(0, {"eval_loss": initial_loss})
        # earlier rows are needed only for the rewind record and to finish a run killed after its last checkpoint
        need_rows = cfg.train.rewind.enabled or start == self.total
        rows = metrics_lib.read_jsonl(self.workdir / "metrics.jsonl") if need_rows and self.is_main else []
        self.rewinds = [{k: r[f"rewind_{k}"] for k in REWIND_FIELDS} for r in rows if "rewind_data_offset" in r]
        self.diverged_at, self.last_window, self.eval_loss, self.eval_buckets = None, [], None, {}
        if start == self.total:  # killed between the final checkpoint and summary.json: recover the end rows
            end = [r for r in rows if r["step"] == start]
            self.last_window = [r["ce_mean"] for r in end if r.get("ce_mean") is not None][-1:]
            last_eval = next((r for r in reversed(end) if "eval_loss" in r), {})
            self.eval_loss = last_eval.get("eval_loss")
            self.eval_buckets = {k: last_eval[k] for k in evaluation.BUCKET_METRICS if k in last_eval}
        self.t_start = self.t_window = time.time()
        self.timed_tokens, self.timed_seconds = 0, 0.0
        show = self.verbose and cfg.train.progress
        self.progress = progress.Progress(self.total, start) if show else None  # a bar on a terminal, else lines
        self.peak = progress.device_peak() if show else (None, 1)
        self.flops_per_token = plan.config_flops_per_token(cfg) if self.peak[0] else 0.0  # MFU where a peak is known

    def _open_writer(self, step: int, data_offset: int) -> metrics_lib.MetricWriter:
        """The metrics writer of a (re)start at `step`: the rows of later steps, abandoned, are dropped, except the
        rewind rows that the state's `data_offset` already includes (a rewind to an earlier step keeps the record of
        one before it; a resume drops those it is about to replay)."""

        def keep(row):
            if "rewind_data_offset" in row:
                return row["rewind_data_offset"] <= data_offset
            return row.get("step", 0) <= step

        return metrics_lib.MetricWriter(self.workdir, resume_step=step, enabled=self.is_main, keep=keep,
                                        wandb=self.wandb)

    def write(self, step: int, metrics: dict) -> None:
        self.writer.write(step, metrics)

    def rewound(self, spike_step: int, spike_row: dict, restored_step: int, data_offset: int) -> None:
        """Records a rewind (`train.rewind`): the rows of the abandoned steps after `restored_step` are superseded
        as on a resume, a row at `restored_step` holds the `REWIND_FIELDS` (as rewind_<field>), and a line says so."""
        self.writer.close()
        self.writer = self._open_writer(restored_step, data_offset)
        event = dict(zip(REWIND_FIELDS, (spike_step, restored_step, data_offset)))
        self.writer.write(restored_step, {f"rewind_{k}": v for k, v in event.items()})
        self.rewinds.append(event)
        self.t_window = time.time()
        r = self.cfg.train.rewind
        logging.info(
            "rewind %d/%d: CE %.4g spiked at step %d (z = %.1f); restored step %d, data offset %d batches",
            data_offset // r.skip_batches, r.max_rewinds, float(spike_row["ce"]), spike_step,
            float(spike_row["spike_ce_z"]), restored_step, data_offset,
        )

    def log_window(self, rows: list[tuple[int, dict]]) -> bool:
        """Records the host metrics of the steps since the last log step; True when the run diverged in them."""
        now = time.time()
        window_tokens, window_seconds = self.tokens_per_step * len(rows), now - self.t_window
        if rows[0][0] > self.start + 1:  # the first window after a (re)start includes compilation: not timed
            self.timed_tokens += window_tokens
            self.timed_seconds += window_seconds
        tok_s = window_tokens / max(window_seconds, 1e-9)
        self.t_window = now
        bad = np.asarray(step_lib.diverged(*(np.array([r[k] for _, r in rows]) for k in ("loss", "ce")), self.threshold))
        s, r = rows[int(bad.argmax())] if bad.any() else rows[-1]
        if bad.any():
            self.diverged_at = s
        self.last_window = [float(row["ce"]) for _, row in rows]
        self.writer.write(s, {**r, "ce_mean": np.mean(self.last_window), "tokens_per_second": tok_s})
        if self.progress is not None:
            eta = (self.total - s) * (now - self.t_start) / max(s - self.start, 1)
            mfu = progress.mfu(tok_s, flops_per_token=self.flops_per_token, n_devices=self.peak[1],
                               peak_flops=self.peak[0])
            self.progress.update(s, loss=float(r["loss"]), lr=float(r["lr"]), tokens_per_second=tok_s, mfu=mfu, eta=eta)
        if self.diverged_at is not None and self.verbose:
            logging.info("%s: diverged at step %d (loss %.4g non-finite or CE above %.4g)", self.workdir, s,
                         float(r["loss"]), self.threshold)
        return self.diverged_at is not None

    def log_eval(self, step: int, eval_loss: float, buckets: dict | None = None) -> bool:
        """Records an eval loss (and the bucket metrics in `buckets`); True (diverged) when it is not finite."""
        self.eval_loss, self.eval_buckets = float(eval_loss), dict(buckets or {})
        self.writer.write(step, {"eval_loss": self.eval_loss, **self.eval_buckets})
        if not math.isfinite(self.eval_loss):
            self.diverged_at = step
        return self.diverged_at is not None

    def finish(self, extra: dict | None = None) -> dict:
        """Writes summary.json (DESIGN §3) with the fields of `extra` added, closes the writers; returns the summary."""
        wall = time.time() - self.t_start
        ok = self.diverged_at is None
        summary = dict(
            finished=True,
            diverged=not ok,
            diverged_at_step=self.diverged_at,
            initial_loss=self.initial_loss,
            final_loss=_finite_float(np.mean(self.last_window)) if self.last_window and ok else None,
            eval_loss=_finite_float(self.eval_loss) if self.eval_loss is not None and ok else None,
            steps=self.total if ok else self.diverged_at,
            tokens=self.total * self.tokens_per_step,
            tokens_per_second=self.timed_tokens / self.timed_seconds if self.timed_seconds else None,
            wall_seconds=wall,
            n_params=self.n_params,
            lr=float(self.cfg.optim.lr),
            seed=int(self.cfg.train.seed),
            **{k: metrics_lib.to_json_value(v) for k, v in self.eval_buckets.items() if ok},
            **({"rewinds": self.rewinds} if self.cfg.train.rewind.enabled else {}),
            **(extra or {}),
        )
        self.writer.close()
        if self.progress is not None:
            self.progress.close()
        if self.is_main:
            metrics_lib.write_json_atomic(self.workdir / "summary.json", summary)
        if self.wandb is not None:
            self.wandb.finish(summary)
        if self.verbose:
            logging.info(
                "%s: done: %s; final loss %s, eval loss %s, %.1fs", self.workdir,
                "finished" if ok else f"DIVERGED at step {self.diverged_at}", summary["final_loss"],
                summary["eval_loss"], wall,
            )
        return summary
