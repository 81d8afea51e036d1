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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lstmsearch.models import LanguageModel

METHODS = ("grad_x_input", "integrated_gradients")
OBJECTIVES = ("logprob", "logit")


@dataclass(frozen=True)
class Saliency:
    """Per-input-token attribution of the prediction made at `position` (reading tokens
    0..position), for the token `target`.

    `scores[s]` and `gradient_norms[s]` belong to input token s (position + 1 values).
    `score` is the objective at the real input; `baseline_score` and `completeness_gap`
    (sum(scores) - (score - baseline_score)) are set for integrated gradients only.
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


def predict_from_embeddings(model: LanguageModel, emb: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) of the prediction after the last step, from embeddings (B, T, E)."""
    x = emb
    for rnn in model.forward_layers:
        x, _ = rnn(x)
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
    target: int | None = None,
    method: str = "grad_x_input",
    objective: str = "logprob",
    steps: int = 32,
    batch: int = 32,
) -> Saliency:
    """Attribution of the prediction after reading `ids[:position + 1]` to each of those
    input tokens (see the module docstring). `target` defaults to `ids[position + 1]` when
    there is one, else the model's most likely next token."""
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}: choose one of {', '.join(METHODS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    ids = np.asarray(ids, dtype=np.int64)
    if not 0 <= position < len(ids):
        raise ValueError(
            f"position {position} out of range: the document has tokens 0..{len(ids) - 1}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    param = next(model.parameters())
    prefix = torch.from_numpy(ids[: position + 1]).to(param.device)
    with torch.no_grad():
        emb = model.embed(prefix).unsqueeze(0)
        logits = predict_from_embeddings(model, emb)
    if target is None:
        target = int(ids[position + 1]) if position + 1 < len(ids) else int(logits.argmax())
    if not 0 <= target < model.config.vocab_size:
        raise ValueError(f"target token {target} out of range 0..{model.config.vocab_size - 1}")
    probability = float(torch.softmax(logits, dim=-1)[0, target])
    score = float(objective_of(logits, target, objective)[0])
    if method == "grad_x_input":
        scores, norms = grad_x_input_norms(model, emb, target, objective)
        return Saliency(position, target, method, objective, score, probability, scores, norms)
    alphas = (torch.arange(steps, dtype=emb.dtype, device=emb.device) + 0.5) / steps
    total = torch.zeros_like(emb[0])
    for lo in range(0, steps, batch):
        a = alphas[lo : lo + batch].view(-1, 1, 1)
        total += embedding_gradients(model, a * emb, target, objective).sum(0)
    mean_grad = total / steps
    scores = (mean_grad * emb[0]).sum(-1).double().cpu().numpy()
    with torch.no_grad():
        zero_logits = predict_from_embeddings(model, torch.zeros_like(emb))
        baseline = float(objective_of(zero_logits, target, objective)[0])
    _, direct_norms = grad_x_input_norms(model, emb, target, objective)
    return Saliency(
        position, target, method, objective, score, probability, scores, direct_norms,
        baseline_score=baseline, completeness_gap=float(scores.sum() - (score - baseline)),
    )


def embedding_gradients(
    model: LanguageModel, emb: torch.Tensor, target: int, objective: str
) -> torch.Tensor:
    """d score / d emb for a batch of embedding sequences (B, T, E); rows are independent."""
    with torch.enable_grad():
        x = emb.detach().requires_grad_(True)
        score = objective_of(predict_from_embeddings(model, x), target, objective).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad


def grad_x_input_norms(
    model: LanguageModel, emb: torch.Tensor, target: int, objective: str
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient x input and the gradient norm per token at the real input (one sequence)."""
    grad = embedding_gradients(model, emb, target, objective)[0]
    return (
        (grad * emb[0]).sum(-1).double().cpu().numpy(),
        grad.norm(dim=-1).double().cpu().numpy(),
    )
