"""The vLLM backend against our HF path, token for token. Run in .venv-vllm::

    bash scripts/setup_vllm.sh
    VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest tests/test_vllm_backend.py

Skipped wherever vLLM is not installed (the main venv). Not in a folder tests/vllm: with
``tests`` on ``sys.path`` that folder would import as a namespace package ``vllm``."""

import asyncio
import json
import os

import pytest

pytest.importorskip("vllm.sampling_params")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

from expertsteer.models import load_model  # noqa: E402
from expertsteer.plan import ModelInfo, SteeringPlan  # noqa: E402
from expertsteer.steer import attach, generate  # noqa: E402
from expertsteer.steer.infer import _prompt_ids  # noqa: E402
from expertsteer.vllm_backend import (  # noqa: E402
    PLAN_NAMES_ENV,
    SteeredLLM,
    SteeringMiddleware,
    model_folder,
    steering_spec,
)

pytestmark = pytest.mark.real

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def fibonacci(n):",
    "My favourite colour is",
]
N = 8
# (alpha, scope): strengths at which the random plan changes SmolLM2's continuations
SETTINGS = [
    (20.0, "all"),
    (40.0, "all"),
    (-30.0, "all"),
    (40.0, "prompt"),
    (40.0, "generated"),
    (40.0, "last:2"),
]


def random_plan(lm, layers, seed):
    g = torch.Generator().manual_seed(seed)
    vecs = {
        j: torch.nn.functional.normalize(torch.randn(lm.hidden_size, generator=g), dim=0)
        for j in layers
    }
    return SteeringPlan(vecs, {j: 1.0 for j in layers}, ModelInfo.of(lm))


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def plans(lm):
    return {"rand": random_plan(lm, (8, 15), 0), "other": random_plan(lm, (5, 20), 1)}


@pytest.fixture(scope="module")
def llm(plans):
    engine = SteeredLLM(
        model_folder("smollm2-135m"), plans, dtype="float32", max_model_len=512, seed=0
    )
    yield engine
    del engine


@pytest.fixture(scope="module")
def ids(lm):
    return _prompt_ids(lm, PROMPTS, False)


_HF: dict = {}


def hf(lm, plan=None, alpha=1.0, scope="all"):
    """Our HF path's continuations of PROMPTS (memoised: the mixed-batch tests reuse them)."""
    key = (id(plan), alpha, scope)
    if key not in _HF:
        kwargs = {} if plan is None else {"plan": plan, "alpha": alpha, "scope": scope}
        _HF[key] = generate(lm, PROMPTS, chat_template=False, max_new_tokens=N, **kwargs)
    return _HF[key]


def test_unsteered_equals_hf(lm, llm, ids):
    assert llm.generate(ids, None, max_tokens=N) == hf(lm)
    assert llm.generate(PROMPTS, None, max_tokens=N) == hf(lm)  # vLLM's own tokenisation


@pytest.mark.parametrize(("alpha", "scope"), SETTINGS)
def test_steered_equals_hf(lm, llm, plans, ids, alpha, scope):
    want = hf(lm, plans["rand"], alpha, scope)
    got = llm.generate(ids, {"plan": "rand", "alpha": alpha, "scope": scope}, max_tokens=N)
    assert got == want
    if scope in ("all", "prompt"):
        assert got != hf(lm)  # the setting steers


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


def test_mixed_batch(lm, llm, plans, ids):
    """Steered and unsteered requests in one vLLM batch each get their own result."""
    settings = [
        None,
        {"plan": "rand", "alpha": 40.0, "scope": "all"},
        {"plan": "other", "alpha": 30.0, "scope": "prompt"},
        {"plan": "rand", "alpha": -30.0, "scope": "last:2"},
    ]
    want = []
    for i, s in enumerate(settings):
        if s is None:
            want.append(hf(lm)[i])
        else:
            want.append(hf(lm, plans[s["plan"]], s["alpha"], s["scope"])[i])
    assert llm.generate(ids, settings, max_tokens=N) == want
    # each prompt under every setting at once: 16 requests in one batch
    rows = [p for p in ids for _ in settings]
    got = llm.generate(rows, [s for _ in ids for s in settings], max_tokens=N)
    for i in range(len(ids)):
        for k, s in enumerate(settings):
            ref = hf(lm) if s is None else hf(lm, plans[s["plan"]], s["alpha"], s["scope"])
            assert got[i * len(settings) + k] == ref[i]


def test_default_plan(lm, llm, plans, ids):
    """A global plan steers requests without their own; None opts out."""
    llm.set_plans(plans, {"plan": "rand", "alpha": 40.0, "scope": "all"})
    try:
        assert llm.generate(ids, max_tokens=N) == hf(lm, plans["rand"], 40.0)
        assert llm.generate(ids, None, max_tokens=N) == hf(lm)
        # flat vllm_xargs, as vLLM's OpenAI server passes them
        params = llm.sampling_params(
            max_tokens=N,
            extra_args={"steering_plan": "other", "steering_alpha": 30.0, "steering_scope": "all"},
        )
        outs = llm.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        assert [o.outputs[0].text for o in outs] == hf(lm, plans["other"], 30.0)
    finally:
        llm.set_plans(plans, None)
    assert llm.generate(ids, max_tokens=N) == hf(lm)
    info = llm.info()[0]
    assert info["plans"] == {"rand": [8, 15], "other": [5, 20]}
    assert info["layer_type"] == "LlamaDecoderLayer" and info["steered_steps"] > 0


def test_bad_steering_is_refused(llm):
    with pytest.raises(ValueError, match="unknown steering plan"):
        llm.generate(["Hi"], {"plan": "nope"}, max_tokens=2)
    with pytest.raises(ValueError, match="scope"):
        llm.generate(["Hi"], {"plan": "rand", "scope": "middle"}, max_tokens=2)


# --- the HTTP middleware (no engine) -------------------------------------------------------------


def run_middleware(body, monkeypatch):
    monkeypatch.setenv(PLAN_NAMES_ENV, json.dumps(["calm"]))
    seen, sent = {}, []

    async def app(scope, receive, send):
        msg = await receive()
        seen["body"] = json.loads(msg["body"])
        seen["length"] = dict(scope["headers"])[b"content-length"]

    async def receive():
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}
    asyncio.run(SteeringMiddleware(app)(scope, receive, send))
    return seen, sent


def test_middleware_maps_steering_to_vllm_xargs(monkeypatch):
    body = {"prompt": "x", "steering": {"plan": "calm", "alpha": 2, "scope": "last:3"}}
    seen, _ = run_middleware(body, monkeypatch)
    assert seen["body"] == {
        "prompt": "x",
        "vllm_xargs": {"steering_plan": "calm", "steering_alpha": 2.0, "steering_scope": "last:3"},
    }
    assert int(seen["length"]) == len(json.dumps(seen["body"]).encode())
    seen, _ = run_middleware({"prompt": "x", "steering": None}, monkeypatch)
    assert seen["body"]["vllm_xargs"] == {"steering_plan": ""}  # explicitly unsteered


def test_middleware_refuses_bad_steering(monkeypatch):
    seen, sent = run_middleware({"prompt": "x", "steering": {"plan": "loud"}}, monkeypatch)
    assert not seen and sent[0]["status"] == 400
    assert "unknown steering plan" in json.loads(sent[1]["body"])["error"]["message"]


def test_steering_spec():
    assert steering_spec({"plan": "a"}, ["a"]) == {"plan": "a", "alpha": 1.0, "scope": "all"}
    assert steering_spec(None, ["a"]) is None
    for bad in ({"plan": "a", "alpha": float("nan")}, {"plan": "a", "scope": "x"}, {"p": 1}):
        with pytest.raises(ValueError):
            steering_spec(bad, ["a"])
