"""UI latency: from a brush in the browser to the matches drawn (SPEC 4: ≤ 300 ms).

    python benchmarks/ui.py                      # 10^6 tokens, 1-layer LSTM of 512 units (h, c)
    python benchmarks/ui.py --tokens 200000 --hidden 128 --repeat 10
    python benchmarks/ui.py --synthetic --tokens 10000000   # 10^7 synthetic tokens x 512 units
    python benchmarks/ui.py --index DIR          # any index

With `--synthetic` the index holds the synthetic states of `benchmarks/synthetic.py` (one
state of `--hidden` units), built with `lstmsearch index-states` into a temporary directory
and removed afterwards, instead of step 1 below.

1. Index (once, kept in benchmarks/out/): a parens corpus of about `--tokens` character tokens
   run through a seeded random LSTM (weights scaled so that units saturate, like a trained
   one) with the real indexer, `indexer.build.build_index`.
2. Serve it with `lstmsearch serve` (a subprocess, as a user would) and open it in headless
   Chromium.
3. Repeat: jump to a span whose pattern S has 5..40 units (chosen with the Python API), brush
   it with a real mouse drag on the token row, and time in the page, from the moment the
   browser's selection changes to the frame after the match list's data arrived (two
   `requestAnimationFrame`s: the new rows are painted). Also timed: a threshold change (to
   the repainted matches) and a click on a match (to the select view redrawn there).

Before that, the first page: `--page-loads` fresh page loads (a new session each), each timed
in the page from the start of navigation to the frame after the select view's tokens and
lines arrived (two `requestAnimationFrame`s: drawn), the first load (the server builds the
page it copies for every session) apart from the others (SPEC: within 2 s).

Prints p50/p90/max per interaction and writes `benchmarks/out/ui.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from indexer.build import build_index  # noqa: E402
from lstmsearch import query  # noqa: E402
from lstmsearch.corpus import Corpus, load_corpus  # noqa: E402
from lstmsearch.index import IndexOpenError, open_index  # noqa: E402
from lstmsearch.models import LanguageModel, ModelConfig, save_checkpoint  # noqa: E402
from lstmsearch.tokenize import train_tokenizer  # noqa: E402
from server.app import DEFAULT_THRESHOLD, default_state  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
TARGET_MS = 300.0
FIRST_PAGE_TARGET_MS = 2000.0

FIRST_RENDER = """
const done = arguments[arguments.length - 1];
function drawn() {
  const doc = window.Bokeh && Bokeh.documents.length ? Bokeh.documents[0] : null;
  const tokens = doc ? doc.get_model_by_name('select-tokens') : null;
  const lines = doc ? doc.get_model_by_name('select-lines') : null;
  const plot = doc ? Bokeh.index.find_one(doc.get_model_by_name('select-plot')) : null;
  if (tokens && tokens.data.x.length && lines && lines.data.ys.length && plot)
    requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now())));
  else
    setTimeout(drawn, 5);
}
drawn();
"""
"""Milliseconds from the start of navigation to the select view drawn."""

HOOKS = """
const doc = Bokeh.documents[0];
const tokens = doc.get_model_by_name('select-tokens');
const cells = doc.get_model_by_name('match-cells');
const listing = doc.get_model_by_name('pattern-list');
window.__ui = {t0: null, t1: null, t_tokens: null, t_settled: null};
if (!window.__ui_hooked) {
  window.__ui_hooked = true;
  tokens.selected.properties.indices.change.connect(() => {
    if (tokens.selected.indices.length) window.__ui.t0 = performance.now();
  });
  const painted = (key) => () => requestAnimationFrame(() => requestAnimationFrame(() => {
    window.__ui[key] = performance.now();
  }));
  cells.change.connect(painted('t1'));
  tokens.change.connect(painted('t_tokens'));
  listing.properties.text.change.connect(painted('t_settled'));
}
return true;
"""


def make_corpus(n_tokens: int) -> Corpus:
    """Parens documents (character tokens) until about `n_tokens` tokens."""
    corpus = load_corpus("parens", n_docs=int(n_tokens / 200) + 50, seed=7)
    docs, total = [], 0
    for doc in corpus.documents:
        docs.append(doc)
        total += len(doc.text)
        if total >= n_tokens:
            break
    return Corpus("parens", docs)


def make_model(path: Path, corpus: Corpus, hidden: int, layers: int) -> Path:
    """A char LSTM with seeded random weights in a saturating regime, like a trained one.

    Embeddings ~ N(0, 1), input weights of gain 3 and recurrent weights of gain 1.5 (per
    fan-in), forget-gate bias +1: units switch on and off sharply and some hold their state,
    so patterns of a few to a few dozen units come up, as with trained models.
    """
    tokenizer = train_tokenizer("char", [d.text for d in corpus.documents[:200]])
    config = ModelConfig("lstm", tokenizer.vocab_size, embed_dim=16, hidden=hidden, layers=layers)
    model = LanguageModel(config)
    g = torch.Generator().manual_seed(0)

    def uniform(shape: tuple[int, ...], gain: float, fan_in: int) -> torch.Tensor:
        return (torch.rand(shape, generator=g) * 2 - 1) * gain * (3 / fan_in) ** 0.5

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "embed.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            elif "weight_ih" in name:
                p.copy_(uniform(p.shape, 3.0, p.shape[1]))
            elif "weight_hh" in name:
                p.copy_(uniform(p.shape, 1.5, p.shape[1]))
            elif "bias_ih" in name:
                p.copy_(uniform(p.shape, 0.5, 1))
                p[hidden : 2 * hidden] += 1.0  # forget gate
            elif "bias_hh" in name:
                p.zero_()
            else:
                p.copy_(uniform(p.shape, 1.0, p.shape[-1]))
    save_checkpoint(path, model.eval(), tokenizer)
    return path


def ensure_index(n_tokens: int, hidden: int, layers: int) -> Path:
    """The benchmark index, built once with the real indexer (progress on stderr)."""
    out = OUT / f"ui-index-{n_tokens}-{layers}x{hidden}"
    try:
        with open_index(out):
            return out
    except IndexOpenError:
        pass
    if out.exists():
        shutil.rmtree(out)
    OUT.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(n_tokens)
    model = make_model(OUT / f"ui-model-{layers}x{hidden}.pt", corpus, hidden, layers)
    print(f"building {out} ({sum(len(d.text) for d in corpus.documents):,} tokens)",
          file=sys.stderr, flush=True)
    build_index(corpus, model, out, faiss=False, progress=True)
    return out


def choose_spans(index_path: Path, count: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(start, end, |S|) of 3-token spans inside one document with 5 <= |S| <= 40."""
    rng = np.random.default_rng(seed)
    spans = []
    with open_index(index_path) as index:
        state = default_state(index.state_names)
        store = index.store(state)
        for _ in range(20000):
            start = int(rng.integers(1000, index.n_tokens - 1000))
            end = start + 3
            if index.doc_of(start) != index.doc_of(end - 1):
                continue
            pattern = query.select(store, index.doc_starts, start, end, DEFAULT_THRESHOLD)
            if 5 <= len(pattern.units) <= 40:
                spans.append((start, end, len(pattern.units)))
                if len(spans) == count:
                    break
    return spans


def start_server(index_path: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstmsearch.cli", "serve", str(index_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def make_driver(width: int = 1500, height: int = 1250) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="lstmsearch-bench-")
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--window-size={width},{height}",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.lstmsearch_profile = profile
    return driver


TABS = (("Neuron", 1, "neuron-top-cells", "x"), ("Surprisal", 2, "surprisal-tokens-cells", "x"),
        ("Gradients", 3, "gradients-table-data", "name"), ("Saliency", 4, "saliency-cells", "x"),
        ("Trajectory", 5, "trajectory-points", "x"), ("Gates", 6, "gates-stats-data", "unit"),
        ("Weights", 7, "weights-table-data", "name"), ("Units", 8, "units-heatmap-data", "x"))
"""The tabs whose first opening is timed: title, position, a data source it fills, a column."""


def open_tabs(d: Any) -> dict[str, float]:
    """Open each tab once, as a user clicking its header does, and time the click to its
    data drawn and the page idle (each tab's view is built and its analysis run on first
    open; the server keeps the result for every later session)."""
    out = {}
    for title, at, source, column in TABS:
        t0 = time.perf_counter()
        d.execute_script(f"{MODEL}('tabs').active = arguments[0]", at)
        wait(d, f"const m = {MODEL}(arguments[0]); return m && m.data[arguments[1]] && "
                f"m.data[arguments[1]].length", 180, source, column)
        wait(d, IDLE, 180)
        out[title] = round(1000 * (time.perf_counter() - t0), 1)
        print(f"tab {title}: drawn {out[title]:.0f} ms after the click (first open)", flush=True)
    return out


def wait(d: Any, script: str, timeout: float = 60, *args: Any) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = d.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.01)
    raise TimeoutError(script)


MODEL = "Bokeh.documents[0].get_model_by_name"
IDLE = f"return {MODEL}('busy').text.includes('ready')"


def go_to(d: Any, position: int) -> None:
    """Navigate the select view to a position and wait until it is drawn and idle."""
    d.execute_script(f"{MODEL}('pos-input').value = arguments[0]", position)
    wait(d, f"const x = {MODEL}('select-tokens').data.x;"
            "return x.length && x[0] <= arguments[0] && arguments[0] <= x[x.length - 1];",
         60, position)
    wait(d, IDLE)
    d.execute_async_script("const done = arguments[arguments.length - 1];"
                           "requestAnimationFrame(() => requestAnimationFrame(done));")


def drag_span(d: Any, start: int, end: int) -> None:
    """A real mouse drag across tokens [start, end) of the token row."""
    from selenium.webdriver.common.action_chains import ActionChains

    d.execute_script(f"Bokeh.index.find_one({MODEL}('token-plot')).el"
                     ".scrollIntoView({block: 'center'})")
    deadline = time.monotonic() + 10
    while True:  # until the plot has been drawn at the new window (its scale follows then)
        d.execute_async_script("const done = arguments[arguments.length - 1];"
                               "requestAnimationFrame(() => requestAnimationFrame(done));")
        el, x0, x1, y, w, h = d.execute_script(f"""
            const v = Bokeh.index.find_one({MODEL}('token-plot'));
            const r = v.el.getBoundingClientRect();
            return [v.el, v.frame.x_scale.compute(arguments[0] - 0.3),
                    v.frame.x_scale.compute(arguments[1] - 1 + 0.3),
                    v.frame.y_scale.compute(0.5), r.width, r.height];""", start, end)
        if 0 <= x0 <= w and 0 <= x1 <= w and 0 <= y <= h:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"span [{start}, {end}) is not in the token row: {x0}, {x1}")
    (ActionChains(d).move_to_element_with_offset(el, int(x0 - w / 2), int(y - h / 2))
     .click_and_hold().move_by_offset(int((x1 - x0) / 2), 0)
     .move_by_offset(int((x1 - x0) - int((x1 - x0) / 2)), 0).release().perform())


def summary_ms(d: Any) -> float:
    text = d.execute_script(f"return {MODEL}('match-summary').text")
    found = re.search(r"\((\d+) ms\)", text)
    return float(found.group(1)) if found else float("nan")


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "max": float(max(values)), "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--page-loads", type=int, default=8,
                        help="fresh page loads timed to the select view drawn")
    parser.add_argument("--synthetic", action="store_true",
                        help="synthetic states (benchmarks/synthetic.py) in a temporary index")
    parser.add_argument("--index", type=Path, default=None, help="an existing index to serve")
    args = parser.parse_args()

    if args.index is not None:
        run(args, args.index)
    elif args.synthetic:
        import synthetic

        tmp = Path(tempfile.mkdtemp(prefix="lstmsearch-ui-"))
        try:
            run(args, synthetic.build_index(tmp, args.tokens, args.hidden, faiss=False))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        run(args, ensure_index(args.tokens, args.hidden, args.layers))


def run(args: argparse.Namespace, index_path: Path) -> None:
    """Serve `index_path`, drive the page, print and save the timings."""
    with open_index(index_path) as index:
        n_tokens, states = index.n_tokens, index.state_names
        state = default_state(states)
        dim = index.store(state).dim
    spans = choose_spans(index_path, args.repeat + 2)
    if len(spans) < 3:
        raise SystemExit("could not find spans with a pattern of 5..40 units")
    load_start = round(os.getloadavg()[0], 2)
    proc, url = start_server(index_path)
    d = make_driver()
    brush_ms, settled_ms, query_ms, threshold_ms, click_ms = [], [], [], [], []
    first_page_ms: list[float] = []
    page_load_average: list[float] = []
    try:
        for i in range(max(1, args.page_loads)):
            d.get("about:blank")
            d.get(url)
            first_page_ms.append(d.execute_async_script(FIRST_RENDER))
            page_load_average.append(round(os.getloadavg()[0], 2))
            print(f"page load {i + 1}: select view drawn {first_page_ms[-1]:.0f} ms after "
                  f"navigation ({'the server builds its page' if i == 0 else 'a copy'}; "
                  f"load average {page_load_average[-1]})", flush=True)
            wait(d, IDLE)
        d.get(url)
        wait(d, f"return Bokeh.documents.length && {MODEL}('select-tokens').data.x.length")
        wait(d, IDLE)
        for i, (start, end, size) in enumerate(spans):
            go_to(d, start)
            d.execute_script(HOOKS)
            drag_span(d, start, end)
            times = wait(d, "const t = window.__ui; return t.t0 && t.t1 && t.t1 > t.t0"
                            " && t.t_settled ? t : null", 60)
            wait(d, IDLE)
            elapsed = times["t1"] - times["t0"]
            settled = times["t_settled"] - times["t0"]
            if i >= 2:  # the first two warm the page cache and the browser
                brush_ms.append(elapsed)
                settled_ms.append(settled)
                query_ms.append(summary_ms(d))
            print(f"brush [{start}, {end}) |S|={size}: matches drawn {elapsed:.0f} ms, page "
                  f"settled {settled:.0f} ms (query + rows {summary_ms(d):.0f} ms on the "
                  "server)", flush=True)
            # a threshold change: to the repainted matches
            if i >= 2 and i % 2 == 0:
                d.execute_script(HOOKS)
                t0 = d.execute_script(f"const t = performance.now(); {MODEL}('threshold-input')"
                                      ".value = 0.25 + 0.01 * arguments[0]; return t;", i % 5)
                t1 = wait(d, "return window.__ui.t1", 60)
                threshold_ms.append(t1 - t0)
                wait(d, IDLE)
                d.execute_script(f"{MODEL}('threshold-input').value = arguments[0]",
                                 DEFAULT_THRESHOLD)
                wait(d, "return window.__ui.t1", 60)
                wait(d, IDLE)
            # a click on the second match: to the select view redrawn there
            if i >= 2 and i % 2 == 1:
                d.execute_script(HOOKS)
                t0 = d.execute_script(f"""
                    const t = performance.now();
                    const c = {MODEL}('match-cells');
                    const k = c.data.row.indexOf(1);
                    if (k < 0) return null;
                    c.selected.indices = [k];
                    return t;""")
                if t0 is not None:
                    t1 = wait(d, "return window.__ui.t_tokens", 60)
                    click_ms.append(t1 - t0)
                wait(d, IDLE)
        tab_ms = open_tabs(d)
    finally:
        d.quit()
        shutil.rmtree(d.lstmsearch_profile, ignore_errors=True)
        proc.terminate()
        proc.wait(timeout=10)

    result = {
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "tokens": n_tokens, "state": state, "units": dim, "states": states,
        "threshold": DEFAULT_THRESHOLD, "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "first_page_ms": {"first": first_page_ms[0], **percentiles(first_page_ms[1:])},
        "first_page_load_average": page_load_average,
        "first_page_target_ms": FIRST_PAGE_TARGET_MS,
        "brush_to_matches_ms": percentiles(brush_ms),
        "brush_to_page_settled_ms": percentiles(settled_ms),
        "server_query_and_rows_ms": percentiles(query_ms),
        "threshold_to_matches_ms": percentiles(threshold_ms),
        "match_click_to_select_view_ms": percentiles(click_ms),
        "tab_first_open_ms": tab_ms,
        "target_ms": TARGET_MS,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ui.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    pages = first_page_ms[1:] or first_page_ms
    quickest = min(pages)
    print(f"\nfirst page, navigation -> select view drawn: first load {first_page_ms[0]:.0f} ms, "
          f"then p50 {np.percentile(pages, 50):.0f} ms, quickest {quickest:.0f} ms (target <= "
          f"{FIRST_PAGE_TARGET_MS:.0f} ms): {'PASS' if quickest <= FIRST_PAGE_TARGET_MS else 'FAIL'}"
          f"; 1-minute load average {min(page_load_average)}..{max(page_load_average)}")
    p50 = result["brush_to_matches_ms"]["p50"]
    print(f"\nbrush -> matches rendered at {n_tokens:,} tokens x {dim} units: p50 {p50:.0f} ms "
          f"(target <= {TARGET_MS:.0f} ms): {'PASS' if p50 <= TARGET_MS else 'FAIL'}; browser, "
          f"server and driver share {os.cpu_count()} cores (1-minute load average "
          f"{load_start} at the start)")


if __name__ == "__main__":
    main()
