"""Tokenizers: text <-> ids for the text sources of launch/data.py, and the choice of one from `data.tokenizer`
(a locally trained byte-level BPE, `bpe`, or a SentencePiece model file such as the T5 vocabulary)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from launch.corpus import DataError

EOT = "<|endoftext|>"  # the end-of-text token of the locally trained BPE (id 0)


class Tokenizer:
    """Text <-> ids, plus the end-of-text id that separates packed documents."""

    vocab_size: int
    eos_id: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]


class BPETokenizer(Tokenizer):
    """A byte-level BPE (HuggingFace `tokenizers`): lossless on any UTF-8 text."""

    def __init__(self, tok):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eos_id = tok.token_to_id(EOT)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Trains on `texts` (deterministic for a given input); the vocabulary is at most `vocab_size`."""
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: Path) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception for a bad file
            raise DataError(f"{path} is not a readable tokenizer ({str(e).splitlines()[0].split(". ")[0]}); delete the "
                            "prepared directory to train it again, or copy it anew") from None

    def save(self, path: Path) -> None:
        self._tok.save(str(path))

    def encode_batch(self, texts):
        return [e.ids for e in self._tok.encode_batch_fast(texts)]

    def decode(self, ids):
        return self._tok.decode(np.asarray(ids).tolist(), skip_special_tokens=False)


class SentencePieceTokenizer(Tokenizer):
    """A fixed SentencePiece model (e.g. the T5 vocabulary); documents end with its `</s>`."""

    def __init__(self, path: str):
        try:
            import sentencepiece
        except ImportError:
            raise DataError(f"data.tokenizer={path} needs the sentencepiece package: pip install -e \".[tfds]\" "
                            "(or pip install sentencepiece), or use data.tokenizer=bpe") from None

        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except (OSError, RuntimeError) as e:
            raise DataError(f"data.tokenizer={path} is not a SentencePiece model: {str(e).splitlines()[0]}") from None
        self.vocab_size = self._sp.get_piece_size()
        self.eos_id = self._sp.eos_id()
        if self.eos_id < 0:
            raise DataError(f"data.tokenizer={path}: the SentencePiece model has no end-of-sentence piece")

    def encode_batch(self, texts):
        return self._sp.encode(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids):
        return self._sp.decode(np.asarray(ids).tolist())


def tokenizer_key(data_cfg, vocab_size: int) -> str:
    """Names the tokenizer in cache keys: `bpe<V>` or `spm-<hash of the model file>`."""
    if data_cfg.tokenizer == "bpe":
        if vocab_size < 257:
            raise DataError(f"model.vocab_size={vocab_size} is too small for a byte-level BPE (needs >= 257)")
        return f"bpe{vocab_size}"
    path = Path(data_cfg.tokenizer).expanduser()
    if not path.is_file():
        raise DataError(f"data.tokenizer={data_cfg.tokenizer}: no such SentencePiece model (or use 'bpe')")
    return "spm-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def get_tokenizer(data_cfg, vocab_size: int, prepared: Path,
                  train_texts: Callable[[], Iterable[str]] | None = None) -> Tokenizer:
    """The corpus tokenizer: the BPE saved in `prepared` (trained on `train_texts()` if absent) or SentencePiece."""
    if data_cfg.tokenizer == "bpe":
        path = prepared / "tokenizer.json"
        if path.exists():
            return BPETokenizer.load(path)
        tok = BPETokenizer.train(train_texts(), vocab_size)
        tok.save(path)
        return tok
    tok = SentencePieceTokenizer(str(Path(data_cfg.tokenizer).expanduser()))
    if tok.vocab_size > vocab_size:
        raise DataError(f"data.tokenizer={data_cfg.tokenizer} has {tok.vocab_size} pieces, more than "
                        f"model.vocab_size={vocab_size}; raise model.vocab_size or use data.tokenizer=bpe")
    return tok
