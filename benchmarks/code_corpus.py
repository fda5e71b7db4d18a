"""Builds a code corpus for the GPU machine (which has no network and no raw text): the `.py` files under ROOTS,
deduplicated by content, tokenized with a byte-level BPE trained on them (`data.source=text`), compressed for the
`carry` limit, with sha256 sums that benchmarks/h200_queue.sh checks after decompressing.

`code11` (docs/reproductions/README.md; 12378 files, 179.5 MB, 48,113,133 tokens: 45,709,465 train / 2,403,668
eval) is the Python sources of a venv installed from the committed benchmarks/code11.lock (`pip freeze`, pip 26.3),
of proxylab's editable-install finder and of the pyenv Python 3.12 standard library; it rebuilds to the committed
benchmarks/code11.sha256 with

    PYENV_VERSION=3.12.1 python3 -m venv /tmp/corpus_venv && /tmp/corpus_venv/bin/python -m pip install pip==26.3 \
        && /tmp/corpus_venv/bin/python -m pip install --no-deps -r benchmarks/code11.lock
    mkdir -p /tmp/finder && cp .venv/lib/python3.12/site-packages/__editable___proxylab_0_1_0_finder.py /tmp/finder/
    python -m benchmarks.code_corpus --out=gpu_data/code11 \
        --roots=/tmp/corpus_venv/lib/python3.12/site-packages,/tmp/finder,$(PYENV_VERSION=3.12.1 python3 -c \
        'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
    diff gpu_data/code11/SHA256SUMS benchmarks/code11.sha256

The finder (the 12378th file) names the checkout it was installed from, /work/main: a checkout elsewhere gets a
different finder and so different sums. `code10` (session 10) was built from the project venv's own site-packages
and could not be rebuilt byte for byte once that venv's packages moved; hence the lock. Files under 200 bytes or
not UTF-8 are skipped. The prepared corpus itself stays in `data.cache_dir`; OUT gets tokens.npy.xz, doc_ends.npy,
tokenizer.json and SHA256SUMS.
"""

from __future__ import annotations

import hashlib
import lzma
import shutil
import tempfile
from pathlib import Path

from absl import app, flags

from experiments import base
from launch import data

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags; defined only when it runs (importing this module defines none)."""
    flags.DEFINE_string("out", "gpu_data/code11", "output directory (ignored by git: .git/info/exclude)")
    flags.DEFINE_string("roots", "", "comma-separated directories searched for *.py")
    flags.DEFINE_string("cache_dir", "", "data.cache_dir for the prepared corpus (default: $PROXYLAB_CACHE or ~/.cache)")


def collect(roots: list[str], dest: Path) -> tuple[int, int]:
    """Copies the unique (by sha256) UTF-8 .py files of `roots` into dest/<2 hex>/<14 hex>.py; (files, bytes)."""
    seen, size = set(), 0
    for root in roots:
        for path in sorted(Path(root).rglob("*.py")):
            blob = path.read_bytes() if path.is_file() else b""
            if len(blob) < 200:
                continue
            try:
                blob.decode("utf-8")
            except UnicodeDecodeError:
                continue
            digest = hashlib.sha256(blob).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            size += len(blob)
            (dest / digest[:2]).mkdir(exist_ok=True)
            (dest / digest[:2] / f"{digest[2:16]}.py").write_bytes(blob)
    return len(seen), size


def main(argv) -> None:
    del argv
    out = Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        n, size = collect([r for r in FLAGS.roots.split(",") if r], Path(tmp))
        print(f"{n} unique files, {size / 1e6:.1f} MB")
        c = base.get_config("9.4m")  # vocab 32101, the ladder's
        c.data.update(source="text", text_paths=f"{tmp}/*/*.py", cache_dir=FLAGS.cache_dir)
        prepared = data.prepare_text(c.data, c.model.vocab_size)
    for name in ("doc_ends.npy", "tokenizer.json"):
        shutil.copyfile(prepared / name, out / name)
    with open(prepared / "tokens.npy", "rb") as src, lzma.open(out / "tokens.npy.xz", "wb", preset=6) as dst:
        shutil.copyfileobj(src, dst)
    sums = "".join(f"{hashlib.sha256((prepared / n).read_bytes()).hexdigest()}  {n}\n"
                   for n in ("tokens.npy", "doc_ends.npy", "tokenizer.json"))
    (out / "SHA256SUMS").write_text(sums)
    print(f"{prepared} -> {out}\n{sums}", end="")


if __name__ == "__main__":
    define_flags()
    app.run(main)
