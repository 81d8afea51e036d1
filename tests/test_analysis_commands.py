"""`lstmsearch analyze ...` end to end on a tiny checkpoint: every sub-command runs, prints
JSON that parses, and reports bad input as one line with exit status 2."""

from __future__ import annotations

import json

import pytest
import torch

from lstmsearch.cli import main
from lstmsearch.models import LanguageModel, ModelConfig, save_checkpoint
from lstmsearch.tokenize import train_tokenizer

TEXT = "((1)(2((3))))(4)((5))"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = train_tokenizer("char", [TEXT, "0123456789()"])
    config = ModelConfig(arch="lstm", vocab_size=tokenizer.vocab_size, embed_dim=4, hidden=6, layers=2)
    path = tmp_path_factory.mktemp("model") / "m.pt"
    save_checkpoint(path, LanguageModel(config), tokenizer)
    return str(path)


@pytest.mark.parametrize("command,key", [
    (["surprisal", "--top", "3", "--width", "4", "--min-count", "1"], "worst_tokens"),
    (["gradients", "--max-lag", "4", "--positions", "5"], "profiles"),
    (["saliency", "--position", "5", "--method", "integrated_gradients", "--steps", "8"], "saliency"),
    (["trajectory", "--state", "layers.0.c", "--start", "2", "--end", "12"], "points"),
    (["gates", "--layer", "1", "--units", "0,3"], "stats"),
    (["units", "--clusters", "2", "--words", "6"], "co_clustering"),
])
def test_each_analysis_prints_json(checkpoint, capsys, command, key):
    assert main(["analyze", command[0], checkpoint, "--text", TEXT, "--json", *command[1:]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert key in result
    # and the text rendering works too
    assert main(["analyze", command[0], checkpoint, "--text", TEXT, *command[1:]]) == 0
    assert capsys.readouterr().out.strip()


def test_weights_needs_no_documents(checkpoint, capsys):
    assert main(["analyze", "weights", checkpoint, "--json", "--bins", "4"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)["matrices"]]
    assert "layers.1.W_hf" in names


@pytest.mark.parametrize("args,message", [
    (["trajectory", "{ckpt}", "--text", TEXT, "--state", "layers.7.h"], "layer 7"),
    (["saliency", "{ckpt}", "--text", TEXT, "--doc", "3"], "document 3"),
    (["gates", "{ckpt}", "--text", TEXT, "--units", "0,x"], "--units"),
    (["surprisal", "{ckpt}"], "--text or --corpus"),
    (["weights", "/nonexistent/model.pt"], "not found"),
])
def test_bad_input_is_one_line_with_status_2(checkpoint, capsys, args, message):
    args = [a.replace("{ckpt}", checkpoint) for a in args]
    assert main(["analyze", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_an_index_is_a_source_and_its_stored_states_are_used(tiny_index_path, tiny_index, capsys):
    import numpy as np

    from lstmsearch.analysis import index_documents
    from lstmsearch.analysis.units import rank_units

    tok = index_documents(tiny_index)
    assert tok.n_docs == tiny_index.n_docs and tok.doc_starts[-1] == tiny_index.n_tokens
    assert "depth" in tok.tracks
    args = ["analyze", "units", str(tiny_index_path), "--state", "layers.0.c", "--track", "depth",
            "--top", "3", "--json"]
    assert main(args) == 0
    got = json.loads(capsys.readouterr().out)["correlation"]
    stored = np.asarray(tiny_index.states("layers.0.c"), dtype=np.float32)
    want = rank_units(stored, tiny_index.track("depth"), top=3)
    assert [c["unit"] for c in got] == [c.unit for c in want]
    assert [c["r"] for c in got] == pytest.approx([c.r for c in want])
    # a slice of the index keeps the index's global positions
    part = index_documents(tiny_index, range(2, 4))
    assert part.first_pos == tiny_index.doc_starts[2]
    with pytest.raises(ValueError, match="contiguous"):
        index_documents(tiny_index, [0, 2])
    assert main(["analyze", "surprisal", str(tiny_index_path), "--limit", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_tokens"] == tiny_index.doc_starts[3]
