"""The request handling behind the app, without HTTP: plan checks, jobs on the engine, whole
responses and streamed chunks, and which requests share a batch."""

import asyncio
import json

import pytest

from expertsteer.serve import ApiError, SteeringServer
from tiny import tiny_model

N = 8


@pytest.fixture(scope="module")
def server(lm, plans):
    srv = SteeringServer(lm, plans, model_id="tiny", max_tokens=N, batch_window_s=0.5)
    yield srv
    srv.close()


def body(prompt="hello world", steering=None, **kw):
    return {"model": "tiny", "prompt": prompt, "max_tokens": N, "steering": steering, **kw}


async def gather(server, *bodies, chat=False):
    """Whole responses of ``bodies`` sent at once."""
    return await asyncio.gather(*(server.complete(server.parse(b, chat=chat)) for b in bodies))


def run(coro, server):
    out = asyncio.run(coro)
    assert server.engine.wait_idle(60)  # the model is free again for the library's own answer
    return out


def test_plans_are_checked_against_the_target(lm, make_plan):
    other = tiny_model("llama", n_layers=4)
    with pytest.raises(ValueError, match="plan 'wrong'"):
        SteeringServer(lm, {"wrong": make_plan(other, {3: 1.0})})
    with pytest.raises(ValueError, match="serving needs a causal LM"):
        SteeringServer(tiny_model("bert"), {})


def test_models_lists_the_plans(server):
    (model,) = server.models()["data"]
    assert model["id"] == "tiny" and model["steering_plans"] == ["down", "up"]


def test_parse_checks_the_body_against_this_server(server):
    req = server.parse(body(steering={"plan": "up", "alpha": 2, "scope": "last: 3"}), chat=False)
    assert req.max_tokens == N and req.steering.alpha == 2.0 and req.steering.scope.k == 3
    with pytest.raises(ApiError) as err:
        server.parse({**body(), "model": "other"}, chat=False)
    assert err.value.status == 404 and err.value.code == "model_not_found"
    with pytest.raises(ApiError, match="limit 8"):
        server.parse(body(max_tokens=N + 1), chat=False)


def test_complete_equals_the_library(server, lm, plans, expected):
    steerings = [None, {"plan": "up"}, {"plan": "down", "alpha": 0.5, "scope": "last:2"}]
    got = run(gather(server, *(body(steering=s) for s in steerings)), server)
    want = [expected(lm, plans, "hello world", s, n=N) for s in steerings]
    assert [r["choices"][0]["text"] for r in got] == want
    assert got[0]["steering"] is None and got[0]["object"] == "text_completion"
    assert got[2]["steering"] == {"plan": "down", "alpha": 0.5, "scope": "last:2"}
    usage = got[1]["usage"]
    assert usage["completion_tokens"] == N and usage["total_tokens"] == N + usage["prompt_tokens"]


def test_scopes_spelled_differently_share_a_batch(server, lm, plans, expected):
    """The scope is parsed once: 'last:3' and 'last: 3' are the same value, one batch."""
    server.engine.batches.clear()
    spellings = ["last:3", "last: 3", "last:3 "]
    got = run(
        gather(server, *(body(steering={"plan": "up", "scope": s}) for s in spellings)), server
    )
    assert server.engine.batches == [3]
    want = expected(lm, plans, "hello world", {"plan": "up", "scope": "last:3"}, n=N)
    assert [r["choices"][0]["text"] for r in got] == [want] * 3
    assert [r["steering"]["scope"] for r in got] == spellings  # echoed as the client wrote it


def test_stream_chunks(server, lm, plans, expected):
    async def chunks(b, chat):
        req = server.parse(b, chat=chat)
        return [part async for part in server.stream(req)]

    steering = {"plan": "up"}
    msgs = [{"role": "user", "content": "hi"}]
    chat_body = {"model": "tiny", "messages": msgs, "max_tokens": N, "steering": steering}
    chat_body["stream_options"] = {"include_usage": True}
    parts = run(chunks(chat_body, True), server)
    assert parts[-1] == "data: [DONE]\n\n"
    data = [json.loads(p[len("data: ") :]) for p in parts[:-1]]
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in data if c["choices"])
    assert text == expected(lm, plans, "hi", steering, chat=True, n=N)
    assert data[-2]["choices"][0]["finish_reason"] == "length"
    assert data[-1]["usage"]["completion_tokens"] == N and data[-1]["choices"] == []
    assert {d["id"] for d in data} == {data[0]["id"]} and data[0]["id"].startswith("chatcmpl-")
    parts = run(chunks(body("ab", stream=True), False), server)
    data = [json.loads(p[len("data: ") :]) for p in parts[:-1]]
    assert "".join(c["choices"][0]["text"] for c in data) == expected(lm, plans, "ab", n=N)
    assert data[0]["object"] == "text_completion"


def test_several_prompts_are_choices_in_order(server, lm, plans, expected):
    prompts = ["hello world", "ab", "xyz q"]
    (r,) = run(gather(server, body(prompts, {"plan": "down"})), server)
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    want = [expected(lm, plans, p, {"plan": "down"}, n=N) for p in prompts]
    assert [c["text"] for c in r["choices"]] == want
