"""The OpenAI response side: whole completion bodies, server-sent stream chunks, usage counts,
ids and the steering echo, on hand-built requests and events."""

import json
import uuid
from types import SimpleNamespace

import pytest

from expertsteer.serve import responses
from expertsteer.serve.engine import Event, Sampling
from expertsteer.serve.protocol import Request, Steering, parse_request
from expertsteer.steer import TokenScope

NOW = 1_700_000_000.75
HEX = "00000000000000000000000000000007"


def parse(lm, plans, body, chat=False, **kw):
    kw = {"max_tokens": 24, "context": 128, **kw}
    return parse_request(body, chat=chat, lm=lm, model_id=lm.name, plans=plans, **kw)


def request(chat=False, n=1, steering=Steering()):
    return Request(
        prompts=[[1, 2]] * n,
        max_tokens=8,
        sampling=Sampling(),
        steering=steering,
        stop=(),
        stream=False,
        include_usage=False,
        chat=chat,
    )


def done(reason="stop", prompt=2, completion=3):
    return Event("done", finish_reason=reason, prompt_tokens=prompt, completion_tokens=completion)


@pytest.fixture
def frozen(monkeypatch):
    """A fixed clock and uuid: ids and ``created`` become exact."""
    monkeypatch.setattr(responses, "time", SimpleNamespace(time=lambda: NOW))
    monkeypatch.setattr(responses, "uuid", SimpleNamespace(uuid4=lambda: uuid.UUID(int=7)))


def events(text):
    """The JSON payloads of a string of server-sent events."""
    parts = text.split("\n\n")
    assert parts[-1] == "" and all(p.startswith("data: ") for p in parts[:-1])
    return [json.loads(p[len("data: ") :]) for p in parts[:-1]]


# --- whole responses --------------------------------------------------------------------------


def test_response_helpers(lm, plans):
    req = parse(lm, plans, {"model": lm.name, "prompt": ["a", "b"], "steering": {"plan": "up"}})
    finals = {
        i: Event("done", finish_reason="stop", prompt_tokens=2, completion_tokens=3) for i in (0, 1)
    }
    out = responses.completion_body(req, "m", ["x", "y"], finals)
    assert out["id"].startswith("cmpl-") and out["model"] == "m"
    assert [c["text"] for c in out["choices"]] == ["x", "y"]
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    assert out["steering"] == {"plan": "up", "alpha": 1.0, "scope": "all"}
    assert responses.steering_echo(Steering()) == {"steering": None}


def test_text_completion_body(frozen):
    finals = {0: done("stop", 2, 3), 1: done("length", 4, 8)}
    out = responses.completion_body(request(n=2), "tiny", ["x", "yz"], finals)
    assert out == {
        "id": f"cmpl-{HEX}",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "tiny",
        "choices": [
            {"index": 0, "text": "x", "logprobs": None, "finish_reason": "stop"},
            {"index": 1, "text": "yz", "logprobs": None, "finish_reason": "length"},
        ],
        "usage": {"prompt_tokens": 6, "completion_tokens": 11, "total_tokens": 17},
        "steering": None,
    }
    assert list(out) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "steering",
    ]


def test_chat_completion_body(frozen):
    steering = Steering(object(), "up", 0.5, TokenScope("last", k=3), spec="last: 3")
    out = responses.completion_body(request(chat=True, steering=steering), "m", ["hi"], {0: done()})
    assert out == {
        "id": f"chatcmpl-{HEX}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
        "steering": {"plan": "up", "alpha": 0.5, "scope": "last: 3"},  # as the client wrote it
    }


def test_ids_usage_and_echo():
    a, b = responses.completion_id(False), responses.completion_id(True)
    assert a.startswith("cmpl-") and len(a) == len("cmpl-") + 32
    assert b.startswith("chatcmpl-") and len(b) == len("chatcmpl-") + 32
    assert int(a[len("cmpl-") :], 16) >= 0 and responses.completion_id(False) != a
    assert responses.usage([]) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert responses.usage(iter([done("stop", 5, 0), done("length", 1, 2)])) == {
        "prompt_tokens": 6,
        "completion_tokens": 2,
        "total_tokens": 8,
    }
    plan = object()
    echo = responses.steering_echo(Steering(plan, "down", 2.0, TokenScope("prompt"), "prompt"))
    assert echo == {"steering": {"plan": "down", "alpha": 2.0, "scope": "prompt"}}
    # no plan: no steering, whatever else is set
    assert responses.steering_echo(Steering(None, "x", 3.0)) == {"steering": None}


# --- server-sent events -----------------------------------------------------------------------


def test_sse_done_and_error_event():
    assert responses.sse({"a": 1, "b": [None, "é"]}) == 'data: {"a": 1, "b": [null, "\\u00e9"]}\n\n'
    assert responses.DONE == "data: [DONE]\n\n"
    assert responses.error_event("boom") == (
        'data: {"error": {"message": "boom", "type": "server_error", "param": null, '
        '"code": null}}\n\n'
    )


def test_chat_stream_chunks(frozen):
    out = responses.Chunks(request(chat=True, n=2), "tiny")
    head = {
        "id": f"chatcmpl-{HEX}",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "tiny",
    }
    assert events(out.opening(2)) == [
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
                {"index": 1, "delta": {"role": "assistant", "content": ""}, "finish_reason": None},
            ],
        }
    ]
    assert events(out.delta(1, "ab")) == [
        {**head, "choices": [{"index": 1, "delta": {"content": "ab"}, "finish_reason": None}]}
    ]
    assert events(out.final(0, "length")) == [
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    ]
    assert events(out.usage([done("stop", 2, 3), done("length", 2, 8)])) == [
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 4, "completion_tokens": 11, "total_tokens": 15},
        }
    ]
    assert out.choice(0, None, "stop", role=True) == {
        "index": 0,
        "delta": {"role": "assistant"},
        "finish_reason": "stop",
    }


def test_text_stream_chunks(frozen):
    out = responses.Chunks(request(), "tiny")
    head = {
        "id": f"cmpl-{HEX}",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "tiny",
    }
    assert events(out.delta(0, "ab")) == [
        {**head, "choices": [{"index": 0, "text": "ab", "logprobs": None, "finish_reason": None}]}
    ]
    assert events(out.final(0, "stop")) == [
        {**head, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]}
    ]
    assert events(out.usage([done("stop", 1, 1)])) == [
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ]
    assert out.choice(2, None, None, role=True) == {
        "index": 2,
        "text": "",
        "logprobs": None,
        "finish_reason": None,
    }


def test_chunks_of_one_stream_share_id_and_time(monkeypatch):
    clock = iter([100.0, 200.0, 300.0])
    monkeypatch.setattr(responses, "time", SimpleNamespace(time=lambda: next(clock)))
    out = responses.Chunks(request(chat=True), "m")
    parts = [out.opening(1), out.delta(0, "a"), out.final(0, "stop"), out.usage([done()])]
    data = [events(p)[0] for p in parts]
    assert {(d["id"], d["created"], d["model"]) for d in data} == {(out.head["id"], 100, "m")}
    other = responses.Chunks(request(chat=True), "m")
    assert other.head["id"] != out.head["id"] and other.head["created"] == 200
