"""Annotation tracks computed from a document's text, one value per character.

An index stores them at build time (a token takes the value at its first character), so a
user starts from labels to rank units against (`lstmsearch neurons --correlate`, the UI's
track list) instead of writing them. NaN means "no value here" (the track leaves the token
out). Which set a corpus gets is its kind (`KINDS`), detected by `detect_kind` or chosen:

- ``code`` (Python source), from Python's own `tokenize` module: ``in_string`` (1 on every
  character of a string literal, quotes and prefix included, across lines), ``in_comment``
  (1 on a comment's characters), ``bracket_depth`` (nesting of (), [] and {} outside strings
  and comments, counted as ``depth`` counts), ``indent`` (the column of the line's first
  non-blank character; none on a blank line) and ``column`` (position in the line). A file
  that does not tokenize gets ``indent`` and ``column`` only, and is counted.
- ``text``: ``word_position`` (position of a character in its word, none between words;
  not stored for a word tokenizer, whose tokens are whole words),
  ``sentence_position`` (how many words of its sentence come before it), ``in_quotes`` (1
  inside double quotes, the quote marks included) and ``line_position`` (position in the
  line).
- ``parens``: ``depth``: for "(" the depth after opening, for ")" the depth before closing,
  for anything else the current depth, so matching brackets share a depth.
"""

from __future__ import annotations

import re
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("code", "text", "parens", "none")
"""Track sets an index can be built with ("none": no computed tracks)."""

CODE_TRACKS = ("in_string", "in_comment", "bracket_depth", "indent", "column")
TEXT_TRACKS = ("word_position", "sentence_position", "in_quotes", "line_position")
INSIDE_WORD_TRACKS = frozenset({"word_position"})
"""Tracks of where a token sits inside a word: always 0 for a word tokenizer's tokens, which
are whole words, so an index with one leaves them out (`token_level_tracks`)."""
PARENS_TRACKS = ("depth",)

PARENS_ALPHABET = frozenset("()0123456789")
"""Characters of the generated parens language (`lstmsearch.corpus.parens_corpus`)."""

OPENING, CLOSING = "([{", ")]}"
LINE = re.compile(r"[^\n]*\n|[^\n]+$")


@dataclass(frozen=True)
class CharTracks:
    """Tracks of one document (name -> float32 per character) and whether its text had to
    be left partly unannotated (a code file that does not tokenize)."""

    values: dict[str, np.ndarray]
    skipped: bool = False


def detect_kind(names: Sequence[str], texts: Sequence[str]) -> str:
    """``parens`` when every text is the parens language, ``code`` when most documents are
    ``.py`` files, else ``text``."""
    if texts and all(t and set(t) <= PARENS_ALPHABET for t in texts):
        return "parens"
    if names and sum(n.endswith(".py") for n in names) * 2 > len(names):
        return "code"
    return "text"


def char_tracks(kind: str, text: str) -> CharTracks:
    """The tracks of `kind` for one document's text."""
    if kind == "code":
        return code_tracks(text)
    if kind == "text":
        return CharTracks(text_tracks(text))
    if kind == "parens":
        return CharTracks({"depth": depth_track(text)})
    if kind == "none":
        return CharTracks({})
    raise ValueError(f"unknown track set {kind!r}: choose one of {', '.join(KINDS)}")


def token_level_tracks(tracks: CharTracks, tokenizer_kind: str) -> dict[str, np.ndarray]:
    """The computed tracks that vary from token to token under a tokenizer of this kind."""
    if tokenizer_kind == "word":
        return {k: v for k, v in tracks.values.items() if k not in INSIDE_WORD_TRACKS}
    return dict(tracks.values)


# --- shared ---------------------------------------------------------------------------------


def line_columns(text: str) -> np.ndarray:
    """Each character's position in its line (a newline ends the line it is on)."""
    n = len(text)
    at = np.arange(n)
    breaks = np.zeros(n, dtype=np.int64)
    newline = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == ord("\n")
    breaks[1:] = np.where(newline[:-1], at[1:], 0)
    return (at - np.maximum.accumulate(breaks)).astype(np.float32)


def depth_track(text: str, counted: np.ndarray | None = None) -> np.ndarray:
    """Nesting depth of every character (see the module docstring); only the brackets where
    `counted` is True open or close (all of them when None)."""
    chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    opens = np.isin(chars, [ord(c) for c in OPENING])
    closes = np.isin(chars, [ord(c) for c in CLOSING])
    if counted is not None:
        opens &= counted
        closes &= counted
    step = opens.astype(np.int64) - closes.astype(np.int64)
    after = np.cumsum(step)  # depth after each character
    return (after + closes).astype(np.float32)  # a closing bracket keeps the depth it closes


# --- code -----------------------------------------------------------------------------------


def code_tracks(text: str) -> CharTracks:
    """The code tracks of one Python file (see the module docstring)."""
    n = len(text)
    lines = LINE.findall(text)  # as tokenize reads them: a newline ends a line
    offsets = np.cumsum([0] + [len(line) for line in lines])
    column = line_columns(text)
    indent = np.full(n, np.nan, dtype=np.float32)
    for start, line in zip(offsets, lines, strict=False):
        content = line.lstrip(" \t\f")
        if content.strip():
            indent[start : start + len(line)] = len(line) - len(content)
    values = {"indent": indent, "column": column}
    spans = python_token_spans(lines, offsets)
    if spans is None:
        return CharTracks(values, skipped=True)
    strings, comments, brackets = spans
    in_string = np.zeros(n, dtype=np.float32)
    for start, end in strings:
        in_string[start:end] = 1
    in_comment = np.zeros(n, dtype=np.float32)
    for start, end in comments:
        in_comment[start:end] = 1
    counted = np.zeros(n, dtype=bool)
    counted[brackets] = True
    values.update(in_string=in_string, in_comment=in_comment,
                  bracket_depth=depth_track(text, counted))
    return CharTracks({k: values[k] for k in CODE_TRACKS})


def python_token_spans(lines: list[str], offsets: np.ndarray):
    """Character spans of the string literals and comments of a Python file, and the
    offsets of its bracket operators; None when the file does not tokenize."""
    fstring_start = getattr(tokenize, "FSTRING_START", None)  # Python 3.12+
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    strings, comments, brackets = [], [], []
    open_fstrings: list[int] = []
    feed = iter(lines)
    try:
        for tok in tokenize.generate_tokens(lambda: next(feed, "")):
            if tok.type == tokenize.ENDMARKER:
                break
            start = int(offsets[tok.start[0] - 1]) + tok.start[1] if tok.start[0] <= len(lines) else None
            end = int(offsets[tok.end[0] - 1]) + tok.end[1] if tok.end[0] <= len(lines) else None
            if tok.type == tokenize.ERRORTOKEN:
                return None
            if start is None or end is None:
                continue
            if tok.type == fstring_start:
                open_fstrings.append(start)
            elif tok.type == fstring_end and open_fstrings:
                strings.append((open_fstrings.pop(), end))
            elif tok.type == tokenize.STRING and not open_fstrings:
                strings.append((start, end))
            elif tok.type == tokenize.COMMENT:
                comments.append((start, end))
            elif tok.type == tokenize.OP and tok.string in OPENING + CLOSING and not open_fstrings:
                brackets.append(start)
    except (tokenize.TokenError, SyntaxError, ValueError):
        return None
    return strings, comments, brackets


# --- text -----------------------------------------------------------------------------------

WORD = re.compile(r"\w+")
SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s+|\n[ \t]*\n\s*")
"""Where a new sentence starts: after . ! or ? (and closing quotes or brackets) and white
space, or after a blank line."""
PARAGRAPH = re.compile(r"\n[ \t]*\n")
QUOTE = re.compile("[\"\u201c\u201d]")


def text_tracks(text: str) -> dict[str, np.ndarray]:
    """The text tracks of one document (see the module docstring)."""
    n = len(text)
    word_position = np.full(n, np.nan, dtype=np.float32)
    word_starts = np.zeros(n, dtype=np.int64)
    in_word = np.zeros(n, dtype=bool)
    for m in WORD.finditer(text):
        word_position[m.start() : m.end()] = np.arange(m.end() - m.start())
        word_starts[m.start()] = 1
        in_word[m.start() : m.end()] = True
    words_so_far = np.cumsum(word_starts)  # words started at or before each character
    sentence_start = np.zeros(n, dtype=np.int64)
    for m in SENTENCE_END.finditer(text):
        if m.end() < n:
            sentence_start[m.end()] = m.end()
    sentence_start = np.maximum.accumulate(sentence_start) if n else sentence_start
    before = np.where(sentence_start > 0, words_so_far[np.maximum(sentence_start - 1, 0)], 0)
    sentence_position = (words_so_far - before - in_word).astype(np.float32)
    return {
        "word_position": word_position,
        "sentence_position": sentence_position,
        "in_quotes": quote_track(text),
        "line_position": line_columns(text),
    }


def quote_track(text: str) -> np.ndarray:
    """1 from an opening double quote to its closing one (both included): a straight quote
    opens or closes by turns, typographic ones by their shape; a blank line closes an
    unclosed quote, so one stray mark spoils a paragraph at most."""
    inside = np.zeros(len(text), dtype=np.float32)
    marks = [(m.start(), "break") for m in PARAGRAPH.finditer(text)]
    marks += [(m.start(), m.group()) for m in QUOTE.finditer(text)]
    opened = None
    for at, mark in sorted(marks):
        if mark == "break":
            opened = None
        elif opened is None and mark in "\"\u201c":
            opened = at
        elif opened is not None and mark in "\"\u201d":
            inside[opened : at + 1] = 1
            opened = None
    return inside
