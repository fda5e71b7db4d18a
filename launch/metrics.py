"""Metric writers: metrics.jsonl (one JSON object per logged step) and TensorBoard event files.

Values are converted to plain Python: scalars to float (non-finite values to null, since JSON has no NaN),
vectors (e.g. per-head attention entropy) to lists in JSONL and to one TensorBoard scalar per element.
On resume, rows logged after the restored checkpoint are dropped, so the file equals an uninterrupted run's; a
rewind (launch/train.py, train.rewind) supersedes the abandoned steps' rows the same way.
"""

from __future__ import annotations

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


class MetricWriter:
    """Appends rows to `workdir/metrics.jsonl` and mirrors scalars to TensorBoard under `workdir/tb`."""

    def __init__(
        self, workdir: Path, resume_step: int, enabled: bool = True, keep: Callable[[dict], bool] | None = None
    ):
        """Rows an earlier attempt wrote after `resume_step` are dropped (or those `keep(row)` rejects, if given)."""
        self.enabled = enabled
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
