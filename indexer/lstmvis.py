"""LSTMVis projects: import one into an index, or export an index as one.

An LSTMVis project is a folder with a config file `lstm.yml`:

    name: children books
    description: ...
    files:                       # reference name -> file in the folder
      states: states.hdf5        # HDF5 files end with .h5 or .hdf5, dictionaries with .dict
      train: train.hdf5
      words: words.dict
    word_sequence: {file: train, path: word_ids, dict_file: words}
    states:
      file: states               # default file of the types below
      types: [{type: state, layer: 1, path: states1}, {type: output, layer: 1, path: output1}]
    meta:                        # optional annotations, one value per token
      part_of_speech: {file: pos, path: pos, dict: pos_dict, vis: {type: discrete, range: dict}}

The word sequence is a 1-D integer dataset with one word id per token; a `.dict` file has one
`word id` pair per line. Each state type is a tokens x units float dataset: `type: state` is
the cell state (our kind `c`), `type: output` the hidden state (`h`); other types that name a
kind (a gate: `i`, `f`, `g`, `o`, `r`, `z`, `n`) are that kind. LSTMVis layers count from 1,
ours from 0: `{type: state, layer: 1}` becomes `layers.0.c`. A type may name its own `file`.

Import: LSTMVis has no documents and no character offsets. The word stream is one document,
or, with `doc_boundary="</s>"`, a document ends after every occurrence of that word (the
boundary token stays, as the last token of its document: it has states). A document's text is
its words joined by single spaces. States are copied exactly as stored in the file: LSTMVis
shows `tanh` of a type's values unless the type says `transform: none`, so a LSTMVis threshold
`t` on such a type is `atanh(t)` here. Meta entries with a `dict` become label tracks (with
the id as the value), others number tracks; a value missing from the dict, or NaN, is no
annotation. Meta entries of another `type` than `general`, or with an `index` other than
`self`, are not per-token and are skipped (listed in the result).

Export writes that layout (`lstm.yml`, `states.hdf5` with float32 `output{L+1}`/`states{L+1}`
datasets and `transform: none`, `train.hdf5` with `word_ids`, `words.dict`, tracks in
`meta.hdf5` plus a `.dict` per label track), so LSTMVis itself opens the folder. Words and
labels are written with whitespace made visible (LSTMVis splits dict lines on whitespace),
so `train.hdf5` also holds an `lstmsearch` group LSTMVis ignores: the exact documents
(names, texts), token spans and vocabulary. Importing such a project gives back the same
documents, tokens, states (the float16 values widen to float32 exactly) and tracks.

HDF5 needs `h5py` (`pip install 'lstmsearch[hdf5]'`). The YAML config is read with PyYAML,
which Bokeh (a core dependency) already requires.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from indexer.annotate import Track
from indexer.blocks import (
    ExportResult,
    files_below,
    staged_directory,
    state_block,
    token_blocks,
    track_columns,
)
from indexer.build import BuildResult
from indexer.states import (
    ArraySource,
    TokenTable,
    check_source,
    check_target,
    copy_sources,
    joined_words,
    write_index,
)
from indexer.writer import BuildError
from lstmsearch.extract import GRU_GATES, LSTM_GATES, parse_state_name
from lstmsearch.index import Index
from lstmsearch.progress import progress_bar

CONFIG_FILE = "lstm.yml"
KIND_OF_TYPE = {"state": "c", "output": "h", **{g: g for g in (*LSTM_GATES, *GRU_GATES)}}
TYPE_OF_KIND = {"c": "state", "h": "output"}
SIDECAR = "lstmsearch"
"""Group in the word-sequence file with the exact documents of an exported index."""
MISSING_ATTR = "lstmsearch_missing"
LABELS_ATTR = "lstmsearch_labels"
VALUES_ATTR = "lstmsearch_values"
VISIBLE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
EMPTY_WORD = "\u2205"


class ProjectError(BuildError):
    """An LSTMVis project that cannot be read or written, naming the file and dataset."""


def require_h5py() -> Any:
    """The h5py module, or a clear error saying how to install it."""
    try:
        import h5py
    except ImportError as exc:
        raise ProjectError("LSTMVis projects are HDF5 files: install h5py with "
                           "`pip install 'lstmsearch[hdf5]'`") from exc
    return h5py


def require_yaml() -> Any:
    """The PyYAML module (installed with Bokeh), or a clear error."""
    try:
        import yaml
    except ImportError as exc:
        raise ProjectError("reading lstm.yml needs PyYAML: `pip install 'lstmsearch[hdf5]'`"
                           ) from exc
    return yaml


# --- the config ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StateType:
    """One entry of `states.types`: which dataset holds which of our states."""

    name: str  # layers.{L}.{kind}
    file: Path
    path: str


@dataclass(frozen=True)
class MetaEntry:
    """One entry of `meta`: a per-token annotation dataset, optionally with a dictionary."""

    name: str
    file: Path
    path: str
    dict_file: Path | None


@dataclass(frozen=True)
class Project:
    """What `lstm.yml` says, with file references resolved to paths."""

    folder: Path
    name: str
    description: str
    words_file: Path
    words_path: str
    dict_file: Path | None
    states: tuple[StateType, ...]
    meta: tuple[MetaEntry, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # meta name -> why not imported


def read_project(folder: str | os.PathLike) -> Project:
    """Parse `folder/lstm.yml`; every problem names the file and the key."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise ProjectError(f"{folder} is not an LSTMVis project: it has no {CONFIG_FILE}")
    yaml = require_yaml()
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProjectError(f"{config_path} is not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ProjectError(f"{config_path} must be a mapping with files, word_sequence, states")
    files = section(config, "files", config_path)

    def resolve(ref: Any, key: str) -> Path:
        if ref in files:
            path = folder / str(files[ref])
        elif isinstance(ref, str) and (folder / ref).is_file():
            path = folder / ref
        else:
            raise ProjectError(f"{config_path}: {key} refers to file {ref!r}, which is not in "
                               f"files ({', '.join(map(str, files))})")
        if not path.is_file():
            raise ProjectError(f"{config_path}: file {path.name} ({key}) does not exist in "
                               f"{folder}")
        return path

    words = section(config, "word_sequence", config_path)
    words_file = resolve(need(words, "file", config_path, "word_sequence"), "word_sequence.file")
    words_path = str(need(words, "path", config_path, "word_sequence"))
    dict_ref = words.get("dict_file")
    dict_file = None if dict_ref is None else resolve(dict_ref, "word_sequence.dict_file")

    states_config = section(config, "states", config_path)
    types = states_config.get("types")
    if not isinstance(types, list) or not types:
        raise ProjectError(f"{config_path}: states.types must list at least one state")
    states, seen = [], {}
    for i, entry in enumerate(types):
        where = f"states.types[{i}]"
        if not isinstance(entry, dict):
            raise ProjectError(f"{config_path}: {where} must be a mapping like "
                               "{type: state, layer: 1, path: states1}")
        kind = KIND_OF_TYPE.get(str(entry.get("type")))
        if kind is None:
            raise ProjectError(f"{config_path}: {where} has type {entry.get('type')!r}; "
                               f"expected one of {', '.join(KIND_OF_TYPE)}")
        layer = entry.get("layer")
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
            raise ProjectError(f"{config_path}: {where} has layer {layer!r}; LSTMVis layers "
                               "are numbered from 1")
        name = f"layers.{layer - 1}.{kind}"
        if name in seen:
            raise ProjectError(f"{config_path}: {where} and {seen[name]} both give "
                               f"{entry['type']} of layer {layer}")
        seen[name] = where
        file_ref = entry.get("file", states_config.get("file"))
        states.append(StateType(name, resolve(file_ref, f"{where}.file"),
                                str(need(entry, "path", config_path, where))))

    meta, skipped = [], {}
    for name, entry in (config.get("meta") or {}).items():
        where = f"meta.{name}"
        if not isinstance(entry, dict):
            raise ProjectError(f"{config_path}: {where} must be a mapping with file and path")
        if entry.get("type", "general") != "general" or entry.get("index", "self") != "self":
            skipped[str(name)] = (f"type {entry.get('type', 'general')}, index "
                                  f"{entry.get('index', 'self')}: not one value per token")
            continue
        dict_path = None if entry.get("dict") is None else resolve(entry["dict"], f"{where}.dict")
        meta.append(MetaEntry(str(name), resolve(need(entry, "file", config_path, where),
                                                 f"{where}.file"),
                              str(need(entry, "path", config_path, where)), dict_path))
    return Project(folder, str(config.get("name") or folder.name),
                   str(config.get("description") or ""), words_file, words_path, dict_file,
                   tuple(states), tuple(meta), skipped)


def section(config: dict, key: str, where: Path) -> dict:
    """A required mapping of the config."""
    value = config.get(key)
    if not isinstance(value, dict):
        raise ProjectError(f"{where} has no {key} section (a mapping)")
    return value


def need(mapping: dict, key: str, where: Path, parent: str) -> Any:
    """A required key of a config mapping."""
    if mapping.get(key) is None:
        raise ProjectError(f"{where}: {parent} has no {key}")
    return mapping[key]


def read_dict(path: Path) -> dict[int, str]:
    """A `.dict` file: `word id` per line -> {id: word}."""
    out: dict[int, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectError(f"cannot read dictionary {path}: {exc}") from exc
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ProjectError(f"{path}:{lineno}: expected 'word id', got {line!r}")
        try:
            i = int(parts[1])
        except ValueError:
            raise ProjectError(f"{path}:{lineno}: {parts[1]!r} is not an integer id") from None
        if out.get(i, parts[0]) != parts[0]:
            raise ProjectError(f"{path}:{lineno}: id {i} is both {out[i]!r} and {parts[0]!r}")
        out[i] = parts[0]
    return out


# --- reading HDF5 --------------------------------------------------------------------------


class Files:
    """HDF5 files of a project, each opened once, read-only; datasets with clear errors."""

    def __init__(self, stack: ExitStack):
        self.h5py = require_h5py()
        self.stack = stack
        self.open: dict[Path, Any] = {}

    def file(self, path: Path) -> Any:
        if path not in self.open:
            try:
                self.open[path] = self.stack.enter_context(self.h5py.File(path, "r"))
            except OSError as exc:
                raise ProjectError(f"{path} is not a readable HDF5 file: {exc}") from exc
        return self.open[path]

    def dataset(self, path: Path, name: str, what: str) -> Any:
        f = self.file(path)
        node = f.get(name)
        if node is None:
            found = ", ".join(sorted(f.keys())) or "nothing"
            raise ProjectError(f"{path.name} has no dataset {name!r} ({what}); it has {found}"
                               f" (in {path})")
        if not isinstance(node, self.h5py.Dataset):
            raise ProjectError(f"{path.name}:{name} ({what}) is a group, not a dataset")
        return node


def vector(ds: Any, where: str) -> np.ndarray:
    """A 1-D dataset (or one column) read whole."""
    if len(ds.shape) == 2 and ds.shape[1] == 1:
        return ds[:, 0]
    if len(ds.shape) != 1:
        raise ProjectError(f"{where} has shape {ds.shape}: expected one value per token (1-D)")
    return ds[:]


def read_word_ids(files: Files, project: Project) -> np.ndarray:
    """The word id of every token."""
    where = f"{project.words_file.name}:{project.words_path}"
    ds = files.dataset(project.words_file, project.words_path, "word_sequence")
    if np.dtype(ds.dtype).kind not in "iu":
        raise ProjectError(f"{where} holds {ds.dtype} values: word ids must be integers")
    ids = vector(ds, where).astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ProjectError(f"{where} holds the negative word id {int(ids.min())}")
    if ids.size == 0:
        raise ProjectError(f"{where} is empty: there are no tokens")
    return ids


def word_table(project: Project, ids: np.ndarray, doc_boundary: str | None
               ) -> tuple[TokenTable, list[str]]:
    """Documents of space-joined words, and the vocabulary indexed by LSTMVis word id."""
    words = read_dict(project.dict_file) if project.dict_file else {}
    size = max(int(ids.max()), max(words, default=-1)) + 1
    if project.dict_file is None:
        vocab = [str(i) for i in range(size)]
    else:
        missing = np.setdiff1d(np.unique(ids), np.fromiter(words, dtype=np.int64))
        if missing.size:
            raise ProjectError(f"{project.words_file.name}:{project.words_path} has word id "
                               f"{int(missing[0])}, which {project.dict_file.name} does not list")
        vocab = [""] * size
        for i, w in words.items():
            if i >= 0:
                vocab[i] = w
    ends = np.zeros(0, dtype=np.int64)
    if doc_boundary is not None:
        boundary_ids = [i for i, w in enumerate(vocab) if w == doc_boundary]
        if not boundary_ids:
            raise ProjectError(f"the document boundary {doc_boundary!r} is not a word of "
                               f"{project.dict_file or 'the word ids'}")
        ends = np.flatnonzero(np.isin(ids, boundary_ids)) + 1
    doc_starts = np.unique(np.concatenate([[0], ends, [len(ids)]]))
    names = ([project.name] if len(doc_starts) == 2
             else [f"{project.name} #{d}" for d in range(len(doc_starts) - 1)])
    return joined_words(names, doc_starts, ids, vocab), vocab


def sidecar_table(group: Any, ids: np.ndarray, where: str) -> tuple[TokenTable, list[str]]:
    """The exact documents an lstmsearch export stored next to the word ids."""
    try:
        doc_starts = group["doc_starts"][:].astype(np.int64)
        names = [str(s) for s in group["doc_names"].asstr()[:]]
        texts = [str(s) for s in group["doc_texts"].asstr()[:]]
        starts = group["char_start"][:].astype(np.int64)
        ends = group["char_end"][:].astype(np.int64)
        vocab = [str(s) for s in group["vocab"].asstr()[:]]
    except KeyError as exc:
        raise ProjectError(f"{where}/{SIDECAR} is incomplete: {exc}") from exc
    n = len(ids)
    if (len(starts) != n or len(ends) != n or doc_starts[0] != 0 or doc_starts[-1] != n
            or len(names) != len(doc_starts) - 1 or len(texts) != len(names)):
        raise ProjectError(f"{where}/{SIDECAR} does not match the {n:,} word ids")
    return TokenTable(tuple(names), tuple(texts), doc_starts, ids.astype(np.int32), starts,
                      ends), vocab


def read_meta(files: Files, entry: MetaEntry, n_tokens: int) -> Track:
    """One meta entry as a track: labels (and ids as values) with a dict, else numbers."""
    where = f"{entry.file.name}:{entry.path}"
    ds = files.dataset(entry.file, entry.path, f"meta {entry.name}")
    values = vector(ds, where)
    if len(values) != n_tokens:
        raise ProjectError(f"{where} (meta {entry.name}) has {len(values):,} values but there "
                           f"are {n_tokens:,} tokens")
    if values.dtype.kind in "SUO":
        labels = [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()]
        return Track(np.arange(n_tokens), None, labels)
    if values.dtype.kind not in "iufb":
        raise ProjectError(f"{where} holds {values.dtype} values: expected numbers")
    if entry.dict_file is None:
        values = values.astype(np.float64)
        keep = ~np.isnan(values)
        return Track(np.flatnonzero(keep), values[keep], None)
    if values.dtype.kind == "f" and not np.all(np.isnan(values) | (values == np.round(values))):
        raise ProjectError(f"{where} holds fractional values but meta {entry.name} has a dict")
    words = read_dict(entry.dict_file)
    exact = ds.attrs.get(LABELS_ATTR)
    if exact is not None:
        words = {int(i): str(w) for i, w in json.loads(exact).items()}
    missing = ds.attrs.get(MISSING_ATTR)
    ids = np.where(np.isnan(values), -(2**62), values).astype(np.int64) \
        if values.dtype.kind == "f" else values.astype(np.int64)
    keep = np.isin(ids, np.fromiter(words, dtype=np.int64))
    if missing is not None:
        keep &= ids != int(missing)
    pos = np.flatnonzero(keep)
    labels = [words[i] for i in ids[pos].tolist()]
    with_values = bool(ds.attrs.get(VALUES_ATTR, True))
    return Track(pos, ids[pos].astype(np.float64) if with_values else None, labels)


# --- import --------------------------------------------------------------------------------


def import_lstmvis(
    project_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    doc_boundary: str | None = None,
    faiss: bool = True,
    exact_nearest: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Import the LSTMVis project in `project_dir` as a new index at `out`.

    Every dataset is checked (present, shape, dtype, one row per token) before anything is
    written; states are then copied a block of rows at a time. The index appears at `out`
    only when complete.
    """
    out = Path(out)
    check_target(out)
    project = read_project(project_dir)
    with ExitStack() as stack:
        files = Files(stack)
        ids = read_word_ids(files, project)
        sidecar = files.file(project.words_file).get(SIDECAR)
        if sidecar is not None:
            if doc_boundary is not None:
                raise ProjectError(f"{project.words_file} holds the documents of an lstmsearch "
                                   "export; a document boundary cannot be used with it")
            table, vocab = sidecar_table(sidecar, ids, str(project.words_file))
            source_meta = json.loads(sidecar.attrs.get("meta", "{}"))
        else:
            table, vocab = word_table(project, ids, doc_boundary)
            source_meta = {}
        sources = []
        for st in project.states:
            ds = files.dataset(st.file, st.path, f"{st.name}")
            source = ArraySource(st.name, ds, f"{st.file.name}:{st.path} (in {st.file.parent})")
            check_source(source, table.n_tokens)
            sources.append(source)
        tracks = {m.name: read_meta(files, m, table.n_tokens) for m in project.meta}
        layers = sorted({parse_state_name(s.name)[0] for s in sources})
        config = json.loads(source_meta.get("model_config", "{}")) or {
            "arch": "lstm" if any(s.name.endswith(".c") for s in sources) else "unknown",
            "layers": len(layers), "hidden": max(s.dim for s in sources),
            "vocab_size": len(vocab),
        }
        meta = {
            "model_config": json.dumps(config),
            "model_source": f"LSTMVis project {project.folder} ({project.name})",
            "tokenizer_kind": source_meta.get("tokenizer_kind", "lstmvis-words"),
            "corpus": source_meta.get("corpus") or project.description or project.name,
            "lstmvis_project": str(project.folder.resolve()),
        }
        result = write_index(out, table, vocab, [(s.name, s.dim) for s in sources],
                             copy_sources(sources), meta=meta, tracks=tracks, faiss=faiss,
                             exact_nearest=exact_nearest, progress=progress,
                             mode="import")
    if project.skipped:
        result = replace(result, skipped={f"meta {k}": 1 for k in project.skipped})
    return result


# --- export --------------------------------------------------------------------------------


def visible(word: str) -> str:
    """A word as one whitespace-free field of a `.dict` line."""
    if not word:
        return EMPTY_WORD
    return "".join(VISIBLE.get(ch, "\u2423" if ch.isspace() else ch) for ch in word)


def dataset_name(name: str) -> str:
    """An HDF5 dataset name (no slashes) for a track name."""
    return name.replace("/", "_") or "_"


def export_lstmvis(index: Index, out: str | os.PathLike, *, states: Sequence[str] | None = None,
                   progress: bool | None = None) -> ExportResult:
    """Write `index` as an LSTMVis project in the new directory `out` (see module docstring)."""
    h5py = require_h5py()
    yaml = require_yaml()
    t0 = time.perf_counter()
    names = list(index.state_names) if states is None else list(states)
    n = index.n_tokens
    files = {"states": "states.hdf5", "train": "train.hdf5", "words": "words.dict"}
    types = []
    with staged_directory(out) as tmp:
        bar = progress_bar(n * len(names), progress, "export lstmvis")
        with bar, h5py.File(tmp / "states.hdf5", "w") as f:
            for name in names:
                layer, kind = parse_state_name(name)
                path = f"{'output' if kind == 'h' else 'states' if kind == 'c' else kind}{layer + 1}"
                store = index.store(name)
                ds = f.create_dataset(path, shape=(n, store.dim), dtype="float32")
                for a, b in token_blocks(n, store.dim):
                    ds[a:b] = state_block(index, name, a, b, "float32")
                    bar.update(b - a)
                types.append({"type": TYPE_OF_KIND.get(kind, kind), "layer": layer + 1,
                              "path": path, "transform": "none"})
        write_words(index, tmp, h5py)
        meta_config = write_tracks(index, tmp, h5py, files)
        config = {
            "name": index.path.resolve().name,
            "description": f"exported by lstmsearch from {index.path.resolve()} "
                           f"({index.meta.get('corpus', '')})",
            "files": files,
            "word_sequence": {"file": "train", "path": "word_ids", "dict_file": "words"},
            "states": {"file": "states", "types": types},
        }
        if meta_config:
            config["meta"] = meta_config
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False,
                                                      allow_unicode=True), encoding="utf-8")
        written = files_below(tmp)
    return ExportResult(Path(out), "lstmvis", written, index.n_docs, n, tuple(names),
                        time.perf_counter() - t0)


def write_words(index: Index, tmp: Path, h5py: Any) -> None:
    """`train.hdf5` (word ids and the exact documents) and `words.dict`."""
    n = index.n_tokens
    vocab = index.vocab()
    strings = h5py.string_dtype()
    with h5py.File(tmp / "train.hdf5", "w") as f:
        word_ids = f.create_dataset("word_ids", shape=(n,), dtype="int64")
        group = f.create_group(SIDECAR)
        char_start = group.create_dataset("char_start", shape=(n,), dtype="int64")
        char_end = group.create_dataset("char_end", shape=(n,), dtype="int64")
        for a, b in token_blocks(n, 1, itemsize=1 << 5):
            tokens = index.tokens(a, b)
            word_ids[a:b] = tokens.token_id
            char_start[a:b] = tokens.char_start
            char_end[a:b] = tokens.char_end
        docs = index.documents()
        group.create_dataset("doc_starts", data=np.asarray(index.doc_starts, dtype=np.int64))
        group.create_dataset("doc_names", data=[d.name for d in docs], dtype=strings)
        texts = group.create_dataset("doc_texts", shape=(len(docs),), dtype=strings)
        for d in docs:
            texts[d.doc] = index.document_text(d.doc)
        group.create_dataset("vocab", data=vocab, dtype=strings)
        group.attrs["meta"] = json.dumps({k: index.meta.get(k, "") for k in (
            "model_config", "tokenizer_kind", "corpus", "model_source")})
    with open(tmp / "words.dict", "w", encoding="utf-8") as f:
        for i, word in enumerate(vocab):
            f.write(f"{visible(word)} {i}\n")


def write_tracks(index: Index, tmp: Path, h5py: Any, files: dict[str, str]) -> dict[str, Any]:
    """`meta.hdf5` and a `.dict` per label track; returns the config's meta section."""
    names = index.track_names()
    if not names:
        return {}
    n = index.n_tokens
    files["meta"] = "meta.hdf5"
    config: dict[str, Any] = {}
    with h5py.File(tmp / "meta.hdf5", "w") as f:
        for name in names:
            values, labels = track_columns(index, name, n)
            path = dataset_name(name)
            if labels is None:
                f.create_dataset(path, data=values)
                finite = values[np.isfinite(values)]
                vis_range = [float(finite.min()), float(finite.max())] if finite.size else [0, 1]
                config[name] = {"file": "meta", "path": path,
                                "vis": {"type": "scalar", "range": vis_range}}
                continue
            ids, words, with_values = label_ids(values, labels)
            ds = f.create_dataset(path, data=ids)
            ds.attrs[MISSING_ATTR] = -1
            ds.attrs[LABELS_ATTR] = json.dumps({int(i): w for i, w in words.items()})
            ds.attrs[VALUES_ATTR] = with_values
            dict_key = f"{path}_dict"
            files[dict_key] = f"{path}.dict"
            with open(tmp / f"{path}.dict", "w", encoding="utf-8") as d:
                for i, word in sorted(words.items()):
                    d.write(f"{visible(word)} {i}\n")
                d.write(f"{EMPTY_WORD} -1\n")
            config[name] = {"file": "meta", "path": path, "dict": dict_key,
                            "vis": {"type": "discrete", "range": "dict"}}
    return config


def label_ids(values: np.ndarray, labels: list[str | None]
              ) -> tuple[np.ndarray, dict[int, str], bool]:
    """Ids of a label track per token (-1: none), id -> label, and whether the values were
    the ids (then they are kept as values on import).

    The track's own values serve as ids when they are whole numbers that map one to one to
    labels (an imported LSTMVis annotation); otherwise labels are numbered in sorted order.
    """
    has = np.array([lab is not None for lab in labels], dtype=bool)
    pairs = {(labels[p], values[p]) for p in np.flatnonzero(has).tolist()}
    by_label: dict[str, set] = {}
    for label, value in pairs:
        by_label.setdefault(label, set()).add(value)
    as_ids = all(len(v) == 1 and np.isfinite(next(iter(v))) and float(next(iter(v))).is_integer()
                 and next(iter(v)) >= 0 for v in by_label.values())
    if as_ids and len({next(iter(v)) for v in by_label.values()}) == len(by_label):
        mapping = {label: int(next(iter(v))) for label, v in by_label.items()}
    else:
        mapping = {label: i for i, label in enumerate(sorted(by_label))}
        as_ids = False
    ids = np.full(len(labels), -1, dtype=np.int64)
    for p in np.flatnonzero(has).tolist():
        ids[p] = mapping[labels[p]]
    return ids, {i: label for label, i in mapping.items()}, as_ids
