"""What runs and sweeps leave on disk (DESIGN §3): results.jsonl rows, run records, summaries.

results.jsonl holds one JSON row per finished trial, appended as one write of one line followed by fsync, so a
kill leaves whole lines (or one torn last line, which readers ignore and the next writer cuts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from launch import metrics as metrics_lib


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


def read_results(path: Path) -> list[dict]:
    """The rows of a sweep's results.jsonl, the first per trial id; a torn line (a kill mid-write) is ignored."""
    rows, seen = [], set()
    for row in metrics_lib.read_jsonl(path):
        if row["id"] not in seen:
            seen.add(row["id"])
            rows.append(row)
    return rows
