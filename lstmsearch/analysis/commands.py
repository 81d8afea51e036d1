"""`lstmsearch analyze ...`: the analyses as sub-commands, with plain-text or `--json` output.

Every sub-command takes SOURCE, a model checkpoint or an index directory (whose `model.pt`
is its model), and, except `weights`, the documents to read: `--text`, `--corpus` (a
bundled name or a path), or by default the documents of the index. `--limit` caps the
number of documents. States come from an index's store when it has them (the stored values
are the truth), otherwise from the exact extraction.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lstmsearch import limits as L
from lstmsearch.analysis import (
    Tokenized,
    check_doc,
    index_documents,
    is_index,
    load_source_model,
    to_jsonable,
    tokenize_documents,
    tokenize_texts,
)

if TYPE_CHECKING:
    from lstmsearch.models import LoadedModel

DEFAULT_LIMIT = 100
SEED = L.int_arg(0, 2**32 - 1)


@dataclass
class Inputs:
    """What an analysis reads: the model, the documents, and the index if SOURCE is one."""

    loaded: LoadedModel
    tokenized: Tokenized
    index: Any = None
    from_index: bool = False  # the documents are the index's own


def load_inputs(args: argparse.Namespace) -> Inputs:
    """The model of SOURCE and the documents chosen by --text / --corpus / the index."""
    from lstmsearch.corpus import load_corpus

    loaded = load_source_model(args.source)
    index = None
    if is_index(args.source):
        from lstmsearch.index import open_index

        index = open_index(args.source)
    limit = args.limit
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of documents, got {limit}")
    if args.text is not None:
        tokenized = tokenize_texts(loaded.tokenizer, [args.text])
    elif args.corpus is not None:
        corpus = load_corpus(args.corpus, limit=limit or DEFAULT_LIMIT)
        tokenized = tokenize_documents(loaded.tokenizer, corpus.documents)
    elif index is not None:
        n = index.n_docs if limit is None else min(limit, index.n_docs)
        tokenized = index_documents(index, range(n))
    else:
        raise ValueError(
            f"{args.source} is a model checkpoint: say what to read with --text or --corpus"
        )
    if not any(len(ids) for ids in tokenized.ids):
        raise ValueError("no tokens to analyse: the documents are empty")
    from_index = index is not None and args.text is None and args.corpus is None
    return Inputs(loaded, tokenized, index, from_index)


def states_of(inputs: Inputs, name: str) -> np.ndarray:
    """States `name` (tokens x units) of all the documents: stored ones when the index has
    them and the documents are the index's own, else extracted."""
    from lstmsearch.extract import extract, parse_state_name

    parse_state_name(name)
    tok = inputs.tokenized
    if inputs.from_index and name in inputs.index.state_names:
        a = tok.first_pos
        return np.asarray(inputs.index.states(name)[a : a + len(tok.token_ids)], dtype=np.float32)
    out = extract(inputs.loaded.model, tok.ids, [name])
    return np.concatenate([r[name] for r in out])


def default_state(loaded: LoadedModel) -> str:
    """The top layer's h."""
    return f"layers.{loaded.config.layers - 1}.h"


def parse_units(text: str | None) -> list[int] | None:
    """'3,17,40' -> [3, 17, 40]; None stays None."""
    if text is None:
        return None
    try:
        return [int(u) for u in text.split(",") if u.strip()]
    except ValueError as exc:
        raise ValueError(f"--units must be comma-separated integers, got {text!r}") from exc


def emit(args: argparse.Namespace, result: Any, text: str) -> None:
    """Print the result as JSON (`--json`) or as the text rendering."""
    if args.json:
        print(json.dumps(to_jsonable(result), ensure_ascii=False))
    else:
        print(text)


def show(token: str) -> str:
    """A token as is, or quoted with escapes when it has whitespace or control characters."""
    return token if token and token.strip() == token and token.isprintable() else repr(token)


# --- sub-commands -------------------------------------------------------------------------------


def run_surprisal(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.surprisal import analyze_surprisal, compute_surprisal

    inputs = load_inputs(args)
    tok = inputs.tokenized
    if inputs.from_index and "surprisal" in tok.tracks:
        surprisal = tok.track("surprisal")
    else:
        surprisal = compute_surprisal(inputs.loaded.model, tok.ids)
    report = analyze_surprisal(
        tok.token_ids, surprisal, tok.doc_starts, vocab=inputs.loaded.tokenizer.vocab(),
        token_texts=tok.token_texts, k=args.top, width=args.width, min_count=args.min_count,
    )
    lines = [
        f"{report.n_scored} predicted tokens in {tok.n_docs} documents: mean surprisal "
        f"{report.mean_surprisal:.3f} nats, perplexity {report.perplexity:.3f}",
        "", "worst tokens (nats, doc:position, token):",
    ]
    lines += [
        f"  {w.surprisal:7.3f}  {w.doc}:{w.pos_in_doc}  {show(w.text)}" for w in report.worst_tokens
    ]
    sep = "" if inputs.loaded.tokenizer.kind == "char" else " "
    lines += ["", f"worst spans of {args.width} tokens (mean nats, doc, text):"]
    lines += [
        f"  {s.mean_surprisal:7.3f}  {s.doc}  {show(sep.join(s.tokens))}"
        for s in report.worst_spans
    ]
    lines += ["", f"hardest vocabulary items (seen >= {args.min_count} times):"]
    lines += [
        f"  {t.mean_surprisal:7.3f}  x{t.count:<6d} {100 * t.loss_share:5.1f}% of loss  "
        f"{show(t.text)}"
        for t in report.hardest_types
    ]
    emit(args, report, "\n".join(lines))


def run_gradients(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.gradients import gradient_flow

    inputs = load_inputs(args)
    names = args.states.split(",") if args.states else None
    flow = gradient_flow(
        inputs.loaded.model, inputs.tokenized.ids, max_lag=args.max_lag,
        n_positions=args.positions, names=names, seed=args.seed,
    )
    shown = [k for k in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500) if k <= args.max_lag]
    if args.max_lag not in shown:
        shown.append(args.max_lag)
    lines = [
        f"median ||d loss_t / d state_(t-k)|| over {len(flow.positions)} positions",
        "lag".rjust(6) + "".join(p.name.rjust(13) for p in flow.profiles),
    ]
    for k in shown:
        lines.append(f"{k:6d}" + "".join(f"{p.median[k]:13.3e}" for p in flow.profiles))
    lines.append("factor" + "".join(f"{p.factor:13.4f}" for p in flow.profiles))
    lines.append("(factor: change per step back; < 1 vanishing, > 1 exploding)")
    result = {
        "max_lag": flow.max_lag, "docs": flow.docs, "steps": flow.steps,
        "positions": flow.positions, "profiles": flow.profiles,
    }
    if args.all_norms:
        result["norms"] = flow.norms
    emit(args, result, "\n".join(lines))


def run_saliency(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.saliency import saliency

    inputs = load_inputs(args)
    tok, tokenizer = inputs.tokenized, inputs.loaded.tokenizer
    doc = check_doc(tok, args.doc)
    ids, texts = tok.ids[doc], tok.texts[doc]
    position = len(ids) - 2 if args.position is None else args.position
    position = max(position, 0)
    target = None
    if args.target is not None:
        target = tokenizer.token_to_id(args.target)
        if target is None:
            raise ValueError(f"target {args.target!r} is not in the model's vocabulary")
    sal = saliency(
        inputs.loaded.model, ids, position, target=target, method=args.method,
        objective=args.objective, steps=args.steps,
    )
    result = {
        "doc": doc, "tokens": texts[: position + 1],
        "target_text": tokenizer.id_to_token(sal.target), "saliency": sal,
    }
    top = np.argsort(-np.abs(sal.scores))[: args.top]
    lines = [
        f"prediction after token {position} of document {doc}: "
        f"{show(tokenizer.id_to_token(sal.target))} with p = {sal.probability:.4f} "
        f"({sal.objective} {sal.score:.4f})",
        f"most salient input tokens ({sal.method}):",
    ]
    lines += [f"  {sal.scores[s]:+10.4f}  {s:6d}  {show(texts[s])}" for s in top]
    if sal.completeness_gap is not None:
        lines.append(
            f"completeness gap {sal.completeness_gap:+.2e} (baseline {sal.baseline_score:.4f}); "
            "raise --steps if it is large"
        )
    emit(args, result, "\n".join(lines))


def run_trajectory(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.trajectories import trajectory

    inputs = load_inputs(args)
    tok = inputs.tokenized
    doc = check_doc(tok, args.doc)
    name = args.state or default_state(inputs.loaded)
    states_all = states_of(inputs, name)
    a, b = int(tok.doc_starts[doc]), int(tok.doc_starts[doc + 1])
    start = 0 if args.start is None else args.start
    end = b - a if args.end is None else args.end
    if not 0 <= start < end <= b - a:
        raise ValueError(
            f"token span [{start}, {end}) out of range: document {doc} has {b - a} tokens"
        )
    values = tok.track(args.track)[a + start : a + end] if args.track else None
    fit = states_all[a:b] if args.fit == "document" else states_all if args.fit == "all" else None
    traj = trajectory(
        states_all[a + start : a + end], tok.texts[doc][start:end], name=name, values=values,
        positions=np.arange(start, end), method=args.method, n_components=args.components,
        fit_states=fit, seed=args.seed,
    )
    lines = [f"{traj.method} of {name}, document {doc}, tokens [{start}, {end})"]
    if traj.explained_variance_ratio is not None:
        ratios = ", ".join(f"{r:.3f}" for r in traj.explained_variance_ratio)
        lines.append(f"explained variance ratio: {ratios} (total {traj.explained:.3f})")
    for i in range(min(len(traj.tokens), args.show)):
        value = "" if values is None else f"  {args.track}={values[i]:g}"
        coords = " ".join(f"{x:+8.3f}" for x in traj.points[i])
        lines.append(f"  {traj.positions[i]:6d}  {coords}  {show(traj.tokens[i])}{value}")
    emit(args, traj, "\n".join(lines))


def run_gates(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.gates import model_gates

    inputs = load_inputs(args)
    tok = inputs.tokenized
    units = parse_units(args.units)
    gates = args.gates.split(",") if args.gates else None
    act = model_gates(
        inputs.loaded.model, tok.ids, args.layer, gates=gates, units=units,
        tokens=tok.token_texts, low=args.low, high=args.high,
    )
    lines = [f"layer {act.layer} gates over {len(act.tokens)} tokens"]
    for g, (lo, hi) in act.layer_saturation.items():
        lines.append(
            f"  {g}: {100 * lo:5.1f}% of values < {act.low}, {100 * hi:5.1f}% > {act.high}"
        )
    lines.append("unit gate   mean    std   <low  >high")
    for s in act.stats:
        if s.unit in act.units:
            lines.append(
                f"{s.unit:4d}  {s.gate:>3s}  {s.mean:5.3f}  {s.std:5.3f}  "
                f"{s.low_fraction:5.3f}  {s.high_fraction:5.3f}"
            )
    emit(args, act, "\n".join(lines))


def run_weights(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.weights import weight_report

    loaded = load_source_model(args.source)
    report = weight_report(loaded.model, bins=args.bins)
    header = ("name", "shape", "mean", "std", "sigma_max", "radius")
    lines = ["{:28s} {:>10s} {:>8s} {:>7s} {:>9s} {:>7s}".format(*header)]
    for m in report:
        shape = "x".join(str(d) for d in m.shape)
        sigma = "" if m.spectral_norm is None else f"{m.spectral_norm:9.3f}"
        radius = "" if m.spectral_radius is None else f"{m.spectral_radius:7.3f}"
        lines.append(
            f"{m.name:28s} {shape:>10s} {m.mean:+8.4f} {m.std:7.4f} {sigma:>9s} {radius:>7s}"
        )
    emit(args, {"matrices": report}, "\n".join(lines))


def run_units(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.units import co_cluster, expected_response, rank_units

    inputs = load_inputs(args)
    tok = inputs.tokenized
    name = args.state or default_state(inputs.loaded)
    states = states_of(inputs, name)
    response = expected_response(
        states, tok.token_ids, tok.doc_starts, top=args.words, min_count=args.min_count,
        vocab=inputs.loaded.tokenizer.vocab(),
    )
    clusters = None
    n_clusters = min(args.clusters, *response.response.shape) if len(response.words) else 0
    if n_clusters >= 2:
        clusters = co_cluster(
            response.response, n_clusters, seed=args.seed, words=response.words,
            token_ids=response.token_ids,
        )
    ranking = rank_units(states, tok.track(args.track), top=args.top) if args.track else None
    lines = [f"{name}: expected response of {states.shape[1]} units to {len(response.words)} words"]
    if clusters is not None:
        for c in clusters.clusters:
            words = " ".join(show(w) for w in c.words[:20])
            lines.append(f"  cluster {c.index}: units {list(c.units)[:20]} <-> words {words}")
    if ranking is not None:
        lines.append(f"units ranked by |Pearson r| with track {args.track!r}:")
        lines += [f"  unit {c.unit:4d}  r = {c.r:+.3f}" for c in ranking]
    emit(args, {"state": name, "response": response, "co_clustering": clusters,
                "correlation": ranking}, "\n".join(lines))


def run_ablate(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.ablation import index_ablation
    from lstmsearch.index import open_index

    with open_index(args.index) as index:
        kind = args.kind
        if kind is None:  # the memory of an LSTM, the only state of a GRU
            kind = "c" if f"layers.{args.layer}.c" in index.state_names else "h"
        span = None if args.span is None else tuple(args.span)
        result = index_ablation(index, args.layer, kind, args.unit, value=args.value,
                                span=span)
    clamp = "zero" if result.value_kind == "zero" else f"its mean ({result.value:+.4f})"
    lines = [
        f"{result.state} unit {result.unit} clamped to {clamp} at every step: surprisal of "
        f"{result.n_scored:,} tokens [{result.start}, {result.end}) ({result.seconds:.1f} s)",
        f"  overall: {result.clean:.4f} -> {result.ablated:.4f} nats "
        f"(change {result.change:+.4f})",
    ]
    track = None
    for g in result.groups:
        if g.track != track:
            track = g.track
            lines += ["", f"by {track}:", "  value               tokens    clean  ablated   change"]
        lines.append(f"  {g.value:18s} {g.n:8,d} {g.clean:8.4f} {g.ablated:8.4f} "
                     f"{g.change:+8.4f}")
    emit(args, result, "\n".join(lines))


def run_attention(args: argparse.Namespace) -> None:
    from lstmsearch.attention import heatmap, worst_tokens
    from lstmsearch.index import open_index

    by_span = args.start is not None or args.end is not None
    if by_span == (args.worst is not None) or (by_span and None in (args.start, args.end)):
        raise ValueError("give either --start and --end, or --worst K")
    with open_index(args.index) as index:
        if args.worst is not None:
            rows = worst_tokens(index, args.worst)
            lines = ["surprisal  entropy  token       looked at (weight)"]
            for r in rows:
                looked = ", ".join(f"{show(t)}@{p} ({w:.2f})"
                                   for p, w, t in zip(r.positions, r.weights, r.texts,
                                                      strict=True))
                lines.append(f"{r.surprisal:9.2f} {r.entropy:8.2f}  {show(r.text):10s} "
                             f"{looked}")
            emit(args, rows, "\n".join(lines))
            return
        result = heatmap(index, args.start, args.end)
    lines = [f"attention of tokens [{args.start}, {args.end}) over {len(result.columns)} "
             "positions (rows: tokens; weight per attended position)"]
    for i, (pos, text) in enumerate(zip(result.rows, result.row_text, strict=True)):
        looks = [(result.weights[i, j], result.columns[j], result.column_text[j])
                 for j in np.flatnonzero(result.weights[i] > 0)]
        looks.sort(key=lambda x: -x[0])
        cells = ", ".join(f"{show(t)}@{p} {w:.2f}" for w, p, t in looks)
        lines.append(f"  {pos:>9,} {show(text):8s} entropy {result.entropy[i]:5.2f}: "
                     f"{cells or '(nothing before it)'}")
    emit(args, result, "\n".join(lines))


# --- argument parsing ---------------------------------------------------------------------------


def add_inputs(p: argparse.ArgumentParser) -> None:
    """SOURCE and the documents to read."""
    p.add_argument("source", metavar="SOURCE", help="model checkpoint (.pt) or index directory")
    p.add_argument("--text", help="analyse this text (one document)")
    p.add_argument("--corpus", help="analyse a corpus: bundled name or path")
    p.add_argument("--limit", type=L.COUNT, default=None,
                   help=f"use the first N documents (corpus default {DEFAULT_LIMIT}, index: all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_analyze_commands(sub: argparse._SubParsersAction) -> None:
    """Register `analyze` and its sub-commands on the top-level sub-parsers."""
    p = sub.add_parser(
        "analyze", help="analyses of a model: surprisal, gradients, saliency, trajectory, "
        "gates, weights, units, ablate, attention",
        description="Analyses of a recurrent language model and its states. SOURCE is a model "
        "checkpoint or an index directory (its model.pt is used).",
    )
    an = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    s = an.add_parser("surprisal", help="per-token loss: worst tokens, spans, documents, types")
    add_inputs(s)
    s.add_argument("--top", type=L.RESULTS, default=20, help="entries per list")
    s.add_argument("--width", type=L.int_arg(1, 10_000), default=8, help="tokens per span")
    s.add_argument("--min-count", type=L.COUNT, default=5, help="least occurrences of a type")
    s.set_defaults(run=run_surprisal)

    g = an.add_parser("gradients", help="gradient flow through time: ||d loss_t / d h_(t-k)||")
    add_inputs(g)
    g.add_argument("--max-lag", type=L.int_arg(1, 10_000), default=50)
    g.add_argument("--positions", type=L.int_arg(1, 100_000), default=64,
                   help="positions t to sample")
    g.add_argument("--states", help="comma-separated state names (default: h and c of all layers)")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument(
        "--all-norms", action="store_true", help="include every position's norms in JSON"
    )
    g.set_defaults(run=run_gradients)

    a = an.add_parser("saliency", help="input saliency of one prediction")
    add_inputs(a)
    a.add_argument("--doc", type=L.INDEX, default=0, help="document (among those read)")
    a.add_argument("--position", type=L.INDEX, default=None,
                   help="token after which the prediction is made (default: second to last)")
    a.add_argument("--target", help="token to explain (default: the real next token)")
    a.add_argument(
        "--method", choices=["grad_x_input", "integrated_gradients"], default="grad_x_input"
    )
    a.add_argument("--objective", choices=["logprob", "logit"], default="logprob")
    a.add_argument("--steps", type=L.int_arg(1, 10_000), default=32,
                   help="integrated-gradients steps")
    a.add_argument("--top", type=L.RESULTS, default=15, help="tokens to list")
    a.set_defaults(run=run_saliency)

    t = an.add_parser("trajectory", help="PCA, t-SNE or UMAP path of states")
    add_inputs(t)
    t.add_argument("--doc", type=L.INDEX, default=0)
    t.add_argument("--start", type=L.INDEX, default=None, help="first token (in the document)")
    t.add_argument("--end", type=L.INDEX, default=None, help="one past the last token")
    t.add_argument("--state", help="e.g. layers.0.c (default: top layer h)")
    t.add_argument("--track", help="annotation to attach per point, e.g. depth")
    t.add_argument("--method", choices=["pca", "umap", "tsne"], default="pca")
    t.add_argument("--components", type=L.int_arg(1, 1_000), default=2)
    t.add_argument("--fit", choices=["window", "document", "all"], default="window",
                   help="states the PCA axes are fitted on")
    t.add_argument("--seed", type=SEED, default=0)
    t.add_argument("--show", type=L.RESULTS_OR_NONE, default=20, help="points to print")
    t.set_defaults(run=run_trajectory)

    e = an.add_parser("gates", help="gate activations over time, saturation per unit")
    add_inputs(e)
    e.add_argument("--layer", type=L.INDEX, default=0)
    e.add_argument("--units", help="comma-separated units (default: all)")
    e.add_argument("--gates", help="comma-separated gates (default: i,f,o or r,z)")
    e.add_argument("--low", type=L.float_arg(0.0, 1.0), default=0.1)
    e.add_argument("--high", type=L.float_arg(0.0, 1.0), default=0.9)
    e.set_defaults(run=run_gates)

    w = an.add_parser("weights", help="histograms, singular values, spectral radius per block")
    w.add_argument("source", metavar="SOURCE", help="model checkpoint (.pt) or index directory")
    w.add_argument("--bins", type=L.int_arg(1, 10_000), default=50)
    w.add_argument("--json", action="store_true", help="print the result as JSON")
    w.set_defaults(run=run_weights)

    b = an.add_parser(
        "ablate", help="clamp one unit and measure what the model's predictions lose",
        description="Re-run the index's model with one unit of h or c of a layer clamped to "
        "zero or to its mean at every step, and compare each token's surprisal with the "
        "clean run: overall and per value of each annotation track.",
    )
    b.add_argument("index", metavar="INDEX", help="index directory (with its model.pt)")
    b.add_argument("--layer", type=L.INDEX, required=True, help="layer number (from 0)")
    b.add_argument("--unit", type=L.INDEX, required=True, help="unit to clamp")
    b.add_argument("--kind", choices=["h", "c"], default=None,
                   help="state to clamp (default: c for an LSTM, h for a GRU)")
    b.add_argument("--span", type=L.INDEX, nargs=2, metavar=("START", "END"),
                   help="compare the tokens [START, END) only (their documents run from "
                   "their start)")
    b.add_argument("--value", choices=["zero", "mean"], default="zero",
                   help="clamp to zero (default) or to the unit's mean over the index")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(run=run_ablate)

    t = an.add_parser(
        "attention", help="where an attention model looks: a span's heatmap, the worst tokens",
        description="From an index of an attention model (train --attention W): the "
        "attention of the tokens [START, END) over the positions they look at (--start, "
        "--end), or of the predictions of the K tokens of highest surprisal (--worst K).",
    )
    t.add_argument("index", metavar="INDEX", help="index directory of an attention model")
    t.add_argument("--start", type=L.INDEX, help="first token of the span")
    t.add_argument("--end", type=L.INDEX, help="one past the span's last token")
    t.add_argument("--worst", type=L.RESULTS, default=None, metavar="K",
                   help="the K worst-predicted tokens and where their prediction looked")
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.set_defaults(run=run_attention)

    u = an.add_parser("units", help="per-word expected response, co-clusters, track correlation")
    add_inputs(u)
    u.add_argument("--state", help="e.g. layers.0.h (default: top layer h)")
    u.add_argument("--words", type=L.RESULTS, default=50, help="most frequent words to use")
    u.add_argument("--min-count", type=L.COUNT, default=1)
    u.add_argument("--clusters", type=L.int_arg(1, 1_000), default=4)
    u.add_argument("--track", help="rank units by correlation with this track, e.g. depth")
    u.add_argument("--top", type=L.RESULTS, default=10, help="units to rank")
    u.add_argument("--seed", type=SEED, default=0)
    u.set_defaults(run=run_units)


# --- probe (a top-level command: it reads an index, like the other queries) --------------------


def run_probe(args: argparse.Namespace) -> None:
    from lstmsearch.analysis.probe import index_probe
    from lstmsearch.index import open_index

    with open_index(args.index) as index:
        result = index_probe(
            index, args.track, args.layer, args.kind, target=args.target,
            max_tokens=args.max_tokens, regularization=args.regularization,
            control=not args.no_control, seed=args.seed,
        )
    shown = result.units[: args.top]
    if args.json:
        print(json.dumps(to_jsonable({**{f: getattr(result, f) for f in (
            "state", "track", "target", "metric", "score", "baseline", "control",
            "control_note", "classes", "n_train", "n_test", "train_docs", "test_docs",
            "regularization", "seed", "seconds")}, "units": shown}), ensure_ascii=False))
        return
    metric = "accuracy" if result.metric == "accuracy" else "R²"
    kind = ("logistic regression over " + f"{len(result.classes)} classes"
            if result.target == "categorical" else "ridge regression")
    baseline = "majority class" if result.target == "categorical" else "train mean"
    control = ("-" if result.control is None else f"{result.control:.3f}")
    lines = [
        f"probe of track {result.track!r} from {result.state}: {kind}",
        f"  trained on {result.n_train:,} tokens of {result.train_docs} documents, held out "
        f"{result.n_test:,} tokens of {result.test_docs} documents ({result.seconds:.1f} s)",
        f"  held-out {metric}: {result.score:.3f}   baseline ({baseline}): "
        f"{result.baseline:.3f}   control: {control} ({result.control_note})",
        "", f"units by probe weight on standardised states (top {len(shown)}):",
    ]
    lines += [f"  {u.state} unit {u.unit:4d}  weight {u.weight:+.3f}" for u in shown]
    print("\n".join(lines))


def add_probe_command(sub: argparse._SubParsersAction) -> None:
    """Register `probe` on the top-level sub-parsers."""
    from lstmsearch.analysis.probe import MAX_TOKENS, TARGETS

    p = sub.add_parser(
        "probe", help="train a linear probe of an annotation track on a state",
        description="Fit a regularised linear probe (logistic regression for a categorical "
        "track, ridge for a numeric one) on the stored states of a train split of "
        "documents; report its held-out accuracy or R² against the majority class or the "
        "mean, and against the same probe on the states of the model's architecture with "
        "random weights (the control); rank units by probe weight.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--track", required=True, help="annotation track to predict, e.g. depth")
    p.add_argument("--layer", type=L.INDEX, required=True, help="layer number (from 0)")
    p.add_argument("--kind", required=True, help="state kind: c or h (or a stored gate)")
    p.add_argument("--target", choices=TARGETS, default="auto",
                   help="categorical (logistic) or numeric (ridge); auto: categorical for "
                   "labels and for up to 20 integer values")
    p.add_argument("--max-tokens", type=L.int_arg(2, 1 << 24), default=MAX_TOKENS,
                   help=f"tokens sampled, train and held-out together (default {MAX_TOKENS:,})")
    p.add_argument("--regularization", type=L.float_arg(1e-6, 1e6), default=1.0,
                   help="L2 penalty strength (1/C for logistic, alpha for ridge; default 1)")
    p.add_argument("--no-control", action="store_true",
                   help="skip the random-weight control (it runs the architecture)")
    p.add_argument("--seed", type=SEED, default=0, help="sample, split and control weights")
    p.add_argument("--top", type=L.RESULTS, default=20, help="units to list (default 20)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_probe)
