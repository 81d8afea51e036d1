"""A tiny custom recurrent model with its own tokenizer, indexed through the model adapter.

    lstmsearch index data/examples/sentences.jsonl \
        --model data/examples/my_model.py:factory --out my-index

`factory()` returns `(model, tokenizer)`. The model is a plain `nn.Module` of the kind people
train themselves: word embeddings, a two-layer time-major `nn.LSTM`, a bidirectional
batch-first `nn.GRU`, and a linear layer scoring tags per token. The adapter finds the two
recurrent modules and stores their three layers as `layers.0` and `layers.1` (the LSTM: h and
c, 24 units each) and `layers.2` (the GRU: h, 12 forward units then 12 backward units).

The weights are random (seeded), which is enough to show how a model of your own plugs in:
replace the body of `factory` with loading your trained weights.
"""

from __future__ import annotations

import re

import torch
from torch import nn

WORDS = (
    "the a an this that one two some every no cat dog bird fish child teacher river house "
    "garden book tree sun rain is are was were sees saw likes liked reads read runs ran sleeps "
    "slept and or but because when while if then not very quite big small old new red green "
    "happy quiet in on under over near with by to from of ."
).split()


class WordTokenizer:
    """Lower-cased words and single punctuation marks; unknown words are `<unk>` (id 0).

    `encode(text)` returns `(ids, offsets)`: one `(start, end)` character span per token.
    """

    pattern = re.compile(r"\w+|[^\w\s]")

    def __init__(self, words: tuple[str, ...] = WORDS):
        self.words = ["<unk>", *words]
        self.ids = {w: i for i, w in enumerate(self.words)}

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        ids, offsets = [], []
        for m in self.pattern.finditer(text):
            ids.append(self.ids.get(m.group().lower(), 0))
            offsets.append(m.span())
        return ids, offsets

    def vocab(self) -> list[str]:
        """The words, index = token id."""
        return list(self.words)


class TinyTagger(nn.Module):
    """Embeddings -> 2-layer LSTM (time-major) -> bidirectional GRU -> tag scores per token."""

    def __init__(self, vocab_size: int, embed: int = 16, hidden: int = 24, gru_hidden: int = 12,
                 tags: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=2)  # reads (T, B, features)
        self.gru = nn.GRU(hidden, gru_hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * gru_hidden, tags)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Tag scores (B, T, tags) for token ids (B, T)."""
        x = self.embed(ids).transpose(0, 1)
        x, _ = self.lstm(x)
        x, _ = self.gru(x.transpose(0, 1))
        return self.out(x)


def tokenizer() -> WordTokenizer:
    """The tokenizer alone (for a TorchScript copy of the model: --tokenizer ...:tokenizer)."""
    return WordTokenizer()


def factory() -> tuple[TinyTagger, WordTokenizer]:
    """The model (seeded random weights, eval mode) and its tokenizer."""
    tok = tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyTagger(len(tok.words))
    return model.eval(), tok
