"""Take the README's screenshots of the views on the bundled demo indexes.

    .venv/bin/python scripts/screenshots.py [--out docs] [--demo parens]

Builds the demo indexes when missing (`lstmsearch demo` does the same), serves each with
`lstmsearch serve`, drives headless Chromium through the views like a user (tab clicks,
widget values) and saves one PNG per view. Needs the test set-up (selenium, chromium).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import (  # noqa: E402
    load,
    make_driver,
    model_value,
    open_tab,
    quit_driver,
    rows_in,
    screenshot,
    set_value,
    start_server,
    stop_server,
    wait_for,
    wait_idle,
)

from lstmsearch.serve import demo_index  # noqa: E402


def show(d: Any, tab: str, source: str, column: str = "x") -> None:
    """Open a tab and wait until its view has drawn its data."""
    open_tab(d, tab)
    wait_for(d, lambda d: rows_in(d, source, column), f"the {tab} view", timeout=120)
    wait_idle(d)


def save(d: Any, out: Path, name: str, top: bool = True) -> None:
    path = screenshot(d, name, top=top)
    (out / name).write_bytes(path.read_bytes())
    print(f"wrote {out / name}")


SEARCH = "?view=select&layer=0&kind=c&span={start}-{end}&threshold=0.2&sign=1&padding=1-0"
"""The parens demo's pattern search as an address: the first "(((" on layers.0.c, θ = 0.2."""
DEPTH_UNIT = "?view=neuron&layer=0&kind=c&span={start}-{end}&threshold=0.2&sign=-1&unit=51"
"""Its depth unit (51, which falls as the nesting deepens) in the neuron view."""


def parens(d: Any, url: str, out: Path, index_path: Path) -> None:
    """The parens demo: the search for "(((", depth unit 51 of layers.0.c, the analyses."""
    from lstmsearch.index import open_index

    with open_index(index_path) as index:
        found = index.find("(((", limit=1)[0]
    span = {"start": found.start, "end": found.end}
    load(d, url + SEARCH.format(**span))
    wait_for(d, lambda d: rows_in(d, "match-cells"), "the matches of (((")
    wait_idle(d)
    save(d, out, "select-view.png")
    d.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    save(d, out, "match-view.png", top=False)
    load(d, url + DEPTH_UNIT.format(**span))
    wait_for(d, lambda d: rows_in(d, "neuron-top-cells"), "unit 51")
    wait_idle(d)
    save(d, out, "neuron-view.png")
    load(d, url)
    set_value(d, "state-select", "layers.0.c")
    set_value(d, "pos-input", 1200)
    wait_idle(d)
    show(d, "Gradients", "gradients-table-data", "name")
    save(d, out, "gradients-view.png")
    show(d, "Saliency", "saliency-cells")
    save(d, out, "saliency-view.png")
    show(d, "Trajectory", "trajectory-points")  # built on first open: then pick its span
    set_value(d, "trajectory-span", "document")
    wait_for(d, lambda d: rows_in(d, "trajectory-points") > 64, "the document's path", 120)
    wait_idle(d)
    save(d, out, "trajectory-view.png")
    open_tab(d, "Gates")
    wait_for(d, lambda d: "units" in (model_value(d, "gates-info", "m.text") or ""),
             "the gates view")
    set_value(d, "gates-units", "51")
    wait_for(d, lambda d: "units 51," in (model_value(d, "gates-info", "m.text") or ""),
             "unit 51's gates")
    wait_idle(d)
    save(d, out, "gates-view.png")
    show(d, "Weights", "weights-table-data", "name")
    save(d, out, "weights-view.png")
    show(d, "Units", "units-heatmap-data")
    save(d, out, "units-view.png")


def stdlib(d: Any, url: str, out: Path, index_path: Path) -> None:
    """The Python standard library demo: where the character model fails."""
    import numpy as np

    from lstmsearch.index import SURPRISAL_TRACK, open_index

    with open_index(index_path) as index:
        worst = int(np.nanargmax(index.track(SURPRISAL_TRACK)))
    load(d, url)
    show(d, "Surprisal", "surprisal-tokens-cells")
    save(d, out, "surprisal-view.png")
    open_tab(d, "Select & match")
    set_value(d, "pos-input", worst)
    wait_for(d, lambda d: model_value(d, "focus-box", "m.visible"), "the worst token")
    wait_idle(d)
    save(d, out, "select-surprisal.png")


def parens_attention(d: Any, url: str, out: Path, index_path: Path) -> None:
    """The parens model with attention: where a window of brackets looks."""
    load(d, url)
    set_value(d, "pos-input", 440)
    wait_idle(d)
    save(d, out, "select-attention.png")
    show(d, "Attention", "attention-cells")
    save(d, out, "attention-view.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs")
    parser.add_argument("--demo", choices=("parens", "python-stdlib", "parens-attention"),
                        action="append",
                        help="only this demo's screenshots (again for more)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, take in (("parens", parens), ("python-stdlib", stdlib),
                       ("parens-attention", parens_attention)):
        if args.demo and name not in args.demo:
            continue
        index_path = demo_index(name)
        proc, url = start_server(index_path)
        d = make_driver()
        try:
            take(d, url, out, index_path)
        finally:
            quit_driver(d)
            stop_server(proc)


if __name__ == "__main__":
    main()
