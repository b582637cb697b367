"""What the vLLM backend's tests share as a plain module (tests/vllm_backend/conftest.py puts
this folder on sys.path, as tests/cli does)."""

import importlib.util

import pytest
import torch

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM not installed (scripts/setup_vllm.sh)")

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "My favourite colour is",
]
N = 8  # generated tokens per prompt


def random_plan(lm, layers, seed):
    from expertsteer.plan import ModelInfo, SteeringPlan

    g = torch.Generator().manual_seed(seed)
    vecs = {
        j: torch.nn.functional.normalize(torch.randn(lm.hidden_size, generator=g), dim=0)
        for j in layers
    }
    return SteeringPlan(vecs, {j: 1.0 for j in layers}, ModelInfo.of(lm))
