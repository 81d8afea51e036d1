"""Recurrent language models: an embedding, a stack of LSTM or GRU layers, a softmax head.

Each layer is its own single-layer `nn.LSTM`/`nn.GRU`, so that every layer's states can be
read (`nn.LSTM(num_layers=N)` only returns the top layer's per-step outputs). A bidirectional
model is two separate stacks, ELMo style: the forward stack reads left to right and predicts
the next token, the backward stack reads right to left and predicts the previous token, and a
layer's state is the two directions side by side (forward units first). Keeping the stacks
apart means neither direction ever sees the token it predicts.

A checkpoint is one file holding the config, the weights, the tokenizer and training state,
loaded by `load_model`. It holds only tensors and plain data (dicts, lists, strings, numbers;
the tokenizer as its JSON text) and is read with `torch.load(weights_only=True)`, so opening a
file never runs code from it: a file that holds pickled Python objects is refused.
"""

from __future__ import annotations

import hashlib
import io
import math
import pickle
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lstmsearch.tokenize import Tokenizer

ARCHS = ("lstm", "gru")
MAX_ATTENTION = 1024
"""The largest attention window (earlier positions a prediction can look at)."""
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a language model: enough to rebuild it before loading weights."""

    arch: str
    vocab_size: int
    embed_dim: int = 64
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    bidirectional: bool = False
    attention: int = 0  # a window of earlier positions the prediction attends over (0: none)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        for name in ("vocab_size", "embed_dim", "hidden", "layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.attention, bool) or not isinstance(self.attention, int) or not (
                0 <= self.attention <= MAX_ATTENTION):
            raise ValueError(f"attention must be a window of 1..{MAX_ATTENTION} earlier "
                             f"positions (0: no attention), got {self.attention!r}")
        if self.attention and self.bidirectional:
            raise ValueError("attention goes with a forward-only model, not a bidirectional one")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def state_dim(self) -> int:
        """Units per layer as stored: both directions side by side when bidirectional."""
        return self.hidden * self.directions


def make_stack(config: ModelConfig) -> nn.ModuleList:
    """One single-layer recurrent module per layer; layer 0 reads embeddings."""
    cell = nn.LSTM if config.arch == "lstm" else nn.GRU
    return nn.ModuleList(
        cell(config.embed_dim if i == 0 else config.hidden, config.hidden, batch_first=True)
        for i in range(config.layers)
    )


class LanguageModel(nn.Module):
    """Embedding -> recurrent stack(s) -> linear head over the vocabulary."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)
        self.forward_layers = make_stack(config)
        if config.attention:  # dot-product attention over the top layer's earlier outputs
            self.query = nn.Linear(config.hidden, config.hidden, bias=False)
            self.key = nn.Linear(config.hidden, config.hidden, bias=False)
        self.head = nn.Linear(config.hidden * (2 if config.attention else 1), config.vocab_size)
        if config.bidirectional:
            self.backward_layers = make_stack(config)
            self.backward_head = nn.Linear(config.hidden, config.vocab_size)

    def stacks(self) -> list[nn.ModuleList]:
        """The recurrent stacks, forward first."""
        if self.config.bidirectional:
            return [self.forward_layers, self.backward_layers]
        return [self.forward_layers]

    def run_stack(self, layers: nn.ModuleList, ids: torch.Tensor, state: list | None = None):
        """Run one direction's stack over `ids` (B, T) from `state` (per layer, or None)."""
        x = self.drop(self.embed(ids))
        new_state = []
        for i, rnn in enumerate(layers):
            x, s = rnn(x, None if state is None else state[i])
            new_state.append(s)
            x = self.drop(x)
        return x, new_state

    def forward(self, ids: torch.Tensor, state: list | None = None):
        """Next-token logits (B, T, V) and the final state of the forward stack.

        For a bidirectional model this is the forward direction only; `backward_logits` gives
        the previous-token logits of the backward stack. With attention the state ends with
        the attention's memory (`attend`), carried like the recurrent state.
        """
        if not self.config.attention:
            top, new_state = self.run_stack(self.forward_layers, ids, state)
            return self.head(top), new_state
        layers_state, memory = (None, None) if state is None else (state[:-1], state[-1])
        top, new_state = self.run_stack(self.forward_layers, ids, layers_state)
        context, _, memory = self.attend(top, memory)
        return self.head(torch.cat([top, context], dim=-1)), [*new_state, memory]

    def attend(self, top: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Windowed attention of each step over the top layer's outputs at the W positions
        before it, in its own document: (context (B, T, H), weights (B, T, W), memory).

        weights[b, t, k - 1] is the attention on the output k steps back (0 where that is
        before the document's start; all 0 at its first token, whose context is 0). `memory`
        carries the last W outputs and how many of them belong to the document, as
        ((W, B, H), (1, B, 1)) so that `train.reset_state` clears it where a document starts.
        """
        window = self.config.attention
        b, t, h = top.shape
        if memory is None:
            past = top.new_zeros(b, window, h)
            n_past = top.new_zeros(b)
        else:
            past, n_past = memory[0].transpose(0, 1), memory[1].reshape(b)
        seq = torch.cat([past, top], dim=1)  # (B, W + T, H): position W + i is step i
        # every step against every position (one batched product), then each step's band of
        # the W positions before it: column W + i - k is k steps back from step i
        scores = torch.bmm(self.query(top), self.key(seq).transpose(1, 2)) / math.sqrt(h)
        offsets = torch.arange(1, window + 1, device=top.device)
        band = (window + torch.arange(t, device=top.device)[:, None] - offsets[None, :])
        band = band.expand(b, t, window)
        scores = scores.gather(2, band)  # (B, T, W): slot k - 1 is k steps back
        before = n_past[:, None] + torch.arange(t, device=top.device)[None, :]  # (B, T)
        valid = offsets[None, None, :] <= before[:, :, None]
        scores = scores.masked_fill(~valid, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # no past: all 0
        spread = top.new_zeros(b, t, window + t).scatter_(2, band, weights)
        context = torch.bmm(spread, seq)
        kept = seq[:, -window:]
        n_kept = torch.clamp(n_past + t, max=window)
        memory = (kept.detach().transpose(0, 1), n_kept.detach().reshape(1, b, 1))
        return context, weights, memory

    def backward_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Previous-token logits (B, T, V) of the backward stack, aligned with `ids`."""
        top, _ = self.run_stack(self.backward_layers, ids.flip(1))
        return self.backward_head(top).flip(1)


def check_no_attention(model: LanguageModel, what: str) -> None:
    """Refuse an attention model in an analysis that reads the prediction from the top
    layer's state alone (its head also reads the attention's context)."""
    if model.config.attention:
        raise ValueError(f"{what} is not available for an attention model yet (its prediction "
                         "also reads the attention over earlier positions); `lstmsearch "
                         "analyze attention` shows where it looks")


@dataclass
class LoadedModel:
    """A model ready for inference, with the tokenizer it was trained with."""

    model: LanguageModel
    tokenizer: Tokenizer
    config: ModelConfig
    meta: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""


def save_checkpoint(
    path: str | Path,
    model: LanguageModel,
    tokenizer: Tokenizer,
    meta: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
) -> None:
    """Write config, weights, tokenizer and training state to one file, atomically."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.config),
        "state_dict": model.state_dict(),
        "tokenizer": tokenizer.to_json(),
        "meta": meta or {},
        "train_state": train_state,
    }
    check_plain(payload, "checkpoint")
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, tmp)
    tmp.replace(path)


PLAIN = (str, int, float, bool, type(None))


def check_plain(value: Any, where: str) -> None:
    """Refuse anything but tensors and plain data in a checkpoint, so that it loads with
    `weights_only=True` (a TypeError naming the first offending entry)."""
    if isinstance(value, PLAIN) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, PLAIN):
                raise TypeError(f"{where} has a key of type {type(key).__name__}: only plain "
                                "data (str, int, float, bool, None) can be saved")
            check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(value).__name__}: a checkpoint holds only tensors "
                    "and plain data (dicts, lists, strings, numbers)")


def one_line(text: str, limit: int = 200) -> str:
    """An exception's message on one line, shortened."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def refused_global(exc: Exception) -> str | None:
    """The Python object a pickle asked for and the restricted unpickler refused, if any."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return found.group(1) if found else None


def unpickle_reason(exc: Exception) -> str:
    """What the restricted unpickler stopped at, in a few words."""
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
    return one_line(found.group(1), 80) if found else one_line(exc, 80)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dictionary; a clear one-line error when the file is not a checkpoint.

    Read with `torch.load(weights_only=True)`: only tensors and plain data are rebuilt, and a
    file that asks for any other Python object is refused before anything of it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal says it
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = refused_global(exc)
        if wanted is not None:
            raise ValueError(
                f"{path} is not a safe lstmsearch checkpoint: it asks for the Python object "
                f"{wanted}; refused without running anything (a checkpoint holds only tensors "
                "and plain data)"
            ) from None
        raise ValueError(
            f"{path} is not a readable lstmsearch checkpoint: it holds pickle content other "
            f"than tensors and plain data ({unpickle_reason(exc)}); refused without running "
            "anything"
        ) from None
    except Exception as exc:  # torch raises many kinds for a damaged or foreign file
        raise ValueError(
            f"{path} is not a readable lstmsearch checkpoint: {one_line(exc)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not an lstmsearch checkpoint of format {CHECKPOINT_FORMAT} "
            f"(found format {payload.get('format') if isinstance(payload, dict) else None!r})"
        )
    for key, kind in (("config", dict), ("state_dict", dict), ("tokenizer", str)):
        if not isinstance(payload.get(key), kind):
            raise ValueError(f"{path} is not a complete lstmsearch checkpoint: its {key!r} "
                             f"is not a {kind.__name__}")
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint written by `save_checkpoint`, in eval mode."""
    from lstmsearch.tokenize import Tokenizer

    payload = read_checkpoint(path)
    try:
        config = ModelConfig(**payload["config"])
        model = LanguageModel(config)
        model.load_state_dict(payload["state_dict"])
        tokenizer = Tokenizer.from_json(payload["tokenizer"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise ValueError(f"{path} is a damaged lstmsearch checkpoint: {one_line(exc)}") from None
    model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        meta=dict(payload.get("meta") or {}),
        sha256=file_sha256(path),
    )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file: the identity of a checkpoint in an index."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """Hex sha256 of a model's weights, independent of how they were saved."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        buf = io.BytesIO()
        buf.write(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(buf.getvalue())
    return digest.hexdigest()
