"""Models: shapes, checkpoint round trip, and what the shipped models learned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lstmsearch.corpus import load_corpus
from lstmsearch.extract import extract
from lstmsearch.models import (
    LanguageModel,
    ModelConfig,
    load_model,
    save_checkpoint,
)
from lstmsearch.tokenize import train_tokenizer
from lstmsearch.tracks import code_tracks
from lstmsearch.train import TrainConfig, split_documents

MODELS = Path(__file__).resolve().parent.parent / "data" / "models"


@pytest.mark.parametrize("arch", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_shapes(arch, bidirectional):
    config = ModelConfig(arch=arch, vocab_size=13, embed_dim=4, hidden=6, layers=3,
                         bidirectional=bidirectional)
    model = LanguageModel(config)
    ids = torch.randint(0, 13, (2, 9))
    logits, state = model(ids)
    assert logits.shape == (2, 9, 13)
    assert len(state) == 3
    if bidirectional:
        assert model.backward_logits(ids).shape == (2, 9, 13)
    assert config.state_dim == 6 * (2 if bidirectional else 1)


def test_backward_stack_never_sees_the_token_it_predicts():
    config = ModelConfig(arch="lstm", vocab_size=7, embed_dim=3, hidden=5, layers=2, bidirectional=True)
    model = LanguageModel(config).eval()
    ids = torch.randint(0, 7, (1, 8))
    changed = ids.clone()
    changed[0, 3] = (ids[0, 3] + 1) % 7
    a, b = model.backward_logits(ids), model.backward_logits(changed)
    # position t predicts token t-1 from tokens t..end: changing token 3 affects positions <= 3
    assert torch.allclose(a[0, 4:], b[0, 4:])
    assert not torch.allclose(a[0, :4], b[0, :4])


def test_bad_config_names_the_value():
    with pytest.raises(ValueError, match="'rnn'"):
        ModelConfig(arch="rnn", vocab_size=3)
    with pytest.raises(ValueError, match="hidden"):
        ModelConfig(arch="lstm", vocab_size=3, hidden=0)
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(arch="gru", vocab_size=3, dropout=1.5)


def test_checkpoint_round_trip(tmp_path):
    tok = train_tokenizer("char", ["hello world"])
    model = LanguageModel(ModelConfig(arch="gru", vocab_size=tok.vocab_size, hidden=8, layers=2))
    save_checkpoint(tmp_path / "m.pt", model, tok, meta={"note": "x"})
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config == model.config
    assert loaded.meta == {"note": "x"}
    assert loaded.tokenizer.encode("hello").ids.tolist() == tok.encode("hello").ids.tolist()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k])


def best_correlation(states: list[dict[str, np.ndarray]], names: list[str],
                     track: np.ndarray) -> float:
    """The largest |Pearson r| of any unit of `names` with `track` (finite values only)."""
    ok = np.isfinite(track)
    best = 0.0
    for name in names:
        values = np.concatenate([s[name] for s in states])[ok]
        centered = values - values.mean(axis=0)
        d = track[ok] - track[ok].mean()
        r = centered.T @ d / (np.linalg.norm(centered, axis=0) * np.linalg.norm(d) + 1e-12)
        best = max(best, float(np.abs(r).max()))
    return best


def start_and_rest_surprisal(model: LanguageModel, docs: list[np.ndarray]) -> tuple[float, float]:
    """Mean surprisal (nats) of the tokens 1-9 of each document (its first 10 tokens; the
    first has none) and of the tokens after them, each document run alone from a zero state."""
    first, rest = [], []
    with torch.no_grad():
        for ids in docs:
            x = torch.as_tensor(np.asarray(ids), dtype=torch.long)[None]
            logits, _ = model(x[:, :-1])
            nats = torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="none")
            first.append(nats[:9].numpy())
            rest.append(nats[9:].numpy())
    return float(np.concatenate(first).mean()), float(np.concatenate(rest).mean())


def test_shipped_parens_model_has_a_depth_unit_and_starts_documents_well():
    """On held-out documents (another seed) some unit's c tracks nesting depth, |r| >= 0.9,
    and a document's first tokens are predicted about as well as the rest (the model was
    trained from a zero state per document, as an index runs it)."""
    loaded = load_model(MODELS / "parens-lstm.pt")
    held_out = load_corpus("parens", n_docs=150, seed=987)
    encodings = [loaded.tokenizer.encode(d.text) for d in held_out.documents]
    depth = np.concatenate([d.char_tracks["depth"][e.starts]
                            for d, e in zip(held_out.documents, encodings, strict=True)])
    names = [f"layers.{i}.c" for i in range(loaded.config.layers)]
    states = extract(loaded.model, [e.ids for e in encodings], names)
    assert best_correlation(states, names, depth.astype(np.float64)) >= 0.9
    first, rest = start_and_rest_surprisal(loaded.model.eval(), [e.ids for e in encodings])
    assert first <= 1.2 * rest


def test_shipped_stdlib_model_has_string_and_indent_units():
    """On held-out standard-library files (the validation split of its training), some unit
    follows the code tracks an index computes: in_string and indent, |r| >= 0.7."""
    loaded = load_model(MODELS / "stdlib-char-lstm.pt")
    _, held_out = split_documents(load_corpus("python-stdlib"), TrainConfig.val_fraction,
                                  TrainConfig.seed)
    texts = [t[:3000] for t in held_out[:40]]
    tracks = [code_tracks(t) for t in texts]
    kept = [i for i, t in enumerate(tracks) if not t.skipped]
    encodings = [loaded.tokenizer.encode(texts[i]) for i in kept]
    names = [f"layers.{i}.{k}" for i in range(loaded.config.layers) for k in ("h", "c")]
    states = extract(loaded.model, [e.ids for e in encodings], names)
    for track in ("in_string", "indent"):
        values = np.concatenate([tracks[i].values[track][e.starts]
                                 for i, e in zip(kept, encodings, strict=True)])
        assert best_correlation(states, names, values.astype(np.float64)) >= 0.7, track


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.pt")), ids=lambda p: p.name)
def test_shipped_models_are_small_and_slim(path):
    """Each shipped model stays under 5 MB: weights only, no optimizer state."""
    assert path.stat().st_size < 5_000_000
    assert load_model(path).meta.get("val_perplexity") is not None
