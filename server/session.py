"""Per-browser-session state and the runner that keeps slow work off the event loop.

Every session (browser tab) gets its own `Session`: what the user chose (state, threshold,
padding, window, brushed span, unit) and the last results. The index and the thread pool
are shared by all sessions of a server.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from bokeh.document import Document
from tornado.ioloop import IOLoop

log = logging.getLogger("lstmsearch.server")

T = TypeVar("T")

BUSY_DELAY_MS = 150
"""Work that finishes sooner than this never shows the busy indicator."""


RELEASE_DELAY_S = 1.0
"""How long after a session closed its memory is given back: sessions closing meanwhile
share one release, and Bokeh has finished discarding them by then."""
_release_pending = False


def release_memory() -> None:
    """Give freed memory back to the operating system: collect cycles, then ask glibc's
    allocator to return its free pages (`malloc_trim`), which it otherwise keeps for reuse,
    so that the server's resident size falls back."""
    global _release_pending
    _release_pending = False
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps what it keeps
        pass


def release_memory_soon() -> None:
    """`release_memory()` RELEASE_DELAY_S from now on the current event loop, once for all
    the sessions that close until then (a full collection per closed session, 50 at once,
    held the server for seconds)."""
    global _release_pending
    if _release_pending:
        return
    _release_pending = True
    IOLoop.current().call_later(RELEASE_DELAY_S, release_memory)


@dataclass
class Session:
    """What one browser session looks at.

    Spans are half-open global token positions, like everywhere in lstmsearch.
    """

    state: str
    threshold: float
    pad_left: int = 1
    pad_right: int = 0
    sign: int = 1
    min_length: int | None = None  # matches of at least this many tokens (None: the default)
    length: int | None = None  # matches of exactly this many tokens (None: any)
    window: tuple[int, int] = (0, 0)
    span: tuple[int, int] | None = None
    focus: tuple[int, int] | None = None
    unit: int = 0
    neuron_threshold: float | None = None  # the neuron view's own (None: the unit's q99)
    track: str | None = None
    fixed_y: bool = False  # the select plot's y axis spans the state's values, not the window's
    mode: str = "match"
    pattern: Any = None
    result: Any = None
    pattern_span: tuple[int, int] | None = None
    generation: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class Runner:
    """Runs work in a thread pool and applies its result on the document's next tick.

    `submit(key, work, apply)`: `work()` runs in the pool; then `apply(result)` runs with the
    document lock held (`doc.add_next_tick_callback`, the thread-safe way in). At most one job
    per key runs at a time: a job submitted while another of its key runs waits, replacing any
    job already waiting, and the running one's result is dropped. So dragging a slider queues
    no backlog: the page shows the latest setting as soon as it is computed. While anything
    runs for longer than BUSY_DELAY_MS, `on_busy(labels)` gets the running jobs' labels (and
    `()` when all are done), so the page shows "working…" for slow work and does not flicker
    (nor spend a re-layout) for quick work. Errors go to `on_error(message)` instead of breaking the
    session.

    With `executor=None` the work runs at once, synchronously: what tests without a server use.
    """

    def __init__(
        self,
        doc: Document,
        executor: Executor | None,
        on_busy: Callable[[tuple[str, ...]], None],
        on_error: Callable[[str], None],
    ) -> None:
        self.doc = doc
        self.executor = executor
        self.on_busy = on_busy
        self.on_error = on_error
        self._running: dict[str, str] = {}  # key -> label
        self._shown = False  # whether the page shows "working…"
        self._reveal_pending = False
        self._waiting: dict[str, tuple[Callable[[], Any], Callable[[Any], None], str]] = {}
        self._error_handlers: dict[str, Callable[[str], None]] = {}
        self.closed = False

    def close(self) -> None:
        """The session is gone: forget waiting jobs and drop results of running ones."""
        self.closed = True
        self._waiting.clear()
        self._error_handlers.clear()

    @property
    def busy(self) -> bool:
        """Whether some job is running."""
        return bool(self._running)

    def submit(
        self,
        key: str,
        work: Callable[[], T],
        apply: Callable[[T], None],
        label: str | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """Run `work()` off the event loop, then `apply(result)` unless a newer `key` job came.

        An error goes to `on_error(message)` when given (a view that shows its own
        errors), else to the runner's.
        """
        label = label or key
        if self.closed:
            return
        if on_error is not None:
            self._error_handlers[key] = on_error
        else:
            self._error_handlers.pop(key, None)
        if self.executor is None:
            self._run_now(key, work, apply)
            return
        if key in self._running:
            self._waiting[key] = (work, apply, label)
            return
        self._start(key, work, apply, label)

    def later(self, callback: Callable[[], None], delay_ms: int) -> None:
        """Run `callback` (with the document lock) after `delay_ms`; at once without a pool.

        Used to send secondary updates a little after the main one, so that the page draws
        the main result first instead of working through every update before painting.
        """
        if self.executor is None:
            callback()
        elif not self.closed:
            self.doc.add_timeout_callback(callback, delay_ms)

    def _start(self, key: str, work: Callable[[], Any], apply: Callable[[Any], None],
               label: str) -> None:
        self._running[key] = label
        if self._shown:
            self.on_busy(tuple(self._running.values()))
        elif not self._reveal_pending:
            self._reveal_pending = True
            self.doc.add_timeout_callback(self._reveal, BUSY_DELAY_MS)
        started = time.perf_counter()
        future = self.executor.submit(self._unless_closed, work)
        future.add_done_callback(partial(self._done, key, apply, started))

    def _unless_closed(self, work: Callable[[], T]) -> T | None:
        """Run `work()` in the pool, unless the session closed while it waited there."""
        return None if self.closed else work()

    def _done(self, key: str, apply: Callable[[Any], None], started: float, future: Future) -> None:
        """In the pool thread: hand the result to the document's next tick (with its lock),
        or drop it when the session has closed meanwhile."""
        if self.closed:
            return
        try:
            self.doc.add_next_tick_callback(partial(self._finish, key, future, apply, started))
        except Exception:  # the document was destroyed between the check and the call
            if not self.closed:
                raise

    def _run_now(self, key: str, work: Callable[[], T], apply: Callable[[T], None]) -> None:
        try:
            result = work()
        except Exception as exc:  # shown to the user, the session goes on
            self._report(key, exc)
            return
        apply(result)

    def _reveal(self) -> None:
        """Show "working…" for work that is still running after BUSY_DELAY_MS."""
        self._reveal_pending = False
        if self._running and not self._shown:
            self._shown = True
            self.on_busy(tuple(self._running.values()))

    def _update_busy(self) -> None:
        if not self._shown:
            return
        if self._running:
            self.on_busy(tuple(self._running.values()))
        else:
            self._shown = False
            self.on_busy(())

    def _finish(self, key: str, future: Future, apply: Callable[[Any], None], started: float) -> None:
        self._running.pop(key, None)
        waiting = self._waiting.pop(key, None)
        try:
            if waiting is not None:
                self._start(key, *waiting)  # a newer request: this result is stale
                return
            try:
                result = future.result()
            except Exception as exc:
                self._report(key, exc)
                return
            try:
                apply(result)
            except Exception as exc:
                self._report(key, exc)
            log.debug("%s took %.1f ms", key, 1000 * (time.perf_counter() - started))
        finally:
            self._update_busy()

    def _report(self, key: str, exc: Exception) -> None:
        if not isinstance(exc, (ValueError, KeyError, TypeError, LookupError)):
            log.error("%s failed:\n%s", key, "".join(traceback.format_exception(exc)))
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        handler = self._error_handlers.get(key)
        if handler is not None:
            handler(str(message))
        else:
            self.on_error(f"{key}: {message}")
