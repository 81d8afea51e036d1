"""Character, word-level and byte-level BPE tokenizers built on the ``tokenizers`` library.

Every token keeps its character span in the document: ``text[starts[i]:ends[i]]`` is the
token's text, in Python ``str`` indices (code points). The three kinds:

- ``char``: every character is a token, whitespace and newlines included; the vocabulary is
  the most frequent training characters plus ``[UNK]``.
- ``word``: words and runs of punctuation (the library's ``Whitespace`` pre-tokenizer);
  whitespace is not a token; unknown words map to ``[UNK]``.
- ``bpe``: byte-level BPE (GPT-2 style). A token's span leaves out the space that the token
  carries in front of a word, so the span is the visible word. Tokens made only of whitespace
  keep their whole span. A character that is split over several byte tokens (an emoji, say)
  is the span of each of those tokens. There is no ``[UNK]``: every byte is in the vocabulary.

``[UNK]`` (id 0 for ``char`` and ``word``) is a plain vocabulary entry, not a special token,
so a document that contains the literal text "[UNK]" is tokenized like any other text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

__all__ = [
    "KINDS",
    "UNK",
    "Encoding",
    "Tokenizer",
    "TokenizerError",
    "train_tokenizer",
]

KINDS = ("char", "word", "bpe")
UNK = "[UNK]"
DEFAULT_VOCAB_SIZE = {"char": 256, "word": 10_000, "bpe": 4000}
DEFAULT_MIN_FREQUENCY = {"char": 1, "word": 1, "bpe": 2}
MIN_VOCAB_SIZE = {"char": 2, "word": 2, "bpe": 256}
"""A char or word vocabulary needs [UNK] and one token; BPE needs the 256-byte alphabet."""

JSON_FORMAT = "lstmsearch.tokenizer"
JSON_VERSION = 1

_SURROGATE = re.compile("[\ud800-\udfff]")


class TokenizerError(ValueError):
    """An invalid tokenizer kind, size, input or serialised form."""


@dataclass(frozen=True)
class Encoding:
    """The tokens of one text: ids and half-open character spans.

    ``ids`` is int32; ``starts`` and ``ends`` are int64 ``str`` indices, non-decreasing,
    with ``text[starts[i]:ends[i]]`` the text of token ``i``.
    """

    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {list(KINDS)}")


def _library_safe(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD, one for one.

    The library cannot take lone surrogates (they are not valid Unicode scalars); replacing
    each by one character keeps every offset valid for the original text.
    """
    if not isinstance(text, str):
        raise TokenizerError(f"can only tokenize str, got {type(text).__name__}")
    return _SURROGATE.sub("\ufffd", text)


def _visible_starts(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Move each BPE token's start past the spaces it carries in front of a word.

    Byte-level BPE glues the space before a word to the word (" the"); the visible token is
    "the". Tokens made only of whitespace keep their span. The library's own
    ``trim_offsets`` is not used: it shrinks whitespace-only tokens to empty spans and does
    not trim a token at the start of the text.
    """
    visible = starts.copy()
    for i in np.flatnonzero(ends - starts > 1):
        start, end = int(starts[i]), int(ends[i])
        if text[start] == " ":
            stripped = text[start:end].lstrip(" ")
            if stripped:
                visible[i] = end - len(stripped)
    return visible


class Tokenizer:
    """A trained tokenizer of one kind ("char", "word" or "bpe").

    Wraps a ``tokenizers.Tokenizer``; build one with :func:`train_tokenizer` or
    :meth:`from_json`.
    """

    def __init__(self, kind: str, library_tokenizer: tokenizers.Tokenizer) -> None:
        _check_kind(kind)
        self.kind = kind
        self._tk = library_tokenizer
        self._vocab = self._build_vocab_list()
        self._unk_id = self._tk.token_to_id(UNK) if kind != "bpe" else None

    def _build_vocab_list(self) -> list[str]:
        """The vocabulary as a list indexed by id; ids must be 0..n-1 without gaps."""
        by_id = {i: token for token, i in self._tk.get_vocab(with_added_tokens=True).items()}
        if sorted(by_id) != list(range(len(by_id))):
            raise TokenizerError(f"{self.kind} tokenizer has gaps in its token ids")
        return [by_id[i] for i in range(len(by_id))]

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        """Number of token ids (ids are 0 .. vocab_size - 1)."""
        return len(self._vocab)

    @property
    def unk_id(self) -> int | None:
        """Id of ``[UNK]``; None for BPE, which has no unknown tokens."""
        return self._unk_id

    def _to_encoding(self, text: str, library_encoding: tokenizers.Encoding) -> Encoding:
        """Convert the library's encoding to arrays, fixing BPE spans to the visible text."""
        ids = np.asarray(library_encoding.ids, dtype=np.int32)
        offsets = np.asarray(library_encoding.offsets, dtype=np.int64).reshape(-1, 2)
        starts, ends = offsets[:, 0].copy(), offsets[:, 1].copy()
        if self.kind == "bpe":
            starts = _visible_starts(text, starts, ends)
        return Encoding(ids, starts, ends)

    def encode(self, text: str) -> Encoding:
        """Tokenize one text."""
        return self._to_encoding(text, self._tk.encode(_library_safe(text)))

    def encode_batch(self, texts: list[str]) -> list[Encoding]:
        """Tokenize many texts at once (the library works on them in parallel)."""
        texts = list(texts)
        encoded = self._tk.encode_batch([_library_safe(t) for t in texts])
        return [self._to_encoding(t, e) for t, e in zip(texts, encoded, strict=True)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text for a sequence of ids (words are joined with single spaces)."""
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        """The vocabulary entry for id ``i``."""
        if not 0 <= i < len(self._vocab):
            raise TokenizerError(f"token id {i} is out of range 0..{len(self._vocab) - 1}")
        return self._vocab[i]

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry, or None when it is not in the vocabulary."""
        return self._tk.token_to_id(token)

    def vocab(self) -> list[str]:
        """All vocabulary entries; the index is the id."""
        return list(self._vocab)

    def to_json(self) -> str:
        """A JSON string that :meth:`from_json` turns back into an identical tokenizer."""
        return json.dumps(
            {
                "format": JSON_FORMAT,
                "version": JSON_VERSION,
                "kind": self.kind,
                "tokenizer": json.loads(self._tk.to_str()),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, s: str) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_json` output."""
        try:
            data = json.loads(s)
        except (TypeError, ValueError) as err:
            raise TokenizerError(f"not a tokenizer JSON string: {err}") from err
        if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
            raise TokenizerError(f"not a tokenizer JSON string (expected format {JSON_FORMAT!r})")
        if data.get("version") != JSON_VERSION:
            raise TokenizerError(
                f"tokenizer JSON version {data.get('version')!r} is not supported "
                f"(this version reads {JSON_VERSION})"
            )
        try:
            library_tokenizer = tokenizers.Tokenizer.from_str(json.dumps(data["tokenizer"]))
        except Exception as err:  # the library raises plain Exception
            raise TokenizerError(
                f"tokenizer JSON has an unreadable 'tokenizer' part: {err}"
            ) from err
        return cls(str(data.get("kind")), library_tokenizer)


def _pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    """How each kind splits text before the vocabulary is applied."""
    if kind == "char":
        return pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    if kind == "word":
        return pre_tokenizers.Whitespace()
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


class _CountingTexts:
    """Iterates over training texts, made library-safe, counting their characters."""

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = texts
        self.n_chars = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            text = _library_safe(text)
            self.n_chars += len(text)
            yield text


def _train_word_level(
    kind: str, texts: _CountingTexts, vocab_size: int, min_frequency: int
) -> tokenizers.Tokenizer:
    """Train a char or word vocabulary; rebuild it so [UNK] is a plain entry at id 0.

    The trainer registers its special tokens as "added tokens", which the library would
    match in raw text before pre-tokenization ("[UNK]" typed in a document would become one
    token); the rebuilt tokenizer has the same vocabulary without that.
    """
    trained = tokenizers.Tokenizer(models.WordLevel(unk_token=UNK))
    trained.pre_tokenizer = _pre_tokenizer(kind)
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[UNK],
        show_progress=False,
    )
    trained.train_from_iterator(texts, trainer=trainer)
    tk = tokenizers.Tokenizer(models.WordLevel(vocab=trained.get_vocab(), unk_token=UNK))
    tk.pre_tokenizer = _pre_tokenizer(kind)
    if kind == "char":
        tk.decoder = decoders.Fuse()
    return tk


def _train_bpe(texts: _CountingTexts, vocab_size: int, min_frequency: int) -> tokenizers.Tokenizer:
    """Train a byte-level BPE vocabulary over the full 256-byte alphabet."""
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = _pre_tokenizer("bpe")
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    return tk


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    *,
    vocab_size: int | None = None,
    min_frequency: int | None = None,
) -> Tokenizer:
    """Train a tokenizer of ``kind`` ("char", "word" or "bpe") on ``texts``, offline.

    ``vocab_size`` is the total number of ids including ``[UNK]`` (defaults: char 256,
    word 10000, bpe 4000); the most frequent characters or words are kept. Tokens seen
    fewer than ``min_frequency`` times are left out (defaults: 1, 1, and 2 for BPE merges).
    Training is deterministic for the same texts.
    """
    _check_kind(kind)
    vocab_size = DEFAULT_VOCAB_SIZE[kind] if vocab_size is None else vocab_size
    min_frequency = DEFAULT_MIN_FREQUENCY[kind] if min_frequency is None else min_frequency
    if vocab_size < MIN_VOCAB_SIZE[kind]:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small for a {kind} tokenizer "
            f"(minimum {MIN_VOCAB_SIZE[kind]})"
        )
    if min_frequency < 1:
        raise TokenizerError(f"min_frequency must be >= 1, got {min_frequency}")
    counted = _CountingTexts(texts)
    if kind == "bpe":
        tk = _train_bpe(counted, vocab_size, min_frequency)
    else:
        tk = _train_word_level(kind, counted, vocab_size, min_frequency)
    if counted.n_chars == 0:
        raise TokenizerError(f"cannot train a {kind} tokenizer: the training texts are all empty")
    if kind != "bpe" and tk.get_vocab_size() < 2:
        raise TokenizerError(
            f"no {kind} token occurs at least min_frequency={min_frequency} times "
            "in the training texts"
        )
    return Tokenizer(kind, tk)
