"""Tests for lstmsearch.tokenize: offsets, vocabularies, serialisation, errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmsearch.tokenize import (
    UNK,
    Encoding,
    Tokenizer,
    TokenizerError,
    train_tokenizer,
)

TRAINING_TEXTS = [
    "The quick brown fox jumps over the lazy dog.\nThe dog sleeps.\n",
    "def f(x):\n    return x + 1  # a comment\n\n",
    "Ünïcödé text: café, naïve, 日本語, emoji 😀 and more words, words, words.\r\n",
    "Brackets (like these) and [those] and {these}; numbers 123 456 7890.",
] * 5

TRICKY_TEXTS = [
    "",
    " ",
    "   leading spaces",
    "trailing spaces   ",
    "a\r\nb\r\n\r\n",
    "e\u0301 cafe\u0301 n\u0303",
    "日本語のテキスト 和 English",
    "😀😀 👩‍👩‍👧 𝕏𝕐 🇫🇷",
    "zzz QQQ ~~~ \x00\x01 \u2028\u2029 \t\v\f",
    "[UNK] is just text",
    "\ufeffBOM at start",
]


@pytest.fixture(scope="module")
def tokenizers_by_kind() -> dict[str, Tokenizer]:
    return {
        "char": train_tokenizer("char", TRAINING_TEXTS),
        "word": train_tokenizer("word", TRAINING_TEXTS),
        "bpe": train_tokenizer("bpe", TRAINING_TEXTS, vocab_size=300),
    }


def _gpt2_byte_decoder() -> dict[str, int]:
    """The byte-level alphabet: printable stand-in character -> byte (GPT-2's table)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


BYTE_DECODER = _gpt2_byte_decoder()


def check_basic_offsets(text: str, enc: Encoding) -> None:
    """Types, lengths, bounds and order of an encoding's spans."""
    assert enc.ids.dtype == np.int32
    assert enc.starts.dtype == np.int64 and enc.ends.dtype == np.int64
    assert len(enc.ids) == len(enc.starts) == len(enc.ends) == len(enc)
    assert np.all(enc.starts >= 0)
    assert np.all(enc.starts <= enc.ends)
    assert np.all(enc.ends <= len(text))
    assert np.all(np.diff(enc.starts) >= 0)
    assert np.all(np.diff(enc.ends) >= 0)


def check_char(tk: Tokenizer, text: str) -> None:
    """Every character is one token whose id is its own entry or [UNK]."""
    enc = tk.encode(text)
    check_basic_offsets(text, enc)
    assert len(enc) == len(text)
    assert "".join(text[s:e] for s, e in zip(enc.starts, enc.ends, strict=True)) == text
    for i, s, e in zip(enc.ids, enc.starts, enc.ends, strict=True):
        assert e - s == 1
        expected = tk.token_to_id(text[s])
        assert i == (expected if expected is not None else tk.unk_id)


def check_word(tk: Tokenizer, text: str) -> None:
    """Spans do not overlap, cover every non-space character, and match their ids."""
    enc = tk.encode(text)
    check_basic_offsets(text, enc)
    covered = np.zeros(len(text), dtype=bool)
    previous_end = 0
    for i, s, e in zip(enc.ids, enc.starts, enc.ends, strict=True):
        assert s >= previous_end and e > s
        previous_end = e
        covered[s:e] = True
        piece = text[s:e]
        expected = tk.token_to_id(piece)
        assert i == (expected if expected is not None else tk.unk_id)
    for position, is_covered in enumerate(covered):
        if not is_covered:
            assert text[position].isspace(), (text, position)


def check_bpe(tk: Tokenizer, text: str) -> None:
    """Token bytes concatenate to the text; each span is the visible text of its bytes.

    The expected span is derived from the token's own bytes, independent of the library's
    offsets: the characters its bytes fall in, minus the space in front of a word.
    """
    enc = tk.encode(text)
    check_basic_offsets(text, enc)
    data = text.encode("utf-8")
    byte_lengths = [len(ch.encode("utf-8")) for ch in text]
    char_of_byte = np.repeat(np.arange(len(text), dtype=np.int64), byte_lengths)
    byte_pos = 0
    for i, s, e in zip(enc.ids, enc.starts, enc.ends, strict=True):
        token_bytes = bytes(BYTE_DECODER[c] for c in tk.id_to_token(int(i)))
        assert data[byte_pos : byte_pos + len(token_bytes)] == token_bytes
        first = char_of_byte[byte_pos]
        last = char_of_byte[byte_pos + len(token_bytes) - 1]
        byte_pos += len(token_bytes)
        full = text[first : last + 1]
        visible = full.lstrip(" ") or full
        assert (s, e) == (last + 1 - len(visible), last + 1), (text, full, s, e)
    assert byte_pos == len(data)


CHECKS = {"char": check_char, "word": check_word, "bpe": check_bpe}


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_offsets_on_tricky_texts(tokenizers_by_kind, kind, text):
    CHECKS[kind](tokenizers_by_kind[kind], text)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=60))
def test_offsets_on_random_unicode(tokenizers_by_kind, kind, text):
    CHECKS[kind](tokenizers_by_kind[kind], text)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
@settings(max_examples=60, deadline=None)
@given(
    text=st.lists(
        st.sampled_from([*"ab cé日😀\r\n\t.,(", "e\u0301", " the", "  "]), max_size=40
    ).map("".join)
)
def test_offsets_on_dense_mixed_text(tokenizers_by_kind, kind, text):
    CHECKS[kind](tokenizers_by_kind[kind], text)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_offsets_are_str_indices_not_bytes(tokenizers_by_kind, kind):
    text = "日本語😀 café quick"
    enc = tokenizers_by_kind[kind].encode(text)
    assert enc.ends[-1] == len(text)  # a byte offset would be len(text.encode()) == 28
    last = text[enc.starts[-1] : enc.ends[-1]]
    assert last and "quick".endswith(last)


def test_word_offsets_after_multibyte_characters(tokenizers_by_kind):
    tk = tokenizers_by_kind["word"]
    text = "日本語 😀 quick"
    enc = tk.encode(text)
    spans = {text[s:e]: int(i) for i, s, e in zip(enc.ids, enc.starts, enc.ends, strict=True)}
    assert spans["quick"] == tk.token_to_id("quick")


def test_empty_text_has_no_tokens(tokenizers_by_kind):
    for tk in tokenizers_by_kind.values():
        enc = tk.encode("")
        assert len(enc) == 0
        assert enc.ids.dtype == np.int32 and enc.starts.dtype == np.int64


def test_unknown_characters_map_to_unk_with_right_offsets(tokenizers_by_kind):
    char = tokenizers_by_kind["char"]
    text = "a\u4e07b\U0001f99ec"  # 万 and 🦞 are not in the training texts
    enc = char.encode(text)
    assert char.unk_id == 0 and char.id_to_token(0) == UNK
    assert [int(i) for i in enc.ids] == [
        char.token_to_id("a"),
        0,
        char.token_to_id("b"),
        0,
        char.token_to_id("c"),
    ]
    assert list(enc.starts) == [0, 1, 2, 3, 4] and list(enc.ends) == [1, 2, 3, 4, 5]

    word = tokenizers_by_kind["word"]
    text = "the zebrafish jumps"
    enc = word.encode(text)
    assert [text[s:e] for s, e in zip(enc.starts, enc.ends, strict=True)] == [
        "the",
        "zebrafish",
        "jumps",
    ]
    assert int(enc.ids[1]) == word.unk_id


def test_literal_unk_text_is_ordinary_text(tokenizers_by_kind):
    char = tokenizers_by_kind["char"]
    assert len(char.encode("[UNK]")) == 5
    word = tokenizers_by_kind["word"]
    enc = word.encode("[UNK]")
    assert ["[UNK]"[s:e] for s, e in zip(enc.starts, enc.ends, strict=True)] == ["[", "UNK", "]"]


def test_bpe_span_leaves_out_leading_space(tokenizers_by_kind):
    tk = tokenizers_by_kind["bpe"]
    text = " the dog  sleeps\n\n  x"
    enc = tk.encode(text)
    pieces = [text[s:e] for s, e in zip(enc.starts, enc.ends, strict=True)]
    assert all(p for p in pieces), pieces  # no empty spans, whitespace tokens included
    assert not any(p.startswith(" ") and p.strip() for p in pieces), pieces
    assert pieces[0] == "the" or pieces[0].startswith("t")


def test_lone_surrogates_do_not_break_encoding(tokenizers_by_kind):
    text = "ab\ud800cd"
    for kind, tk in tokenizers_by_kind.items():
        enc = tk.encode(text)
        check_basic_offsets(text, enc)
        if kind == "char":
            assert len(enc) == 5 and int(enc.ids[2]) == tk.unk_id


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_json_round_trip(tokenizers_by_kind, kind):
    tk = tokenizers_by_kind[kind]
    again = Tokenizer.from_json(tk.to_json())
    assert again.kind == tk.kind
    assert again.vocab() == tk.vocab()
    assert again.to_json() == tk.to_json()
    for text in TRICKY_TEXTS + TRAINING_TEXTS[:4]:
        a, b = tk.encode(text), again.encode(text)
        assert np.array_equal(a.ids, b.ids)
        assert np.array_equal(a.starts, b.starts)
        assert np.array_equal(a.ends, b.ends)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_encode_batch_equals_encode(tokenizers_by_kind, kind):
    tk = tokenizers_by_kind[kind]
    batch = tk.encode_batch(TRICKY_TEXTS)
    assert len(batch) == len(TRICKY_TEXTS)
    for text, enc in zip(TRICKY_TEXTS, batch, strict=True):
        one = tk.encode(text)
        assert np.array_equal(enc.ids, one.ids)
        assert np.array_equal(enc.starts, one.starts)
        assert np.array_equal(enc.ends, one.ends)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_training_is_deterministic(kind):
    first = train_tokenizer(kind, TRAINING_TEXTS, vocab_size=300)
    second = train_tokenizer(kind, iter(TRAINING_TEXTS), vocab_size=300)
    assert first.to_json() == second.to_json()


def test_char_vocab_is_by_frequency_and_capped():
    tk = train_tokenizer("char", ["bbbbbb aaaaa cccc d\n"], vocab_size=4)
    assert tk.vocab() == [UNK, "b", "a", "c"]
    assert tk.vocab_size == 4
    enc = tk.encode("cab\n")
    assert [int(i) for i in enc.ids] == [3, 2, 1, 0]


def test_char_vocab_includes_whitespace(tokenizers_by_kind):
    vocab = tokenizers_by_kind["char"].vocab()
    for ch in " \n":
        assert ch in vocab


def test_word_vocab_cap_and_min_frequency():
    tk = train_tokenizer("word", ["a a a b b c"], vocab_size=10, min_frequency=2)
    assert tk.vocab() == [UNK, "a", "b"]
    tk = train_tokenizer("word", ["a a a b b c"], vocab_size=2)
    assert tk.vocab() == [UNK, "a"]


def test_vocab_and_id_lookups(tokenizers_by_kind):
    for tk in tokenizers_by_kind.values():
        vocab = tk.vocab()
        assert len(vocab) == tk.vocab_size == len(set(vocab))
        for i in (0, tk.vocab_size - 1):
            assert tk.id_to_token(i) == vocab[i]
            assert tk.token_to_id(vocab[i]) == i
        with pytest.raises(TokenizerError, match=str(tk.vocab_size)):
            tk.id_to_token(tk.vocab_size)


def test_decode(tokenizers_by_kind):
    text = "The dog sleeps.\n"
    assert tokenizers_by_kind["char"].decode(tokenizers_by_kind["char"].encode(text).ids) == text
    assert tokenizers_by_kind["bpe"].decode(tokenizers_by_kind["bpe"].encode(text).ids) == text
    assert tokenizers_by_kind["word"].decode(tokenizers_by_kind["word"].encode(text).ids) == (
        "The dog sleeps ."
    )


def test_bpe_has_no_unk():
    tk = train_tokenizer("bpe", TRAINING_TEXTS, vocab_size=260)
    assert tk.unk_id is None
    assert tk.vocab_size >= 256


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="'sentencepiece'"):
        train_tokenizer("sentencepiece", ["abc"])


@pytest.mark.parametrize(("kind", "size"), [("char", 1), ("word", 0), ("bpe", 100)])
def test_tiny_vocab_size_is_rejected(kind, size):
    with pytest.raises(TokenizerError, match=f"vocab_size={size}"):
        train_tokenizer(kind, TRAINING_TEXTS, vocab_size=size)


def test_bad_min_frequency_is_rejected():
    with pytest.raises(TokenizerError, match="min_frequency"):
        train_tokenizer("word", TRAINING_TEXTS, min_frequency=0)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_empty_training_texts_are_rejected(kind):
    with pytest.raises(TokenizerError, match="empty"):
        train_tokenizer(kind, ["", ""])


def test_word_training_without_words_is_rejected():
    with pytest.raises(TokenizerError, match="no word token"):
        train_tokenizer("word", ["   \n\t "])


def test_whitespace_only_text_trains_a_char_tokenizer():
    tk = train_tokenizer("char", [" \n \n"])
    assert tk.vocab()[0] == UNK
    assert sorted(tk.vocab()[1:]) == ["\n", " "]


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        '{"format": "something-else"}',
        '{"format": "lstmsearch.tokenizer", "version": 99, "kind": "char", "tokenizer": {}}',
        '{"format": "lstmsearch.tokenizer", "version": 1, "kind": "char", "tokenizer": {}}',
    ],
)
def test_from_json_rejects_bad_input(bad):
    with pytest.raises(TokenizerError):
        Tokenizer.from_json(bad)


def test_from_json_rejects_unknown_kind(tokenizers_by_kind):
    s = tokenizers_by_kind["char"].to_json().replace('"kind": "char"', '"kind": "morse"')
    with pytest.raises(TokenizerError, match="'morse'"):
        Tokenizer.from_json(s)


def test_encode_rejects_non_strings(tokenizers_by_kind):
    with pytest.raises(TokenizerError, match="bytes"):
        tokenizers_by_kind["char"].encode(b"abc")  # type: ignore[arg-type]
