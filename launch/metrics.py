"""Metric writers: metrics.jsonl (one JSON object per logged step) and TensorBoard event files, always; a Weights &
Biases run as well when `train.wandb.project` is set (the optional `[wandb]` extra).

Values are converted to plain Python: scalars to float (non-finite values to null, since JSON has no NaN),
vectors (e.g. per-head attention entropy) to lists in JSONL and to one TensorBoard scalar per element.
On resume, rows logged after the restored checkpoint are dropped, so the file equals an uninterrupted run's; a
rewind (launch/train.py, train.rewind) supersedes the abandoned steps' rows the same way.

W&B (`WandbRun`): one W&B run per run directory, so one per trial of a sweep, grouped by the sweep (the W&B group
is the sweep directory's name for a run directory DIR/trials/<id>), with the flat config attached at the start and
summary.json as the run's summary at the end. Its id is derived from the run directory, so a resumed run continues
its W&B run; W&B ignores rows for steps it has already seen (those a resume or a rewind replays), where
metrics.jsonl keeps the replayed ones: metrics.jsonl is the record, W&B a view of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np


def to_json_value(x):
    """A float, a list of floats, or None for non-finite values."""
    a = np.asarray(x)
    if a.ndim == 0:
        v = a.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    return [to_json_value(e) for e in a]


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            break
    return rows


class WandbRun:
    """The W&B run of one run directory (module docstring); `open` returns None when train.wandb.project is ""."""

    def __init__(self, run):
        self.run = run

    @classmethod
    def open(cls, cfg, workdir: Path) -> "WandbRun | None":
        """The W&B run of the run directory `workdir` (its config.json attached), or None when tracking is off."""
        w = cfg.train.wandb
        if not w.project:
            return None
        import wandb  # the [wandb] extra; configs.validate checks that it is installed

        workdir = Path(workdir).resolve()
        group = workdir.parent.parent.name if workdir.parent.name == "trials" else None
        run_id = hashlib.sha1(str(workdir).encode()).hexdigest()[:16]
        return cls(wandb.init(
            project=w.project, entity=w.entity or None, mode=w.mode, group=group, name=workdir.name, id=run_id,
            dir=os.environ.get("WANDB_DIR") or str(workdir), config=json.loads((workdir / "config.json").read_text()),
            resume="allow", reinit="create_new",
        ))

    def log(self, row: dict) -> None:
        """One metrics.jsonl row: scalars as they are, a vector's elements as `<key>/<i>` (as in TensorBoard)."""
        flat = {}
        for k, v in row.items():
            if k == "step" or v is None:
                continue
            if isinstance(v, list):
                flat.update({f"{k}/{i}": e for i, e in enumerate(v) if e is not None})
            else:
                flat[k] = v
        if flat:
            self.run.log(flat, step=row["step"])

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})
        self.run.finish()


class MetricWriter:
    """Appends rows to `workdir/metrics.jsonl` and mirrors scalars to TensorBoard under `workdir/tb` (and to a W&B
    run, `wandb`, when given)."""

    def __init__(
        self, workdir: Path, resume_step: int, enabled: bool = True, keep: Callable[[dict], bool] | None = None,
        wandb: WandbRun | None = None,
    ):
        """Rows an earlier attempt wrote after `resume_step` are dropped (or those `keep(row)` rejects, if given)."""
        self.enabled, self.wandb = enabled, wandb
        self.path = workdir / "metrics.jsonl"
        if not enabled:
            return
        keep = keep or (lambda r: r.get("step", 0) <= resume_step)
        write_jsonl_atomic(self.path, [r for r in read_jsonl(self.path) if keep(r)])
        self.file = self.path.open("a")
        from tensorboardX import SummaryWriter  # imported lazily: only runs that write need it

        self.tb = SummaryWriter(str(workdir / "tb"), purge_step=resume_step + 1)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: to_json_value(v) for k, v in sorted(metrics.items())}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(row)
        for k, v in row.items():
            if k == "step" or v is None:
                continue
            if isinstance(v, list):
                for i, e in enumerate(v):
                    if e is not None:
                        self.tb.add_scalar(f"{k}/{i}", e, step)
            else:
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()
