import pytest
from torch import nn

from expertsteer.layers import BlocksNotFoundError, find_layers
from tiny import ARCHS, D, L, tiny_model

EXPECTED_PATHS = {
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
    "bert": "encoder.layer",
    "mpnet": "encoder.layer",
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_discovers_blocks(arch):
    lm = tiny_model(arch)
    stack = lm.layers
    assert stack.path == EXPECTED_PATHS.get(arch, "model.layers")
    assert len(stack) == L and stack.hidden_size == D
    assert all(type(b) is type(stack.blocks[0]) for b in stack.blocks)


def test_base_model_without_head_is_found_too():
    lm = tiny_model("llama")
    assert find_layers(lm.model.model).path == "layers"
    assert find_layers(tiny_model("gpt2").model.transformer).path == "h"


def test_override_path():
    lm = tiny_model("llama")
    stack = find_layers(lm.model, "model.layers")
    assert stack.blocks == lm.layers.blocks
    with pytest.raises(BlocksNotFoundError, match="not a non-empty nn.ModuleList"):
        find_layers(lm.model, "model.embed_tokens")
    with pytest.raises(BlocksNotFoundError, match="not a non-empty nn.ModuleList"):
        find_layers(lm.model, "model.nothing.here")


class _Config:
    hidden_size = 8
    num_hidden_layers = 2


class Unknown(nn.Module):
    """A made-up architecture: blocks under an unusual name."""

    def __init__(self, n_lists: int = 1):
        super().__init__()
        self.config = _Config()
        for k in range(n_lists):
            setattr(self, f"stack{k}", nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)]))


def test_generic_fallback_finds_a_unique_matching_list():
    stack = find_layers(Unknown(1))
    assert stack.path == "stack0" and len(stack) == 2 and stack.hidden_size == 8


def test_ambiguous_or_missing_blocks_give_a_clear_error():
    with pytest.raises(BlocksNotFoundError, match="layers_path="):
        find_layers(Unknown(2))
    with pytest.raises(BlocksNotFoundError, match="cannot find the transformer blocks"):
        find_layers(nn.Sequential(nn.Linear(2, 2)))
