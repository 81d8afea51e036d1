"""Probing classifiers (NeuroX style): how well a linear read-out of a state predicts an
annotation track, and which units it leans on.

A probe is a regularised linear model fitted on the states of a train split of documents
and scored on held-out documents: logistic regression for a categorical track (accuracy,
against always answering the train split's most frequent class) and ridge regression for a
numeric one (R², against always answering the train split's mean). A high score alone does
not show that the model learned the annotation: a wide enough random projection of the
input can be read out too. So the same probe is also fitted on the states of the *control*,
the index's architecture with seeded random weights run over the same documents; the gap
between the two is what training added.

Units are ranked by the size of their probe weight on standardised states (each unit scaled
to unit variance over the train split, so that weights compare across units): the weight
itself for ridge and binary logistic regression, the norm of its weights over the classes
for several classes.

`probe_states` works on plain arrays (tests plant a signal in it); `index_probe` draws the
sample from an index: documents in a seeded random order until `max_tokens` tokens (a long
document contributes a prefix), split by document into train and held-out parts, so that
10^6 tokens x 512 units probe in seconds.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from lstmsearch.extract import parse_state_name

if TYPE_CHECKING:
    from lstmsearch.index import Index
    from lstmsearch.models import ModelConfig

TARGETS = ("auto", "categorical", "numeric")
MAX_CLASSES = 100
"""A categorical probe takes at most this many classes: more is a numeric track (probe it
with ridge) or a label set too fine to learn from a sample."""
AUTO_CLASSES = 20
"""`target="auto"` treats a numeric track as categorical when it has at most this many
distinct values, all integers (depth, inside a string or not); else as numeric."""
MAX_TOKENS = 1 << 15
"""Tokens drawn from an index (train and held-out together)."""
TEST_FRACTION = 0.2
MAX_ITER = 200
"""L-BFGS iterations of the logistic probe: it converges in a few dozen on states."""


@dataclass(frozen=True)
class UnitWeight:
    """One unit of `state` by its probe weight on standardised states: `weight` is signed
    for ridge and binary probes (positive: larger values of the unit mean a larger value or
    the second class), `importance` is |weight| (the norm over classes for several classes),
    the ranking's sort key."""

    state: str
    unit: int
    weight: float
    importance: float


@dataclass(frozen=True)
class ProbeResult:
    """A probe of `track` from `state`, scored on held-out tokens.

    `metric` is "accuracy" (categorical) or "r2" (numeric); `score` is the probe's,
    `baseline` the majority class's accuracy or the train mean's R², `control` the same
    probe's score on the random-weight control's states (None with `control_note` saying
    why when there is none). `classes` are the class values (categorical). `units` are all
    units, highest `importance` first.
    """

    state: str
    track: str
    target: str
    metric: str
    score: float
    baseline: float
    control: float | None
    control_note: str
    classes: tuple[str, ...]
    n_train: int
    n_test: int
    train_docs: int
    test_docs: int
    regularization: float
    seed: int
    units: tuple[UnitWeight, ...]
    seconds: float

    @property
    def over_baseline(self) -> float:
        return self.score - self.baseline

    @property
    def over_control(self) -> float | None:
        return None if self.control is None else self.score - self.control


@dataclass(frozen=True)
class Fit:
    """One fitted probe's held-out score and its weights on standardised states (classes x
    units; one row for ridge and binary logistic regression)."""

    score: float
    baseline: float
    weights: np.ndarray


# --- the probe on arrays --------------------------------------------------------------------


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both splits scaled by the train split's mean and standard deviation per unit (a unit
    constant over the train split is left unscaled)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    scale = (1.0 / std).astype(np.float32)
    shift = mean.astype(np.float32)
    return (train - shift) * scale, (test - shift) * scale


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
              test_y: np.ndarray, categorical: bool, regularization: float = 1.0) -> Fit:
    """Fit one probe on (train_x, train_y) and score it on the test split.

    Categorical: `train_y`/`test_y` are class indices; logistic regression with an L2 penalty
    of strength `regularization` (C = 1 / regularization), accuracy against the majority
    class of the train split. Numeric: ridge regression (alpha = regularization), R² against
    the train split's mean. Runs on one thread: the products are small, and on 2 busy cores
    threads that wait for each other made the logistic fit 10x slower (measured).
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from threadpoolctl import threadpool_limits

    train_x, test_x = standardise(np.asarray(train_x, np.float32), np.asarray(test_x, np.float32))
    if categorical:
        train_y, test_y = np.asarray(train_y, np.int64), np.asarray(test_y, np.int64)
        majority = int(np.bincount(train_y).argmax())
        baseline = float(np.mean(test_y == majority))
        if len(np.unique(train_y)) < 2:  # one class: the probe is the majority answer
            return Fit(baseline, baseline, np.zeros((1, train_x.shape[1])))
        model = LogisticRegression(C=1.0 / regularization, max_iter=MAX_ITER)
        # not converged in MAX_ITER: the held-out score says how good it is
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            model.fit(train_x, train_y)
            score = float(np.mean(model.predict(test_x) == test_y))
        return Fit(score, baseline, np.asarray(model.coef_, np.float64))
    train_y, test_y = np.asarray(train_y, np.float64), np.asarray(test_y, np.float64)
    with threadpool_limits(1):
        model = Ridge(alpha=regularization).fit(train_x, train_y)
        predicted = model.predict(test_x)
    baseline = r2(test_y, np.full(len(test_y), train_y.mean()))
    return Fit(r2(test_y, predicted), baseline, np.asarray(model.coef_, np.float64)[None, :])


def r2(y: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination of `predicted` for `y` (0 for a constant `y` predicted
    exactly, -inf guarded to a large negative number otherwise)."""
    total = float(np.sum((y - y.mean()) ** 2))
    residual = float(np.sum((y - predicted) ** 2))
    if total == 0:
        return 0.0 if residual == 0 else -1e9
    return 1.0 - residual / total


def rank_units(weights: np.ndarray, state: str) -> tuple[UnitWeight, ...]:
    """Units by the size of their probe weights (classes x units), largest first."""
    signed = weights[0] if len(weights) == 1 else np.linalg.norm(weights, axis=0)
    importance = np.abs(signed) if len(weights) == 1 else signed
    order = np.argsort(-importance, kind="stable")
    return tuple(UnitWeight(state, int(u), float(signed[u]), float(importance[u]))
                 for u in order)


def encode_classes(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices of `values` (numbers or labels) and the classes in sorted order."""
    classes, codes = np.unique(values, return_inverse=True)
    names = tuple(f"{c:g}" if isinstance(c, (float, np.floating)) else str(c) for c in classes)
    return codes.astype(np.int64), names


def probe_states(
    states: np.ndarray, values: np.ndarray, is_train: np.ndarray, *, categorical: bool,
    state: str = "", track: str = "", control_states: np.ndarray | None = None,
    control_note: str = "", regularization: float = 1.0, seed: int = 0,
    train_docs: int = 0, test_docs: int = 0,
) -> ProbeResult:
    """Probe `values` (one per row of `states`, numbers or labels) from `states` (tokens x
    units): fit on the rows where `is_train`, score on the rest; the same probe on
    `control_states` (same rows) when given."""
    t0 = time.perf_counter()
    states = np.asarray(states, np.float32)
    is_train = np.asarray(is_train, bool)
    if states.ndim != 2 or len(values) != len(states) or len(is_train) != len(states):
        raise ValueError(f"states {states.shape}, {len(values)} values and {len(is_train)} "
                         "split flags must line up, one per token")
    if is_train.all() or not is_train.any():
        raise ValueError("the probe needs tokens in both the train and the held-out split")
    if regularization <= 0 or not np.isfinite(regularization):
        raise ValueError(f"regularization must be a positive number, got {regularization}")
    classes: tuple[str, ...] = ()
    if categorical:
        y, classes = encode_classes(np.asarray(values))
    else:
        y = np.asarray(values, np.float64)
    test = ~is_train
    fit = fit_probe(states[is_train], y[is_train], states[test], y[test], categorical,
                    regularization)
    control = None
    if control_states is not None:
        control_states = np.asarray(control_states, np.float32)
        if control_states.shape[0] != states.shape[0]:
            raise ValueError(f"control states {control_states.shape} and states "
                             f"{states.shape} must have the same tokens")
        control = fit_probe(control_states[is_train], y[is_train], control_states[test],
                            y[test], categorical, regularization).score
    return ProbeResult(
        state=state, track=track, target="categorical" if categorical else "numeric",
        metric="accuracy" if categorical else "r2", score=fit.score, baseline=fit.baseline,
        control=control, control_note=control_note, classes=classes,
        n_train=int(is_train.sum()), n_test=int(test.sum()), train_docs=train_docs,
        test_docs=test_docs, regularization=float(regularization), seed=seed,
        units=rank_units(fit.weights, state), seconds=time.perf_counter() - t0,
    )


# --- the probe over an index ----------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Tokens drawn from an index: runs [start, end) of global positions (each a document or
    its prefix), whether each run is in the train split, and the runs' documents."""

    runs: tuple[tuple[int, int], ...]
    train: tuple[bool, ...]
    docs: tuple[int, ...]

    @property
    def positions(self) -> np.ndarray:
        return np.concatenate([np.arange(a, b) for a, b in self.runs])

    @property
    def is_train(self) -> np.ndarray:
        return np.concatenate([np.full(b - a, t) for (a, b), t in zip(self.runs, self.train)])


def draw_sample(doc_starts: np.ndarray, max_tokens: int = MAX_TOKENS,
                test_fraction: float = TEST_FRACTION, seed: int = 0) -> Sample:
    """Documents in a seeded random order until `max_tokens` tokens (the last one cut to a
    prefix), split into train and held-out documents by token count. With one document, its
    first part trains and the rest is held out."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    lengths = np.diff(doc_starts)
    order = [int(d) for d in np.random.default_rng(seed).permutation(len(lengths))
             if lengths[d] > 0]
    runs, docs, total = [], [], 0
    for d in order:
        take = int(min(lengths[d], max_tokens - total))
        if take < 1:
            break
        runs.append((int(doc_starts[d]), int(doc_starts[d]) + take))
        docs.append(d)
        total += take
    if total < 2:
        raise ValueError("the index has too few tokens to probe (at least 2 are needed)")
    if len(runs) == 1:  # one document: split it in time
        (a, b), = runs
        cut = a + max(1, min(b - a - 1, round((b - a) * (1 - test_fraction))))
        return Sample(((a, cut), (cut, b)), (True, False), (docs[0], docs[0]))
    # held-out documents from the end of the order until they hold test_fraction of tokens
    train = [True] * len(runs)
    held = 0
    for j in range(len(runs) - 1, 0, -1):
        if held >= test_fraction * total:
            break
        train[j] = False
        held += runs[j][1] - runs[j][0]
    return Sample(tuple(runs), tuple(train), tuple(docs))


def track_values(index: Index, track: str) -> tuple[np.ndarray, bool]:
    """A track's values for every token (floats, NaN where absent; or labels, None where
    absent) and whether they are labels."""
    values = index.track(track)  # a clear error naming the tracks when there is none
    if np.isfinite(values).any():
        return values, False
    labels = index.track_labels(track)
    if any(label is not None for label in labels):
        return np.array(labels, dtype=object), True
    return values, False


def choose_target(track: str, values: np.ndarray, labels: bool, target: str) -> bool:
    """Whether to probe as categorical, from `target` ("auto", "categorical", "numeric") and
    the values present; a one-line error for a probe the values cannot take."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    distinct = np.unique(values)
    if labels:
        if target == "numeric":
            raise ValueError(f"track {track!r} holds labels, not numbers: probe it as "
                             "categorical (--target categorical, or auto)")
        categorical = True
    elif target == "auto":
        categorical = len(distinct) <= AUTO_CLASSES and bool(np.all(distinct == np.round(distinct)))
    else:
        categorical = target == "categorical"
    if categorical and len(distinct) > MAX_CLASSES:
        raise ValueError(
            f"track {track!r} has {len(distinct):,} distinct values in the sample: a "
            f"categorical probe takes at most {MAX_CLASSES}; probe it as numeric (--target "
            "numeric: ridge regression, scored by R²)"
        )
    if len(distinct) < 2:
        raise ValueError(f"track {track!r} has one value ({distinct[0]}) on every sampled "
                         "token: there is nothing to probe")
    return categorical


def index_config(index: Index) -> ModelConfig | None:
    """The architecture of the index's model, from its metadata (None when the states were
    imported without one)."""
    from lstmsearch.models import ModelConfig

    try:
        config = json.loads(index.meta.get("model_config", "{}") or "{}")
        return ModelConfig(**config) if config else None
    except (TypeError, ValueError):
        return None


def random_model(config: ModelConfig, seed: int):
    """A language model of `config` with PyTorch's default initialisation, seeded (the
    global random state is left as it was)."""
    import torch

    from lstmsearch.models import LanguageModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LanguageModel(config)
    return model.eval()


def control_states(index: Index, state: str, sample: Sample, seed: int) -> tuple[
        np.ndarray | None, str]:
    """States `state` of the random-weight control over the sample's runs (rows in the
    sample's order), or None and why there are none."""
    from lstmsearch.extract import extract

    config = index_config(index)
    if config is None:
        return None, ("no control: the index does not record its model's architecture "
                      "(states imported from elsewhere)")
    from lstmsearch.analysis import one_torch_thread

    parse_state_name(state)
    try:
        model = random_model(config, seed)
        ids = [np.asarray(index.tokens(a, b).token_id, np.int64) for a, b in sample.runs]
        with one_torch_thread():  # 0.6 s against 5.3 s on two for the parens model's control
            out = extract(model, ids, [state])
    except ValueError as exc:
        return None, f"no control: {exc}"
    return np.concatenate([o[state] for o in out]), f"random weights, seed {seed}"


def index_probe(
    index: Index, track: str, layer: int, kind: str, *, target: str = "auto",
    max_tokens: int = MAX_TOKENS, test_fraction: float = TEST_FRACTION,
    regularization: float = 1.0, control: bool = True, seed: int = 0,
) -> ProbeResult:
    """Probe track `track` from the stored states `layers.{layer}.{kind}` of `index` (see
    the module docstring), with the random-weight control unless `control` is False."""
    t0 = time.perf_counter()
    store = index.store(layer, kind)
    state = store.name
    all_values, labels = track_values(index, track)
    sample = draw_sample(index.doc_starts, max_tokens, test_fraction, seed)
    positions = sample.positions
    values = all_values[positions]
    present = (np.array([v is not None for v in values]) if labels
               else np.isfinite(values.astype(np.float64)))
    if not present.any():
        raise ValueError(f"track {track!r} has no values on the {len(positions):,} sampled "
                         "tokens")
    categorical = choose_target(track, values[present], labels, target)
    states = np.concatenate([store.block(slice(None), a, b).T for a, b in sample.runs])
    is_train = sample.is_train
    if not (is_train & present).any() or not (~is_train & present).any():
        raise ValueError(f"track {track!r} has values in only one of the train and held-out "
                         "documents: raise max_tokens or probe another track")
    ctrl, note = (None, "no control asked") if not control else control_states(
        index, state, sample, seed)
    result = probe_states(
        states[present], values[present], is_train[present], categorical=categorical,
        state=state, track=track, control_states=None if ctrl is None else ctrl[present],
        control_note=note, regularization=regularization, seed=seed,
        train_docs=len({d for d, t in zip(sample.docs, sample.train) if t}),
        test_docs=len({d for d, t in zip(sample.docs, sample.train) if not t}),
    )
    return replace(result, seconds=time.perf_counter() - t0)
