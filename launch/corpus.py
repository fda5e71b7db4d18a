"""Preparing flat token arrays on disk: the cache directory, the atomic build of a prepared corpus, and the
streaming tokenizer-to-.npy writer that every text source uses (layout and cache keys: launch/data.py).

`DataError` lives here, at the bottom of the data modules, so launch/tokenizers.py and launch/data.py share it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

PREP_VERSION = 1  # bump when a change to preparation alters the token streams; old caches are then ignored


class DataError(Exception):
    """Data cannot be provided; the message is one human-readable line saying what and how to fix it."""


def cache_root(data_cfg) -> Path:
    """data.cache_dir, else $PROXYLAB_CACHE, else ~/.cache/proxylab."""
    return Path(data_cfg.cache_dir or os.environ.get("PROXYLAB_CACHE") or "~/.cache/proxylab").expanduser()


def cached(path: Path, what: str, build: Callable[[Path], int]) -> Path:
    """Returns `path`, first building it with `build(tmp_dir) -> n_tokens` if absent.

    Builds into a unique sibling and renames it into place: if another process finished first, ours is dropped.
    """
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    t0 = time.time()
    print(f"preparing {what} (first use) into {path} ...", end="", file=sys.stderr, flush=True)
    try:
        n = build(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
        print(f" done: {n:,} tokens in {time.time() - t0:.1f}s", file=sys.stderr)
    except BaseException:
        print(" failed", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 1 << 16 else np.int32


def write_tokens(path: Path, pieces: Iterable[tuple[str, bool]], tok, *, group_chars=1 << 24):
    """Tokenizes `(text, ends_document)` pieces with `tok` (a launch.tokenizers.Tokenizer) into the flat .npy `path`; returns (n_tokens, document ends).

    Streams through a raw file so a corpus larger than memory never has to be held at once.
    """
    dtype = token_dtype(tok.vocab_size)
    raw, n, ends = path.with_suffix(".raw"), 0, []

    def flush(group, f):
        nonlocal n
        for ids, ends_doc in zip(tok.encode_batch([t for t, _ in group]), (e for _, e in group)):
            ids_t = np.asarray(ids + [tok.eos_id] if ends_doc else ids, dtype)
            f.write(ids_t.tobytes())
            n += len(ids_t)
            if ends_doc:
                ends.append(n)

    with open(raw, "wb") as f:
        group, chars = [], 0
        for text, ends_doc in pieces:
            group.append((text, ends_doc))
            chars += len(text)
            if chars >= group_chars:
                flush(group, f)
                group, chars = [], 0
        flush(group, f)
    if n == 0:
        raise DataError(f"no text to tokenize for {path.name}")
    with open(path, "wb") as f, open(raw, "rb") as src:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)}
        np.lib.format.write_array_header_1_0(f, header)
        shutil.copyfileobj(src, f, 1 << 24)
    raw.unlink()
    return n, np.asarray(ends, np.int64)
