"""benchmarks/code_corpus.py: unique UTF-8 .py files only, and what it writes decompresses to the prepared corpus
its SHA256SUMS pin (what benchmarks/h200_queue.sh checks on the GPU machine)."""

from __future__ import annotations

import hashlib
import lzma
import subprocess
import sys

import numpy as np

import helpers
from benchmarks import code_corpus


def test_collect_dedups_and_skips_short_and_binary_files(tmp_path):
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    for d in (a, b, dest):
        d.mkdir()
    body = "def f(x):\n    return x  # " + "words " * 50 + "\n"
    (a / "one.py").write_text(body)
    (b / "copy.py").write_text(body)  # the same content under another root: kept once
    (b / "two.py").write_text(body + "# another\n")
    (a / "short.py").write_text("x = 1\n")  # under 200 bytes
    (a / "latin1.py").write_bytes(b"# caf\xe9 " * 40)  # not UTF-8
    (a / "notes.txt").write_text(body)  # not .py
    assert code_corpus.collect([str(a), str(b)], dest) == (2, 2 * len(body) + len("# another\n"))
    assert len(list(dest.glob("*/*.py"))) == 2


def test_outputs_match_their_sums(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}  # " + "some text " * 40 + "\n")
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "benchmarks.code_corpus", f"--out={out}", f"--roots={src}",
                    f"--cache_dir={tmp_path / 'cache'}"], cwd=helpers.REPO, check=True, capture_output=True)
    sums = dict(line.split()[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    tokens = lzma.open(out / "tokens.npy.xz").read()
    assert hashlib.sha256(tokens).hexdigest() == sums["tokens.npy"]
    for name in ("doc_ends.npy", "tokenizer.json"):
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sums[name]
    (tmp_path / "tokens.npy").write_bytes(tokens)
    ids, ends = np.load(tmp_path / "tokens.npy"), np.load(out / "doc_ends.npy")
    assert len(ends) == 8 and ends[-1] == len(ids) and ids.max() < 32101
