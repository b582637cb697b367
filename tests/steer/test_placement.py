from types import SimpleNamespace

import pytest
import torch
from steer_helpers import PROMPTS, Capture, batch, forward, make_plan
from torch import nn

from expertsteer.steer import attach
from expertsteer.steer.placement import block_placement, execution_device, path_modules
from tiny import tiny_model

CPU = torch.device("cpu")


def hooked(module, device):
    """Mark ``module`` as accelerate does: an ``_hf_hook`` with an execution device."""
    module._hf_hook = SimpleNamespace(execution_device=device)
    return module


@pytest.mark.parametrize(
    "arch, names",
    [
        ("llama", ["LlamaForCausalLM", "LlamaModel"]),
        ("gpt2", ["GPT2LMHeadModel", "GPT2Model"]),
        ("opt", ["OPTForCausalLM", "OPTModel", "OPTDecoder"]),
    ],
)
def test_path_modules_lead_down_to_the_blocks(arch, names):
    lm = tiny_model(arch)
    path = path_modules(lm)
    assert path[0] is lm.model and [type(m).__name__ for m in path] == names
    # the last one holds the block list itself
    assert lm.layers.blocks[0] is getattr(path[-1], lm.layers.path.split(".")[-1])[0]


def test_a_plain_block_computes_where_its_weights_are():
    lm = tiny_model("llama")
    assert block_placement(lm.layers.blocks[1], CPU) == (CPU, torch.float32)
    lm.model.to(torch.bfloat16)
    assert block_placement(lm.layers.blocks[1], CPU) == (CPU, torch.bfloat16)


def test_accelerate_execution_devices():
    block = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)).to("meta")  # offloaded weights
    outer = [hooked(nn.Module(), "cuda:3"), nn.Module()]
    # only an ancestor is hooked (cpu_offload): the nearest hooked ancestor tells
    assert block_placement(block, CPU, outer) == (torch.device("cuda:3"), torch.float32)
    assert block_placement(block, CPU, [*outer, hooked(nn.Module(), "cuda:1")])[0] == (
        torch.device("cuda:1")
    )
    # a hooked leaf (disk offload) wins over the ancestors; the block itself (device_map) too
    hooked(block[1], "cuda:2")
    assert block_placement(block, CPU, outer)[0] == torch.device("cuda:2")
    hooked(block, "cuda:0")
    assert block_placement(block, CPU, outer)[0] == torch.device("cuda:0")
    assert execution_device(block) == "cuda:0" and execution_device(nn.Module()) is None


def test_fallbacks():
    meta = nn.Linear(2, 2, dtype=torch.float16).to("meta")
    assert block_placement(meta, torch.device("cuda:5")) == (torch.device("cuda:5"), torch.float16)
    empty = nn.Module()  # no weights at all: float32 on the fallback device
    assert block_placement(empty, CPU) == (CPU, torch.float32)
    ints = nn.Module()
    ints.register_parameter("n", nn.Parameter(torch.ones(2, dtype=torch.long), False))
    assert block_placement(ints, CPU)[1] == torch.float32


def test_bfloat16_model_gets_bfloat16_vectors():
    lm = tiny_model("llama")
    lm.model.to(torch.bfloat16)
    plan = make_plan(lm)
    enc = batch(lm, PROMPTS, "right")
    cap = Capture(lm)
    forward(lm, enc)
    base = cap.out[1]
    with attach(lm, plan, alpha=0.5) as handle:
        assert handle.deltas[1].dtype == torch.bfloat16
        forward(lm, enc)
    cap.remove()
    sv = plan.steering_vectors(0.5)[1].to(torch.bfloat16)
    assert torch.equal(cap.out[1], base + enc["attention_mask"][..., None].bfloat16() * sv)
