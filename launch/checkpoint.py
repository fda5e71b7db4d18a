"""Orbax checkpoints of the train state: save every `train.ckpt_every` steps, resume from the newest complete one.

A checkpoint is complete when its step directory holds a checksum manifest (`MANIFEST`: the size and sha256 of
every file orbax wrote) whose every entry matches. The manifest is written after orbax has finalised the step
(orbax writes to a temporary name and renames), atomically (a temporary file, fsync, rename), so:
  - a kill -9 during a save leaves an orbax temporary directory (ignored) or a finalised step without a manifest
    (incomplete: the save never returned);
  - a truncated, partly deleted or bit-flipped file of a step is a mismatch (corrupt), found before orbax reads it.

On resume (`restore_latest`) every step newer than the newest complete one is moved aside, never deleted, to
`<checkpoints>.corrupt/<step>-<UTC time>/`, with one warning, and the newest complete one is restored. The rerun then
trains over the moved steps again and saves them anew (orbax would refuse a step that still exists), so it ends
as an uninterrupted run would, on this rerun and every later one. When no step is complete but some are corrupt,
nothing is moved and `CheckpointError` says so: the user decides whether to train from step 0. Steps that are only
incomplete (a kill during the first save) are moved aside and training starts from step 0.

The manager is told up front that a step holds one unnamed item (`item_handlers`): otherwise it infers that from
the first step directory it reads and keeps the answer, so one step missing its item made every older one
unreadable too.

Saves are synchronous: a run that was killed right after `save` returned has that step on disk, complete, which
the exact-resume guarantee relies on. Hashing costs about a second per GB, small next to `ckpt_every` steps.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from launch import configs, faults

MANIFEST = "proxylab_sha256.json"  # in each step directory: {relative path: [bytes, sha256 hex]}


class CheckpointError(configs.ConfigError):
    """A checkpoint that cannot be used (one line naming it and what to do); a user error, exit status 2."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(step_dir: Path) -> None:
    """Records the size and sha256 of every file under `step_dir` in its MANIFEST, atomically."""
    files = {
        str(p.relative_to(step_dir)): [p.stat().st_size, _sha256(p)]
        for p in sorted(step_dir.rglob("*")) if p.is_file() and not p.name.startswith(MANIFEST)
    }
    tmp = step_dir / f"{MANIFEST}.tmp"
    with tmp.open("w") as f:
        json.dump(files, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / MANIFEST)
    _fsync_dir(step_dir)


def problem(step_dir: Path) -> str | None:
    """What makes the checkpoint in `step_dir` unusable ("incomplete: ..." or "corrupt: ..."), or None if complete.

    Files that are not in the manifest are ignored (they cannot change what the listed files restore)."""
    try:
        files = json.loads((step_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return "incomplete: no checksum manifest (its save never finished)"
    except (OSError, ValueError) as e:
        return f"corrupt: its checksum manifest is unreadable ({e})"
    for rel, (size, digest) in files.items():
        path = step_dir / rel
        if not path.is_file():
            return f"corrupt: {rel} is missing"
        if path.stat().st_size != size:
            return f"corrupt: {rel} has {path.stat().st_size} bytes, not {size}"
        if _sha256(path) != digest:
            return f"corrupt: {rel} does not match its sha256"
    return None


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int | None):
        """Checkpoints in `directory`, the newest `keep` of them kept on disk (None: all of them)."""
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
            item_handlers=ocp.StandardCheckpointHandler(),  # one unnamed item per step (module docstring)
        )

    def steps(self) -> list[int]:
        """The steps on disk that orbax finalised, complete or not, oldest first."""
        return sorted(self.manager.all_steps())

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state) -> None:
        """Saves `state` as `step` (which must not exist yet), then its checksum manifest.

        A write that the filesystem refuses (full, read-only, no permission) is an OSError with that errno and the
        path, raised once: orbax's threads would otherwise log the error with a traceback per thread first."""
        held, refused = _HoldOrbaxErrors(), None
        logging.getLogger("absl").addFilter(held)
        stderr, sys.stderr = sys.stderr, _HeldStream()
        try:
            self.manager.save(step, args=ocp.args.StandardSave(_flatten(state)), force=True)
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - tensorstore reports OS errors as ValueError text
            refused = re.search(r"os_error_code='(\d+)'", str(e))
            if refused is None:
                raise
        finally:
            logging.getLogger("absl").removeFilter(held)
            if refused is None:
                sys.stderr.release(stderr)
                held.release()
            else:
                sys.stderr.drain(stderr)
        if refused is not None:
            code = int(refused[1])
            raise OSError(code, os.strerror(code), str(self.step_dir(step)))
        faults.maybe_fail("ckpt_write")
        if jax.process_index() == 0:
            write_manifest(self.step_dir(step))

    def ensure(self, step: int, state) -> None:
        """Saves `state` as `step` unless a complete checkpoint of `step` exists (a replay after a kill already
        saved it); an incomplete or corrupt one is moved aside first."""
        if step in self.steps():
            reason = problem(self.step_dir(step))
            if reason is None:
                return
            self._set_aside([(step, reason)], True, f"saving step {step} again")
        self.save(step, state)

    def restore(self, step: int, abstract_state):
        """The state saved at `step`, placed like `abstract_state` (see `restore_latest`); CheckpointError when the
        step is not complete or does not restore as `abstract_state`."""
        reason = problem(self.step_dir(step))
        if reason is not None:
            raise CheckpointError(f"checkpoint {self.step_dir(step)} is {reason}")
        return self._read(step, abstract_state)

    def _read(self, step: int, abstract_state):
        """`restore` of a step whose checksums were just verified."""
        try:
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(_flatten(abstract_state)))
        except Exception as e:  # noqa: BLE001 - its checksums match: a state of another program (code version?)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint {self.step_dir(step)} passes its checksums but does not restore as this program's state "
                f"({first[:300]})"
            ) from None
        return _unflatten(abstract_state, restored)

    def restore_latest(self, abstract_state, move_aside: bool = True):
        """(step, state) from the newest complete checkpoint, or (None, None) when there is none.

        With `move_aside` (a resume), the incomplete or corrupt steps newer than it are moved aside (module
        docstring); without (a reader such as launch.eval_length), they are skipped with a warning and left alone.
        CheckpointError when every step is unusable and one of them is corrupt. `abstract_state` is a tree of
        jax.ShapeDtypeStruct with shardings (from jax.eval_shape), so arrays come back already placed on the mesh.
        """
        bad = []
        for step in reversed(self.steps()):
            reason = problem(self.step_dir(step))
            if reason is None:
                if bad:
                    self._set_aside(bad, move_aside, f"using step {step}")
                return step, self._read(step, abstract_state)
            bad.append((step, reason))
        if any(reason.startswith("corrupt") for _, reason in bad):
            listing = "; ".join(f"step {s} is {r}" for s, r in bad)
            raise CheckpointError(
                f"no complete checkpoint in {self.directory} ({listing}); nothing was changed: move that directory "
                "away to train from step 0"
            )
        if bad:
            self._set_aside(bad, move_aside, "no earlier step: starting from step 0")
        return None, None

    def _set_aside(self, bad: list[tuple[int, str]], move: bool, then: str) -> None:
        """One warning line on the unusable steps `bad` [(step, reason)]; with `move`, their directories go to
        `<directory>.corrupt/<step>-<UTC time>/` first."""
        listing = "; ".join(f"step {s} is {r}" for s, r in bad)
        if not move:
            logging.warning("checkpoints in %s: %s; left in place, %s", self.directory, listing, then)
            return
        aside = self.directory.parent / f"{self.directory.name}.corrupt"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = []
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            for step, _ in bad:
                target, n = aside / f"{step}-{stamp}", 1
                while target.exists():
                    target, n = aside / f"{step}-{stamp}-{n}", n + 1
                os.replace(self.step_dir(step), target)
                moved.append(target.name)
        self.manager.reload()
        logging.warning("checkpoints in %s: %s; moved to %s/{%s}; %s", self.directory, listing, aside,
                        ",".join(moved), then)

    def close(self) -> None:
        self.manager.close()


class _HeldStream(io.StringIO):
    """sys.stderr during a save. A refused write leaves tensorstore's pending futures to complete on an asyncio
    loop that orbax has already closed; each prints an 'Event loop is closed' traceback from a C++ thread for a
    few milliseconds after the error. `drain` drops that aftermath once it has gone quiet; `release` passes on
    what a successful save printed."""

    QUIET_S, MAX_WAIT_S = 0.3, 5.0

    def release(self, stream) -> None:
        sys.stderr = stream
        stream.write(self.getvalue())

    def drain(self, stream) -> None:
        deadline, seen = time.monotonic() + self.MAX_WAIT_S, -1
        while time.monotonic() < deadline and seen != self.tell():
            seen = self.tell()
            time.sleep(self.QUIET_S)
        sys.stderr = stream


class _HoldOrbaxErrors(logging.Filter):
    """Holds back orbax's ERROR records during a save; `release` emits them (unless the save failed on the
    filesystem, which the OSError then reports once)."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname:
            self.records.append(record)
            return False
        return True

    def release(self) -> None:
        for record in self.records:
            logging.getLogger("absl").handle(record)


def _key(path) -> str:
    """"params.blocks.0.attn.q.kernel"-style name of a pytree path."""
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return ".".join(str(p) for p in parts)


def _flatten(tree) -> dict:
    """{"path.to.leaf": leaf}: orbax sees one flat dict whatever the state holds (int keys, NamedTuples)."""
    return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflatten(like, flat: dict):
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[_key(p)] for p, _ in paths])
