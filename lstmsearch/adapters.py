"""Index your own recurrent model: an adapter around an `nn.Module` built on `nn.LSTM`/`nn.GRU`.

    lstmsearch index corpus.txt --model my_model.py:factory --out idx
    lstmsearch index corpus.txt --model tagger.ts --tokenizer my_model.py:tokenizer --out idx

The contract (docs/own-data.md has a worked example):

- `factory()` takes no arguments and returns `(model, tokenizer)`, or an object or dict with
  `model` and `tokenizer` (or an `encode` method of its own), and optionally
  `run(model, ids)` when the model is not simply called as `model(ids)`.
- The model, called as `model(ids)` with `ids` a LongTensor of shape (1, T) holding one
  document, runs its input stage (embeddings, ...) and its `nn.LSTM`/`nn.GRU` modules over
  the T tokens, each module once over the whole sequence.
- The tokenizer's `encode(text)` returns lstmsearch's `Encoding`, a `tokenizers` encoding
  (`ids`, `offsets`), a pair `(ids, offsets)` with one (start, end) character span per
  token, or just the ids; then each token's text (from `id_to_token`, `decode([id])` or the
  vocabulary) is looked up in the document, left to right. The vocabulary is read from
  `vocab()`/`vocab`, `get_vocab()` or `id_to_token`; without one the index lists the token
  texts it saw.

How the states are extracted: every `nn.LSTM`/`nn.GRU` of the model is found, in registration
order, and numbered in the index in that order, one index layer per layer of a module
(`layers.0.*`, `layers.1.*`, ...). While the model's own forward runs on a document, hooks
record the input (and the initial state, if the model passes one) that each recurrent module
receives. Each module's layers are then recomputed from that input with single-layer copies of
its weights, exactly like `lstmsearch.extract` (`h` from the fused kernel, `c` and the gates
from one batched recomputation), and the top layer's result is checked against the module's
own output. Whatever the model does between its recurrent modules (projections, residuals,
normalisation) is therefore taken as it is.

Supported: `nn.LSTM` and `nn.GRU` with any number of layers, `batch_first` or not, unbatched
input, with or without biases, an initial state given by the model, and bidirectional modules
(a layer's state is the forward units followed by the backward units, as in lstmsearch's own
models). The model runs in eval mode, so dropout is off. Refused with a message: `proj_size`,
packed sequences, a recurrent module called more than once per document (a step-by-step
decoding loop), `nn.RNN` and cell modules (`nn.LSTMCell`, ...), whose per-step states the
adapter cannot take from one call.

TorchScript: a scripted module takes no hooks, so for a `.pt`/`.ts` file saved with
`torch.jit.save` the recurrent modules must form a chain: the first reads the model's input
stage (its exported method `lstmsearch_input(ids)` if it has one, else its only `nn.Embedding`)
and each next one reads the previous one's output unchanged. The sizes are checked; a model
with other layers between its recurrent modules needs the Python module and a factory instead.
The tokenizer of a TorchScript model is given separately (`--tokenizer`).

Loading runs no code from a file: a TorchScript archive is read by `torch.jit.load`, whose
unpickler rebuilds only TorchScript types and refuses any Python object; lstmsearch's own
checkpoints are read with `torch.load(weights_only=True)` (`lstmsearch.models`). Only the
Python module named by a `module:factory` spec is imported, and that is code the user chose to
run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from lstmsearch.extract import GRU_GATES, LSTM_GATES, gru_layer, lstm_layer, parse_state_name
from lstmsearch.models import weights_sha256
from lstmsearch.tokenize import Encoding

RECURRENT = {"LSTM": "lstm", "GRU": "gru"}
UNSUPPORTED = {"RNN", "LSTMCell", "GRUCell", "RNNCell"}
CHECK_TOLERANCE = 1e-3
"""Largest difference allowed between recomputed states and a module's own output."""
SPEC = re.compile(r"^(?P<module>[^:]+):(?P<attr>[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)$")


class AdapterError(ValueError):
    """A user model, tokenizer or factory that the adapter cannot use, and why."""


@dataclass(frozen=True)
class RecurrentModule:
    """One `nn.LSTM`/`nn.GRU` of a user model, as found."""

    name: str  # its name in the model, e.g. "encoder.lstm"
    arch: str  # "lstm" or "gru"
    num_layers: int
    bidirectional: bool
    batch_first: bool
    input_size: int
    hidden: int
    first_layer: int  # index layer number of its layer 0

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def dim(self) -> int:
        """Units per layer as stored (both directions side by side)."""
        return self.hidden * self.directions


@dataclass(frozen=True)
class RecurrentLayer:
    """One layer of the index: layer `layer` of the module `module`."""

    index: int
    module: str
    layer: int
    arch: str
    dim: int

    @property
    def kinds(self) -> tuple[str, ...]:
        """Kinds this layer can store: h (and c), then the gates."""
        if self.arch == "lstm":
            return ("h", "c", *LSTM_GATES)
        return ("h", *GRU_GATES)

    @property
    def default_kinds(self) -> tuple[str, ...]:
        return ("h", "c") if self.arch == "lstm" else ("h",)


# --- loading -----------------------------------------------------------------------------


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether `path` is a file saved by `torch.jit.save` (a zip archive holding code)."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def is_adapter_spec(model: str | os.PathLike | None) -> bool:
    """Whether `--model` names a user model (`module:factory`, `file.py:factory` or a
    TorchScript file) rather than an lstmsearch checkpoint."""
    if model is None:
        return False
    text = str(model)
    if Path(text).is_file():
        return is_torchscript(text)
    return SPEC.match(text) is not None


def load_object(spec: str) -> Any:
    """The object named by `package.module:name` or `path/to/file.py:name`."""
    match = SPEC.match(spec)
    if match is None:
        raise AdapterError(f"bad model spec {spec!r}: write module.path:factory or "
                           "path/to/file.py:factory")
    module_part, attr = match["module"], match["attr"]
    if module_part.endswith(".py"):
        module = import_file(Path(module_part), spec)
    else:
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise AdapterError(f"cannot import {module_part!r} for {spec!r}: {exc}") from exc
        finally:
            if added:
                sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AdapterError(f"{module_part} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


def import_file(path: Path, spec: str) -> Any:
    """Import a Python file as a module (its folder is importable while it loads)."""
    if not path.is_file():
        raise AdapterError(f"model file {path} does not exist (from {spec!r})")
    name = "lstmsearch_user_" + re.sub(r"\W", "_", str(path.resolve()))
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise AdapterError(f"cannot import {path} (from {spec!r})")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise AdapterError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(folder)
    return module


def load_tokenizer(spec: Any) -> Any:
    """A tokenizer from an object, a JSON file (lstmsearch's or `tokenizers`') or a
    `module:name` spec (a tokenizer object, or a function returning one)."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        from lstmsearch.tokenize import Tokenizer

        text = path.read_text(encoding="utf-8")
        try:
            return Tokenizer.from_json(text)
        except ValueError:
            pass
        import tokenizers

        try:
            return tokenizers.Tokenizer.from_str(text)
        except Exception as exc:
            raise AdapterError(f"{path} is neither an lstmsearch nor a tokenizers JSON "
                               f"tokenizer: {exc}") from exc
    obj = load_object(str(spec))
    if not hasattr(obj, "encode") and callable(obj):
        obj = obj()
    return obj


def unpack_factory_result(result: Any, spec: str) -> tuple[Any, Any, Callable | None]:
    """(model, tokenizer, run) from what a factory returned."""
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return result[0], result[1], None
    if isinstance(result, nn.Module):
        return result, None, None
    if isinstance(result, dict):
        get = result.get
    else:
        def get(key, default=None):
            return getattr(result, key, default)
    model = get("model")
    if model is None:
        raise AdapterError(f"{spec} returned {type(result).__name__}: expected (model, "
                           "tokenizer) or an object with .model and .tokenizer")
    tokenizer = get("tokenizer")
    if tokenizer is None and get("encode") is not None:
        tokenizer = result
    return model, tokenizer, get("run")


def load_adapter(
    spec: str | os.PathLike,
    *,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
) -> ModelAdapter:
    """A `ModelAdapter` for `module:factory`, `file.py:factory` or a TorchScript file.

    `tokenizer` (an object, a JSON file or a `module:name` spec) is required for TorchScript
    and replaces the factory's tokenizer otherwise.
    """
    text = str(spec)
    run = None
    if Path(text).is_file() and is_torchscript(text):
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated but still what people ship
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(text, map_location="cpu")
        except Exception as exc:  # the archive's own unpickler refuses Python objects
            reason = " ".join(str(exc).split())[:200]
            raise AdapterError(f"cannot load TorchScript model {text}: {reason}") from None
        if tokenizer is None:
            raise AdapterError(f"TorchScript model {text} holds no tokenizer: give one with "
                               "--tokenizer (a tokenizer JSON file or module:name)")
        found_tokenizer = None
    else:
        factory = load_object(text)
        try:
            result = factory() if callable(factory) and not isinstance(factory, nn.Module) \
                else factory
        except Exception as exc:
            raise AdapterError(f"{text}() failed: {type(exc).__name__}: {exc}") from exc
        model, found_tokenizer, run = unpack_factory_result(result, text)
    if tokenizer is not None:
        found_tokenizer = load_tokenizer(tokenizer)
    if found_tokenizer is None:
        raise AdapterError(f"{text} gave a model but no tokenizer: return (model, tokenizer) "
                           "or give --tokenizer")
    if not isinstance(model, nn.Module):
        raise AdapterError(f"{text} gave a {type(model).__name__}, not a torch nn.Module")
    return ModelAdapter(model, found_tokenizer, source=text, run=run, device=device)


# --- the model ---------------------------------------------------------------------------


def recurrent_kind(module: nn.Module) -> str | None:
    """'LSTM', 'GRU', another recurrent type's name, or None for other modules."""
    if isinstance(module, torch.jit.ScriptModule):
        name = getattr(module, "original_name", "")
        return name if name in RECURRENT or name in UNSUPPORTED else None
    for cls, name in ((nn.LSTM, "LSTM"), (nn.GRU, "GRU"), (nn.RNN, "RNN"),
                      (nn.LSTMCell, "LSTMCell"), (nn.GRUCell, "GRUCell"), (nn.RNNCell, "RNNCell")):
        if isinstance(module, cls):
            return name
    return None


def describe_module(name: str, module: nn.Module, arch: str, first_layer: int
                    ) -> RecurrentModule:
    """Shape of one recurrent module, read from its parameters."""
    params = dict(module.named_parameters(recurse=False))
    label = name or "the model"
    if any(p.startswith("weight_hr") for p in params):
        raise AdapterError(f"{label} is an nn.LSTM with proj_size: not supported")
    num_layers = sum(1 for p in params if re.fullmatch(r"weight_ih_l\d+", p))
    if num_layers == 0:
        raise AdapterError(f"{label} has no weight_ih_l0 parameter: not an nn.{arch.upper()}")
    return RecurrentModule(
        name=name, arch=arch, num_layers=num_layers,
        bidirectional="weight_ih_l0_reverse" in params,
        batch_first=bool(getattr(module, "batch_first", False)),
        input_size=int(params["weight_ih_l0"].shape[1]),
        hidden=int(params["weight_hh_l0"].shape[1]),
        first_layer=first_layer,
    )


def single_layer(module: nn.Module, info: RecurrentModule, k: int, reverse: bool) -> nn.Module:
    """A one-layer, batch-first eager copy of layer `k` (one direction) of `module`."""
    params = dict(module.named_parameters(recurse=False))
    suffix = f"_l{k}" + ("_reverse" if reverse else "")
    w_ih, w_hh = params["weight_ih" + suffix], params["weight_hh" + suffix]
    cls = nn.LSTM if info.arch == "lstm" else nn.GRU
    rnn = cls(int(w_ih.shape[1]), int(w_hh.shape[1]), batch_first=True)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(w_ih)
        rnn.weight_hh_l0.copy_(w_hh)
        for bias in ("bias_ih", "bias_hh"):
            source = params.get(bias + suffix)
            target = getattr(rnn, bias + "_l0")
            target.copy_(source) if source is not None else target.zero_()
    return rnn.to(device=w_ih.device, dtype=w_ih.dtype).eval()


class ModelAdapter:
    """A user model and tokenizer, seen as lstmsearch sees its own: layers, kinds, exact
    states per token (`extract`) and token spans (`encode`)."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, source: str = "",
                 run: Callable[[nn.Module, torch.Tensor], Any] | None = None,
                 device: str | torch.device | None = None):
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.source = source or type(model).__name__
        self.scripted = isinstance(model, torch.jit.ScriptModule)
        self.run = run or (lambda m, ids: m(ids))
        self.tokenizer = TokenizerAdapter(tokenizer)
        self.modules: list[tuple[RecurrentModule, nn.Module]] = []
        layers: list[RecurrentLayer] = []
        for name, module in model.named_modules():
            kind = recurrent_kind(module)
            if kind is None:
                continue
            if kind in UNSUPPORTED:
                raise AdapterError(
                    f"{name or 'the model'} is an nn.{kind}: not supported (the adapter reads "
                    "nn.LSTM and nn.GRU modules that run over a whole sequence)")
            info = describe_module(name, module, RECURRENT[kind], len(layers))
            self.modules.append((info, module))
            layers.extend(RecurrentLayer(info.first_layer + k, name, k, info.arch, info.dim)
                          for k in range(info.num_layers))
        if not self.modules:
            raise AdapterError(f"{self.source}: no nn.LSTM or nn.GRU module found in "
                               f"{type(model).__name__}")
        self.layers = tuple(layers)
        self._splits = {
            (info.first_layer + k, d): single_layer(module, info, k, reverse=d == 1)
            for info, module in self.modules
            for k in range(info.num_layers)
            for d in range(info.directions)
        }
        if self.scripted:
            self._input_stage = self.scripted_input_stage()

    def __repr__(self) -> str:
        return f"ModelAdapter({self.source!r}, layers={len(self.layers)})"

    @property
    def tokenizer_kind(self) -> str:
        return self.tokenizer.kind

    # --- what can be stored ----------------------------------------------------------------

    def state_dims(self) -> dict[str, int]:
        """Every storable state name -> its number of units."""
        return {f"layers.{lay.index}.{k}": lay.dim for lay in self.layers for k in lay.kinds}

    def state_names(self, kinds: Sequence[str] | None = None,
                    layers: Sequence[int] | None = None) -> list[str]:
        """Names to store: every chosen layer's h (and c for LSTM layers), or the `kinds`
        each layer has; checks that layers exist and that every kind exists somewhere."""
        n = len(self.layers)
        chosen = list(range(n)) if layers is None else list(layers)
        for layer in chosen:
            if not 0 <= layer < n:
                raise AdapterError(f"layer {layer} out of range: the model has layers 0..{n - 1}")
        names = []
        for layer in chosen:
            info = self.layers[layer]
            wanted = info.default_kinds if kinds is None else [k for k in kinds if k in info.kinds]
            names.extend(f"layers.{layer}.{k}" for k in wanted)
        for kind in kinds or ():
            if not any(kind in self.layers[layer].kinds for layer in chosen):
                raise AdapterError(f"no chosen layer has states of kind {kind!r}")
        return names

    def config(self, vocab_size: int) -> dict[str, Any]:
        """What the index records about the model (shown by `lstmsearch info`)."""
        archs = sorted({info.arch for info, _ in self.modules})
        return {
            "arch": "+".join(archs),
            "layers": len(self.layers),
            "hidden": max(lay.dim for lay in self.layers),
            "vocab_size": vocab_size,
            "bidirectional": any(info.bidirectional for info, _ in self.modules),
            "adapter": self.source,
            "modules": [
                {"name": info.name, "arch": info.arch, "layers": info.num_layers,
                 "hidden": info.hidden, "bidirectional": info.bidirectional}
                for info, _ in self.modules
            ],
        }

    def sha256(self) -> str:
        """Identity of the weights (whatever file they came from)."""
        return weights_sha256(self.model)

    # --- tokens ----------------------------------------------------------------------------

    def encode(self, text: str) -> Encoding:
        """Token ids and character spans of `text`."""
        return self.tokenizer.encode(text)

    def vocab(self) -> list[str] | None:
        """The tokenizer's vocabulary (index = token id), if it lists one."""
        return self.tokenizer.vocab()

    # --- states ----------------------------------------------------------------------------

    def extract(self, ids: Sequence[int] | np.ndarray,
                names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Exact states of one document: name -> float32 (len(ids), units)."""
        names = list(names) if names is not None else self.state_names()
        dims = self.state_dims()
        wanted: dict[int, set[str]] = {}
        for name in names:
            if name not in dims:
                raise AdapterError(f"state {name} does not exist in {self.source}; "
                                   f"it has {', '.join(dims)}")
            layer, kind = parse_state_name(name)
            wanted.setdefault(layer, set()).add(kind)
        device = next(iter(self._splits.values())).weight_ih_l0.device
        ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64)).reshape(1, -1).to(device)
        states: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            if self.scripted:
                x = self._input_stage(ids_t)
                for info, _ in self.modules:
                    x = self.run_module(info, self.check_steps(info, x, ids_t), None, wanted, states)
            else:
                for info, x, hx, own in self.capture(ids_t):
                    top = self.run_module(info, self.check_steps(info, x, ids_t), hx, wanted, states)
                    self.check_output(info, top, own)
        return {name: states[name][0].float().cpu().numpy() for name in names}

    def check_steps(self, info: RecurrentModule, x: torch.Tensor, ids: torch.Tensor
                    ) -> torch.Tensor:
        """The module must see one step per token."""
        if x.shape[1] != ids.shape[1]:
            raise AdapterError(
                f"module {info.name} ran over {x.shape[1]} steps for a document of "
                f"{ids.shape[1]} tokens: the model must run each recurrent module once per token")
        return x

    def run_module(self, info: RecurrentModule, x: torch.Tensor, hx: Any,
                   wanted: dict[int, set[str]], states: dict[str, torch.Tensor]) -> torch.Tensor:
        """All layers of one module over x (1, T, in); stores the wanted kinds; top output."""
        for k in range(info.num_layers):
            layer = info.first_layer + k
            kinds = wanted.get(layer, set()) | {"h"}
            outs = []
            for d in range(info.directions):
                rnn = self._splits[(layer, d)]
                xin = x if d == 0 else x.flip(1)
                state = initial_state(info, hx, k * info.directions + d, x)
                if info.arch == "lstm":
                    _, out, _ = lstm_layer(rnn, xin, state, kinds)
                else:
                    _, out, _ = gru_layer(rnn, xin, state, kinds)
                outs.append(out if d == 0 else {kk: v.flip(1) for kk, v in out.items()})
            x = torch.cat([o["h"] for o in outs], dim=-1)
            for kind in wanted.get(layer, ()):
                states[f"layers.{layer}.{kind}"] = torch.cat([o[kind] for o in outs], dim=-1)
        return x

    def capture(self, ids: torch.Tensor) -> list[tuple[RecurrentModule, torch.Tensor, Any, Any]]:
        """Run the model once; (module, input (1, T, in), initial state, own output) each."""
        calls: dict[str, list[list]] = {info.name: [] for info, _ in self.modules}
        handles = []
        for info, module in self.modules:
            def before(_, args, kwargs, name=info.name):
                calls[name].append([args, kwargs, None])

            def after(_, args, kwargs, output, name=info.name):
                calls[name][-1][2] = output

            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(after, with_kwargs=True))
        try:
            self.run(self.model, ids)
        finally:
            for handle in handles:
                handle.remove()
        found = []
        for info, _ in self.modules:
            seen = calls[info.name]
            if len(seen) != 1:
                raise AdapterError(
                    f"module {info.name} ran {len(seen)} times for one document: the adapter "
                    "needs each recurrent module to run once over the whole sequence")
            args, kwargs, output = seen[0]
            x = args[0] if args else kwargs.get("input")
            hx = args[1] if len(args) > 1 else kwargs.get("hx")
            x, hx = batch_first_input(info, x, hx)
            own = output[0] if isinstance(output, tuple) else output
            found.append((info, x, hx, batch_first_input(info, own, None)[0]))
        return found

    def check_output(self, info: RecurrentModule, top: torch.Tensor, own: torch.Tensor) -> None:
        """The recomputed top layer must equal what the module itself returned."""
        diff = (top.float() - own.float()).abs().max().item() if top.numel() else 0.0
        if not diff <= CHECK_TOLERANCE:
            raise AdapterError(
                f"the states recomputed for module {info.name} differ from its own output by "
                f"{diff:.3g}: it is not a plain nn.{info.arch.upper()} (a subclass with its own "
                "forward?)")

    def scripted_input_stage(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The input stage of a TorchScript model, and a check that its modules form a chain."""
        model = self.model
        if hasattr(model, "lstmsearch_input"):
            stage = model.lstmsearch_input
        else:
            embeddings = [m for _, m in model.named_modules()
                          if getattr(m, "original_name", "") == "Embedding"]
            if len(embeddings) != 1:
                raise AdapterError(
                    f"TorchScript model {self.source} has {len(embeddings)} nn.Embedding modules: "
                    "export a method lstmsearch_input(ids) that returns the first recurrent "
                    "module's input, or give the Python module and a factory")
            stage = embeddings[0]
        previous = None
        for info, _ in self.modules:
            if previous is not None and info.input_size != previous.dim:
                raise AdapterError(
                    f"TorchScript model {self.source}: module {info.name} reads "
                    f"{info.input_size} features but {previous.name} gives {previous.dim}, so "
                    "the recurrent modules are not a chain; give the Python module and a "
                    "factory instead")
            previous = info

        def run(ids: torch.Tensor) -> torch.Tensor:
            x = stage(ids)
            if x.dim() != 3 or x.shape[-1] != self.modules[0][0].input_size:
                raise AdapterError(
                    f"the input stage of {self.source} gave shape {tuple(x.shape)}; expected "
                    f"(1, T, {self.modules[0][0].input_size})")
            return x

        return run


def batch_first_input(info: RecurrentModule, x: Any, hx: Any) -> tuple[torch.Tensor, Any]:
    """A module's input as (1, T, features) and its initial state as (layers*dirs, 1, H)."""
    if isinstance(x, PackedSequence):
        raise AdapterError(f"module {info.name} got a PackedSequence: the adapter runs one "
                           "document at a time, so run the module on the plain tensor")
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise AdapterError(f"module {info.name} got {type(x).__name__} input; expected a tensor")
    if x.dim() == 2:  # unbatched (T, features)
        x = x.unsqueeze(0)
        if hx is not None:
            hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
    elif not info.batch_first:
        x = x.transpose(0, 1)
    if x.shape[0] != 1:
        raise AdapterError(f"module {info.name} ran on a batch of {x.shape[0]} sequences: the "
                           "model must be called on one document, ids of shape (1, T)")
    return x, hx


def initial_state(info: RecurrentModule, hx: Any, row: int, x: torch.Tensor) -> Any:
    """Initial state of one layer and direction in `lstm_layer`/`gru_layer` form."""
    if hx is None:
        zero = torch.zeros(1, 1, info.hidden, device=x.device, dtype=x.dtype)
        return (zero, zero.clone()) if info.arch == "lstm" else zero
    if info.arch == "lstm":
        return (hx[0][row : row + 1], hx[1][row : row + 1])
    return hx[row : row + 1]


# --- the tokenizer -----------------------------------------------------------------------


class TokenizerAdapter:
    """Any tokenizer, seen through `encode(text) -> Encoding` and `vocab()`."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        encode = getattr(tokenizer, "encode", None)
        if encode is None and callable(tokenizer):
            encode = tokenizer
        if encode is None:
            raise AdapterError(f"tokenizer {type(tokenizer).__name__} has no encode(text) method")
        self._encode = encode
        self.kind = getattr(tokenizer, "kind", None) or type(tokenizer).__name__
        self._pieces: list[str] | None = None

    def encode(self, text: str) -> Encoding:
        """Ids and character spans; checked, so that a bad tokenizer fails clearly."""
        result = self._encode(text)
        if isinstance(result, Encoding):
            return result
        if hasattr(result, "ids") and hasattr(result, "offsets"):
            ids, offsets = list(result.ids), list(result.offsets)
        elif (isinstance(result, (tuple, list)) and len(result) == 2
              and not isinstance(result[0], (int, np.integer))):
            ids, offsets = list(result[0]), list(result[1])
        else:
            ids = list(result.tolist() if hasattr(result, "tolist") else result)
            offsets = self.locate(text, ids)
        return self.checked(text, ids, offsets)

    def checked(self, text: str, ids: list, offsets: list) -> Encoding:
        if len(ids) != len(offsets):
            raise AdapterError(f"the tokenizer gave {len(ids)} ids but {len(offsets)} offsets")
        id_array = np.asarray(ids, dtype=np.int64).reshape(-1)
        spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        if id_array.size and id_array.min() < 0:
            raise AdapterError(f"the tokenizer gave a negative token id {int(id_array.min())}")
        bad = (spans[:, 0] < 0) | (spans[:, 0] > spans[:, 1]) | (spans[:, 1] > len(text))
        if bad.any():
            s, e = spans[np.argmax(bad)]
            raise AdapterError(f"the tokenizer gave the span ({s}, {e}) for a text of "
                               f"{len(text)} characters")
        return Encoding(id_array.astype(np.int32), spans[:, 0].copy(), spans[:, 1].copy())

    def piece(self, token_id: int) -> str:
        """The text of one token id, for tokenizers that give ids without offsets."""
        tok = self.tokenizer
        if hasattr(tok, "id_to_token"):
            piece = tok.id_to_token(token_id)
        elif hasattr(tok, "decode"):
            piece = tok.decode([token_id])
        else:
            vocab = self.vocab()
            if vocab is None or token_id >= len(vocab):
                raise AdapterError(
                    "the tokenizer's encode gives ids only and it has no id_to_token, decode "
                    "or vocabulary: return (ids, offsets) from encode")
            piece = vocab[token_id]
        return "" if piece is None else str(piece)

    def locate(self, text: str, ids: list[int]) -> list[tuple[int, int]]:
        """Character spans of tokens given as ids only: each token's text, found in order."""
        spans, cursor = [], 0
        for token_id in ids:
            piece = self.piece(int(token_id)).strip()
            at = text.find(piece, cursor) if piece else cursor
            if at < 0:
                raise AdapterError(
                    f"cannot find token {token_id} ({piece!r}) in the text after character "
                    f"{cursor}: make the tokenizer's encode return (ids, offsets)")
            spans.append((at, at + len(piece)))
            cursor = at + len(piece)
        return spans

    def vocab(self) -> list[str] | None:
        """The vocabulary as a list (index = id), from whatever the tokenizer offers."""
        if self._pieces is not None:
            return self._pieces
        tok = self.tokenizer
        source = getattr(tok, "vocab", None)
        if callable(source):
            source = source()
        if source is None and hasattr(tok, "get_vocab"):
            source = tok.get_vocab()
        if isinstance(source, dict):
            pieces = [""] * (max(source.values(), default=-1) + 1)
            for piece, i in source.items():
                pieces[int(i)] = str(piece)
            source = pieces
        if source is None and hasattr(tok, "id_to_token"):
            size = getattr(tok, "vocab_size", None)
            if size is None and hasattr(tok, "get_vocab_size"):
                size = tok.get_vocab_size()
            if callable(size):
                size = size()
            if size is not None:
                source = [tok.id_to_token(i) or "" for i in range(int(size))]
        if source is not None:
            self._pieces = [str(p) for p in source]
        return self._pieces


def describe(adapter: ModelAdapter) -> str:
    """One line per index layer: where it comes from (for `--json`-less output and docs)."""
    return "\n".join(
        f"layers.{lay.index}: {lay.module or 'model'} layer {lay.layer} ({lay.arch}, "
        f"{lay.dim} units)" for lay in adapter.layers
    )


__all__ = ["AdapterError", "ModelAdapter", "describe", "is_adapter_spec", "is_torchscript",
           "load_adapter", "load_tokenizer"]
