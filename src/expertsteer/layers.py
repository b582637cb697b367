"""Find the stack of transformer blocks in a model (the residual stream we read and steer)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# Module paths of the block list, most specific first. Causal LMs and their base models both
# appear because users pass either.
KNOWN_BLOCK_PATHS: tuple[str, ...] = (
    "model.language_model.layers",  # gemma3 / multimodal wrappers
    "model.layers",  # llama, mistral, qwen2, gemma, gemma2, gemma3 text, phi, phi3
    "model.decoder.layers",  # opt
    "transformer.h",  # gpt2, gpt-j, bloom-like
    "gpt_neox.layers",  # gpt-neox / pythia
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "mpnet.encoder.layer",
    "encoder.layer",  # BertModel, MPNetModel, RobertaModel
    "transformer.layer",  # distilbert
    "language_model.layers",
    "decoder.layers",  # OPTModel
    "layers",  # LlamaModel, GPTNeoXModel, …
    "h",  # GPT2Model
)


class BlocksNotFoundError(ValueError):
    """The model's block stack could not be located."""


@dataclass(frozen=True)
class LayerStack:
    """The decoder (or encoder) blocks of a model, in order."""

    path: str
    blocks: tuple[nn.Module, ...]
    hidden_size: int

    def __len__(self) -> int:
        return len(self.blocks)


def _get(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _config_value(config, *names: str) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text_config, config):
        for name in names:
            value = getattr(cfg, name, None)
            if isinstance(value, int):
                return value
    return None


def hidden_size_of(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    size = None if config is None else _config_value(config, "hidden_size", "n_embd", "d_model")
    if size is None:
        raise BlocksNotFoundError(
            f"cannot tell the hidden size of {type(model).__name__}: its config has no "
            "hidden_size / n_embd / d_model"
        )
    return size


def find_layers(model: nn.Module, path: str | None = None) -> LayerStack:
    """Locate the block stack of ``model``; ``path`` (e.g. ``"model.layers"``) overrides the search.

    Raises ``BlocksNotFoundError`` naming the paths tried and how to pass an override.
    """
    if path is not None:
        found = _get(model, path)
        if not isinstance(found, nn.ModuleList) or len(found) == 0:
            raise BlocksNotFoundError(
                f"{path!r} is not a non-empty nn.ModuleList on {type(model).__name__}; "
                "pass the dotted path of the list of transformer blocks (see model.named_modules())"
            )
        return LayerStack(path, tuple(found), hidden_size_of(model))

    config = getattr(model, "config", None)
    n_expected = (
        None
        if config is None
        else _config_value(config, "num_hidden_layers", "n_layer", "num_layers")
    )
    for candidate in KNOWN_BLOCK_PATHS:
        found = _get(model, candidate)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            if n_expected is None or len(found) == n_expected:
                return LayerStack(candidate, tuple(found), hidden_size_of(model))

    # Unknown architecture: accept the one ModuleList of identical blocks whose length matches the
    # config's layer count.
    matches = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.ModuleList)
        and len(mod) > 0
        and len({type(m) for m in mod}) == 1
        and (n_expected is None or len(mod) == n_expected)
    ]
    if len(matches) == 1:
        name, mod = matches[0]
        return LayerStack(name, tuple(mod), hidden_size_of(model))
    raise BlocksNotFoundError(
        f"cannot find the transformer blocks of {type(model).__name__} "
        f"(tried {', '.join(KNOWN_BLOCK_PATHS)}; {len(matches)} generic candidates). "
        "Pass layers_path='dotted.path.to.blocks' (CLI: --layers-path)."
    )
