"""Opening a file never runs code from it: a checkpoint (or an index's model.pt, or a
TorchScript archive) that carries a pickled Python object is refused with a one-line error
naming the file, and the object's code never runs."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from lstmsearch.cli import main
from lstmsearch.models import load_model, read_checkpoint, save_checkpoint

MODELS = Path(__file__).resolve().parent.parent / "data" / "models"


class Payload:
    """Unpickling this object would create the file `marker` (what an attacker's command
    would do); a safe loader never gets that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A file that looks like an lstmsearch checkpoint, with a payload among its entries."""
    torch.save({"format": 1, "config": {}, "state_dict": {}, "tokenizer": "{}",
                "meta": {"note": Payload(marker)}}, path)
    return path


def evil_pickle(path: Path, marker: Path) -> Path:
    """A raw (pre-zip) pickle file with a payload."""
    path.write_bytes(pickle.dumps({"format": 1, "x": Payload(marker)}))
    return path


def evil_torchscript(path: Path, marker: Path) -> Path:
    """A zip archive laid out like a TorchScript file, its pickles carrying a payload."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Payload(marker), protocol=2))
        z.writestr("evil/constants.pkl", pickle.dumps((Payload(marker),), protocol=2))
        z.writestr("evil/code/__torch__.py", "import os\n")
        z.writestr("evil/version", "3\n")
    return path


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("make", [evil_checkpoint, evil_pickle])
def test_pickled_payload_is_refused_and_never_runs(tmp_path, make) -> None:
    marker = tmp_path / "marker"
    path = make(tmp_path / "evil.pt", marker)
    for load in (read_checkpoint, load_model):
        with pytest.raises(ValueError) as caught:
            load(path)
        message = str(caught.value)
        assert str(path) in message and "\n" not in message
        assert "refused without running anything" in message
    assert not marker.exists()


def test_index_command_refuses_an_evil_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    evil_checkpoint(tmp_path / "evil.pt", marker)
    (tmp_path / "corpus.txt").write_text("(())()\n", encoding="utf-8")
    code = main(["index", "corpus.txt", "--model", "evil.pt", "--out", "X"])
    line = one_line_error(capsys.readouterr().err)
    assert code == 2
    assert line.startswith("lstmsearch index: error: evil.pt is not a safe lstmsearch checkpoint")
    assert not marker.exists()
    assert not (tmp_path / "X" / "index.duckdb").exists()


def test_torchscript_archive_with_a_payload_is_refused(tmp_path, capsys, monkeypatch) -> None:
    from lstmsearch.adapters import AdapterError, is_torchscript, load_adapter

    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "marker"
    path = evil_torchscript(tmp_path / "evil_ts.pt", marker)
    assert is_torchscript(path)  # it takes the TorchScript route ...
    with pytest.raises(AdapterError) as caught:
        load_adapter(path, tokenizer=object())
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    (tmp_path / "corpus.txt").write_text("(())()\n", encoding="utf-8")
    (tmp_path / "tok.json").write_text("{}", encoding="utf-8")
    code = main(["index", "corpus.txt", "--model", "evil_ts.pt", "--tokenizer", "tok.json",
                 "--out", "X"])
    line = one_line_error(capsys.readouterr().err)
    assert code == 2 and "evil_ts.pt" in line
    assert not marker.exists()  # ... and its pickles are never run


@pytest.fixture
def evil_index(tmp_path, tiny_index_path) -> tuple[Path, Path]:
    """A copy of the tiny index whose model.pt carries a payload."""
    index = tmp_path / "index"
    shutil.copytree(tiny_index_path, index)
    marker = tmp_path / "marker"
    evil_checkpoint(index / "model.pt", marker)
    return index, marker


def test_analyze_refuses_an_index_with_an_evil_model(evil_index, capsys) -> None:
    index, marker = evil_index
    code = main(["analyze", "surprisal", str(index), "--limit", "1"])
    line = one_line_error(capsys.readouterr().err)
    assert code == 2 and str(index / "model.pt") in line
    assert not marker.exists()


def test_server_refuses_an_index_with_an_evil_model(evil_index) -> None:
    from lstmsearch.index import open_index
    from server.fetch import Shared

    index, marker = evil_index
    try:
        with open_index(index) as opened:
            Shared(opened).model()
    except ValueError as exc:  # refused when opened, or when the model is first needed
        assert "model.pt" in str(exc) and "\n" not in str(exc)
    else:
        raise AssertionError("the evil model.pt was loaded")
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.pt")))
def test_shipped_models_hold_only_plain_data(name) -> None:
    """Every shipped checkpoint loads with weights_only=True (what read_checkpoint uses)."""
    payload = torch.load(MODELS / name, map_location="cpu", weights_only=True)
    assert payload["format"] == 1 and isinstance(payload["tokenizer"], str)
    assert load_model(MODELS / name).config.vocab_size > 0


def test_save_refuses_objects_that_would_need_pickle(tmp_path, tiny_model_path) -> None:
    loaded = load_model(tiny_model_path)
    with pytest.raises(TypeError, match=r"\['meta'\]\['when'\] is a PosixPath"):
        save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.tokenizer,
                        meta={"when": Path("x")})
    save_checkpoint(tmp_path / "m.pt", loaded.model, loaded.tokenizer,
                    meta={"a": [1, 2.5, None, "x", (True,)]})
    assert read_checkpoint(tmp_path / "m.pt")["meta"]["a"][:4] == [1, 2.5, None, "x"]
