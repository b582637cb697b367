"""Request parsing: a JSON body becomes a typed Request (scope a TokenScope, α a float) or a
4xx ApiError naming the offending field (the response side is tests/serve/test_responses.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.serve.engine import Sampling
from expertsteer.serve.protocol import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    ApiError,
    Steering,
    messages_text,
    parse_int,
    parse_number,
    parse_request,
    parse_scope,
    parse_steering,
    parse_stop,
)
from expertsteer.steer import TokenScope
from tiny import tiny_model


def parse(lm, plans, body, chat=False, **kw):
    kw = {"max_tokens": 24, "context": 128, **kw}
    return parse_request(body, chat=chat, lm=lm, model_id=lm.name, plans=plans, **kw)


def api_error(fn, *args, **kw) -> ApiError:
    with pytest.raises(ApiError) as err:
        fn(*args, **kw)
    return err.value


# --- steering ----------------------------------------------------------------------------------


def test_steering_is_parsed_into_typed_values(plans):
    s = parse_steering({"plan": "up", "alpha": 2, "scope": "last: 3"}, plans)
    assert s.plan is plans["up"] and s.name == "up"
    assert s.alpha == 2.0 and type(s.alpha) is float
    assert s.scope == TokenScope("last", k=3) and s.spec == "last: 3"
    assert parse_steering(None, plans) == Steering()
    default = parse_steering({"plan": "down"}, plans)
    assert default.alpha == 1.0 and default.scope == TokenScope("all")


def test_equal_scopes_however_spelled(plans):
    scopes = {
        parse_steering({"plan": "up", "scope": s}, plans).scope for s in ("last:3", "last: 3")
    }
    assert scopes == {TokenScope("last", k=3)}  # one value: the engine batches them together


@pytest.mark.parametrize(
    "value, param",
    [
        ({"plan": "nope"}, "steering.plan"),
        ({}, "steering.plan"),
        ({"plan": "up", "alpha": "big"}, "steering.alpha"),
        ({"plan": "up", "alpha": True}, "steering.alpha"),
        ({"plan": "up", "alpha": float("inf")}, "steering.alpha"),
        ({"plan": "up", "alpha": 10**400}, "steering.alpha"),
        ({"plan": "up", "scope": "sideways"}, "steering.scope"),
        ({"plan": "up", "scope": "last:0"}, "steering.scope"),
        ({"plan": "up", "scope": [[0]]}, "steering.scope"),
        ({"plan": "up", "layers": [1]}, "steering"),
        ("up", "steering"),
    ],
)
def test_bad_steering(plans, value, param):
    err = api_error(parse_steering, value, plans)
    assert err.status == 400 and err.param == param and err.kind == "invalid_request_error"
    if param == "steering.plan":
        assert err.code == "plan_not_found" and "down, up" in err.message
    if param == "steering.scope":
        assert "'all', 'prompt', 'generated' or 'last:K'" in err.message


def test_parse_scope():
    assert parse_scope("prompt") == TokenScope("prompt")
    assert parse_scope("last:2 ") == TokenScope("last", k=2)
    assert api_error(parse_scope, ("last", 2)).param == "steering.scope"  # strings only


# --- fields ------------------------------------------------------------------------------------


def test_numbers_ints_and_stops():
    assert parse_number({}, "t", 0.5, 0, 2) == 0.5
    assert parse_number({"t": 2}, "t", 0.5, 0, 2) == 2.0
    for bad in ("1", True, float("nan"), 3, -1):
        assert api_error(parse_number, {"t": bad}, "t", 0.5, 0, 2).param == "t"
    assert "must be > 0" in api_error(parse_number, {"p": 0}, "p", 1, 0, 1, lo_open=True).message
    assert parse_int({"seed": 3}, "seed") == 3 and parse_int({}, "seed") is None
    assert api_error(parse_int, {"seed": 1.0}, "seed").param == "seed"
    assert (
        parse_stop(None) == ()
        and parse_stop("x") == ("x",)
        and parse_stop(["a", "b"])
        == (
            "a",
            "b",
        )
    )
    for bad in ([""], ["a"] * 5, 3, [1]):
        assert api_error(parse_stop, bad).param == "stop"


def test_messages_text(lm):
    text = messages_text(lm, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert text == "<s>user:hi</s><s>assistant:"
    assert api_error(messages_text, lm, []).param == "messages"
    assert api_error(messages_text, lm, [{"content": "x"}]).param == "messages[0]"
    image = [{"role": "user", "content": [{"type": "image_url"}]}]
    assert "only text" in api_error(messages_text, lm, image).message
    bare = tiny_model("llama")
    bare.tokenizer.chat_template = None
    msgs = [{"role": "user", "content": "hi"}]
    assert "no chat template" in api_error(messages_text, bare, msgs).message


# --- the whole request -------------------------------------------------------------------------


def test_a_request(lm, plans):
    body = {
        "model": lm.name,
        "prompt": ["hello", "ab"],
        "temperature": 1,
        "top_p": 0.5,
        "seed": 7,
        "stop": "x",
        "stream": True,
        "stream_options": {"include_usage": True},
        "steering": {"plan": "down", "scope": "generated"},
    }
    req = parse(lm, plans, body)
    assert req.prompts == [lm.tokenizer(p)["input_ids"] for p in ("hello", "ab")]
    assert req.sampling == Sampling(1.0, 0.5, 7)
    assert req.stop == ("x",) and req.stream and req.include_usage and not req.chat
    assert req.steering.scope == TokenScope("generated") and req.steering.plan is plans["down"]
    assert req.max_tokens == COMPLETIONS_DEFAULT_MAX_TOKENS  # OpenAI's default for completions


def test_max_tokens_defaults_and_limits(lm, plans):
    chat = {"model": lm.name, "messages": [{"role": "user", "content": "hi"}]}
    assert parse(lm, plans, chat, chat=True).max_tokens == 24  # the server's limit
    prompt = "x " * 120  # 121 tokens of a 128 context: 7 left
    assert parse(lm, plans, {"model": lm.name, "prompt": prompt}).max_tokens == 7
    chat["max_completion_tokens"] = 5
    assert parse(lm, plans, chat, chat=True).max_tokens == 5
    err = api_error(parse, lm, plans, {"model": lm.name, "prompt": "hi", "max_tokens": 25})
    assert "limit 24" in err.message and err.param == "max_tokens"
    err = api_error(parse, lm, plans, {"model": lm.name, "prompt": prompt, "max_tokens": 8})
    assert err.code == "context_length_exceeded" and err.param == "prompt"


@pytest.mark.parametrize(
    "extra, status, param",
    [
        ({"model": None}, 400, "model"),
        ({"model": "gpt-4"}, 404, "model"),
        ({"prompt": [1, 2]}, 400, "prompt"),
        ({"prompt": []}, 400, "prompt"),
        ({"n": 2}, 400, "n"),
        ({"logprobs": 3}, 400, "logprobs"),
        ({"n": 1, "logprobs": None, "echo": False}, None, None),  # no-op values are fine
        ({"temperature": 3}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"stream": "yes"}, 400, "stream"),
        ({"stream_options": "yes"}, 400, "stream_options"),
    ],
)
def test_bad_requests(lm, plans, extra, status, param):
    body = {"model": lm.name, "prompt": "hi", **extra}
    if status is None:
        assert parse(lm, plans, body).prompts
        return
    err = api_error(parse, lm, plans, body)
    assert (err.status, err.param) == (status, param)
    if status == 404:
        assert err.code == "model_not_found"


# --- errors ------------------------------------------------------------------------------------


def test_api_error_body():
    assert ApiError(418, "teapot", param="p").body() == {
        "error": {"message": "teapot", "type": "invalid_request_error", "param": "p", "code": None}
    }


# --- fuzz (copied from tests/test_fuzz.py) ------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
body_values = st.one_of(
    json_values,
    st.integers(-(10**400), 10**400),
    st.sampled_from(["tiny", "hello", "", "calm", "all", "last:2", "prompt"]),
)
steering = st.one_of(
    body_values,
    st.fixed_dictionaries(
        {},
        optional={
            "plan": st.one_of(st.just("calm"), body_values),
            "alpha": body_values,
            "scope": st.one_of(st.sampled_from(["all", "last:2", "last:0", "x"]), body_values),
        },
    ),
)
messages = st.one_of(
    body_values,
    st.lists(
        st.one_of(
            body_values,
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant"])},
                optional={"content": st.one_of(st.text(max_size=10), body_values)},
            ),
        ),
        max_size=3,
    ),
)
# Mostly valid model and prompt, so that most bodies reach the later fields.
valid = st.sampled_from([True, True, True, False])
bodies = st.fixed_dictionaries(
    {
        "model": st.one_of(st.just("tiny"), body_values).flatmap(
            lambda bad: valid.map(lambda ok: "tiny" if ok else bad)
        ),
        "prompt": st.one_of(st.text(min_size=1, max_size=10), st.lists(st.text(max_size=6))),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=8)}),
            min_size=1,
            max_size=2,
        ),
    },
    optional={
        "max_tokens": body_values,
        "max_completion_tokens": body_values,
        "temperature": body_values,
        "top_p": body_values,
        "seed": body_values,
        "stream": body_values,
        "stream_options": body_values,
        "stop": body_values,
        "steering": steering,
        "n": body_values,
        "logit_bias": body_values,
    },
)
raw_bodies = st.fixed_dictionaries(
    {}, optional={"model": body_values, "prompt": body_values, "messages": messages}
)
_FUZZ = {}


def _fuzz_server():
    """The settings of the fuzzed server: model id 'tiny', one plan 'calm', 8 tokens at most."""
    if not _FUZZ:
        lm = tiny_model("llama")
        plan = SteeringPlan(
            vectors={1: torch.ones(lm.hidden_size) / lm.hidden_size**0.5},
            alphas={1: 1.0},
            target=ModelInfo.of(lm),
        )
        context = lm.model.config.max_position_embeddings
        _FUZZ.update(lm=lm, model_id="tiny", plans={"calm": plan}, max_tokens=8, context=context)
    return _FUZZ


@pytest.mark.fuzz
@settings(max_examples=150, deadline=None)
@given(body=st.one_of(bodies, bodies, raw_bodies), chat=st.booleans())
def test_server_requests_are_parsed_or_refused_with_a_4xx(body, chat):
    try:
        req = parse_request(body, chat=chat, **_fuzz_server())
    except ApiError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert req.prompts and 1 <= req.max_tokens <= 8
    assert isinstance(req.steering.scope, TokenScope) and type(req.steering.alpha) is float
