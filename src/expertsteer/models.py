"""Load a model by catalog name, hub id, local folder or GGUF file; fingerprint it."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import catalog
from .layers import LayerStack, find_layers

ModelKind = Literal["causal", "encoder"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(ValueError):
    """A name or path that cannot be turned into a model."""


@dataclass
class LoadedModel:
    """A model with its tokenizer, its block stack and a fingerprint of its weights."""

    model: nn.Module
    tokenizer: Any
    name: str
    kind: ModelKind
    layers: LayerStack
    fingerprint: str

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.layers.hidden_size

    @property
    def device(self) -> torch.device:
        """Where inputs go: the first parameter's device (not ``meta``: offloaded weights)."""
        devices = (p.device for p in self.model.parameters() if p.device.type != "meta")
        return next(devices, torch.device("cpu"))

    @property
    def base(self) -> nn.Module:
        """The model without its LM head: hidden states never need vocabulary logits."""
        return getattr(self.model, "base_model", self.model)


def fingerprint(model: nn.Module) -> str:
    """A short hash of the config and a few weights; identifies a model across loads."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        cfg = {
            k: v
            for k, v in config.to_dict().items()
            if not k.startswith("_")
            and k not in {"transformers_version", "dtype", "torch_dtype", "architectures"}
        }
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    params = list(model.named_parameters())
    for name, p in (params[0], params[len(params) // 2], params[-1]):
        sample = _stored(model, name, p).detach().reshape(-1)[:256].to("cpu", torch.float32)
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def _stored(model: nn.Module, name: str, p: torch.Tensor) -> torch.Tensor:
    """A parameter's values; accelerate's offloaded ones (meta on the module) from their store."""
    if p.device.type != "meta":
        return p
    owner, _, local = name.rpartition(".")
    store = getattr(getattr(model.get_submodule(owner), "_hf_hook", None), "weights_map", None)
    try:
        return store[local]
    except (KeyError, TypeError):
        raise ValueError(
            f"parameter {name} is on the meta device and has no offloaded copy (accelerate's "
            "weights_map): load the model with its weights, or a device_map that offloads them"
        ) from None


def _resolve(name_or_path: str | Path, gguf_file: str | None) -> tuple[str, str | None]:
    """Turn a catalog name / path / GGUF file / hub id into (from_pretrained arg, gguf_file)."""
    name = str(name_or_path)
    if name in catalog.CATALOG:
        return str(catalog.model_path(name)), None
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf model; pass a model folder, a .gguf file, "
                f"a hub id or a catalog name ({', '.join(catalog.CATALOG)})"
            )
        return str(path.parent), path.name
    if path.is_dir():
        if gguf_file is not None:
            if not (path / gguf_file).is_file():
                raise ModelLoadError(f"gguf_file {gguf_file!r} not found in {path}")
            return str(path), gguf_file
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = f"; it holds {ggufs}: pass gguf_file=" if ggufs else ""
            raise ModelLoadError(f"{path} is not a model folder (no config.json){hint}")
        return str(path), None
    if name.startswith((".", "/", "~")) or not _HUB_ID.match(name):
        raise ModelLoadError(
            f"{name!r} is neither a catalog model ({', '.join(catalog.CATALOG)}), "
            "an existing path, nor a hub id"
        )
    return name, gguf_file


def _kind_of(config) -> ModelKind:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal"
    if archs:
        return "encoder"
    return "causal" if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else "encoder"


def load_model(
    name_or_path: str | Path,
    *,
    gguf_file: str | None = None,
    kind: ModelKind | Literal["auto"] = "auto",
    dtype: torch.dtype | str | None = torch.float32,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    layers_path: str | None = None,
    **hf_kwargs: Any,
) -> LoadedModel:
    """Load a causal LM or encoder with its tokenizer.

    ``name_or_path`` is a catalog name (``expertsteer models``), a local HF folder, a ``.gguf``
    file, or a hub id. ``dtype``, ``device_map`` and other keyword arguments go to
    ``from_pretrained``; ``layers_path`` overrides block discovery.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    source, gguf = _resolve(name_or_path, gguf_file)
    extra = {"gguf_file": gguf} if gguf else {}
    try:
        config = AutoConfig.from_pretrained(source, **extra)
    except OSError as exc:
        close = difflib.get_close_matches(str(name_or_path), list(catalog.CATALOG), n=1)
        hint = f" Did you mean the catalog model {close[0]!r}?" if close else ""
        raise ModelLoadError(
            f"cannot load {source!r} ({type(exc).__name__}). It is not a catalog model "
            f"({', '.join(catalog.CATALOG)}) nor a local path, and as a hub id it needs network "
            f"access on first use.{hint}"
        ) from exc
    if kind == "auto":
        kind = _kind_of(config)
    if kind not in ("causal", "encoder"):
        raise ModelLoadError(f"kind must be 'causal', 'encoder' or 'auto', not {kind!r}")
    auto = AutoModelForCausalLM if kind == "causal" else AutoModel
    kwargs = {"dtype": dtype, **extra, **hf_kwargs}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = auto.from_pretrained(source, **kwargs)
    if gguf:  # dequantised on load: a plain model from here on
        model.hf_quantizer = None
    if device is not None and device_map is None:
        model.to(device)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    return wrap_model(model, tokenizer, name=str(name_or_path), kind=kind, layers_path=layers_path)


def wrap_model(
    model: nn.Module,
    tokenizer: Any,
    *,
    name: str | None = None,
    kind: ModelKind | Literal["auto"] = "auto",
    layers_path: str | None = None,
) -> LoadedModel:
    """Wrap a model you already loaded (any HF causal LM or encoder) for use with expertsteer."""
    if kind == "auto":
        can_generate = getattr(model, "can_generate", lambda: False)()
        kind = "causal" if can_generate else "encoder"
    model.eval()
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name or getattr(model.config, "_name_or_path", "") or type(model).__name__,
        kind=kind,
        layers=find_layers(model, layers_path),
        fingerprint=fingerprint(model),
    )


def reinitialised(lm: LoadedModel, *, seed: int = 0) -> LoadedModel:
    """The same architecture, config and tokenizer with freshly initialised weights: a model
    that knows nothing (the random-expert control). Its fingerprint differs, so nothing of the
    trained model's hidden-state cache is reused."""
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if lm.kind == "causal" else AutoModel
    dtype = next(lm.model.parameters()).dtype
    with torch.random.fork_rng(devices=[]):  # built on the CPU; the caller's RNG untouched
        torch.manual_seed(seed)
        model = auto.from_config(lm.model.config, dtype=dtype)
    model.to(lm.device)
    return wrap_model(
        model,
        lm.tokenizer,
        name=f"{lm.name} (random init, seed {seed})",
        kind=lm.kind,
        layers_path=lm.layers.path,
    )


def load_tokenizer(name_or_path: str | Path, *, gguf_file: str | None = None) -> Any:
    """Just the tokenizer of a catalog name / path / GGUF / hub id (no weights loaded)."""
    from transformers import AutoTokenizer

    source, gguf = _resolve(name_or_path, gguf_file)
    tok = AutoTokenizer.from_pretrained(source, **({"gguf_file": gguf} if gguf else {}))
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
