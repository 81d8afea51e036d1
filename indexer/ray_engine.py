"""Ray Data as the build engine: the same stages as the local engine, on a cluster.

    build_with_ray("corpus.parquet", "model.pt", "/shared/idx", workers=4, gpus_per_worker=1)
    build_with_ray("more.jsonl", None, "/shared/idx", append=True, address="head:6379")

The stages, as in `indexer.build`:

1. read documents: the corpus becomes a Ray Dataset (a Parquet file through Ray's own
   streaming reader; text files and JSONL through the corpus module's readers in Ray tasks;
   a bundled corpus is generated on the driver);
2. tokenize: `map_batches` with the index's tokenizer, order preserved, so every document
   gets the same number and the same global positions as in a local build;
3. plan segments on the driver from the token counts (`plan_segments`, the local engine's
   sizes);
4. extract and write: `map_batches` over an actor pool (one model per actor, on its GPU when
   it has one); each task writes one segment directory into the index directory with
   `SegmentWriter` and returns its description;
5. commit: the driver alone lists each returned segment in the manifest, then merges the
   statistics and publishes (`Job.publish`).

Every worker must reach the index directory (a shared file system), and for a new build the
model file; the driver checks both on every node before it writes anything. A killed actor
is restarted by Ray and its task run again: the half-written `seg-N.tmp` is rewritten, and
only segments returned to the driver are ever listed. A killed driver leaves listed segments
and an unfinished plan that `--resume` (with either engine) completes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.build import (
    BuildResult,
    Job,
    add_computed_tracks,
    at_tokens,
    choose_tracks,
    claim_new,
    gather_block_tracks,
    open_complete,
    read_corpus,
    start_over,
)
from indexer.nearest import load_codebooks
from indexer.segment import (
    FaissInfo,
    PlannedDoc,
    SegmentFile,
    SegmentPlan,
    SegmentWriter,
    WrittenSegment,
)
from indexer.writer import BUILD_DIR, LOCK_FILE, BuildError, IndexWriter
from lstmsearch.corpus import (
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    Corpus,
    CorpusError,
    CorpusNotFoundError,
    _add_record_text,
    _add_text_file,
    _Collector,
    _load_jsonl,
    _walk_files,
    bundled_names,
)
from lstmsearch.extract import iter_states, state_names
from lstmsearch.index import MODEL_FILE, SURPRISAL_TRACK
from lstmsearch.models import LoadedModel, file_sha256, load_model
from lstmsearch.progress import progress_bar
from lstmsearch.tokenize import Tokenizer

INSTALL = "pip install 'lstmsearch[ray]'"
TOKENIZE_BATCH = 256
"""Documents per tokenize task."""
RETRIES = 3
"""Times Ray restarts a dead actor and runs its task again before the build fails."""
CHECK_TIMEOUT = 120.0
"""Seconds to wait for the per-node checks (a busy cluster may queue them)."""
CRASH_ONCE_ENV = "LSTMSEARCH_RAY_CRASH_ONCE"
"""Fault test: a marker path; the first actor task that finds it missing creates it and
exits its process in the middle of writing a segment (Ray restarts the actor)."""
CHECK_ADDRESS_SECONDS = 5.0


# --- Ray itself --------------------------------------------------------------------------


def import_ray() -> Any:
    """The `ray` module with Ray Data, or a one-line error naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BuildError(f"--engine ray needs Ray Data, which is not installed: {INSTALL}") from None
    return ray


def check_address(address: str) -> None:
    """Fail fast, naming the address, when nothing listens at a host:port cluster address."""
    if address in ("auto", "local"):
        return
    where = address.split("://", 1)[-1]
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit():
        raise BuildError(f"Ray cluster address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CHECK_ADDRESS_SECONDS):
            pass
    except OSError as exc:
        raise BuildError(f"cannot reach the Ray cluster at {address}: "
                         f"{exc.strerror or exc}") from None


@dataclass
class Runtime:
    """A connection to Ray: this process's own local runtime, or a cluster at `address`."""

    ray: Any
    started: bool  # whether we started it (and so shut it down at the end)

    def resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def connect(address: str | None, workers: int | None) -> Runtime:
    """Ray as given: the runtime already initialised in this process, the cluster at
    `address`, or a new local runtime on this machine."""
    if address is not None:
        check_address(address)
    ray = import_ray()
    quiet_ray()
    if ray.is_initialized():
        return Runtime(ray, started=False)
    try:
        if address is not None:
            with stderr_silenced():  # Ray's retries print a line a second while they wait
                ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            cores = os.cpu_count() or 1
            ray.init(num_cpus=max(cores, workers or 1), object_store_memory=LOCAL_OBJECT_STORE,
                     include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except Exception as exc:  # Ray raises many kinds (ConnectionError, RuntimeError, ...)
        where = f"join the Ray cluster at {address}" if address else "start a local Ray runtime"
        raise BuildError(f"cannot {where}: {one_line(exc)}") from None
    return Runtime(ray, started=True)


@contextmanager
def stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a while (Ray's C++ side writes to it directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


LOCAL_OBJECT_STORE = 500 * 1024**2
"""Bytes of shared memory for a local runtime's object store (Ray spills beyond it)."""


def quiet_ray() -> None:
    """Ray's own messages to warnings and errors; this command prints its own progress."""
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # Ray Data resets its loggers per run
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def data_context(ray: Any, progress: bool) -> None:
    """Ordered execution (documents keep their order, so positions are deterministic)."""
    quiet_ray()  # again: `ray.init` sets up Ray's loggers afresh
    with warnings.catch_warnings():  # Ray's notes on its own renamed settings
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    for name, value in (("enable_progress_bars", progress),
                        ("print_on_execution_start", False)):
        if hasattr(ctx, name):
            setattr(ctx, name, value)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (Ray's carry whole remote tracebacks)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- packing documents into rows ---------------------------------------------------------


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as `.npz` bytes (read back without pickle)."""
    if not arrays:
        return b""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def unpack_arrays(data: bytes) -> dict[str, np.ndarray]:
    if not data:
        return {}
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def pack_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as UTF-8 bytes and end offsets (surrogates kept as they are)."""
    encoded = [v.encode("utf-8", "surrogatepass") for v in values]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), ends


def unpack_strings(data: np.ndarray, ends: np.ndarray) -> list[str]:
    raw = data.tobytes()
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [raw[a:b].decode("utf-8", "surrogatepass") for a, b in zip(starts, ends, strict=True)]


def pack_docs(docs: Sequence[PlannedDoc]) -> bytes:
    """The documents of one segment as one `.npz` blob."""
    names, name_ends = pack_strings([d.name for d in docs])
    texts, text_ends = pack_strings([d.text for d in docs])
    arrays = {
        "names": names, "name_ends": name_ends, "texts": texts, "text_ends": text_ends,
        "lengths": np.array([len(d) for d in docs], dtype=np.int64),
        "ids": np.concatenate([d.ids for d in docs]) if docs else np.zeros(0, np.int32),
        "starts": np.concatenate([d.starts for d in docs]) if docs else np.zeros(0, np.int64),
        "ends": np.concatenate([d.ends for d in docs]) if docs else np.zeros(0, np.int64),
    }
    for number, track in enumerate(sorted({t for d in docs for t in d.tracks})):
        having = [j for j, d in enumerate(docs) if track in d.tracks]
        arrays[f"track{number}_name"] = np.frombuffer(track.encode(), dtype=np.uint8)
        arrays[f"track{number}_docs"] = np.array(having, dtype=np.int64)
        arrays[f"track{number}_values"] = np.concatenate([docs[j].tracks[track] for j in having])
    return pack_arrays(arrays)


def unpack_docs(data: bytes) -> list[PlannedDoc]:
    a = unpack_arrays(data)
    names = unpack_strings(a["names"], a["name_ends"])
    texts = unpack_strings(a["texts"], a["text_ends"])
    lengths = a["lengths"]
    cuts = np.cumsum(lengths)[:-1]
    ids, starts, ends = (np.split(a[k], cuts) if len(lengths) else []
                         for k in ("ids", "starts", "ends"))
    tracks: list[dict[str, np.ndarray]] = [{} for _ in names]
    number = 0
    while f"track{number}_name" in a:
        track = a[f"track{number}_name"].tobytes().decode()
        having = a[f"track{number}_docs"]
        values = np.split(a[f"track{number}_values"], np.cumsum(lengths[having])[:-1])
        for j, v in zip(having, values, strict=True):
            tracks[int(j)][track] = v
        number += 1
    return [PlannedDoc(n, t, i, s, e, tr)
            for n, t, i, s, e, tr in zip(names, texts, ids, starts, ends, tracks, strict=True)]


def arrow_table(columns: dict[str, list]) -> Any:
    import pyarrow as pa

    types = {"name": pa.large_string(), "text": pa.large_string(), "keep": pa.bool_(),
             "tracks": pa.large_binary(), "ids": pa.large_binary(), "starts": pa.large_binary(),
             "ends": pa.large_binary(), "docs": pa.large_binary(), "written": pa.large_string(),
             "error": pa.large_string()}
    return pa.table({k: pa.array(v, type=types.get(k, pa.int64())) for k, v in columns.items()})


# --- stage 1: read documents -------------------------------------------------------------


@dataclass
class Source:
    """A corpus as a Ray Dataset of records (name, text, keep, char tracks)."""

    name: str
    dataset: Any
    row_names: str | None = None  # Parquet: records are rows, named "{row_names}:{row}"


def records(docs: Sequence[tuple[str, str, dict[str, np.ndarray]]]) -> dict[str, list]:
    return {"name": [n for n, _, _ in docs], "text": [t for _, t, _ in docs],
            "keep": [True] * len(docs), "tracks": [pack_arrays(c) for _, _, c in docs]}


def read_files(batch: Any, text_field: str, limit: int | None) -> Any:
    """Documents of text files (`path`, `name`) or of JSONL files (`path`, `name` empty)."""
    out = _Collector(limit)
    for path, name in zip(batch.column("path").to_pylist(), batch.column("name").to_pylist(),
                          strict=True):
        if name:
            _add_text_file(Path(path), name, out)
        else:
            _load_jsonl(Path(path), text_field, out)
    return arrow_table(records([(d.name, d.text, d.char_tracks) for d in out.documents]))


def read_parquet_rows(batch: Any, text_field: str) -> Any:
    """One record per Parquet row; those the local reader skips are kept with keep=False
    (rows are named by their number, counted on the driver)."""
    out = _Collector(None)
    texts, keep = [], []
    for value in batch.column(text_field).to_pylist():
        before = len(out.documents)
        _add_record_text(value, text_field, "", out)
        kept = len(out.documents) > before
        keep.append(kept)
        texts.append(out.documents[-1].text if kept else "")
    return arrow_table({"name": [""] * len(texts), "text": texts, "keep": keep,
                        "tracks": [b""] * len(texts)})


def corpus_source(ray: Any, corpus: Any, limit: int | None, options: dict | None,
                  text_field: str = "text") -> Source:
    """The corpus as a dataset, read as `lstmsearch.corpus.load_corpus` reads it."""
    if isinstance(corpus, Corpus) or (isinstance(corpus, str) and corpus in bundled_names()):
        loaded = read_corpus(corpus, limit, options)
        docs = [(d.name, d.text, d.char_tracks) for d in loaded.documents]
        blocks = max(1, min(len(docs) // TOKENIZE_BATCH, 64))
        rows = [dict(zip(("name", "text", "keep", "tracks"), r, strict=True))
                for r in zip(*records(docs).values(), strict=True)]
        return Source(loaded.name, ray.data.from_items(rows, override_num_blocks=blocks))
    if options:
        raise CorpusError(
            f"options {sorted(options)} only apply to bundled corpora, not to path {corpus!r}")
    path = Path(corpus)
    if not path.exists():
        raise CorpusNotFoundError(
            f"corpus source {str(corpus)!r} is not a bundled corpus and no such path exists; "
            f"bundled corpora: {', '.join(bundled_names())}")
    name = path.resolve().name or str(path)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in PARQUET_SUFFIXES:
        check_parquet(path, text_field)
        with warnings.catch_warnings():  # `columns=` reads only the text column (Ray >= 2.9)
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = ray.data.read_parquet(str(path.resolve()), columns=[text_field])
        dataset = dataset.map_batches(read_parquet_rows, batch_format="pyarrow",
                                      batch_size=TOKENIZE_BATCH,
                                      fn_kwargs={"text_field": text_field})
        return Source(name, dataset, row_names=path.name)
    if path.is_dir():
        files = [{"path": str(p.resolve()), "name": p.relative_to(path).as_posix()}
                 for p in _walk_files(path)]
    elif suffix in JSONL_SUFFIXES:
        files = [{"path": str(path.resolve()), "name": ""}]
    else:
        files = [{"path": str(path.resolve()), "name": path.name}]
    if not files:
        return Source(name, ray.data.from_items([{"name": "", "text": "", "keep": False,
                                                  "tracks": b""}]))
    dataset = ray.data.from_items(files, override_num_blocks=max(1, min(len(files) // 64, 200)))
    dataset = dataset.map_batches(read_files, batch_format="pyarrow", batch_size=64,
                                  fn_kwargs={"text_field": text_field, "limit": limit})
    return Source(name, dataset)


def check_parquet(path: Path, text_field: str) -> None:
    """The text column exists and holds strings (as the local reader demands)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise BuildError(f"{path} is not a readable Parquet file: {one_line(exc)}") from None
    if text_field not in schema.names:
        raise CorpusError(f"Parquet file {path} has no column {text_field!r}; its columns "
                          f"are {sorted(schema.names)}")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise CorpusError(f"column {text_field!r} of {path} has type {kind}, not a string type")


# --- stage 2: tokenize -------------------------------------------------------------------

_tokenizers: dict[str, Tokenizer] = {}


def tokenize_batch(batch: Any, tokenizer_json: str) -> Any:
    """Token ids, character spans and token tracks of each kept record (a character track
    becomes a token track by its value at each token's first character, as in
    `indexer.build.tokenize_documents`)."""
    tokenizer = _tokenizers.get(tokenizer_json)
    if tokenizer is None:
        tokenizer = _tokenizers.setdefault(tokenizer_json, Tokenizer.from_json(tokenizer_json))
    texts = batch.column("text").to_pylist()
    keep = batch.column("keep").to_pylist()
    encodings = iter(tokenizer.encode_batch([t for t, k in zip(texts, keep, strict=True) if k]))
    ids, starts, ends, tracks = [], [], [], []
    for text, kept, packed in zip(texts, keep, batch.column("tracks").to_pylist(), strict=True):
        if not kept:
            ids.append(b""), starts.append(b""), ends.append(b""), tracks.append(b"")
            continue
        enc = next(encodings)
        chars = unpack_arrays(packed) if len(enc) else {}
        tracks.append(pack_arrays(at_tokens(text, enc.starts, chars)))
        ids.append(enc.ids.astype(np.int32).tobytes())
        starts.append(enc.starts.astype(np.int64).tobytes())
        ends.append(enc.ends.astype(np.int64).tobytes())
    return arrow_table({"name": batch.column("name").to_pylist(), "text": texts, "keep": keep,
                        "ids": ids, "starts": starts, "ends": ends, "tracks": tracks})


def read_documents(ray: Any, corpus: Any, limit: int | None, options: dict | None,
                   tokenizer: Tokenizer) -> tuple[str, list[PlannedDoc], int]:
    """(corpus name, documents with tokens in corpus order, documents without tokens)."""
    source = corpus_source(ray, corpus, limit, options)
    dataset = source.dataset.map_batches(tokenize_batch, batch_format="pyarrow",
                                         batch_size=TOKENIZE_BATCH,
                                         fn_kwargs={"tokenizer_json": tokenizer.to_json()})
    docs: list[PlannedDoc] = []
    kept = skipped = row = 0
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            columns = {k: batch.column(k).to_pylist() for k in batch.column_names}
            for i in range(batch.num_rows):
                number, row = row, row + 1
                if not columns["keep"][i]:
                    continue
                if limit is not None and kept >= limit:
                    return source.name, docs, skipped
                kept += 1
                ids = np.frombuffer(columns["ids"][i], dtype=np.int32)
                if len(ids) == 0:
                    skipped += 1
                    continue
                name = columns["name"][i] or f"{source.row_names}:{number}"
                docs.append(PlannedDoc(
                    name, columns["text"][i], ids,
                    np.frombuffer(columns["starts"][i], dtype=np.int64),
                    np.frombuffer(columns["ends"][i], dtype=np.int64),
                    unpack_arrays(columns["tracks"][i])))
    except (BuildError, CorpusError):
        raise
    except Exception as exc:
        raise BuildError(f"reading corpus {source.name!r} failed: {one_line(exc)}") from None
    return source.name, docs, skipped


# --- stage 4: one segment on a worker ----------------------------------------------------


def write_segment(out: Path, model: Any, plan: SegmentPlan, docs: Sequence[PlannedDoc],
                  states: Sequence[tuple[str, int, str, int]], *, chunk: int, lanes: int,
                  surprisal: bool, faiss: bool, codebooks: dict | None = None,
                  after_block: Callable[[], None] | None = None) -> WrittenSegment:
    """Extract the exact states of one planned segment and write its directory: the work
    `Job.write_segments` does per segment, in one thread."""
    names = [name for name, *_ in states]
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    doc_starts = plan.tok_start + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    segment = SegmentWriter(out, plan, states, codebooks)
    try:
        tracks: dict[str, np.ndarray] = {}  # the surprisal (and an attention model's tracks)
        for block in iter_states(model, [d.ids for d in docs], names, chunk=chunk, lanes=lanes,
                                 surprisal=surprisal, stored=True):
            gather_block_tracks(block, doc_starts, plan, tracks)
            for name, state in block.states.items():
                for j, doc in enumerate(block.docs):
                    n = int(block.lengths[j])
                    segment.write_block(name, int(doc_starts[doc] + block.starts[j]),
                                        state[j, :n], block.unit_offset)
            if after_block is not None:
                after_block()
        if surprisal:
            tracks.setdefault(SURPRISAL_TRACK, np.full(plan.n_tokens, np.nan, dtype=np.float32))
        return segment.finish(docs, tracks, faiss=faiss)
    except BaseException:
        segment.abort()
        raise


def written_to_json(written: WrittenSegment) -> str:
    return json.dumps(dataclasses.asdict(written))


def written_from_json(text: str) -> WrittenSegment:
    d = json.loads(text)
    return WrittenSegment(SegmentPlan(**d["plan"]), tuple(SegmentFile(**f) for f in d["files"]),
                          tuple(FaissInfo(**f) for f in d["faiss"]), float(d["seconds"]))


def crash_once() -> None:
    """The fault test's kill (see CRASH_ONCE_ENV)."""
    marker = os.environ.get(CRASH_ONCE_ENV)
    if marker and not os.path.exists(marker):
        Path(marker).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        os._exit(17)


class SegmentWorker:
    """A Ray Data actor: loads the model once, then writes one segment per call."""

    def __init__(self, out: str, model: str, model_sha256: str, states: list, device: str,
                 threads: int, chunk: int, lanes: int, surprisal: bool, faiss: bool,
                 codebooks: list):
        torch.set_num_threads(max(1, threads))
        self.out = Path(out)
        self.model_error = check_model(model, model_sha256)
        self.loaded: LoadedModel | None = None
        if self.model_error is None:
            self.loaded = load_model(model, device=device)
        self.states = [tuple(s) for s in states]
        self.options = {"chunk": chunk, "lanes": lanes, "surprisal": surprisal, "faiss": faiss,
                        "codebooks": load_codebooks(self.out, [tuple(c) for c in codebooks])}

    def __call__(self, batch: Any) -> Any:
        numbers, written, errors = [], [], []
        hook = crash_once if os.environ.get(CRASH_ONCE_ENV) else None
        columns = {k: batch.column(k).to_pylist() for k in batch.column_names}
        for i in range(batch.num_rows):
            plan = SegmentPlan(*(int(columns[k][i]) for k in
                                 ("number", "doc_start", "doc_end", "tok_start", "tok_end")))
            numbers.append(plan.number)
            try:
                if self.loaded is None:
                    raise BuildError(self.model_error)
                result = write_segment(self.out, self.loaded.model, plan,
                                       unpack_docs(columns["docs"][i]), self.states,
                                       after_block=hook, **self.options)
                written.append(written_to_json(result))
                errors.append("")
            except Exception as exc:  # reported to the driver, which commits nothing of it
                written.append("")
                errors.append(f"segment {plan.name} on worker {socket.gethostname()}: "
                              f"{one_line(exc)}")
        return arrow_table({"number": numbers, "written": written, "error": errors})


# --- checking every node -----------------------------------------------------------------


def check_model(model: str, sha256: str) -> str | None:
    """A problem with the model file as this worker sees it, or None."""
    host = socket.gethostname()
    if not os.path.isfile(model):
        return (f"worker {host} has no model file {model}: the model must be on a file "
                "system every worker shares")
    if file_sha256(model) != sha256:
        return f"model file {model} on worker {host} is not the driver's (sha256 differs)"
    return None


def check_worker(out: str, probe: str, nonce: str, model: str | None,
                 model_sha256: str | None) -> str | None:
    """A problem this worker has with the index directory or the model, or None.

    The driver wrote `nonce` into `probe` inside the index directory: a worker that reads it
    back sees the same directory, not a local one of the same name."""
    host = socket.gethostname()
    shared = (f"worker {host} cannot see the output directory {out} (it must be on a file "
              "system every worker shares)")
    try:
        if Path(probe).read_text() != nonce:
            return shared
    except OSError:
        return shared
    test = Path(f"{probe}.{host}.{os.getpid()}")
    try:
        test.write_text(nonce)
        test.unlink()
    except OSError as exc:
        return f"worker {host} cannot write to the output directory {out}: {exc.strerror or exc}"
    if model is not None and model_sha256 is not None:
        return check_model(model, model_sha256)
    return None


def worker_problems(runtime: Runtime, out: Path, model: str | None,
                    model_sha256: str | None) -> list[str]:
    """Run `check_worker` on every alive node of the cluster; the problems found."""
    ray = runtime.ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    (out / BUILD_DIR).mkdir(exist_ok=True)
    nonce = uuid.uuid4().hex
    probe = out / BUILD_DIR / f"worker-probe-{nonce}"
    probe.write_text(nonce)
    try:
        check = ray.remote(num_cpus=0, max_retries=0)(check_worker)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                    n["NodeID"], soft=False)).remote(str(out), str(probe), nonce, model,
                                                     model_sha256)
                for n in nodes]
        try:
            found = ray.get(refs, timeout=CHECK_TIMEOUT)
        except Exception as exc:
            return [f"checking the workers failed: {one_line(exc)}"]
        return [p for p in found if p]
    finally:
        probe.unlink(missing_ok=True)


# --- the job -----------------------------------------------------------------------------


@dataclass
class RayJob(Job):
    """`Job` with the corpus read and tokenized, and the segments written, by Ray Data."""

    runtime: Runtime | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    worker_model: str | None = None  # the model file the actors load
    checked: bool = field(default=False)

    # --- the modes: as `Job`, with the documents from Ray --------------------------------

    def build(self, corpus, model, layers, kinds, limit, corpus_options, sizes) -> BuildResult:
        if corpus is None or model is None:
            raise BuildError("a new index needs a corpus and a model (--model MODEL.pt)")
        loaded = load_model(model, device="cpu")  # the driver needs its tokenizer and config
        names = state_names(loaded.config, kinds=kinds, layers=layers)
        if self.out.exists() and not self.out.is_dir():
            raise BuildError(f"{self.out} already exists and is not a directory")
        created = not self.out.exists()
        writer = claim_new(self.out)
        try:
            self.worker_model = str(Path(model).resolve())
            self.check_workers(file_sha256(model))
            name, docs, skipped = read_documents(self.runtime.ray, corpus, limit, corpus_options,
                                                 loaded.tokenizer)
            if not docs:
                raise BuildError(f"corpus {name!r} has no documents with tokens to index")
            self.tracks = choose_tracks(self.tracks, [d.name for d in docs],
                                        [d.text for d in docs])
            docs, self.untokenized = add_computed_tracks(docs, self.tracks,
                                                         loaded.tokenizer.kind)
            self.check_tracks(docs)
            self.check_space(sum(len(d) for d in docs), [loaded.config.state_dim] * len(names),
                             compressed=self.faiss and not self.exact_nearest)
        except BaseException:
            writer.close()
            if created:  # leave nothing behind: the directory is ours, holding only the lock
                (self.out / LOCK_FILE).unlink(missing_ok=True)
                start_over(self.out)
                self.out.rmdir()
            raise
        return self.build_into(writer, model, loaded, names, Corpus(name, []), docs, skipped,
                               sizes)

    def resume(self, corpus, model, layers, kinds, limit, corpus_options, sizes) -> BuildResult:
        self.worker_model = str(self.out / MODEL_FILE)
        return super().resume(corpus, model, layers, kinds, limit, corpus_options, sizes)

    def append(self, corpus, model, limit, corpus_options, sizes) -> BuildResult:
        if corpus is None:
            raise BuildError("append needs a corpus of documents to add")
        writer, meta = open_complete(self.out)
        try:
            self.surprisal = meta.get("surprisal") == "true"
            loaded = self.index_model(meta, model)
            self.worker_model = str(self.out / MODEL_FILE)
            self.check_workers(meta.get("model_sha256"))
            name, docs, skipped = read_documents(self.runtime.ray, corpus, limit, corpus_options,
                                                 loaded.tokenizer)
            if not docs:
                raise BuildError(f"corpus {name!r} has no documents with tokens to add")
            self.tracks = meta.get("tracks", "none")
            docs, self.untokenized = add_computed_tracks(docs, self.tracks,
                                                         loaded.tokenizer.kind)
            self.check_tracks(docs)
            writer.remove_unlisted()
            self.check_append_space(writer, docs)
            plans = self.plan_append(writer, meta, docs, sizes, name)
        except BaseException:
            writer.close()
            raise
        return self.run(writer, loaded, plans, docs, "append",
                        {"no tokens": skipped} if skipped else {})

    def model_device(self) -> torch.device:
        """The actors run the model, on their GPU when they have one."""
        return torch.device("cuda" if self.gpus_per_worker > 0 else "cpu")

    # --- stage 4 and 5: the actor pool, then the driver's commits ------------------------

    def check_workers(self, model_sha256: str | None) -> None:
        """Every node sees the index directory and the model file the actors load."""
        problems = worker_problems(self.runtime, self.out, self.worker_model, model_sha256)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BuildError(problems[0] + more + "; nothing was written to the index")
        self.checked = True

    def write_segments(self, writer: IndexWriter, loaded: LoadedModel,
                       plans: Sequence[SegmentPlan], docs: Sequence[PlannedDoc],
                       base_seconds: float) -> None:
        """Write the planned segments on the actor pool; list each one as it comes back."""
        if not plans:
            return
        if not self.checked:  # a resume: check before any segment is written
            self.check_workers(writer.meta().get("model_sha256"))
        ray = self.runtime.ray
        states = writer.states()
        first_doc = plans[0].doc_start
        rows = [{"number": p.number, "doc_start": p.doc_start, "doc_end": p.doc_end,
                 "tok_start": p.tok_start, "tok_end": p.tok_end,
                 "docs": pack_docs(docs[p.doc_start - first_doc : p.doc_end - first_doc])}
                for p in plans]
        by_number = {p.number: p for p in plans}
        device = "cuda" if self.gpus_per_worker > 0 else "cpu"
        options: dict[str, Any] = {}
        if self.gpus_per_worker > 0:
            options["num_gpus"] = self.gpus_per_worker
        if os.environ.get(CRASH_ONCE_ENV):
            options["runtime_env"] = {"env_vars": {CRASH_ONCE_ENV: os.environ[CRASH_ONCE_ENV]}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's notes on its own deprecations
            dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                SegmentWorker, batch_size=1, batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=min(self.workers, len(rows))),
                num_cpus=self.cpus_per_worker,
                fn_constructor_kwargs={
                    "out": str(self.out), "model": self.worker_model,
                    "model_sha256": writer.meta().get("model_sha256"),
                    "states": [list(s) for s in states], "device": device,
                    "threads": max(1, int(self.cpus_per_worker)), "chunk": self.chunk,
                    "lanes": self.lanes, "surprisal": self.surprisal, "faiss": self.faiss,
                    "codebooks": [list(c) for c in writer.live_files("codebook")],
                },
                max_restarts=RETRIES, max_task_retries=RETRIES, **options,
            )
        bar = progress_bar(sum(p.n_tokens for p in plans), self.progress, "indexing")
        t0 = time.perf_counter()
        with bar:
            try:
                for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                    columns = {k: batch.column(k).to_pylist() for k in batch.column_names}
                    for number, text, error in zip(columns["number"], columns["written"],
                                                   columns["error"], strict=True):
                        if error:
                            raise BuildError(f"{error}; segments written before it are kept "
                                             f"for `lstmsearch index --resume {self.out}`")
                        t1 = time.perf_counter()
                        written = written_from_json(text)
                        if written.plan != by_number[number]:
                            raise BuildError(f"a worker returned {written.plan}, not the planned "
                                             f"{by_number[number]}")
                        writer.add_segment(written,
                                           base_seconds + time.perf_counter() - self.started)
                        self.store_seconds += time.perf_counter() - t1
                        bar.update(written.plan.n_tokens)
                        if self.on_segment is not None:
                            self.on_segment(number)
            except BuildError:
                raise
            except Exception as exc:
                raise BuildError(f"the Ray build failed: {one_line(exc)}; segments written "
                                 f"before it are kept for `lstmsearch index --resume "
                                 f"{self.out}`") from None
        self.extract_seconds += time.perf_counter() - t0 - self.store_seconds


def build_with_ray(
    corpus: Any,
    model: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    append: bool = False,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    limit: int | None = None,
    corpus_options: dict | None = None,
    segment_tokens: int | None = None,
    segment_docs: int | None = None,
    lanes: int | None = None,
    chunk: int = 256,
    faiss: bool = True,
    exact_nearest: bool = False,
    space_check: bool = True,
    progress: bool | None = None,
    on_segment: Callable[[int], None] | None = None,
    surprisal: bool = True,
    tracks: str = "auto",
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0,
    cpus_per_worker: float | None = None,
) -> BuildResult:
    """`indexer.build.build_index` on Ray Data: the same index, built by `workers` actors.

    Without `address` a local Ray runtime is started on this machine (and stopped at the
    end); with it, the cluster there is joined (`auto`: the one `ray start` set up here). A
    runtime already initialised in this process is used as it is. `workers` defaults to one
    per GPU (with `gpus_per_worker`) or per CPU of the cluster; each actor takes
    `cpus_per_worker` CPUs (default: its share of this machine locally, one on a cluster) and
    runs torch on that many threads. `lanes` defaults as for the device the actors use, so a
    GPU build equals a local GPU build with the same lanes.
    """
    out = Path(out).absolute()
    if resume and append:
        raise BuildError("choose one of resume and append, not both")
    for name, value in (("segment_tokens", segment_tokens), ("segment_docs", segment_docs),
                        ("lanes", lanes), ("chunk", chunk), ("limit", limit),
                        ("workers", workers)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise BuildError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("gpus_per_worker", gpus_per_worker),
                        ("cpus_per_worker", cpus_per_worker)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or value < 0 or (name == "cpus_per_worker" and value == 0)):
            raise BuildError(f"{name} must be a positive number, got {value!r}")
    runtime = connect(address, workers)
    try:
        data_context(runtime.ray, bool(progress))
        resources = runtime.resources()
        if gpus_per_worker and resources.get("GPU", 0) < gpus_per_worker:
            raise BuildError(f"--gpus-per-worker {gpus_per_worker}: the Ray cluster has "
                             f"{resources.get('GPU', 0):g} GPUs")
        if workers is None:
            workers = (int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker
                       else int(resources.get("CPU", 1))) or 1
        if cpus_per_worker is None:
            cpus_per_worker = (max(1, (os.cpu_count() or 1) // workers)
                               if address is None and runtime.started else 1)
        # the driver reads the model on its CPU; the actors run it on theirs or their GPU
        job = RayJob(out, torch.device("cpu"), lanes, chunk, faiss,
                     exact_nearest, progress, on_segment, surprisal, space_check,
                     runtime=runtime,
                     workers=workers, gpus_per_worker=float(gpus_per_worker),
                     cpus_per_worker=float(cpus_per_worker), tracks=tracks)
        sizes = (segment_tokens, segment_docs)
        if resume:
            return job.resume(corpus, model, layers, kinds, limit, corpus_options, sizes)
        if append:
            return job.append(corpus, model, limit, corpus_options, sizes)
        return job.build(corpus, model, layers, kinds, limit, corpus_options, sizes)
    finally:
        runtime.close()
