"""Train an LSTM/GRU language model on a corpus: one file out, resumable.

Documents are split into training and validation sets by document (seeded), tokenized with a
tokenizer trained on the training documents, and joined into one token stream per set. The
stream is cut into `batch` parallel lanes read `seq_len` tokens at a time (truncated
backpropagation through time), with the state carried from one window to the next within an
epoch. Validation perplexity is measured after every epoch. Checkpoints hold weights,
optimizer, tokenizer and the position in training, so `resume=True` carries on where a run
stopped (the carried recurrent state restarts from zero at the resumed window).
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from lstmsearch.corpus import Corpus, load_corpus
from lstmsearch.models import ARCHS, LanguageModel, ModelConfig, read_checkpoint, save_checkpoint
from lstmsearch.tokenize import KINDS, Tokenizer, train_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in the checkpoint."""

    corpus: str
    arch: str = "lstm"
    layers: int = 2
    hidden: int = 256
    embed_dim: int = 64
    dropout: float = 0.0
    bidirectional: bool = False
    tokenizer: str = "char"
    vocab_size: int | None = None
    epochs: int = 1
    steps: int | None = None  # stop after this many optimizer steps in total
    seq_len: int = 128
    batch: int = 32
    lr: float = 3e-3
    clip: float = 1.0
    val_fraction: float = 0.05
    limit: int | None = None  # documents taken from the corpus
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (and at every epoch end)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        if self.tokenizer not in KINDS:
            raise ValueError(f"unknown tokenizer {self.tokenizer!r}: choose one of {', '.join(KINDS)}")
        for name in ("epochs", "seq_len", "batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")


@dataclass
class TrainResult:
    """What a run did: final validation perplexity and the per-epoch history."""

    path: Path
    steps: int
    epochs_done: int
    val_perplexity: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def split_documents(corpus: Corpus, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Texts of the training and validation documents: a seeded split by document."""
    texts = [d.text for d in corpus.documents]
    if len(texts) < 2:
        raise ValueError(
            f"corpus {corpus.name!r} has {len(texts)} usable document(s): training needs at "
            "least 2 (one for validation)"
        )
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(texts) * val_fraction))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [texts[i] for i in train], [texts[i] for i in val]


def token_stream(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """All documents' token ids, one after the other."""
    parts = [e.ids for e in tokenizer.encode_batch(texts)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def lanes(stream: np.ndarray, batch: int) -> torch.Tensor:
    """Cut a stream into `batch` equal lanes (B, T); the ragged tail is dropped."""
    per_lane = len(stream) // batch
    if per_lane < 2:
        raise ValueError(
            f"only {len(stream)} tokens for batch {batch}: use a smaller --batch or more text"
        )
    return torch.from_numpy(stream[: per_lane * batch].reshape(batch, per_lane))


def detach(state: Any) -> Any:
    """Cut the graph behind a carried recurrent state."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(detach(s) for s in state)


def window_loss(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, state):
    """Mean next-token loss on one window (plus previous-token loss when bidirectional)."""
    logits, state = model(x, state)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    if model.config.bidirectional:
        # backward stack over x and its successor token: position t predicts token t-1
        seq = torch.cat([x, y[:, -1:]], dim=1)
        back = model.backward_logits(seq)[:, 1:]
        loss = (loss + nn.functional.cross_entropy(back.reshape(-1, back.shape[-1]), x.reshape(-1))) / 2
    return loss, state


@torch.no_grad()
def evaluate(model: LanguageModel, data: torch.Tensor, seq_len: int) -> float:
    """Perplexity of the model on lanes of held-out tokens (exp of mean token loss)."""
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    for t in range(0, data.shape[1] - 1, seq_len):
        x = data[:, t : t + seq_len]
        y = data[:, t + 1 : t + 1 + seq_len]
        x = x[:, : y.shape[1]]
        loss, state = window_loss(model, x, y, None if model.config.bidirectional else state)
        total += loss.item() * y.numel()
        count += y.numel()
    model.train(was_training)
    return math.exp(total / max(count, 1))


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, device: str | None = None) -> TrainResult:
    """Train (or resume training) and write the checkpoint to `out`."""
    out = Path(out)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    if resume and not out.exists():
        raise FileNotFoundError(f"nothing to resume: {out} does not exist")
    previous = read_checkpoint(out) if resume else None
    if previous is not None:
        saved = previous["train_state"]["config"]
        config = TrainConfig(**{**saved, "epochs": config.epochs, "steps": config.steps})
        tokenizer = Tokenizer.from_json(previous["tokenizer"])

    corpus = load_corpus(config.corpus, limit=config.limit)
    train_texts, val_texts = split_documents(corpus, config.val_fraction, config.seed)
    if previous is None:
        tokenizer = train_tokenizer(config.tokenizer, train_texts, **vocab_option(config))
    train_data = lanes(token_stream(tokenizer, train_texts), config.batch)
    val_data = lanes(token_stream(tokenizer, val_texts), min(config.batch, 8))

    torch.manual_seed(config.seed)
    model_config = ModelConfig(
        arch=config.arch, vocab_size=tokenizer.vocab_size, embed_dim=config.embed_dim,
        hidden=config.hidden, layers=config.layers, dropout=config.dropout,
        bidirectional=config.bidirectional,
    )
    model = LanguageModel(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    step, epoch, window, history = 0, 0, 0, []
    if previous is not None:
        model.load_state_dict(previous["state_dict"])
        optimizer.load_state_dict(previous["train_state"]["optimizer"])
        ts = previous["train_state"]
        step, epoch, window, history = ts["step"], ts["epoch"], ts["window"], ts["history"]

    def save() -> None:
        meta = {
            "corpus": corpus.name, "train_tokens": int(train_data.numel()),
            "val_tokens": int(val_data.numel()), "history": history,
            "val_perplexity": history[-1]["val_perplexity"] if history else None,
            "command": " ".join(sys.argv) if Path(sys.argv[0]).name == "lstmsearch" else None,
        }
        state = {
            "config": asdict(config), "optimizer": optimizer.state_dict(), "step": step,
            "epoch": epoch, "window": window, "history": history,
        }
        save_checkpoint(out, model.cpu(), tokenizer, meta=meta, train_state=state)
        model.to(device)

    windows = list(range(0, train_data.shape[1] - 1, config.seq_len))
    total_steps = config.steps or config.epochs * len(windows)
    bar = tqdm(total=total_steps, initial=min(step, total_steps), desc="train", unit="step",
               file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True)
    done = config.steps is not None and step >= config.steps
    while epoch < config.epochs and not done:
        model.train()
        state, losses = None, []
        for w in range(window, len(windows)):
            t = windows[w]
            x = train_data[:, t : t + config.seq_len].to(device)
            y = train_data[:, t + 1 : t + 1 + config.seq_len].to(device)
            x = x[:, : y.shape[1]]
            loss, state = window_loss(model, x, y, None if config.bidirectional else state)
            state = detach(state)
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer.step()
            step += 1
            window = w + 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses[-50:]):.3f}")
            if step % config.checkpoint_every == 0:
                save()
            if config.steps is not None and step >= config.steps:
                done = True
                break
        val_ppl = evaluate(model, val_data.to(device), config.seq_len)
        history.append({
            "epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_perplexity": val_ppl,
        })
        print(f"epoch {epoch + 1}: step {step}, train loss {history[-1]['train_loss']:.4f}, "
              f"validation perplexity {val_ppl:.3f}", file=sys.stderr)
        if not done or window >= len(windows):
            epoch, window = epoch + 1, 0
        save()
    bar.close()
    result = TrainResult(
        path=out, steps=step, epochs_done=epoch,
        val_perplexity=history[-1]["val_perplexity"] if history else float("nan"),
        history=history, seconds=time.perf_counter() - started,
    )
    return result


def vocab_option(config: TrainConfig) -> dict[str, int]:
    """Pass a vocabulary size to the tokenizer trainer only when one was given."""
    return {} if config.vocab_size is None else {"vocab_size": config.vocab_size}
