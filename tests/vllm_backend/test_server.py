"""The HTTP side: the middleware that maps ``steering`` onto vLLM's ``vllm_xargs`` (no engine,
no vLLM needed), the CLI's argv, and what the server refuses before it starts."""

import asyncio
import json

import pytest
import torch

from expertsteer.condition import ConditionedPlan, ExpertProbe
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.vllm_backend.server import SteeringMiddleware, serve, serve_argv
from expertsteer.vllm_backend.spec import PLAN_NAMES_ENV


def run_middleware(body, monkeypatch, path="/v1/completions"):
    monkeypatch.setenv(PLAN_NAMES_ENV, json.dumps(["calm"]))
    seen, sent = {}, []

    async def app(scope, receive, send):
        msg = await receive()
        seen["body"] = json.loads(msg["body"])
        seen["length"] = dict(scope["headers"]).get(b"content-length")

    async def receive():
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
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
    # chat requests too; the client's own vllm_xargs survive, ours replace stale ones
    body = {
        "messages": [],
        "steering": {"plan": "calm"},
        "vllm_xargs": {"other": 1, "steering_alpha": 9.0},
    }
    seen, _ = run_middleware(body, monkeypatch, "/v1/chat/completions")
    assert seen["body"]["vllm_xargs"] == {
        "other": 1,
        "steering_plan": "calm",
        "steering_alpha": 1.0,
        "steering_scope": "all",
    }


def test_middleware_passes_other_requests_through(monkeypatch):
    seen, _ = run_middleware({"prompt": "x"}, monkeypatch)
    assert seen["body"] == {"prompt": "x"} and seen["length"] is None  # untouched


def test_middleware_refuses_bad_steering(monkeypatch):
    seen, sent = run_middleware({"prompt": "x", "steering": {"plan": "loud"}}, monkeypatch)
    assert not seen and sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert "unknown steering plan" in error["message"] and error["param"] == "steering"


def test_serve_argv():
    argv = serve_argv(
        "smollm2-135m", {"calm": "p/calm"}, "127.0.0.1", 8001, "k", 16, ["--dtype float32"]
    )
    assert argv == [
        "smollm2-135m",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--max-num-seqs",
        "16",
        "--steer",
        "calm=p/calm",
        "--api-key",
        "k",
        "--dtype",
        "float32",
    ]


def test_serve_refuses_conditioned_plans_and_bad_steer(tmp_path):
    info = ModelInfo("tiny", "0" * 64, 2, 4)
    plan = SteeringPlan({1: torch.ones(4)}, {1: 1.0}, info)
    probe = ExpertProbe(ModelInfo("ex", "1" * 64, 2, 3), 1, torch.ones(3), 0.0)
    ConditionedPlan(plan, probe).save_pretrained(tmp_path / "c")
    with pytest.raises(
        SystemExit, match="--steer c: expert-conditioned plans and learned maps run on vLLM"
    ):
        serve(["tiny", "--steer", f"c={tmp_path / 'c'}"])
    with pytest.raises(SystemExit, match="--steer takes NAME=DIR"):
        serve(["tiny", "--steer", "nodir"])
