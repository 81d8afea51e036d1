"""Train an LSTM/GRU language model on a corpus: one file out, resumable.

Documents are split into training and validation sets by document (seeded) and tokenized with
a tokenizer trained on the training documents. Every document is read from a zero state, as
an index reads it: the documents are laid out in `batch` parallel lanes (`DocumentLanes`),
each lane one document after another, each document starting at a window boundary and padded
to whole windows of `seq_len` tokens. Windows are read one at a time (truncated
backpropagation through time); a lane's state is carried from one window to the next within
a document and reset to zero where a new document starts. The padding after a document's last
token is never read by a real prediction (the state is reset after it) and predicts nothing.
Each epoch lays the documents out in a new seeded order. Validation perplexity is measured
after every epoch the same way, per document from a zero state, so it is the perplexity of
the tokens' stored surprisal in an index. Checkpoints hold weights, optimizer, tokenizer and
the position in training, so `resume=True` carries on where a run stopped (the carried
recurrent state restarts from zero at the resumed window). With no learning-rate schedule,
the checkpoint a run writes at step S holds the weights of the same run told to stop at S
(`steps=S`); resuming it with `steps=S` finishes it as that run (validation, final save).
"""

from __future__ import annotations

import heapq
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

IGNORE = -100
"""Target of a position that predicts nothing: a document's last token, padding."""


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
    attention: int = 0  # window of earlier positions the prediction attends over (0: none)
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
        if not isinstance(self.attention, int) or self.attention < 0:
            raise ValueError(f"attention must be a window of 1 or more earlier positions "
                             f"(0: none), got {self.attention!r}")
        if self.attention and self.bidirectional:
            raise ValueError("attention goes with a forward-only model, not a bidirectional one")
        if self.attention > self.seq_len:
            raise ValueError(f"attention window {self.attention} is larger than the training "
                             f"context (seq_len {self.seq_len}): use a window up to {self.seq_len}")


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


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Each document's token ids; documents with fewer than 2 tokens predict nothing and are
    left out."""
    ids = [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts)]
    return [d for d in ids if len(d) >= 2]


@dataclass(frozen=True)
class DocumentLanes:
    """Documents laid out in lanes for truncated BPTT from a zero state per document.

    `ids` (B, W x L) holds the input tokens, IGNORE on padding; `targets` (B, W x L) the next
    token of the same document, IGNORE after a document's last token and on padding;
    `starts` (B, W) is True where a document (or a lane's trailing padding) starts at window
    w of lane b: the lane's state is zero there. `placed[b]` lists (document, window) of the
    documents of lane b in order.
    """

    ids: torch.Tensor
    targets: torch.Tensor
    starts: torch.Tensor
    seq_len: int
    placed: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def n_windows(self) -> int:
        return self.starts.shape[1]

    @property
    def n_targets(self) -> int:
        """Positions that predict a token."""
        return int((self.targets != IGNORE).sum())

    def window(self, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs x (B, L) (padding read as token 0), targets y (B, L) and which lanes start
        a document at window w (B,)."""
        span = slice(w * self.seq_len, (w + 1) * self.seq_len)
        return self.ids[:, span].clamp(min=0), self.targets[:, span], self.starts[:, w]


def document_lanes(docs: list[np.ndarray], batch: int, seq_len: int,
                   order_seed: int | None = None) -> DocumentLanes:
    """Lay `docs` out in `batch` lanes (see `DocumentLanes`), each document to the lane that
    ends first, in document order or a seeded random order."""
    if not docs:
        raise ValueError("no documents with 2 or more tokens to train or validate on")
    order = list(range(len(docs)))
    if order_seed is not None:
        random.Random(order_seed).shuffle(order)
    batch = min(batch, len(docs))
    ends = [(0, lane) for lane in range(batch)]  # (windows used, lane)
    placed: list[list[tuple[int, int]]] = [[] for _ in range(batch)]
    for d in order:
        used, lane = heapq.heappop(ends)
        placed[lane].append((d, used))
        heapq.heappush(ends, (used + -(-len(docs[d]) // seq_len), lane))
    n_windows = max(used for used, _ in ends)
    ids = np.full((batch, n_windows * seq_len), IGNORE, dtype=np.int64)
    targets = np.full_like(ids, IGNORE)
    starts = np.ones((batch, n_windows), dtype=bool)
    for lane, docs_here in enumerate(placed):
        for d, w in docs_here:
            tokens, at = docs[d], w * seq_len
            ids[lane, at : at + len(tokens)] = tokens
            targets[lane, at : at + len(tokens) - 1] = tokens[1:]
            n = -(-len(tokens) // seq_len)
            starts[lane, w + 1 : w + n] = False
        last = max((w + -(-len(docs[d]) // seq_len) for d, w in docs_here), default=0)
        starts[lane, last:] = True
    return DocumentLanes(torch.from_numpy(ids), torch.from_numpy(targets),
                         torch.from_numpy(starts), seq_len,
                         tuple(tuple(p) for p in placed))


def reset_state(state: Any, starts: torch.Tensor) -> Any:
    """The carried state with the lanes that start a document set to zero (and the graph
    behind it cut); None when every lane starts one."""
    if state is None or bool(starts.all()):
        return None
    keep = (~starts).to(torch.float32)
    if isinstance(state, torch.Tensor):
        return state.detach() * keep.to(state.device)[None, :, None]
    return type(state)(reset_state(s, starts) for s in state)


def window_loss(model: LanguageModel, x: torch.Tensor, y: torch.Tensor, state):
    """Summed next-token loss over a window's predicting positions (plus the previous-token
    loss when bidirectional), the number of predictions, and the final state."""
    logits, state = model(x, state)
    loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                       ignore_index=IGNORE, reduction="sum")
    count = int((y != IGNORE).sum())
    if model.config.bidirectional:
        # backward stack over x and its successor token: position t predicts token t-1
        seq = torch.cat([x, y[:, -1:].clamp(min=0)], dim=1)
        back = model.backward_logits(seq)[:, 1:]
        previous = torch.where(y != IGNORE, x, torch.full_like(x, IGNORE))
        loss = loss + nn.functional.cross_entropy(
            back.reshape(-1, back.shape[-1]), previous.reshape(-1), ignore_index=IGNORE,
            reduction="sum")
        count *= 2
    return loss, count, state


@torch.no_grad()
def evaluate(model: LanguageModel, data: DocumentLanes) -> float:
    """Perplexity of the model on held-out documents, each read from a zero state (exp of
    the mean loss over every predicted token)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count, state = 0.0, 0, None
    for w in range(data.n_windows):
        x, y, starts = data.window(w)
        state = None if model.config.bidirectional else reset_state(state, starts)
        loss, n, state = window_loss(model, x.to(device), y.to(device), state)
        total += loss.item()
        count += n
    model.train(was_training)
    return math.exp(total / max(count, 1))


def train(config: TrainConfig, out: str | Path, *, resume: bool = False,
          device: str | None = None, slim: bool = False,
          resume_lr: float | None = None) -> TrainResult:
    """Train (or resume training) and write the checkpoint to `out`.

    A resumed run keeps the saved run's settings but `epochs` and `steps`, and its learning
    rate unless `resume_lr` gives a new one (a second, slower phase of a long run).

    With `slim` the finished checkpoint keeps no optimizer state (about a third of the size,
    for shipped models); a resume from it starts the optimizer's moments afresh. The
    checkpoints written along the way keep it.
    """
    out = Path(out)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    if resume and not out.exists():
        raise FileNotFoundError(f"nothing to resume: {out} does not exist")
    previous = read_checkpoint(out) if resume else None
    if previous is not None:
        saved = previous["train_state"]["config"]
        lr = saved["lr"] if resume_lr is None else resume_lr
        config = TrainConfig(**{**saved, "epochs": config.epochs, "steps": config.steps,
                                "lr": lr})
        tokenizer = Tokenizer.from_json(previous["tokenizer"])

    corpus = load_corpus(config.corpus, limit=config.limit)
    train_texts, val_texts = split_documents(corpus, config.val_fraction, config.seed)
    if previous is None:
        tokenizer = train_tokenizer(config.tokenizer, train_texts, **vocab_option(config))
    train_docs = encode_documents(tokenizer, train_texts)
    val_data = document_lanes(encode_documents(tokenizer, val_texts), config.batch,
                              config.seq_len)

    torch.manual_seed(config.seed)
    model_config = ModelConfig(
        arch=config.arch, vocab_size=tokenizer.vocab_size, embed_dim=config.embed_dim,
        hidden=config.hidden, layers=config.layers, dropout=config.dropout,
        bidirectional=config.bidirectional, attention=config.attention,
    )
    model = LanguageModel(model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    step, epoch, window, history = 0, 0, 0, []
    if previous is not None:
        model.load_state_dict(previous["state_dict"])
        ts = previous["train_state"]
        if ts.get("optimizer") is not None:
            optimizer.load_state_dict(ts["optimizer"])
            for group in optimizer.param_groups:  # the saved state carries the old rate
                group["lr"] = config.lr
        step, epoch, window, history = ts["step"], ts["epoch"], ts["window"], ts["history"]

    def epoch_lanes(e: int) -> DocumentLanes:
        return document_lanes(train_docs, config.batch, config.seq_len,
                              order_seed=config.seed * 1_000_003 + e)

    train_data = epoch_lanes(epoch)

    def save(final: bool = False) -> None:
        meta = {
            "corpus": corpus.name, "train_tokens": sum(len(d) for d in train_docs),
            "val_tokens": val_data.n_targets, "history": history,
            "val_perplexity": history[-1]["val_perplexity"] if history else None,
            "command": " ".join(sys.argv) if Path(sys.argv[0]).name == "lstmsearch" else None,
            "seconds": round(time.perf_counter() - started, 1),
        }
        state = {
            "config": asdict(config), "step": step, "epoch": epoch, "window": window,
            "history": history,
            "optimizer": None if final and slim else optimizer.state_dict(),
        }
        save_checkpoint(out, model.cpu(), tokenizer, meta=meta, train_state=state)
        model.to(device)

    total_steps = config.steps or config.epochs * train_data.n_windows
    bar = tqdm(total=total_steps, initial=min(step, total_steps), desc="train", unit="step",
               file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True)
    done = config.steps is not None and step >= config.steps
    if config.steps is not None and step > config.steps:
        raise ValueError(f"{out} is at step {step}, past the {config.steps} steps asked: "
                         f"resume with --steps {step} or more")
    while epoch < config.epochs and not done:
        model.train()
        state, losses = None, []
        for w in range(window, train_data.n_windows):
            x, y, starts = train_data.window(w)
            state = None if config.bidirectional else reset_state(state, starts)
            loss, count, state = window_loss(model, x.to(device), y.to(device), state)
            loss = loss / max(count, 1)
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
        val_ppl = evaluate(model, val_data)
        history.append({
            "epoch": epoch + 1, "step": step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_perplexity": val_ppl,
        })
        print(f"epoch {epoch + 1}: step {step}, train loss {history[-1]['train_loss']:.4f}, "
              f"validation perplexity {val_ppl:.3f}", file=sys.stderr)
        if not done or window >= train_data.n_windows:
            epoch, window = epoch + 1, 0
            if epoch < config.epochs and not done:
                train_data = epoch_lanes(epoch)
        save(final=done or epoch >= config.epochs)
    if done and (not history or history[-1]["step"] != step):
        # resumed at a checkpoint taken at exactly the steps asked: the weights are those
        # of a run told to stop there, so measure and write them as its end
        history.append({"epoch": epoch + 1, "step": step, "train_loss": float("nan"),
                        "val_perplexity": evaluate(model, val_data)})
        save(final=True)
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
