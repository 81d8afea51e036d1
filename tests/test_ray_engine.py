"""`--engine ray`: Ray Data builds the same index as the local engine, survives a killed
actor and a killed driver, and refuses bad set-ups with one line and nothing written.

One local Ray runtime serves the whole module (started once: a few seconds)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SHARD, make_tiny_model, tiny_parens

from indexer.build import build_index
from indexer.writer import BuildError
from lstmsearch.index import open_index
from lstmsearch.models import LanguageModel, ModelConfig, save_checkpoint
from lstmsearch.tokenize import train_tokenizer

TESTS = Path(__file__).parent
ROOT = TESTS.parent

VOLATILE_META = {"created_at", "updated_at", "build_seconds"}
"""Meta entries that say when, not what: they differ between any two builds."""


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="--engine ray needs the extra: pip install -e '.[ray]'")
    from indexer.ray_engine import quiet_ray

    quiet_ray()
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_index(ray_runtime, tmp_path_factory, tiny_corpus, tiny_model_path) -> Path:
    from indexer.ray_engine import build_with_ray

    out = tmp_path_factory.mktemp("ray") / "index"
    result = build_with_ray(tiny_corpus, tiny_model_path, out, **TINY_SHARD, workers=2,
                            progress=False)
    assert result.mode == "build" and result.n_segments > 1
    return out


def snapshot(path: Path) -> dict:
    """Everything an index holds, but the times: every table row for row, every state."""
    out = {}
    with open_index(path) as index:
        tables = [r["table_name"] for r in index.sql(
            "SELECT table_name FROM duckdb_tables() UNION "
            "SELECT view_name FROM duckdb_views() WHERE NOT internal").to_dicts()]
        for table in sorted(tables):
            rows = index.sql(f"SELECT * FROM {table}").to_dicts()  # names from the catalogue
            for row in rows:
                row.pop("seconds", None)
                if table == "files" and row["kind"] == "rows":
                    row.pop("sha256")  # a DuckDB file's bytes differ between writes
            if table == "meta":
                rows = [r for r in rows if r["key"] not in VOLATILE_META]
            out[table] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
        for name in index.state_names:
            out[name] = np.asarray(index.states(name))
    return out


def assert_same_index(a: Path, b: Path) -> None:
    left, right = snapshot(a), snapshot(b)
    assert sorted(left) == sorted(right)
    for key in left:
        if isinstance(left[key], np.ndarray):
            assert left[key].dtype == right[key].dtype, key
            assert np.array_equal(left[key], right[key]), key
        else:
            assert left[key] == right[key], key
    assert (b / "segments").is_dir()
    assert not list((b / "segments").glob("*.tmp"))


def test_two_workers_build_the_local_index(ray_index, tiny_index_path):
    """Array for array and row for row, as `--engine local` (conftest's tiny index)."""
    assert_same_index(tiny_index_path, ray_index)
    with open_index(ray_index) as index:
        assert len(index.segments) > 2


def test_killed_actor_is_retried_and_its_half_segment_never_listed(
        ray_runtime, tmp_path, monkeypatch, tiny_corpus, tiny_model_path, tiny_index_path):
    from indexer.ray_engine import CRASH_ONCE_ENV, build_with_ray

    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))
    out = tmp_path / "index"
    build_with_ray(tiny_corpus, tiny_model_path, out, **TINY_SHARD, workers=2, progress=False)
    assert marker.is_file()  # an actor did die in the middle of a segment
    assert_same_index(tiny_index_path, out)


DRIVER = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import TINY_SHARD, tiny_parens
from indexer.ray_engine import build_with_ray

def die(number):
    if number == 1:  # segments 0 and 1 are listed: the driver dies in the middle
        os.kill(os.getpid(), signal.SIGKILL)

build_with_ray(tiny_parens(), {model!r}, {out!r}, **TINY_SHARD, workers=1, progress=False,
               address={address!r}, on_segment=die)
"""


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_killed_driver_is_finished_by_resume(ray_runtime, tmp_path, engine, tiny_model_path,
                                            tiny_index_path):
    out = tmp_path / "index"
    address = ray_runtime.get_runtime_context().gcs_address
    code = DRIVER.format(tests=str(TESTS), model=str(tiny_model_path), out=str(out),
                         address=address)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    time.sleep(1.0)  # Ray ends the dead driver's actors
    with pytest.raises(Exception, match="incomplete|resume|planned"):
        open_index(out)
    if engine == "local":
        result = build_index(None, None, out, resume=True, progress=False)
    else:
        from indexer.ray_engine import build_with_ray

        result = build_with_ray(None, None, out, resume=True, workers=2, progress=False)
    assert result.mode == "resume"
    assert_same_index(tiny_index_path, out)


def test_append_matches_a_local_append(ray_runtime, tmp_path, tiny_model_path):
    from indexer.ray_engine import build_with_ray

    corpus = tiny_parens(12, seed=3)
    more = tiny_parens(6, seed=4)
    local, ray = tmp_path / "local", tmp_path / "ray"
    for out in (local, ray):
        build_index(corpus, tiny_model_path, out, **TINY_SHARD, progress=False)
    build_index(more, None, local, append=True, progress=False)
    result = build_with_ray(more, None, ray, append=True, workers=2, progress=False)
    assert result.mode == "append" and result.new_docs == 6
    assert_same_index(local, ray)


def test_text_folder_jsonl_and_parquet_read_as_the_local_engine_reads_them(
        ray_runtime, tmp_path, tiny_model_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from indexer.ray_engine import build_with_ray

    texts = [d.text for d in tiny_parens(9, seed=5).documents]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for i, text in enumerate(texts):
        (folder / ("sub" if i % 2 else "") / f"doc{i}.txt").write_text(text)
    (folder / "blank.txt").write_text("  \n")
    (folder / ".hidden").write_text("(((")
    jsonl = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": t}) for t in texts[:4]] + ["", "not json", '{"x": 1}']
    lines += [json.dumps({"text": t}) for t in texts[4:]]
    jsonl.write_text("\n".join(lines) + "\n")
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": texts[:3] + [None, " "] + texts[3:]}), parquet,
                   row_group_size=4)
    for source in (folder, jsonl, parquet):
        local, ray = tmp_path / f"local-{source.name}", tmp_path / f"ray-{source.name}"
        build_index(source, tiny_model_path, local, segment_tokens=300, segment_docs=1,
                    progress=False)
        build_with_ray(source, tiny_model_path, ray, segment_tokens=300, segment_docs=1,
                       workers=2, progress=False)
        assert_same_index(local, ray)
    with open_index(tmp_path / "ray-docs.parquet") as index:
        assert [d.name for d in index.documents()][3] == "docs.parquet:5"


# --- bad input: one line, nothing written ------------------------------------------------


def test_without_ray_the_error_names_the_install_command(monkeypatch, tmp_path, capsys,
                                                         tiny_model_path):
    from lstmsearch.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    out = tmp_path / "index"
    code = main(["index", "parens", "--model", str(tiny_model_path), "--out", str(out),
                 "--engine", "ray", "--limit", "3"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "pip install 'lstmsearch[ray]'" in err
    assert not out.exists()


def test_unreachable_address_is_named(tmp_path, tiny_model_path):
    from indexer.ray_engine import build_with_ray

    out = tmp_path / "index"
    with pytest.raises(BuildError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:9"):
        build_with_ray("parens", tiny_model_path, out, limit=3, address="127.0.0.1:9")
    assert not out.exists()


def test_ray_flags_need_the_ray_engine(capsys, tmp_path, tiny_model_path):
    from lstmsearch.cli import main

    code = main(["index", "parens", "--model", str(tiny_model_path), "--out",
                 str(tmp_path / "i"), "--workers", "2"])
    assert code == 2 and "--workers goes with --engine ray" in capsys.readouterr().err


def test_a_worker_that_cannot_see_the_index_or_the_model_is_named(tmp_path, tiny_model_path):
    from indexer.ray_engine import check_worker
    from lstmsearch.models import file_sha256

    sha = file_sha256(tiny_model_path)
    probe = tmp_path / "probe"
    probe.write_text("nonce")
    assert check_worker(str(tmp_path), str(probe), "nonce", str(tiny_model_path), sha) is None
    elsewhere = check_worker("/shared/idx", str(tmp_path / "missing"), "nonce", None, None)
    assert "cannot see the output directory /shared/idx" in elsewhere
    assert "cannot see" in check_worker(str(tmp_path), str(probe), "other", None, None)
    missing = check_worker(str(tmp_path), str(probe), "nonce", "/nowhere/model.pt", sha)
    assert "has no model file /nowhere/model.pt" in missing
    other = make_tiny_model(tmp_path / "other.pt", tiny_parens(4), seed=9)
    assert "sha256" in check_worker(str(tmp_path), str(probe), "nonce", str(other), sha)


def test_a_worker_problem_stops_the_build_before_anything_is_written(
        ray_runtime, monkeypatch, tmp_path, tiny_corpus, tiny_model_path):
    from indexer import ray_engine

    problem = "worker node-7 cannot see the output directory /x (it must be shared)"
    monkeypatch.setattr(ray_engine, "worker_problems", lambda *a: [problem])
    out = tmp_path / "index"
    with pytest.raises(BuildError, match="node-7 cannot see the output directory") as info:
        ray_engine.build_with_ray(tiny_corpus, tiny_model_path, out, progress=False)
    assert len(str(info.value).splitlines()) == 1
    assert not out.exists()


def test_the_real_node_check_passes_here(ray_runtime, tmp_path, tiny_model_path):
    from indexer.ray_engine import Runtime, worker_problems
    from lstmsearch.models import file_sha256

    runtime = Runtime(ray_runtime, started=False)
    assert worker_problems(runtime, tmp_path, str(tiny_model_path),
                           file_sha256(tiny_model_path)) == []
    assert list((tmp_path / "build").iterdir()) == []  # the probe is removed


def test_append_with_another_model_changes_nothing(ray_runtime, ray_index, tmp_path,
                                                   tiny_model_path):
    from indexer.ray_engine import build_with_ray

    index = tmp_path / "index"
    shutil.copytree(ray_index, index)
    before = {p.relative_to(index): p.stat().st_mtime_ns for p in index.rglob("*")}
    other = make_tiny_model(tmp_path / "other.pt", tiny_parens(4), seed=9)
    with pytest.raises(BuildError, match="is not the model of index") as info:
        build_with_ray(tiny_parens(3, seed=7), other, index, append=True, progress=False)
    assert len(str(info.value).splitlines()) == 1
    after = {p.relative_to(index): p.stat().st_mtime_ns for p in index.rglob("*")}
    assert after == before
    assert_same_index(ray_index, index)


def test_bad_numbers_are_refused(tmp_path, tiny_model_path):
    from indexer.ray_engine import build_with_ray

    for kwargs, name in (({"workers": 0}, "workers"), ({"gpus_per_worker": -1}, "gpus_per")):
        with pytest.raises(BuildError, match=name):
            build_with_ray("parens", tiny_model_path, tmp_path / "i", **kwargs)
    assert not (tmp_path / "i").exists()



def test_ray_computes_the_tracks_a_local_build_does(ray_runtime, tmp_path):
    """A code corpus through both engines: the same computed tracks, the same index."""
    from indexer.ray_engine import build_with_ray

    folder = tmp_path / "code"
    folder.mkdir()
    files = {"a.py": 'def f(x):\n    return (x, "s)")  # (\n', "b.py": "s = '''open\n",
             "c.py": "y = [1,\n     2]\n"}
    for name, text in files.items():
        (folder / name).write_text(text)
    tokenizer = train_tokenizer("char", [*files.values()])
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=4, hidden=6,
                                      layers=1))
    save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    local = build_index(str(folder), tmp_path / "m.pt", tmp_path / "local", progress=False)
    ray = build_with_ray(str(folder), tmp_path / "m.pt", tmp_path / "ray", workers=2,
                         progress=False)
    assert (ray.tracks, ray.untokenized) == (local.tracks, local.untokenized) == ("code", 1)
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    with open_index(tmp_path / "ray") as index:
        assert "in_string" in index.track_names()


def test_ray_stores_an_attention_models_attention_as_a_local_build_does(
        ray_runtime, tmp_path, tiny_corpus):
    from indexer.ray_engine import build_with_ray

    tokenizer = train_tokenizer("char", [d.text for d in tiny_corpus.documents])
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=4, hidden=6,
                                      layers=1, attention=5))
    save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    build_index(tiny_corpus, tmp_path / "m.pt", tmp_path / "local", **TINY_SHARD,
                progress=False)
    build_with_ray(tiny_corpus, tmp_path / "m.pt", tmp_path / "ray", **TINY_SHARD, workers=2,
                   progress=False)
    assert_same_index(tmp_path / "local", tmp_path / "ray")
    with open_index(tmp_path / "ray") as index:
        assert "attention_entropy" in index.track_names()
