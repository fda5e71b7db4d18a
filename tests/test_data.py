"""Tests of launch/data.py: determinism, process slicing, the synthetic languages, the prepared corpora."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments.base import get_config
from launch import corpus, data, tokenizers

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _cfg(**overrides):
    cfg = get_config("tiny").data
    cfg.update(overrides)
    return cfg


def _entropy(counts):
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(corpus.DataError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture(scope="module")
def synthetic_cfg():
    return _cfg(source="synthetic", synthetic_tokens=200_000, seq_len=32, batch_size=8)


def test_batches_are_pure_functions_of_seed_and_step(synthetic_cfg):
    src = data.make_source(synthetic_cfg, vocab_size=512, seed=3)
    b = src.batch(7)
    assert b.shape == (8, 33) and b.dtype == np.int32
    assert b.min() >= 0 and b.max() < 512
    again = data.make_source(synthetic_cfg, vocab_size=512, seed=3)  # a fresh source: no iterator state
    np.testing.assert_array_equal(again.batch(7), b)
    assert not np.array_equal(src.batch(8), b)
    assert not np.array_equal(src.batch(7, "eval"), b)
    assert not np.array_equal(data.make_source(synthetic_cfg, vocab_size=512, seed=4).batch(7), b)
    windows = np.lib.stride_tricks.sliding_window_view(src.streams["train"], 33)
    assert all((windows == row).all(axis=1).any() for row in b)  # every row is a window of the train stream


def test_process_slices_concatenate_to_the_global_batch(synthetic_cfg):
    full = data.make_source(synthetic_cfg, vocab_size=512, seed=0)
    parts = [data.make_source(synthetic_cfg, vocab_size=512, seed=0, process_index=i, process_count=2)
             for i in range(2)]
    for split in ("train", "eval"):
        for step in (0, 5):
            np.testing.assert_array_equal(np.concatenate([p.batch(step, split) for p in parts]),
                                          full.batch(step, split))
    _one_line_error("batch_size", data.make_source, synthetic_cfg, vocab_size=512, seed=0, process_count=3)


def test_token_counts(synthetic_cfg):
    src = data.make_source(synthetic_cfg, vocab_size=512, seed=0)
    counts = src.token_counts()
    assert counts.shape == (512,) and counts.dtype == np.int64
    np.testing.assert_array_equal(counts, np.bincount(src.streams["train"], minlength=512))


def test_bigram_language_is_learnable_with_the_analytic_entropy():
    vocab, zipf = 64, 1.1
    cfg = _cfg(source="synthetic", synthetic_kind="bigram", synthetic_zipf=zipf, synthetic_tokens=1_000_000)
    tokens = np.asarray(data.make_source(cfg, vocab_size=vocab, seed=0).streams["train"], np.int64)
    h_next = _entropy(np.bincount(tokens, minlength=vocab))
    h_joint = _entropy(np.bincount(tokens[:-1] * vocab + tokens[1:], minlength=vocab * vocab))
    h_cond = h_joint - _entropy(np.bincount(tokens[:-1], minlength=vocab))
    p = np.arange(1, vocab + 1) ** -zipf
    h_zipf = _entropy(p / p.sum())
    assert abs(h_cond - h_zipf) < 0.02, (h_cond, h_zipf)
    assert h_next > h_cond + 0.5, (h_next, h_cond)


def test_unigram_rank_frequency_slope_is_minus_zipf():
    vocab, zipf = 256, 1.3
    cfg = _cfg(source="synthetic", synthetic_kind="unigram", synthetic_zipf=zipf, synthetic_tokens=1_000_000)
    counts = np.sort(data.make_source(cfg, vocab_size=vocab, seed=0).token_counts())[::-1]
    ranks = np.arange(1, vocab // 2 + 1)
    slope = np.polyfit(np.log(ranks), np.log(counts[: vocab // 2]), 1)[0]
    assert abs(slope + zipf) < 0.05, slope


def test_synthetic_language_is_fixed_by_synthetic_seed():
    cfg = _cfg(source="synthetic", synthetic_tokens=50_000)
    a, b = (data.make_source(cfg, vocab_size=512, seed=s).streams["train"] for s in (0, 1))
    np.testing.assert_array_equal(a, b)
    cfg.synthetic_seed = 1
    assert not np.array_equal(data.make_source(cfg, vocab_size=512, seed=0).streams["train"], a)


def test_errors_are_one_line(monkeypatch):
    msg = _one_line_error("unknown data.source", data.make_source, _cfg(source="nope"), vocab_size=512, seed=0)
    assert all(name in msg for name in data.SOURCES)
    _one_line_error("no file matches", data.make_source, _cfg(source="text", text_paths="/nonexistent/*.txt"),
                    vocab_size=512, seed=0)
    _one_line_error("synthetic_kind", data.make_source, _cfg(source="synthetic", synthetic_kind="trigram"),
                    vocab_size=512, seed=0)
    _one_line_error("too small", data.make_source, _cfg(source="text", text_paths=__file__), vocab_size=200, seed=0)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    _one_line_error("pip install tensorflow-datasets", data.make_source, _cfg(source="tfds"), vocab_size=512, seed=0)


def test_text_source(tmp_path):
    for i in range(4):
        (tmp_path / f"doc{i}.txt").write_text(f"Document {i}.\n" + "the quick brown fox jumps over a lazy dog\n" * 200)
    cfg = _cfg(source="text", text_paths=str(tmp_path / "doc*.txt"), cache_dir=str(tmp_path / "cache"), seq_len=16,
               eval_fraction=0.25)
    src = data.make_source(cfg, vocab_size=300, seed=0)
    assert src.batch(0).max() < 300
    assert src.tokenizer.decode(src.streams["eval"]).startswith("Document 3.")  # cut at the last document
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_prepared_source_reads_a_copied_cache_directory(tmp_path):
    """A cache directory copied elsewhere (e.g. to a machine without the raw text) gives the same streams and
    tokenizer through data.source=prepared; bare token arrays work without a tokenizer; bad ids are refused."""
    (tmp_path / "doc.txt").write_text("one two three four five six seven eight nine ten\n" * 100)
    cfg = _cfg(source="text", text_paths=str(tmp_path / "doc.txt"), cache_dir=str(tmp_path / "cache"), seq_len=16)
    text_src = data.make_source(cfg, vocab_size=300, seed=0)
    (cached,) = (tmp_path / "cache").iterdir()
    moved = tmp_path / "elsewhere"
    cached.rename(moved)
    src = data.make_source(_cfg(source="prepared", prepared_dir=str(moved), seq_len=16), vocab_size=300, seed=0)
    for split in data.SPLITS:
        np.testing.assert_array_equal(src.batch(3, split), text_src.batch(3, split))
    assert src.tokenizer.decode(src.batch(0)[0]) == text_src.tokenizer.decode(text_src.batch(0)[0])

    (moved / "tokenizer.json").unlink()
    bare = data.make_source(_cfg(source="prepared", prepared_dir=str(moved), seq_len=16), vocab_size=300, seed=0)
    assert bare.tokenizer is None and np.array_equal(bare.batch(5), src.batch(5))
    _one_line_error("id .* >= model.vocab_size=100", data.make_source,
                    _cfg(source="prepared", prepared_dir=str(moved), seq_len=16), vocab_size=100, seed=0)
    _one_line_error("must hold tokens.npy", data.make_source,
                    _cfg(source="prepared", prepared_dir=str(tmp_path)), vocab_size=300, seed=0)


def test_classics_offline_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    msg = _one_line_error("could not download", data.make_source, _cfg(cache_dir=str(tmp_path)), vocab_size=512,
                          seed=0)
    assert "data.source=synthetic" in msg and "http://127.0.0.1:9/simple" in msg
    assert not list(tmp_path.iterdir())  # nothing half-downloaded left behind


@pytest.fixture(scope="module")
def classics(tmp_path_factory):
    cfg = _cfg(cache_dir=str(tmp_path_factory.mktemp("cache")))
    try:
        return cfg, data.make_source(cfg, vocab_size=512, seed=0)
    except corpus.DataError as e:
        if "could not download" in str(e):
            pytest.skip(f"classics corpus not obtainable (offline?): {e}")
        raise


def test_classics_batches(classics):
    cfg, src = classics
    b = src.batch(0)
    assert b.shape == (16, 65) and b.dtype == np.int32 and b.max() < 512
    np.testing.assert_array_equal(b, src.batch(0))
    assert len(src.streams["train"]) > 4_000_000
    half = data.make_source(cfg, vocab_size=512, seed=0, process_index=1, process_count=2)
    np.testing.assert_array_equal(half.batch(0, "eval"), src.batch(0, "eval")[8:])


def test_classics_tokenizer_round_trips(classics):
    tok = classics[1].tokenizer
    text = "To be, or not to be: that is the question.\n\nÆsop's “fables” — naïve ünïcode ✓ 123"
    ids = tok.encode(text)
    assert max(ids) < 512 and tok.decode(ids) == text
    assert tok.decode([tok.eos_id]) == tokenizers.EOT


def test_classics_eval_split_is_held_out_documents(classics):
    cfg, src = classics
    train, eval_ = (np.asarray(src.streams[s]) for s in ("train", "eval"))
    eos = src.tokenizer.eos_id
    assert train[-1] == eos and eval_[-1] == eos  # cut at a document boundary
    assert 0.025 < len(eval_) / (len(train) + len(eval_)) < 0.075
    docs = lambda t: {d.tobytes() for d in np.split(t, np.flatnonzero(t == eos) + 1) if len(d)}
    assert docs(train).isdisjoint(docs(eval_))
    assert src.token_counts().sum() == len(train)


def test_classics_second_use_is_a_cache_hit(classics, monkeypatch):
    cfg, src = classics
    monkeypatch.setattr(data, "_fetch", lambda url: pytest.fail(f"{url} was fetched on a cache hit"))
    t0 = time.time()
    again = data.make_source(cfg, vocab_size=512, seed=0)
    assert time.time() - t0 < 2
    np.testing.assert_array_equal(again.batch(3), src.batch(3))


def test_tfds_c4_sample_with_t5_vocab(tmp_path):
    pytest.importorskip("tensorflow_datasets", reason="tensorflow-datasets not installed")
    sample, vocab = SHARED / "data" / "c4_en_sample", SHARED / "data" / "t5_vocab" / "cc_all.32000.100extra.spm.model"
    if not (sample.is_dir() and vocab.is_file()):
        pytest.skip(f"no C4 sample / T5 vocabulary under {SHARED}")
    cfg = _cfg(source="tfds", tfds_name="c4/en:3.0.1", tfds_data_dir=str(sample), tokenizer=str(vocab),
               cache_dir=str(tmp_path), seq_len=128)
    src = data.make_source(cfg, vocab_size=32101, seed=0)
    b = src.batch(0)
    assert b.shape == (16, 129) and b.min() >= 0 and b.max() < 32101
    np.testing.assert_array_equal(b, data.make_source(cfg, vocab_size=32101, seed=0).batch(0))
    train = np.asarray(src.streams["train"])
    assert (train == 1).sum() == 1000  # one </s> per train document, in dataset order
    assert src.tokenizer.decode(train[:np.argmax(train == 1)]).startswith("Posted on April 12, 2018 by admin")
    assert (np.asarray(src.streams["eval"]) == 1).sum() == 200
    cfg.tfds_max_docs = 10
    assert (np.asarray(data.make_source(cfg, vocab_size=32101, seed=0).streams["train"]) == 1).sum() == 10
    _one_line_error("model.vocab_size", data.make_source, cfg, vocab_size=512, seed=0)
