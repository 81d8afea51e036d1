"""The web UI, served from Python: `serve(index)` and `demo()`.

    serve("my-index")                 # http://127.0.0.1:5006/ until Ctrl-C
    demo()                            # build the bundled parens index once, then serve it

An embedded Bokeh server (no separate `bokeh serve` step) runs the app in `server/`. The
index is opened once per server and shared, read-only, by every browser session; queries run
in a thread pool shared by all sessions, so a slow query never freezes another page.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lstmsearch import kernels

DEFAULT_PORT = 5006
DEFAULT_HOST = "127.0.0.1"
QUERY_THREADS = 4
"""Worker threads shared by all sessions of a server (numpy, DuckDB and torch release the
GIL, so they run side by side)."""
SESSION_LINGER_MS = 30_000
MAX_PORT = 65535
REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "data" / "models"

log = logging.getLogger("lstmsearch.serve")


@dataclass(frozen=True)
class DemoSpec:
    """A bundled demo: which corpus, which shipped model, how many documents."""

    name: str
    corpus: str
    models: tuple[str, ...]  # candidate file names in data/models, first present wins
    limit: int | None
    about: str


DEMOS: dict[str, DemoSpec] = {
    "parens": DemoSpec(
        "parens", "parens", ("parens-lstm.pt",), None,
        "nested brackets with a depth track: look for units that count depth",
    ),
    "parens-attention": DemoSpec(
        "parens-attention", "parens", ("parens-attention-lstm.pt",), None,
        "nested brackets, a model with attention: the Attention tab shows where it looks",
    ),
    "english": DemoSpec(
        "english", "english", ("english-word-lstm.pt",), None,
        "English prose (the Python reference manual), word-level LSTM",
    ),
    "python-stdlib": DemoSpec(
        "python-stdlib", "python-stdlib", ("stdlib-char-lstm.pt", "python-stdlib-lstm.pt"), 20,
        "Python source, character-level LSTM: quote, indent and bracket cells",
    ),
}
DEFAULT_DEMO = "parens"


def cache_dir() -> Path:
    """Where demo indexes are kept: `$LSTMSEARCH_CACHE`, else `~/.cache/lstmsearch`."""
    env = os.environ.get("LSTMSEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lstmsearch"


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port(port: object) -> int:
    """A TCP port number 0..65535 (0: any free port), or a one-line error naming it."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= MAX_PORT:
        raise ValueError(f"port must be a whole number from 0 to {MAX_PORT} (0: any free "
                         f"port), got {port!r}")
    return port


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    return host in ("127.0.0.1", "localhost", "::1")


def app_handler(index: Any, executor: ThreadPoolExecutor) -> Callable[[Any], None]:
    """The Bokeh `modify_doc` function: one app per browser session over the shared index."""
    from server.app import build
    from server.fetch import Shared

    shared = index if isinstance(index, Shared) else Shared(index)

    def make_document(doc: Any) -> None:
        build(doc, shared, executor)

    return make_document


def make_server(
    index: str | os.PathLike | Any,
    *,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    allow_origin: list[str] | None = None,
    threads: int = QUERY_THREADS,
    io_loop: Any = None,
    session_linger_ms: int = SESSION_LINGER_MS,
    compare: str | os.PathLike | Any = None,
) -> Any:
    """A started-but-not-running Bokeh `Server` for `index` (a path or an open `Index`);
    with `compare` (another index of the same corpus and tokens) its Compare tab sets the
    two models side by side.

    `port=0` picks a free port (see `server.port`). Only connections from `host` itself are
    accepted as websocket origins unless `allow_origin` lists more (e.g. a proxy's name).
    Every session shares the open index, its caches and one pool of `threads` workers; a
    session whose page closed is discarded `session_linger_ms` later (a reload within that
    time gets it back) and its memory freed.
    """
    check_port(port)
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server
    from bokeh.settings import settings

    from server.bokeh_defaults import cache_defaults

    # Bokeh validates every new session's document (0.1 s of Python per session, as much as
    # copying the page): the page is validated once, when the server builds it (server.app)
    settings.perform_document_validation.set_value(False)
    cache_defaults()  # property defaults worked out once per class (server/bokeh_defaults.py)

    from lstmsearch.index import Index, open_index

    if not isinstance(index, Index):
        index = open_index(index)
    other = None
    if compare is not None:
        from lstmsearch.compare import check_comparable

        other = compare if isinstance(compare, Index) else open_index(compare)
        check_comparable(index, other)  # refused before anything listens
    if port == 0:
        try:
            port = free_port(host)
        except OSError as exc:  # a host that is not this machine's
            raise OSError(exc.errno, exc.strerror or str(exc), host) from exc
    from server.fetch import Shared

    shared = Shared(index, other)  # opened once per server: every session shares them
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lstmsearch-query")
    # the compiled query kernels, loaded (or compiled) while the first page loads, and the
    # quantiles of the state it shows (its threshold slider's scale)
    from server.app import default_state
    from server.downloads import DownloadHandler

    executor.submit(kernels.warm_up)
    executor.submit(shared.scale, default_state(shared.state_names))
    origins = [f"{host}:{port}"]
    if is_loopback(host):
        origins += [f"localhost:{port}", f"127.0.0.1:{port}"]
    origins += list(allow_origin or [])
    application = Application(FunctionHandler(app_handler(shared, executor)))
    downloads = (r"/download", DownloadHandler,
                 {"shared": shared, "executor": executor,
                  "default_state": default_state(shared.state_names)})
    try:
        server = Server(
            {"/": application}, port=port, address=host, allow_websocket_origin=origins,
            io_loop=io_loop, extra_patterns=[downloads],
            check_unused_sessions_milliseconds=max(100, min(10_000, session_linger_ms // 2)),
            unused_session_lifetime_milliseconds=session_linger_ms,
        )
    except OSError as exc:  # a port in use, a host that is not this machine's
        executor.shutdown(wait=False)
        raise OSError(exc.errno, exc.strerror or str(exc), f"{host}:{port}") from exc
    # the page every session copies, built as soon as the server runs rather than when the
    # first browser asks for it
    from server.app import page_prototype

    server.io_loop.add_callback(page_prototype, shared)
    server.lstmsearch_index = index
    server.lstmsearch_shared = shared
    server.lstmsearch_executor = executor
    return server


def url_of(server: Any, host: str = DEFAULT_HOST) -> str:
    """The address to open in a browser."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{server.port}/"


def serve(
    index_path: str | os.PathLike,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    open_browser: bool = False,
    *,
    allow_origin: list[str] | None = None,
    on_ready: Callable[[str], None] | None = None,
    compare: str | os.PathLike | None = None,
) -> None:
    """Serve the web UI for the index at `index_path` until interrupted (Ctrl-C); with
    `compare`, a second index of the same corpus for the Compare tab."""
    check_port(port)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = make_server(index_path, port=port, host=host, allow_origin=allow_origin,
                         compare=compare)
    url = url_of(server, host)
    index = server.lstmsearch_index
    if server.lstmsearch_shared.other is not None:
        print(f"lstmsearch: comparing with {server.lstmsearch_shared.other.path} (the Compare "
              "tab)", flush=True)
    print(f"lstmsearch: serving {index.path} ({index.n_docs:,} documents, "
          f"{index.n_tokens:,} tokens) at {url}", flush=True)
    if not is_loopback(host):
        print(f"lstmsearch: warning: listening on {host}, reachable from other machines",
              file=sys.stderr, flush=True)
    print("lstmsearch: press Ctrl-C to stop", flush=True)
    if on_ready is not None:
        on_ready(url)
    server.start()
    if open_browser:
        server.io_loop.add_callback(server.show, "/")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        print("\nlstmsearch: stopped", flush=True)
    finally:
        server.stop()
        server.lstmsearch_executor.shutdown(wait=False, cancel_futures=True)


# --- the demo ------------------------------------------------------------------------------


def demo_model(spec: DemoSpec) -> Path:
    """The shipped model file of a demo; a clear error when it is not there."""
    for name in spec.models:
        path = MODELS_DIR / name
        if path.is_file():
            return path
    shipped = sorted(p.name for p in MODELS_DIR.glob("*.pt")) if MODELS_DIR.is_dir() else []
    raise FileNotFoundError(
        f"the {spec.name} demo needs the shipped model {spec.models[0]} in {MODELS_DIR}, "
        f"which is missing (shipped: {', '.join(shipped) or 'none'}); train it with "
        f"`bash data/train_models.sh {spec.name}` or pick another demo"
    )


def demo_index(
    name: str = DEFAULT_DEMO,
    *,
    cache: str | os.PathLike | None = None,
    rebuild: bool = False,
    progress: bool | None = True,
    limit: int | None = None,
) -> Path:
    """The demo index of `name`, built on first use (with a progress bar) and cached.

    The cached index is reused while it is complete, was built from the same shipped model
    (checked by sha256) and stores the tokens' surprisal; an interrupted build is resumed;
    otherwise it is rebuilt.
    """
    from indexer.build import build_index
    from lstmsearch.index import IncompleteIndexError, IndexOpenError, open_index
    from lstmsearch.models import file_sha256

    if name not in DEMOS:
        raise ValueError(f"unknown demo {name!r}; choose one of {', '.join(DEMOS)}")
    spec = DEMOS[name]
    model = demo_model(spec)
    limit = spec.limit if limit is None else limit
    root = Path(cache) if cache is not None else cache_dir()
    out = root / f"{name}-index" if limit is None else root / f"{name}-{limit}-index"
    sha = file_sha256(model)
    if out.exists() and not rebuild:
        try:
            with open_index(out) as index:
                same_model = index.meta.get("model_sha256") == sha
                if same_model and index.meta.get("surprisal") == "true":
                    return out
            why = "changed" if not same_model else "index predates stored surprisal"
            print(f"lstmsearch: the cached demo index is out of date ({model.name}: {why}); "
                  f"rebuilding {out}", file=sys.stderr, flush=True)
        except IncompleteIndexError:
            print(f"lstmsearch: resuming the interrupted demo build in {out}", file=sys.stderr,
                  flush=True)
            try:
                build_index(None, None, out, resume=True, progress=progress)
                return out
            except Exception as exc:  # a resume that cannot go on: start over
                print(f"lstmsearch: cannot resume ({exc}); rebuilding", file=sys.stderr,
                      flush=True)
        except IndexOpenError as exc:
            print(f"lstmsearch: cached demo index unusable ({exc}); rebuilding",
                  file=sys.stderr, flush=True)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"lstmsearch: building the {name} demo index (once): corpus {spec.corpus}"
          f"{f', first {limit} documents' if limit else ''}, model {model.name} -> {out}",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    result = build_index(spec.corpus, model, out, limit=limit, progress=progress)
    print(f"lstmsearch: {result.summary()} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
          flush=True)
    return out


def demo(
    name: str = DEFAULT_DEMO,
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    open_browser: bool = False,
    *,
    cache: str | os.PathLike | None = None,
    rebuild: bool = False,
    limit: int | None = None,
) -> None:
    """Build (once) and serve a bundled demo index: `parens`, `english` or `python-stdlib`."""
    path = demo_index(name, cache=cache, rebuild=rebuild, limit=limit)
    print(f"lstmsearch: demo {name}: {DEMOS[name].about}", flush=True)
    serve(path, port=port, host=host, open_browser=open_browser)
