"""Input saliency of one prediction: which earlier tokens made the model predict what it did?

The prediction at step t is the distribution over the token after t, made from tokens
0..t. Its score is the log-probability of a target token (by default the token that really
follows, else the model's top choice), or that token's logit. Per input token s:

- gradient x input: sum over embedding dimensions of (d score / d e_s) * e_s;
- integrated gradients (Sundararajan et al. 2017): e_s * the mean gradient along the
  straight path from a baseline of zero embeddings to the real ones, by the midpoint rule
  with `steps` points. Its scores add up to score(input) - score(baseline), up to the
  discretisation error reported as `completeness_gap`.

Also reported: ||d score / d e_s||, the plain gradient magnitude. The scores are a heat
strip over the input tokens.

Long inputs: with `start` > 0 only tokens start..t are attributed; the model reads the
tokens before them without gradients and carries its state over (their gradients do not
depend on the earlier tokens' embeddings, so gradient x input is unchanged, and integrated
gradients then keep the earlier tokens in the baseline). `index_saliency` explains one
prediction of an index's model this way, attributing the last few tokens before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lstmsearch.models import LanguageModel, check_no_attention

if TYPE_CHECKING:
    from lstmsearch.index import Index

METHODS = ("grad_x_input", "integrated_gradients")
OBJECTIVES = ("logprob", "logit")
TARGETS = ("next", "top")
"""Named targets: the token that really follows, the model's most likely next token."""

MAX_CONTEXT = 2000
"""Tokens before a prediction that `index_saliency` lets the model read (see there)."""


@dataclass(frozen=True)
class Saliency:
    """Per-input-token attribution of the prediction made at `position` (reading tokens
    0..position), for the token `target`.

    `scores[s]` and `gradient_norms[s]` belong to input token s (position + 1 values; NaN
    for tokens before `start`, which the model read as unattributed context). `score` is the
    objective at the real input and `probability` the target's; `top` the model's `k` most
    likely next tokens as (token id, probability), best first. `baseline_score` and
    `completeness_gap` (sum(scores) - (score - baseline_score)) are set for integrated
    gradients only.
    """

    position: int
    target: int
    method: str
    objective: str
    score: float
    probability: float
    scores: np.ndarray
    gradient_norms: np.ndarray
    baseline_score: float | None = None
    completeness_gap: float | None = None
    start: int = 0
    top: tuple[tuple[int, float], ...] = ()


def run_stack(
    model: LanguageModel, emb: torch.Tensor, state: list[Any] | None = None
) -> tuple[torch.Tensor, list[Any]]:
    """The forward stack over embeddings (B, T, E) from `state` (per layer, or None): its
    top layer's outputs (B, T, H) and final state per layer (as `nn.LSTM`/`nn.GRU` give it)."""
    x, final = emb, []
    for i, rnn in enumerate(model.forward_layers):
        x, s = rnn(x, None if state is None else state[i])
        final.append(s)
    return x, final


def batch_state(state: list[Any] | None, rows: int) -> list[Any] | None:
    """A one-row stack state repeated for `rows` rows (LSTM states are (h, c) pairs)."""
    if state is None:
        return None

    def repeat(t: torch.Tensor) -> torch.Tensor:
        return t.expand(t.shape[0], rows, t.shape[2]).contiguous()

    return [tuple(repeat(t) for t in s) if isinstance(s, tuple) else repeat(s) for s in state]


def predict_from_embeddings(
    model: LanguageModel, emb: torch.Tensor, state: list[Any] | None = None
) -> torch.Tensor:
    """Logits (B, V) of the prediction after the last step, from embeddings (B, T, E) and
    the stack's state before them (one row for every row of `emb`, or None: zeros)."""
    x, _ = run_stack(model, emb, batch_state(state, emb.shape[0]))
    return model.head(x[:, -1])


def objective_of(logits: torch.Tensor, target: int, objective: str) -> torch.Tensor:
    """Per-row score (B,): log-probability or logit of `target`."""
    if objective == "logit":
        return logits[:, target]
    return torch.log_softmax(logits, dim=-1)[:, target]


def saliency(
    model: LanguageModel,
    ids: Sequence[int] | np.ndarray,
    position: int,
    *,
    target: int | str | None = None,
    method: str = "grad_x_input",
    objective: str = "logprob",
    steps: int = 32,
    batch: int = 32,
    start: int = 0,
    top: int = 5,
) -> Saliency:
    """Attribution of the prediction after reading `ids[:position + 1]` to each of the input
    tokens start..position (see the module docstring). `target` is a token id, "next" or
    None for `ids[position + 1]` (the model's most likely next token when there is none),
    or "top" for the model's most likely next token."""
    check_no_attention(model, "saliency")
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}: choose one of {', '.join(METHODS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    if isinstance(target, str) and target not in TARGETS:
        raise ValueError(
            f"unknown target {target!r}: give a token id or one of {', '.join(TARGETS)}"
        )
    ids = np.asarray(ids, dtype=np.int64)
    if not 0 <= position < len(ids):
        raise ValueError(
            f"position {position} out of range: the document has tokens 0..{len(ids) - 1}"
        )
    if not 0 <= start <= position:
        raise ValueError(f"start {start} out of range 0..{position} (the position)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    param = next(model.parameters())
    tokens = torch.from_numpy(ids[: position + 1]).to(param.device)
    with torch.no_grad():
        context = run_stack(model, model.embed(tokens[:start]).unsqueeze(0))[1] if start else None
        emb = model.embed(tokens[start:]).unsqueeze(0)
        logits = predict_from_embeddings(model, emb, context)
    if target is None or target == "next":
        target = int(ids[position + 1]) if position + 1 < len(ids) else int(logits.argmax())
    elif target == "top":
        target = int(logits.argmax())
    if not 0 <= target < model.config.vocab_size:
        raise ValueError(f"target token {target} out of range 0..{model.config.vocab_size - 1}")
    probs = torch.softmax(logits, dim=-1)[0]
    probability = float(probs[target])
    best = torch.topk(probs, min(max(0, top), probs.shape[0]))
    ranked = tuple((int(i), float(p)) for p, i in zip(best.values, best.indices))
    score = float(objective_of(logits, target, objective)[0])

    def padded(values: np.ndarray) -> np.ndarray:
        """Values of tokens start..position as one value per input token (NaN before)."""
        return np.concatenate([np.full(start, np.nan), values])

    scores, norms = grad_x_input_norms(model, emb, target, objective, context)
    if method == "grad_x_input":
        return Saliency(position, target, method, objective, score, probability,
                        padded(scores), padded(norms), start=start, top=ranked)
    alphas = (torch.arange(steps, dtype=emb.dtype, device=emb.device) + 0.5) / steps
    total = torch.zeros_like(emb[0])
    for lo in range(0, steps, batch):
        a = alphas[lo : lo + batch].view(-1, 1, 1)
        total += embedding_gradients(model, a * emb, target, objective, context).sum(0)
    mean_grad = total / steps
    scores = (mean_grad * emb[0]).sum(-1).double().cpu().numpy()
    with torch.no_grad():
        zero_logits = predict_from_embeddings(model, torch.zeros_like(emb), context)
        baseline = float(objective_of(zero_logits, target, objective)[0])
    return Saliency(
        position, target, method, objective, score, probability, padded(scores),
        padded(norms), baseline_score=baseline,
        completeness_gap=float(scores.sum() - (score - baseline)), start=start, top=ranked,
    )


def embedding_gradients(
    model: LanguageModel, emb: torch.Tensor, target: int, objective: str,
    state: list[Any] | None = None,
) -> torch.Tensor:
    """d score / d emb for a batch of embedding sequences (B, T, E) read from `state` (see
    `predict_from_embeddings`); rows are independent."""
    with torch.enable_grad():
        x = emb.detach().requires_grad_(True)
        score = objective_of(predict_from_embeddings(model, x, state), target, objective).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad


def grad_x_input_norms(
    model: LanguageModel, emb: torch.Tensor, target: int, objective: str,
    state: list[Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient x input and the gradient norm per token at the real input (one sequence)."""
    grad = embedding_gradients(model, emb, target, objective, state)[0]
    return (
        (grad * emb[0]).sum(-1).double().cpu().numpy(),
        grad.norm(dim=-1).double().cpu().numpy(),
    )


# --- an index's model ----------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSaliency:
    """The saliency of one prediction of an index's model, placed in the index.

    `saliency` is computed over the token ids of document `document` from global position
    `first` on (its positions count from `first`, which is the document's start
    `document_start` unless the document is long, see `index_saliency`). `positions`,
    `texts`, `scores` and `gradient_norms` belong to the attributed input tokens, by global
    position, the last one `position`. `next_token`/`next_text`: the token that really
    follows (None at the end of a document); `top`: the model's most likely next tokens as
    (id, text, probability), best first.
    """

    saliency: Saliency
    document: int
    document_start: int
    first: int
    position: int
    positions: np.ndarray
    texts: tuple[str, ...]
    scores: np.ndarray
    gradient_norms: np.ndarray
    target_text: str
    next_token: int | None
    next_text: str | None
    top: tuple[tuple[int, str, float], ...]

    @property
    def truncated(self) -> bool:
        """Whether the model began reading after the document's start (a long document)."""
        return self.first > self.document_start


def index_saliency(
    index: Index,
    model: LanguageModel,
    position: int,
    *,
    target: int | str | None = None,
    method: str = "grad_x_input",
    objective: str = "logprob",
    window: int | None = None,
    max_context: int = MAX_CONTEXT,
    steps: int = 32,
    top: int = 5,
) -> IndexSaliency:
    """Saliency of the prediction that the index's `model` makes after global token
    `position`, from the tokens of that position's document up to it (`saliency` on the
    index's token ids; `target` as there).

    `window` (default: every token read) attributes only the last `window` input tokens,
    which keeps integrated gradients cheap on a long prefix. The model reads at most
    `max_context` tokens before the position: in a longer document it starts from a zero
    state that far back, so that one prediction costs a bounded time. Gradients through an
    LSTM fade geometrically with the lag (see `gradients`), so the prediction barely
    depends on tokens that far back; `truncated` says when this happened.
    """
    position = int(position)
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 tokens, got {window}")
    if max_context < 0:
        raise ValueError(f"max_context must be >= 0 tokens, got {max_context}")
    doc = index.doc_of(position)  # a ValueError naming the position when out of range
    doc_start, doc_end = int(index.doc_starts[doc]), int(index.doc_starts[doc + 1])
    first = max(doc_start, position - max_context)
    tokens = index.tokens(first, min(doc_end, position + 2))
    ids = np.asarray(tokens.token_id, dtype=np.int64)
    local = position - first
    start = 0 if window is None else max(0, local + 1 - window)
    sal = saliency(model, ids, local, target=target, method=method, objective=objective,
                   steps=steps, start=start, top=top)
    vocab = index.vocab()

    def text_of(token: int) -> str:
        return vocab[token] if 0 <= token < len(vocab) else f"<{token}>"

    next_token = int(ids[local + 1]) if local + 1 < len(ids) else None
    return IndexSaliency(
        saliency=sal, document=doc, document_start=doc_start, first=first,
        position=position, positions=np.arange(first + start, position + 1),
        texts=tuple(tokens.text[start : local + 1]), scores=sal.scores[start:],
        gradient_norms=sal.gradient_norms[start:], target_text=text_of(sal.target),
        next_token=next_token,
        next_text=None if next_token is None else tokens.text[local + 1],
        top=tuple((i, text_of(i), p) for i, p in sal.top),
    )
