"""Training lowers the loss, writes one resumable checkpoint, and refuses bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstmsearch.models import LanguageModel, ModelConfig, load_model, read_checkpoint
from lstmsearch.train import (
    IGNORE,
    TrainConfig,
    document_lanes,
    encode_documents,
    evaluate,
    reset_state,
    train,
)


@pytest.fixture()
def corpus_dir(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        # a learnable language: "ab" repeated with some noise
        text = "".join("ab"[j % 2] if rng.random() > 0.05 else "c" for j in range(300))
        (folder / f"doc{i:02d}.txt").write_text(text)
    return folder


def small_config(corpus, **kw) -> TrainConfig:
    base = dict(corpus=str(corpus), hidden=16, layers=1, embed_dim=8, seq_len=32, batch=4,
                lr=0.02, val_fraction=0.2, checkpoint_every=10)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_training_lowers_validation_perplexity(corpus_dir, tmp_path, arch):
    out = tmp_path / "m.pt"
    config = small_config(corpus_dir, arch=arch, epochs=3)
    # perplexity of the untrained model, measured the same way
    torch.manual_seed(0)
    result = train(config, out)
    assert result.history[0]["val_perplexity"] > result.history[-1]["val_perplexity"]
    loaded = load_model(out)
    corpus_texts = [p.read_text() for p in sorted(corpus_dir.iterdir())]
    data = document_lanes(encode_documents(loaded.tokenizer, corpus_texts), 4, 32)
    trained_ppl = evaluate(loaded.model, data)
    untrained = type(loaded.model)(loaded.config)
    assert trained_ppl < 0.7 * evaluate(untrained, data)
    assert trained_ppl < 2.0  # "abab..." is nearly deterministic


def test_checkpoint_is_one_file_with_everything(corpus_dir, tmp_path):
    out = tmp_path / "m.pt"
    train(small_config(corpus_dir, steps=5), out)
    payload = read_checkpoint(out)
    assert {"config", "state_dict", "tokenizer", "meta", "train_state"} <= set(payload)
    loaded = load_model(out)
    assert loaded.tokenizer.kind == "char"
    assert loaded.config.vocab_size == loaded.tokenizer.vocab_size
    assert len(loaded.sha256) == 64


def test_resume_continues_from_the_saved_step(corpus_dir, tmp_path):
    straight = tmp_path / "straight.pt"
    stopped = tmp_path / "stopped.pt"
    train(small_config(corpus_dir, steps=20), straight)
    train(small_config(corpus_dir, steps=10), stopped)
    result = train(small_config(corpus_dir, steps=20), stopped, resume=True)
    assert result.steps == 20
    # the resumed run restarts the carried recurrent state from zero, so weights differ a
    # little, but it continued (step count and optimizer state) rather than starting over
    ts = read_checkpoint(stopped)["train_state"]
    assert ts["step"] == 20
    assert ts["optimizer"]["state"][0]["step"].item() == 20


def test_bidirectional_model_trains(corpus_dir, tmp_path):
    result = train(small_config(corpus_dir, bidirectional=True, epochs=2), tmp_path / "b.pt")
    assert result.history[-1]["val_perplexity"] < result.history[0]["val_perplexity"] * 1.05
    assert load_model(tmp_path / "b.pt").config.state_dim == 32


def test_bad_settings_are_refused(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match="seq_len"):
        small_config(corpus_dir, seq_len=0)
    with pytest.raises(ValueError, match="arch"):
        train(small_config(corpus_dir, arch="transformer", steps=1), tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(small_config(corpus_dir), tmp_path / "missing.pt", resume=True)
    with pytest.raises(ValueError, match="not a readable"):
        (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
        load_model(tmp_path / "junk.pt")


# ---------------------------------------------------------------------------------------------
# Documents in lanes, each read from a zero state


def lanes_reference(docs, batch, seq_len, placed):
    """Inputs and targets of each lane written out document by document, slowly: the
    document placed at window w of a lane fills that lane from token w x seq_len on, and
    each of its tokens but the last is followed by its successor in the same document."""
    batch = len(placed)
    width = max(w * seq_len + len(docs[d]) for lane in placed for d, w in lane)
    ids = np.full((batch, width), IGNORE)
    targets = np.full((batch, width), IGNORE)
    owner = np.full((batch, width), -1)
    for b, lane in enumerate(placed):
        for d, w in lane:
            for i, token in enumerate(docs[d]):
                at = w * seq_len + i
                assert owner[b, at] == -1, "two documents share a position"
                ids[b, at], owner[b, at] = token, d
                if i + 1 < len(docs[d]):
                    targets[b, at] = docs[d][i + 1]
    return ids, targets, owner


def random_docs(rng, n, seq_len):
    """Documents of adversarial lengths: 2 tokens, exact multiples of the window, one over."""
    lengths = [int(rng.choice([2, 3, seq_len, seq_len + 1, 2 * seq_len, rng.integers(2, 5 * seq_len)]))
               for _ in range(n)]
    return [rng.integers(1, 50, size=k) for k in lengths]


@pytest.mark.parametrize("seed", range(25))
def test_document_lanes_match_a_reference_and_never_cross_a_document(seed):
    rng = np.random.default_rng(seed)
    seq_len = int(rng.integers(1, 9))
    docs = random_docs(rng, int(rng.integers(1, 30)), seq_len)
    batch = int(rng.integers(1, 9))
    data = document_lanes(docs, batch, seq_len, order_seed=None if seed % 2 else seed)

    # every document placed once, each at a window boundary of one lane
    assert sorted(d for lane in data.placed for d, _ in lane) == list(range(len(docs)))
    assert len(data.placed) == min(batch, len(docs))
    ids, targets, owner = lanes_reference(docs, batch, seq_len, data.placed)
    width = ids.shape[1]
    got_ids, got_targets = data.ids.numpy(), data.targets.numpy()
    assert got_ids.shape[1] == data.n_windows * seq_len >= width
    np.testing.assert_array_equal(got_ids[:, :width], ids)
    np.testing.assert_array_equal(got_targets[:, :width], targets)
    assert (got_ids[:, width:] == IGNORE).all() and (got_targets[:, width:] == IGNORE).all()
    assert data.n_targets == sum(len(d) - 1 for d in docs)

    # the state reaching a position was built only from tokens of that position's document:
    # walking each lane, the positions read since the last reset hold one document at most
    starts = data.starts.numpy()
    owner = np.pad(owner, ((0, 0), (0, got_ids.shape[1] - width)), constant_values=-1)
    for b in range(owner.shape[0]):
        seen = set()
        for w in range(data.n_windows):
            if starts[b, w]:
                seen = set()
            for at in range(w * seq_len, (w + 1) * seq_len):
                if owner[b, at] >= 0:
                    seen.add(int(owner[b, at]))
                    assert seen == {int(owner[b, at])}, f"lane {b} mixes documents {seen}"
        # a document's first window always starts from zero
        for _, w in data.placed[b]:
            assert starts[b, w]


def test_document_lanes_refuse_nothing_to_train_on():
    with pytest.raises(ValueError, match="no documents"):
        document_lanes([], 4, 8)


def read_lanes(model, data):
    """Top-layer outputs (B, W x L, H) of `model` over `data` window by window, the state
    carried and reset the way training carries it."""
    outputs, state = [], None
    for w in range(data.n_windows):
        x, _, starts = data.window(w)
        state = reset_state(state, starts)
        top, state = model.run_stack(model.forward_layers, x, state)
        outputs.append(top)
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_a_documents_states_in_training_equal_a_fresh_run_on_it_alone(arch):
    """The first token of every document, and every token after it, gets the state a run on
    that document alone from a zero state gives (as an index computes it), although the
    lane read other documents before it."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(arch=arch, vocab_size=50, hidden=12, layers=2, embed_dim=6)).eval()
    rng = np.random.default_rng(1)
    docs = random_docs(rng, 17, 5)
    data = document_lanes(docs, 3, 5, order_seed=4)
    assert any(len(lane) > 2 for lane in data.placed)  # lanes hold documents one after another
    with torch.no_grad():
        top = read_lanes(model, data)
        for b, lane in enumerate(data.placed):
            for d, w in lane:
                alone, _ = model.run_stack(model.forward_layers, torch.as_tensor(docs[d])[None])
                at = w * data.seq_len
                got = top[b, at : at + len(docs[d])]
                torch.testing.assert_close(got[0], alone[0, 0], rtol=0, atol=1e-6)
                torch.testing.assert_close(got, alone[0], rtol=0, atol=1e-5)


def test_validation_perplexity_is_the_mean_over_documents_read_alone():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(arch="lstm", vocab_size=50, hidden=10, layers=1, embed_dim=4))
    docs = random_docs(np.random.default_rng(2), 11, 4)
    total, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            x = torch.as_tensor(doc)[None]
            logits, _ = model(x[:, :-1])
            total += torch.nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
            count += len(doc) - 1
    expected = np.exp(total / count)
    for batch in (1, 3, 8):
        assert evaluate(model, document_lanes(docs, batch, 4)) == pytest.approx(expected, rel=1e-5)


def test_slim_checkpoint_drops_the_optimizer_and_still_resumes(corpus_dir, tmp_path):
    full, slim = tmp_path / "full.pt", tmp_path / "slim.pt"
    train(small_config(corpus_dir, steps=10, hidden=64), full)
    train(small_config(corpus_dir, steps=10, hidden=64), slim, slim=True)
    assert read_checkpoint(slim)["train_state"]["optimizer"] is None
    assert read_checkpoint(full)["train_state"]["optimizer"] is not None
    assert slim.stat().st_size < 0.5 * full.stat().st_size
    for k, v in load_model(full).model.state_dict().items():  # same run, same weights
        assert torch.equal(v, load_model(slim).model.state_dict()[k])
    result = train(small_config(corpus_dir, steps=15, hidden=64), slim, resume=True)
    assert result.steps == 15
    ts = read_checkpoint(slim)["train_state"]
    assert ts["step"] == 15 and ts["optimizer"]["state"][0]["step"].item() == 5


def test_a_checkpoint_along_the_way_finishes_as_the_shorter_run(corpus_dir, tmp_path,
                                                                monkeypatch):
    """No learning-rate schedule: the checkpoint at step 10 of a 20-step run holds the
    weights of a 10-step run, and resuming it with steps=10 writes that run's end."""
    import shutil

    import lstmsearch.train as train_module

    short, long_ = tmp_path / "short.pt", tmp_path / "long.pt"
    train(small_config(corpus_dir, steps=10), short, slim=True)
    copies = []
    real_save = train_module.save_checkpoint

    def save_and_keep(out, *args, **kwargs):
        real_save(out, *args, **kwargs)
        copies.append(shutil.copy(out, tmp_path / f"copy{len(copies)}.pt"))

    monkeypatch.setattr(train_module, "save_checkpoint", save_and_keep)
    train(small_config(corpus_dir, steps=20, checkpoint_every=10), long_)
    monkeypatch.undo()
    along = copies[0]
    assert read_checkpoint(along)["train_state"]["step"] == 10
    assert read_checkpoint(along)["train_state"]["history"] == []  # no validation yet
    with pytest.raises(ValueError, match="at step 20, past the 10 steps asked"):
        train(small_config(corpus_dir, steps=10), long_, resume=True)
    result = train(small_config(corpus_dir, steps=10), along, resume=True, slim=True)
    assert result.steps == 10
    assert result.val_perplexity == pytest.approx(read_checkpoint(short)["meta"]["val_perplexity"])
    assert read_checkpoint(along)["train_state"]["optimizer"] is None
    for k, v in load_model(short).model.state_dict().items():
        assert torch.equal(v, load_model(along).model.state_dict()[k])


def test_a_resumed_run_goes_on_at_a_new_learning_rate_only_when_given(corpus_dir, tmp_path):
    stopped = tmp_path / "stopped.pt"
    train(small_config(corpus_dir, steps=10), stopped)
    before = load_model(stopped).model.state_dict()
    # the saved rate (0.02) unless a new one is given: a settings change on resume is ignored
    train(small_config(corpus_dir, steps=12, lr=0.5), stopped, resume=True)
    ts = read_checkpoint(stopped)["train_state"]
    assert ts["config"]["lr"] == 0.02 and ts["optimizer"]["param_groups"][0]["lr"] == 0.02
    moved = load_model(stopped).model.state_dict()
    assert any(not torch.equal(before[k], moved[k]) for k in before)
    # a rate so small that Adam's steps (about lr each) leave the weights where they were
    train(small_config(corpus_dir, steps=14), stopped, resume=True, resume_lr=1e-12)
    ts = read_checkpoint(stopped)["train_state"]
    assert ts["config"]["lr"] == 1e-12 and ts["optimizer"]["param_groups"][0]["lr"] == 1e-12
    after = load_model(stopped).model.state_dict()
    for k in moved:
        torch.testing.assert_close(after[k], moved[k], rtol=0, atol=1e-9)


def test_cli_resume_takes_a_learning_rate(corpus_dir, tmp_path):
    from lstmsearch.cli import main

    out = tmp_path / "m.pt"
    main(["train", str(corpus_dir), "--hidden", "8", "--embed", "4", "--seq-len", "16",
          "--batch", "2", "--steps", "3", "--out", str(out)])
    assert read_checkpoint(out)["train_state"]["config"]["lr"] == 3e-3
    main(["train", "--resume", "--steps", "5", "--lr", "0.0005", "--out", str(out), "x"])
    assert read_checkpoint(out)["train_state"]["config"]["lr"] == 0.0005
