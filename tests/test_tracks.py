"""Tracks computed from text equal values written by hand; files that do not tokenize are
counted, not fatal; the parens depth is the generator's own."""

from __future__ import annotations

import numpy as np
import pytest

from lstmsearch.corpus import load_corpus
from lstmsearch.tracks import char_tracks, code_tracks, detect_kind, text_tracks


def digits(values: np.ndarray) -> str:
    """A track written one character per text character: its value's last digit, '.' for
    none."""
    return "".join("." if np.isnan(v) else str(int(v))[-1] for v in values)


# One line of hand-written values per track under each line of text; "|" is the newline.
CODE = (
    'def f(a, b=[1, (2)]):  # (c\n'
    '    s = """x (\n'
    '  y""" + \'#\'\n'
    '\n'
    '    return {a: b}  # }\n'
)
CODE_EXPECTED = {
    "in_string": (
        "0000000000000000000000000000"
        "000000001111111"
        "1111110001110"
        "0"
        "00000000000000000000000"
    ),
    "in_comment": (
        "0000000000000000000000011110"
        "000000000000000"
        "0000000000000"
        "0"
        "00000000000000000001110"
    ),
    "bracket_depth": (
        "0000011111122223332100000000"
        "000000000000000"
        "0000000000000"
        "0"
        "00000000000111111000000"
    ),
    "indent": (
        "0000000000000000000000000000"
        "444444444444444"
        "2222222222222"
        "."
        "44444444444444444444444"
    ),
    "column": (
        "0123456789012345678901234567"
        "012345678901234"
        "0123456789012"
        "0"
        "01234567890123456789012"
    ),
}


def test_code_tracks_equal_hand_written_values():
    lines = CODE.split("\n")
    assert [len(line) + 1 for line in lines[:-1]] == [28, 15, 13, 1, 23]  # the layout above
    tracks = code_tracks(CODE)
    assert not tracks.skipped
    assert list(tracks.values) == list(CODE_EXPECTED)
    for name, expected in CODE_EXPECTED.items():
        assert digits(tracks.values[name]) == expected, name


def test_code_tracks_of_prefixed_and_continued_strings():
    text = "x = (rb'a'\n     f\"b\")\n"
    tracks = code_tracks(text).values
    assert digits(tracks["in_string"]) == "00000111110" + "00000111100"
    assert digits(tracks["bracket_depth"]) == "00001111111" + "11111111110"
    assert digits(tracks["indent"]) == "00000000000" + "55555555555"


@pytest.mark.parametrize("text", [
    'x = "unterminated\n',  # an error token
    's = """never closed\n',  # end of file in a string
    "def f(:\n    pass\n  x = 1\n",  # a dedent to no level
    "if x:\n    y = (1,\n",  # end of file in a statement
])
def test_a_file_that_does_not_tokenize_keeps_its_line_tracks_only(text):
    tracks = code_tracks(text)
    assert tracks.skipped
    assert set(tracks.values) == {"indent", "column"}
    assert digits(tracks.values["column"]).startswith("0123")
    assert len(tracks.values["indent"]) == len(text)


def test_code_tracks_of_windows_line_ends_and_no_final_newline():
    text = "a = [1,\r\n  2]"
    tracks = code_tracks(text).values
    assert digits(tracks["bracket_depth"]) == "000011111" + "1111"
    assert digits(tracks["column"]) == "012345678" + "0123"
    assert digits(tracks["indent"]) == "000000000" + "2222"


TEXT = 'He said "Go now." She went home! Then\n\nthe end of it'
TEXT_EXPECTED = {
    "word_position": "01.0123..01.012...012.0123.0123..0123" + ".." + "012.012.01.01",
    "sentence_position": "0011111222233334440001111122222330000" + "11" + "0001111222333",
    "in_quotes": "0000000011111111100000000000000000000" + "00" + "0000000000000",
    "line_position": "0123456789012345678901234567890123456" + "70" + "0123456789012",
}


def test_text_tracks_equal_hand_written_values():
    tracks = text_tracks(TEXT)
    assert list(tracks) == list(TEXT_EXPECTED)
    for name, expected in TEXT_EXPECTED.items():
        assert digits(tracks[name]) == expected, name


def test_quotes_typographic_and_unclosed():
    text = "a \u201cb\u201d c \"d\n\ne\" f"
    # the straight quote left open at the blank line closes there; the next one opens anew
    assert digits(text_tracks(text)["in_quotes"]) == "00111" + "00000" + "00" + "0000"


def test_parens_depth_is_the_generators_depth():
    corpus = load_corpus("parens", n_docs=30, seed=5)
    for doc in corpus.documents:
        np.testing.assert_array_equal(char_tracks("parens", doc.text).values["depth"],
                                      doc.char_tracks["depth"])


def test_kind_detection_and_unknown_kind():
    assert detect_kind(["a", "b"], ["(()1)", "()"]) == "parens"
    assert detect_kind(["a.py", "b/c.py", "README"], ["x", "y", "z"]) == "code"
    assert detect_kind(["a.txt", "b.py"], ["x", "y"]) == "text"
    assert char_tracks("none", "abc").values == {}
    with pytest.raises(ValueError, match="unknown track set 'prose'.*code, text, parens"):
        char_tracks("prose", "abc")
