"""The hooks in vLLM's workers against our HF path, token for token (SmolLM2-135M, float32).
Run in .venv-vllm::

    bash scripts/setup_vllm.sh
    .venv-vllm/bin/python -m pytest tests/vllm_backend

The engine tests skip wherever vLLM is not installed (the main venv); the hook arithmetic and
the layer lookup are checked everywhere."""

import pytest
import torch
from vllm_helpers import PROMPTS, N, needs_vllm

from expertsteer.steer import attach
from expertsteer.vllm_backend.worker import _decoder_layers, _Steering
from tiny import tiny_model

# (alpha, scope): strengths at which the random plan changes SmolLM2's continuations
SETTINGS = [
    (20.0, "all"),
    (40.0, "all"),
    (-30.0, "all"),
    (40.0, "prompt"),
    (40.0, "generated"),
    (40.0, "last:2"),
]


@pytest.mark.real
@needs_vllm
def test_unsteered_equals_hf(llm, ids, hf):
    assert llm.generate(ids, None, max_tokens=N) == hf()
    assert llm.generate(PROMPTS, None, max_tokens=N) == hf()  # vLLM's own tokenisation


@pytest.mark.real
@needs_vllm
@pytest.mark.parametrize(("alpha", "scope"), SETTINGS)
def test_steered_equals_hf(llm, plans, ids, hf, alpha, scope):
    want = hf(plans["rand"], alpha, scope)
    got = llm.generate(ids, {"plan": "rand", "alpha": alpha, "scope": scope}, max_tokens=N)
    assert got == want
    if scope in ("all", "prompt"):
        assert got != hf()  # the setting steers


@pytest.mark.real
@needs_vllm
def test_token_ids_equal_hf(lm, llm, plans, ids):
    """Token ids (not just text), one prompt at a time on the HF side (no padding)."""
    steering = {"plan": "other", "alpha": 30.0, "scope": "all"}
    outs = llm.complete(ids, steering, max_tokens=N)
    for prompt, out in zip(ids, outs):
        x = torch.tensor([prompt])
        with attach(lm, plans["other"], alpha=30.0), torch.no_grad():
            seq = lm.model.generate(x, max_new_tokens=N, do_sample=False)
        want = seq[0, x.shape[1] :].tolist()
        assert list(out.outputs[0].token_ids) == want[: len(out.outputs[0].token_ids)]
        assert len(out.outputs[0].token_ids) in (len(want), N)


@pytest.mark.real
@needs_vllm
def test_mixed_batch(llm, ids, hf, plans):
    """Steered and unsteered requests in one vLLM batch each get their own result."""
    settings = [
        None,
        {"plan": "rand", "alpha": 40.0, "scope": "all"},
        {"plan": "other", "alpha": 30.0, "scope": "prompt"},
        {"plan": "rand", "alpha": -30.0, "scope": "last:2"},
    ]

    def ref(s):
        return hf() if s is None else hf(plans[s["plan"]], s["alpha"], s["scope"])

    assert llm.generate(ids, settings, max_tokens=N) == [ref(s)[i] for i, s in enumerate(settings)]
    # each prompt under every setting at once: 16 requests in one batch
    rows = [p for p in ids for _ in settings]
    got = llm.generate(rows, [s for _ in ids for s in settings], max_tokens=N)
    for i in range(len(ids)):
        for k, s in enumerate(settings):
            assert got[i * len(settings) + k] == ref(s)[i]


@pytest.mark.real
@needs_vllm
def test_info_reports_the_installed_hooks(llm):
    info = llm.info()[0]
    assert info["plans"] == {"rand": [8, 15], "other": [5, 20]}
    # one pre-hook and one post-hook on the model, one hook per steered layer
    assert info["hooks"] == 2 + len({5, 8, 15, 20})
    assert info["layer_type"] == "LlamaDecoderLayer"


def test_layer_hook_steers_hidden_plus_residual():
    """vLLM's layers return (hidden, residual), the add fused into the next norm: the hook
    steers their sum, returned as the residual beside a zero hidden; exact arithmetic."""
    state = object.__new__(_Steering)
    coef = torch.tensor([[1.0], [0.0], [1.0]])
    delta = torch.arange(4.0)
    state.step = [(coef, {3: delta})]
    g = torch.Generator().manual_seed(0)
    h, r = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    zero, stream = state._layer_hook(3)(None, (), (h.clone(), r.clone()))
    assert torch.equal(zero, torch.zeros(3, 4))
    assert torch.equal(stream, torch.addcmul(h + r, coef, delta))
    assert torch.equal(stream[1], h[1] + r[1])  # coefficient 0: that token unsteered
    assert state._layer_hook(2)(None, (), (h, r)) is None  # a layer this step leaves alone
    assert torch.equal(state._layer_hook(3)(None, (), h), torch.addcmul(h, coef, delta))
    first, rest = state._layer_hook(3)(None, (), (h, None))  # no residual (a first layer)
    assert torch.equal(first, torch.addcmul(h, coef, delta)) and rest is None


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_decoder_layers_are_found(arch):
    lm = tiny_model(arch)
    layers = _decoder_layers(lm.model, lm.n_layers)
    assert layers is lm.model.model.layers
    with pytest.raises(RuntimeError, match=f"cannot find the {lm.n_layers + 1} decoder layers"):
        _decoder_layers(lm.model, lm.n_layers + 1)
