"""Shared fixtures of the serving tests: a tiny llama, two plans, the library's own answer."""

import pytest
import torch

from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.steer import generate
from tiny import tiny_model

MAX_TOKENS = 24


@pytest.fixture(autouse=True)
def _one_thread(request):
    if request.node.get_closest_marker("real"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only spin on a busy machine
    yield
    torch.set_num_threads(before)


def _unit(d, seed):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _make_plan(lm, alphas, seed=0):
    vectors = {j: _unit(lm.hidden_size, seed + j) for j in alphas}
    return SteeringPlan(vectors=vectors, alphas=alphas, target=ModelInfo.of(lm))


def _expected(lm, plans, prompt, steering=None, chat=False, n=MAX_TOKENS):
    """The library's own single-prompt greedy generation: what the server must return."""
    kw = {}
    if steering:
        kw = {
            "plan": plans[steering["plan"]],
            "alpha": steering.get("alpha", 1.0),
            "scope": steering.get("scope", "all"),
        }
    return generate(lm, [prompt], chat_template=chat, max_new_tokens=n, batch_size=1, **kw)[0]


@pytest.fixture(scope="session")
def make_plan():
    """``make_plan(lm, {layer: alpha}, seed=0)``: random unit vectors on ``lm``'s layers."""
    return _make_plan


@pytest.fixture(scope="session")
def expected():
    """``expected(lm, plans, prompt, steering=None, chat=False, n=24)``: the library's answer."""
    return _expected


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def plans(lm):
    return {"up": _make_plan(lm, {1: 1.5, 2: 1.0}), "down": _make_plan(lm, {1: -2.0}, seed=5)}
