"""The calls the analysis views make into `lstmsearch.analysis`, as pure functions.

Like `server.fetch`, every function here takes the server's `Shared` and plain, hashable
parameters, runs in the thread pool, never touches a Bokeh model and holds no analysis of
its own: it picks the index's documents, states and model, calls the analysis, and returns
a frozen dataclass the view draws.

How an analysis view joins the app (see `App` in `server.app`):

- The view class has `name` (prefix of its Bokeh model names, e.g. "gradients"), `title`
  (its tab's title), `layout`, and a `fetch` attribute naming its function here.
- `params(context)` turns what the session looks at (`Context`) plus the view's own widgets
  into the frozen, hashable parameters of `fetch`. The app runs `fetch(shared, params)` off
  the event loop when the tab is shown and the parameters changed, then `show(data)`.
  `show_message(text)` explains why there is nothing to show (an error, no model).
- The view calls `on_params()` (set by the app) when its own widgets change,
  `on_span(start, end)` to show a span of tokens in the select view, and `on_unit(unit)`
  to open a unit of the current state in the neuron view (all three set by the app).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from lstmsearch.analysis.ablation import AblationResult
from lstmsearch.analysis.gates import MAX_PREFIX, GateActivity
from lstmsearch.analysis.gradients import LagProfile
from lstmsearch.analysis.probe import ProbeResult
from lstmsearch.analysis.saliency import IndexSaliency
from lstmsearch.analysis.surprisal import DocumentLoss, SurprisalReport
from lstmsearch.analysis.trajectories import Trajectory
from lstmsearch.analysis.units import MAX_TOKENS, CoClustering, IndexResponse
from lstmsearch.analysis.weights import MatrixStats
from lstmsearch.attention import Heatmap, LookedAt
from lstmsearch.compare import SideBySide, StateComparison, SurprisalComparison
from server.fetch import (
    MatchRow,
    Shared,
    attention_stored,
    surprisal_scale,
    surprisal_values,
)


@dataclass(frozen=True)
class Context:
    """What the session looks at, as the analysis views see it.

    `window` is the select view's token window [start, end) and `document` the document
    its first token belongs to; `focus` the outlined span, if any (a clicked match, a found
    phrase); `unit` the neuron view's unit of `state`; `track` the chosen annotation track;
    `span` the brushed span, if any.
    """

    state: str
    window: tuple[int, int]
    document: int
    focus: tuple[int, int] | None
    unit: int
    track: str | None
    char_level: bool
    span: tuple[int, int] | None = None
    threshold: float = 0.3
    sign: int = 1
    padding: tuple[int, int] = (1, 0)


# --- surprisal ------------------------------------------------------------------------------

SURPRISAL_K = 20
SURPRISAL_MIN_COUNT = 5
SURPRISAL_WIDTH_CHARS, SURPRISAL_WIDTH_WORDS = 12, 5
"""Default width of the worst spans: a few words, or about as many characters."""
SURPRISAL_CONTEXT_CHARS, SURPRISAL_CONTEXT_WORDS = 10, 4
"""Tokens of context shown each side of a worst token or span."""
@dataclass(frozen=True)
class SurprisalParams:
    """What the surprisal view asks: how many of each list (`k`), the width of the worst
    spans, the least count of a vocabulary item in the hardest types, and the tokens of
    context shown around each worst token or span."""

    k: int = SURPRISAL_K
    width: int = SURPRISAL_WIDTH_CHARS
    min_count: int = SURPRISAL_MIN_COUNT
    context: int = SURPRISAL_CONTEXT_CHARS


@dataclass(frozen=True)
class SurprisalData:
    """The error analysis of the whole index, ready to draw.

    `token_rows`/`span_rows` are the worst tokens and spans of `report` with `params.context`
    tokens around them, each cell valued by its surprisal (score: the token's surprisal or
    the span's mean); `documents` the `params.k` documents of highest mean surprisal, named
    by `doc_names`. `scale` is the colour scale (nats) shared with the select view's strip;
    `source` says whether the surprisal was the index's stored track or computed with its
    model (`values_seconds`: how long that took, once per server).
    """

    params: SurprisalParams
    report: SurprisalReport
    token_rows: tuple[MatchRow, ...]
    span_rows: tuple[MatchRow, ...]
    documents: tuple[DocumentLoss, ...]
    doc_names: tuple[str, ...]
    scale: tuple[float, float]
    source: str
    values_seconds: float
    seconds: float


def surprisal_rows(
    shared: Shared, values: np.ndarray, spans: list[tuple[int, int]], scores: list[float],
    context: int,
) -> tuple[MatchRow, ...]:
    """Rows of tokens around each span (within its document), cells valued by surprisal."""
    from server.fetch import rows_around

    rows = []
    around = rows_around(shared, spans, before=context, after=context, track=None)
    for rank, ((a, b), score, (positions, texts, _)) in enumerate(
        zip(spans, scores, around), start=1
    ):
        rows.append(MatchRow(
            rank=rank, document=int(shared.index.doc_of(a)), start=a, end=b, anchor=a,
            positions=positions, texts=texts, values=values[positions],
            emphasis=(positions >= a) & (positions < b), track=None, score=float(score),
        ))
    return tuple(rows)


def surprisal(shared: Shared, params: SurprisalParams) -> SurprisalData:
    """`index_report` over every token of the index, with the rows the view draws; once per
    parameters per server (it is a pass over every token)."""
    from lstmsearch.analysis.surprisal import index_report, index_token_ids, worst_documents

    def compute() -> SurprisalData:
        t0 = time.perf_counter()
        values, source, values_seconds = surprisal_values(shared)
        ids, _ = shared.remember(("surprisal-token-ids",),
                            lambda: index_token_ids(shared.index))
        report = index_report(shared.index, surprisal=values, token_ids=ids, k=params.k,
                              width=params.width, min_count=params.min_count)
        token_rows = surprisal_rows(
            shared, values, [(t.pos, t.pos + 1) for t in report.worst_tokens],
            [t.surprisal for t in report.worst_tokens], params.context,
        )
        span_rows = surprisal_rows(
            shared, values, [(s.start, s.end) for s in report.worst_spans],
            [s.mean_surprisal for s in report.worst_spans], params.context,
        )
        documents = worst_documents(report.documents, params.k)
        return SurprisalData(
            params=params, report=report, token_rows=token_rows, span_rows=span_rows,
            documents=documents, doc_names=tuple(shared.doc_name(d.doc) for d in documents),
            scale=surprisal_scale(shared, values), source=source,
            values_seconds=values_seconds, seconds=time.perf_counter() - t0,
        )

    data, _ = shared.remember(("surprisal-report", params), compute)
    return data


# --- gradients ------------------------------------------------------------------------------

GRADIENT_LAG_CHARS, GRADIENT_LAG_WORDS = 60, 40
"""Default largest lag K: a character model's memory spans more tokens than a word model's."""
GRADIENT_POSITIONS = 32
GRADIENT_DOCS = 8
"""Documents in the sample (their first `MAX_DOC_TOKENS` tokens each, see
`index_gradient_flow`): with 32 positions, a fetch on a 2 x 256 model takes well under 2 s."""


def default_max_lag(char_level: bool) -> int:
    """The gradients view's default largest lag K for a character or a word model."""
    return GRADIENT_LAG_CHARS if char_level else GRADIENT_LAG_WORDS


@dataclass(frozen=True)
class GradientParams:
    """What the gradients view asks: document `document` (None: a seeded sample of `n_docs`
    documents of the index), `n_positions` positions t drawn among them, lags k = 0..max_lag."""

    document: int | None = None
    max_lag: int = GRADIENT_LAG_WORDS
    n_positions: int = GRADIENT_POSITIONS
    n_docs: int = GRADIENT_DOCS
    seed: int = 0


@dataclass(frozen=True)
class GradientsData:
    """||d loss_t / d s_(t-k)|| against the lag k, summarised per state (h and c of every
    layer) over `n_positions` positions in the index's documents `documents`."""

    params: GradientParams
    profiles: tuple[LagProfile, ...]
    n_positions: int
    documents: tuple[int, ...]
    seconds: float


def gradients(shared: Shared, params: GradientParams) -> GradientsData:
    """`index_gradient_flow` of the index's model with the view's parameters."""
    from lstmsearch.analysis.gradients import index_gradient_flow

    t0 = time.perf_counter()
    model = shared.model().model
    docs = None if params.document is None else [params.document]
    flow = index_gradient_flow(
        shared.index, model, docs, max_lag=params.max_lag, n_positions=params.n_positions,
        n_docs=params.n_docs, seed=params.seed,
    )
    return GradientsData(params, flow.profiles, len(flow.positions),
                         tuple(sorted(set(flow.docs.tolist()))), time.perf_counter() - t0)


# --- saliency -------------------------------------------------------------------------------

SALIENCY_WINDOW_CHARS, SALIENCY_WINDOW_WORDS = 60, 25
"""Input tokens attributed and shown before the prediction: a line of characters or words."""


def default_saliency_window(char_level: bool) -> int:
    """How many input tokens the saliency view attributes, for a character or a word model."""
    return SALIENCY_WINDOW_CHARS if char_level else SALIENCY_WINDOW_WORDS


def saliency_position(context: Context) -> int:
    """The prediction the saliency view explains by default: the one after the focus's first
    token, else after the window's second-to-last token (so the token it predicts is shown)."""
    if context.focus is not None:
        return int(context.focus[0])
    start, end = context.window
    return max(start, end - 2)


@dataclass(frozen=True)
class SaliencyParams:
    """What the saliency view asks: the prediction after global token `position`, explained
    by `method` for `target` ("next": the token that follows, "top": the model's most likely
    one) over the last `window` input tokens."""

    position: int
    method: str = "grad_x_input"
    target: str = "next"
    window: int = SALIENCY_WINDOW_WORDS
    objective: str = "logprob"


@dataclass(frozen=True)
class SaliencyData:
    """The saliency of one prediction (`result`), with the parameters that asked for it."""

    params: SaliencyParams
    result: IndexSaliency
    seconds: float


def saliency(shared: Shared, params: SaliencyParams) -> SaliencyData:
    """`index_saliency` of the index's model with the view's parameters."""
    from lstmsearch.analysis.saliency import index_saliency

    t0 = time.perf_counter()
    model = shared.model().model
    result = index_saliency(
        shared.index, model, params.position, target=params.target, method=params.method,
        objective=params.objective, window=params.window,
    )
    return SaliencyData(params, result, time.perf_counter() - t0)


# --- trajectory -----------------------------------------------------------------------------

TRAJECTORY_SPANS = ("window", "document")
TRAJECTORY_MAX_POINTS = 3000
"""A document longer than this is drawn in part: this many of its tokens, around the window
(a path of more points is unreadable, and UMAP or t-SNE of it would take long)."""


@dataclass(frozen=True)
class TrajectoryParams:
    """What the trajectory view asks: the path of `state` over the select view's `window`
    (span "window") or over its `document` (span "document"); PCA axes fitted on the span
    drawn or on its whole documents (`fit`); points valued by annotation `track`."""

    state: str
    window: tuple[int, int]
    document: int
    span: str = "window"
    fit: str = "span"
    method: str = "pca"
    track: str | None = None


@dataclass(frozen=True)
class TrajectoryData:
    """The path of tokens [start, end) with the document of each point (`docs`) and the
    names of those documents; `doc_span`, the tokens of those whole documents, and `cut`
    when a document was longer than the points drawn; `value_range`, the track's range over
    the index (the select view's colour scale)."""

    params: TrajectoryParams
    trajectory: Trajectory
    start: int
    end: int
    docs: np.ndarray
    doc_names: dict[int, str]
    doc_span: tuple[int, int]
    cut: bool
    value_range: tuple[float, float] | None
    seconds: float


def trajectory_span(shared: Shared, params: TrajectoryParams) -> tuple[int, int]:
    """Tokens [start, end) drawn: the window (clipped to the index), or the document, cut
    to `TRAJECTORY_MAX_POINTS` tokens from a little before the window when it is longer."""
    index = shared.index
    if params.span not in TRAJECTORY_SPANS:
        raise ValueError(f"unknown span {params.span!r}: choose one of "
                         f"{', '.join(TRAJECTORY_SPANS)}")
    if params.span == "window":
        start = int(np.clip(params.window[0], 0, max(0, index.n_tokens - 1)))
        return start, int(np.clip(params.window[1], start + 1, index.n_tokens))
    if not 0 <= params.document < index.n_docs:
        raise ValueError(f"document {params.document} out of range: the index has documents "
                         f"0..{index.n_docs - 1}")
    a, b = int(index.doc_starts[params.document]), int(index.doc_starts[params.document + 1])
    if b - a <= TRAJECTORY_MAX_POINTS:
        return a, b
    start = int(np.clip(params.window[0] - TRAJECTORY_MAX_POINTS // 4, a,
                        b - TRAJECTORY_MAX_POINTS))
    return start, start + TRAJECTORY_MAX_POINTS


def trajectory(shared: Shared, params: TrajectoryParams) -> TrajectoryData:
    """`index_trajectory` of the stored states over the span (no model needed)."""
    from lstmsearch.analysis.trajectories import index_trajectory

    t0 = time.perf_counter()
    index = shared.index
    start, end = trajectory_span(shared, params)
    traj = index_trajectory(index, params.state, start, end, track=shared.track(params.track),
                            method=params.method, fit=params.fit)
    docs = np.searchsorted(index.doc_starts, traj.positions, side="right") - 1
    first, last = int(docs[0]), int(docs[-1])
    doc_span = (int(index.doc_starts[first]), int(index.doc_starts[last + 1]))
    return TrajectoryData(
        params=params, trajectory=traj, start=start, end=end, docs=docs,
        doc_names={d: shared.doc_name(d) for d in range(first, last + 1)}, doc_span=doc_span,
        cut=params.span == "document" and (start, end) != doc_span,
        value_range=shared.track_range(params.track), seconds=time.perf_counter() - t0,
    )


# --- ablation and probe (the neuron view's panels) -----------------------------------------------

ABLATION_TOKENS = 100_000
"""The panel compares the surprisal of the index's first this many tokens (their documents
run whole from their start): a few seconds for the shipped models."""


def ablation(shared: Shared, state: str, unit: int, value: str) -> AblationResult:
    """`index_ablation` of one unit over the index's first tokens, once per server."""
    from lstmsearch.analysis.ablation import index_ablation
    from lstmsearch.extract import parse_state_name

    layer, kind = parse_state_name(state)
    index = shared.index

    def compute() -> AblationResult:
        model = shared.model().model
        return index_ablation(index, layer, kind, int(unit), value=value,
                              span=(0, min(index.n_tokens, ABLATION_TOKENS)), model=model)

    return shared.remember(("ablation", state, int(unit), value), compute)[0]


def probe(shared: Shared, state: str, track: str) -> ProbeResult:
    """`index_probe` of `track` from `state` (with its random-weight control), once per
    server."""
    from lstmsearch.analysis.probe import index_probe
    from lstmsearch.extract import parse_state_name

    layer, kind = parse_state_name(state)
    return shared.remember(("probe", state, track),
                           lambda: index_probe(shared.index, track, layer, kind))[0]


# --- gates ----------------------------------------------------------------------------------

GATE_RUNS_KEPT = 16
"""Gate runs kept per server (the latest): the view's choices then redraw without a run."""
GATES_MAX_PREFIX = MAX_PREFIX
"""Tokens of the document before the window the model runs at most (`index_gates`'s
`max_prefix`, see `MAX_PREFIX` there); a longer prefix is cut and the view says that its
gates are approximate."""


@dataclass(frozen=True)
class GatesParams:
    """What the gates view asks: the gates of the layer of `state` over the select view's
    `window`; `units`, `shown` (gate letters, the candidate's included) and `heat` (the
    heatmap's gate) only choose what is drawn of it."""

    state: str
    window: tuple[int, int]
    units: tuple[int, ...]
    shown: tuple[str, ...]
    heat: str


@dataclass(frozen=True)
class GatesData:
    """Every gate and the candidate of every unit of the layer over the window
    (`activity`, statistics over the window); the model ran from `run_start`, the start of
    the document (`exact`) or `max_prefix` tokens before the window of a longer one.
    `docs`: the document of each token of the window."""

    params: GatesParams
    activity: GateActivity
    docs: np.ndarray
    run_start: int
    exact: bool
    max_prefix: int
    seconds: float


def gate_run(shared: Shared, layer: int, start: int, end: int) -> tuple[GateActivity, float]:
    """`index_gates` of every unit, sigmoid gate and the candidate of `layer` over [start,
    end), with the seconds it took; the latest `GATE_RUNS_KEPT` runs are kept per server."""
    from collections import OrderedDict

    from lstmsearch.analysis.gates import index_gates

    key = (layer, start, end, GATES_MAX_PREFIX)
    with shared._lock:
        runs = shared.cache.setdefault("gate-runs", OrderedDict())
        if key in runs:
            runs.move_to_end(key)
            return runs[key]
    model = shared.model().model
    t0 = time.perf_counter()
    activity = index_gates(shared.index, model, layer, start, end, candidate=True,
                           max_prefix=GATES_MAX_PREFIX)
    found = (activity, time.perf_counter() - t0)
    with shared._lock:
        runs[key] = found
        while len(runs) > GATE_RUNS_KEPT:
            runs.popitem(last=False)
    return found


def gates(shared: Shared, params: GatesParams) -> GatesData:
    """The gates of the window (run with the index's model), checked against the choices."""
    from lstmsearch.analysis.gates import gate_run_end, gate_run_start
    from lstmsearch.extract import parse_state_name

    index = shared.index
    layer, _ = parse_state_name(params.state)
    start = int(np.clip(params.window[0], 0, max(0, index.n_tokens - 1)))
    end = int(np.clip(params.window[1], start + 1, index.n_tokens))
    activity, seconds = gate_run(shared, layer, start, end)
    width = len(activity.units)
    for unit in params.units:
        if not 0 <= unit < width:
            raise ValueError(f"unit {unit} out of range: layer {layer} has units 0..{width - 1}")
    known = (*activity.gates, activity.candidate_name)
    for gate in (*params.shown, params.heat):
        if gate not in known:
            raise ValueError(f"gate {gate!r} is not one of this {activity.arch}'s: "
                             f"{', '.join(known)}")
    run_start = gate_run_start(index, start, GATES_MAX_PREFIX)
    bidirectional = bool(shared.model_config.get("bidirectional"))
    run_end = gate_run_end(index, end, bidirectional, GATES_MAX_PREFIX)
    docs = np.searchsorted(index.doc_starts, activity.positions, side="right") - 1
    exact = run_start == int(index.doc_starts[index.doc_of(start)]) and (
        not bidirectional or run_end == int(index.doc_starts[index.doc_of(end - 1) + 1]))
    return GatesData(params=params, activity=activity, docs=docs, run_start=run_start,
                     exact=exact, max_prefix=GATES_MAX_PREFIX, seconds=seconds)

# --- weights --------------------------------------------------------------------------------

WEIGHT_BINS = 50


@dataclass(frozen=True)
class WeightParams:
    """What the weights view asks: histogram bins (the model is fixed per server)."""

    bins: int = WEIGHT_BINS


@dataclass(frozen=True)
class WeightsData:
    """Every weight block of the server's model (embedding first, head last), with the
    model's architecture and how long the report took when it was computed."""

    params: WeightParams
    blocks: tuple[MatrixStats, ...]
    arch: str
    seconds: float


def weights(shared: Shared, params: WeightParams) -> WeightsData:
    """`weight_report` of the index's model, computed once per server."""
    from lstmsearch.analysis.weights import weight_report

    def compute() -> WeightsData:
        t0 = time.perf_counter()
        loaded = shared.model()
        blocks = weight_report(loaded.model, params.bins)
        return WeightsData(params, blocks, str(loaded.model.config.arch),
                           time.perf_counter() - t0)

    data, _ = shared.remember(("weights", params), compute)
    return data


# --- units ----------------------------------------------------------------------------------

UNIT_WORDS = 50
"""Most frequent words of a word-level index the units view shows by default (a character
index shows every character type, see `default_unit_words`)."""
UNIT_MIN_COUNT = 5
UNIT_CLUSTERS = 4
UNIT_RANKING = 20


def default_unit_words(shared: Shared, high: int) -> int:
    """The units view's default number of words: all token types of a character index (a
    small vocabulary; those seen fewer than min_count times are left out), `UNIT_WORDS` of
    a word index; at most `high`."""
    if shared.char_level:
        return max(1, min(high, len(shared.index.vocab())))
    return min(high, UNIT_WORDS)


@dataclass(frozen=True)
class UnitParams:
    """What the units view asks: the state, how many of its most frequent words (seen at
    least `min_count` times), how many co-clusters, and the track to rank units by."""

    state: str
    words: int = UNIT_WORDS
    min_count: int = UNIT_MIN_COUNT
    n_clusters: int = UNIT_CLUSTERS
    track: str | None = None
    max_tokens: int = MAX_TOKENS
    seed: int = 0
    top: int = UNIT_RANKING


@dataclass(frozen=True)
class UnitsData:
    """The expected response of the state's units to its words (over the index's first
    whole documents, see `IndexResponse`), its co-clustering (None with fewer than two words
    or units), and the units ranked by |Pearson r| with the track over the whole index
    (`fetch.correlations`, shared with the neuron view; None without a track, and
    `ranking_error` saying why when the track has no numbers)."""

    params: UnitParams
    response: IndexResponse
    co_clustering: CoClustering | None
    ranking: tuple[tuple[int, float], ...] | None
    ranking_error: str | None
    response_seconds: float
    cached: bool
    seconds: float


def units(shared: Shared, params: UnitParams) -> UnitsData:
    """The units view's data: `index_response` (once per state, words and min_count per
    server), `cluster_response`, and `fetch.correlations` for the track."""
    from lstmsearch.analysis.units import cluster_response, index_response
    from server.fetch import correlations

    t0 = time.perf_counter()

    def compute() -> tuple[IndexResponse, float]:
        start = time.perf_counter()
        found = index_response(shared.index, params.state, params.words, params.min_count,
                               params.max_tokens)
        return found, time.perf_counter() - start

    key = ("units-response", params.state, params.words, params.min_count, params.max_tokens)
    (response, response_seconds), cached = shared.remember(key, compute)
    clusters = cluster_response(response.response, params.n_clusters, params.seed)
    ranking, error = None, None
    if params.track:
        try:
            ranking = tuple(correlations(shared, params.state, params.track, params.top))
        except ValueError as exc:
            error = str(exc)
    return UnitsData(params, response, clusters, ranking, error, response_seconds, cached,
                     time.perf_counter() - t0)


# --- compare ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareParams:
    """The state whose units are compared, the window whose surprisal is drawn, and the
    brushed span with its threshold, sign and padding (the pattern matched in both)."""

    state: str
    window: tuple[int, int]
    span: tuple[int, int] | None = None
    threshold: float = 0.3
    sign: int = 1
    padding: tuple[int, int] = (1, 0)


@dataclass(frozen=True)
class CompareData:
    """The other model beside the server's: unit correspondence and CKA of one state (or
    why there is none), both surprisals and their difference over the window."""

    params: CompareParams
    other: str  # the other index's directory
    state: StateComparison | None
    state_note: str  # why `state` is None (the other index does not store it)
    totals: SurprisalComparison | None
    positions: np.ndarray
    texts: tuple[str, ...]
    surprisal_a: np.ndarray
    surprisal_b: np.ndarray
    seconds: float
    side_by_side: SideBySide | None = None  # the brushed pattern's matches in A and in B
    side_note: str = ""  # why there is none


def compare(shared: Shared, params: CompareParams) -> CompareData:
    """`lstmsearch.compare` of the server's index (A) with `serve --compare`'s (B): the state
    comparison once per state per server, the surprisal totals once per server."""
    from lstmsearch.compare import SAMPLE, compare_states, compare_surprisal, sample_positions

    other = shared.other
    if other is None:
        raise ValueError("this server compares no second index: start it with "
                         "lstmsearch serve INDEX_A --compare INDEX_B")
    t0 = time.perf_counter()
    a = shared.index
    state, note = None, ""
    if params.state in other.state_names:
        state, _ = shared.remember(
            ("compare-state", params.state),
            lambda: compare_states(a, other, params.state, params.state,
                                   sample_positions(a.n_tokens, SAMPLE)))
    else:
        note = (f"{other.path.name} does not store {params.state} (it stores "
                f"{', '.join(other.state_names)})")
    totals, _ = shared.remember(("compare-surprisal",), lambda: compare_surprisal(a, other))
    start, end = params.window
    window = np.arange(start, end)
    texts = tuple(a.tokens(start, end).text) if end > start else ()
    has = totals is not None
    if has:  # both tracks read once per server
        sa = shared.track("surprisal")[start:end]
        sb = shared.remember(("compare-surprisal-b",), lambda: other.track("surprisal"))[0]
        sb = sb[start:end]
    else:
        sa = sb = np.full(window.size, np.nan)
    pair, side_note = None, ""
    if params.span is not None and state is not None:
        from lstmsearch.compare import CompareError, side_by_side

        pattern = a.select(*params.span, params.threshold, state=params.state,
                           pad_left=params.padding[0], pad_right=params.padding[1],
                           sign=params.sign)
        try:
            pair = side_by_side(a, other, pattern, state, limit=COMPARE_MATCHES)
        except CompareError as exc:
            side_note = str(exc)
    return CompareData(params, str(other.path), state, note, totals, window, texts, sa, sb,
                       time.perf_counter() - t0, pair, side_note)


COMPARE_MATCHES = 10
"""Matches of the brushed pattern listed for each model."""


# --- attention ----------------------------------------------------------------------------

ATTENTION_ROWS = 48
"""Tokens of the window the attention heatmap shows (the window's first ones)."""
ATTENTION_WORST = 15


@dataclass(frozen=True)
class AttentionParams:
    """The tokens whose attention is drawn: the brushed span, else the window's first."""

    window: tuple[int, int]


@dataclass(frozen=True)
class AttentionData:
    """An attention model's heatmap over the window and its worst-predicted tokens."""

    params: AttentionParams
    heatmap: Heatmap
    worst: tuple[LookedAt, ...]
    seconds: float


def attention(shared: Shared, params: AttentionParams) -> AttentionData:
    """`lstmsearch.attention.heatmap` of the window's first tokens; the worst tokens' once
    per server. A ValueError (shown by the tab) for an index without attention."""
    from lstmsearch.attention import heatmap, worst_tokens

    t0 = time.perf_counter()
    start, end = params.window
    end = min(end, start + ATTENTION_ROWS)
    stored = attention_stored(shared)
    found = heatmap(shared.index, start, end, stored)
    worst, _ = shared.remember(("attention-worst",),
                               lambda: worst_tokens(shared.index, ATTENTION_WORST, stored))
    return AttentionData(params, found, worst, time.perf_counter() - t0)
