"""The HTTP app: the OpenAI-compatible server driven by the stock ``openai`` client over loopback
(auth, body limits, error JSON, streaming), plus running it with :class:`ServerThread`."""

import asyncio
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from expertsteer.deps import MissingDependencyError  # noqa: E402
from expertsteer.models import load_model  # noqa: E402
from expertsteer.plan import ModelInfo, SteeringPlan  # noqa: E402
from expertsteer.serve import ApiError, ServerThread, create_app, read_json  # noqa: E402
from tiny import tiny_model  # noqa: E402

KEY = "test-key"
MAX_TOKENS = 24
PROMPTS = ["hello world", "ab", "The quick brown fox", "xyz q", "one two three four"]


def _http():
    """The HTTP client the openai package itself uses (httpx, or httpx2 in openai >= 3)."""
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx


@pytest.fixture(scope="module", params=[8, 1], ids=["microbatch", "lock"])
def server(request, lm, plans):
    app = create_app(
        lm, plans, api_key=KEY, max_tokens=MAX_TOKENS, max_body_bytes=4096, max_batch=request.param
    )
    with ServerThread(app) as srv:
        srv.app = app
        yield srv


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def expect(server, lm, plans, expected):
    """``expected`` once the server's worker is idle (it shares the model with this thread)."""
    engine = server.app.state.server.engine

    def run(prompt, steering=None, chat=False, n=MAX_TOKENS):
        assert engine.wait_idle(60)
        return expected(lm, plans, prompt, steering, chat, n)

    return run


def complete(client, lm, prompt, steering=None, **kw):
    extra = {"steering": steering} if steering else {}
    return client.completions.create(model=lm.name, prompt=prompt, extra_body=extra, **kw)


# --- endpoints --------------------------------------------------------------------------------


def test_models_and_health(server, client, lm):
    models = client.models.list()
    assert [m.id for m in models.data] == [lm.name]
    assert models.data[0].model_extra["steering_plans"] == ["down", "up"]
    assert _http().get(server.url + "/health").json() == {"status": "ok"}  # no key needed


STEERINGS = [
    None,
    {"plan": "up"},
    {"plan": "up", "alpha": -0.5},
    {"plan": "down", "scope": "prompt"},
    {"plan": "up", "scope": "generated", "alpha": 2},
    {"plan": "down", "scope": "last:2"},
]


@pytest.mark.parametrize("steering", STEERINGS, ids=str)
def test_completion_matches_library(client, lm, expect, steering):
    want = expect("hello world", steering)
    r = complete(client, lm, "hello world", steering, max_tokens=MAX_TOKENS)
    assert r.choices[0].text == want
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == MAX_TOKENS
    assert r.usage.prompt_tokens == len(lm.tokenizer("hello world")["input_ids"])
    assert r.model_extra["steering"] == (
        None if steering is None else {"alpha": 1.0, "scope": "all", **steering}
    )


def test_steering_changes_the_output(client, lm):
    texts = {
        str(s): complete(client, lm, "hello world", s, max_tokens=12).choices[0].text
        for s in STEERINGS[:3]
    }
    assert len(set(texts.values())) == 3


def test_chat_and_streaming(client, lm, expect):
    steering = {"plan": "up", "alpha": 0.5}
    msgs = [{"role": "user", "content": "hi there"}]
    want, want_ab = expect("hi there", steering, chat=True), expect("ab", steering)
    r = client.chat.completions.create(
        model=lm.name, messages=msgs, max_tokens=MAX_TOKENS, extra_body={"steering": steering}
    )
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion"
    chunks = list(
        client.chat.completions.create(
            model=lm.name,
            messages=msgs,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"steering": steering},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS and not chunks[-1].choices
    stream = complete(client, lm, "ab", steering, max_tokens=MAX_TOKENS, stream=True)
    parts = list(stream)
    assert "".join(c.choices[0].text for c in parts) == want_ab
    assert parts[-1].choices[0].finish_reason == "length"


def test_several_prompts_in_one_request(client, lm, expect):
    want = [expect(p, {"plan": "down"}, n=8) for p in PROMPTS[:3]]
    r = complete(client, lm, PROMPTS[:3], {"plan": "down"}, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == want


def test_stop_strings(client, lm, expect):
    full = expect("hello world")
    stop = full[7:10]
    cut = full.index(stop)
    r = complete(client, lm, "hello world", max_tokens=MAX_TOKENS, stop=[stop, "\x00never"])
    assert r.choices[0].text == full[:cut] and r.choices[0].finish_reason == "stop"
    parts = list(complete(client, lm, "hello world", max_tokens=MAX_TOKENS, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in parts) == full[:cut]
    assert parts[-1].choices[0].finish_reason == "stop"


def test_sampling_is_honoured_and_seeded(client, lm):
    kw = dict(max_tokens=16, temperature=1.5, top_p=0.9)
    a = complete(client, lm, "hello world", seed=1, **kw).choices[0].text
    b = complete(client, lm, "hello world", seed=1, **kw).choices[0].text
    others = {complete(client, lm, "hello world", seed=s, **kw).choices[0].text for s in (2, 3, 4)}
    assert a == b
    assert others - {a}  # different seeds sample differently
    assert a != complete(client, lm, "hello world", max_tokens=16).choices[0].text


def test_concurrent_mixed_steering_is_isolated(server, client, lm, expect):
    """Many requests with different plans in flight at once: each gets its own steering only."""
    cases = [(p, s) for p in PROMPTS for s in STEERINGS[:4]]
    want = [expect(p, s, n=16) for p, s in cases]
    engine = server.app.state.server.engine
    engine.batches.clear()
    barrier = threading.Barrier(len(cases))

    def ask(i):
        prompt, steering = cases[i]
        barrier.wait()
        if i % 3 == 0:  # a mix of streaming and plain requests
            parts = complete(client, lm, prompt, steering, max_tokens=16, stream=True)
            return "".join(c.choices[0].text for c in parts)
        return complete(client, lm, prompt, steering, max_tokens=16).choices[0].text

    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(ask, range(len(cases))))
    assert got == want
    if engine.max_batch > 1:  # rows with different plans really shared batches
        assert max(engine.batches) > 1
    else:
        assert set(engine.batches) == {1}


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"steering": {"plan": "nope"}}, "steering.plan"),
        ({"steering": {"plan": "up", "alpha": "big"}}, "steering.alpha"),
        ({"steering": {"plan": "up", "alpha": True}}, "steering.alpha"),
        ({"steering": {"plan": "up", "scope": "sideways"}}, "steering.scope"),
        ({"steering": {"plan": "up", "scope": "last:0"}}, "steering.scope"),
        ({"steering": {"plan": "up", "scope": [[0]]}}, "steering.scope"),
        ({"steering": {"plan": "up", "layers": [1]}}, "steering"),
        ({"steering": "up"}, "steering"),
        ({"n": 2}, "n"),
        ({"logprobs": 3}, "logprobs"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_requests_are_400(client, lm, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=lm.name, prompt="hi", max_tokens=4, extra_body=extra)
    body = err.value.body
    assert err.value.status_code == 400
    assert body["type"] == "invalid_request_error" and body["param"] == param and body["message"]
    if param == "steering.plan":
        assert body["code"] == "plan_not_found" and "down, up" in body["message"]


def test_limits_and_model_errors(client, lm):
    with pytest.raises(openai.BadRequestError, match="limit 24"):
        client.completions.create(model=lm.name, prompt="hi", max_tokens=MAX_TOKENS + 1)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=lm.name, prompt="x " * 120, max_tokens=MAX_TOKENS)
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=4)
    assert err.value.body["code"] == "model_not_found"


def test_auth(server, lm):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.body["code"] == "invalid_api_key"
    body = {"model": lm.name, "prompt": "hi"}
    r = _http().post(server.url + "/v1/completions", json=body, timeout=30)  # no header at all
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"


def test_raw_http_errors(server, lm):
    http = _http()
    url, auth = server.url + "/v1/completions", {"Authorization": f"Bearer {KEY}"}

    def post(content, **headers):
        r = http.post(url, content=content, headers={**auth, **headers}, timeout=30)
        return r.status_code, r.json()["error"]

    status, err = post(b'{"model": "tiny-llama", "prompt": ')
    assert status == 400 and "not valid JSON" in err["message"]
    status, err = post(b"[1, 2]")
    assert status == 400 and "JSON object" in err["message"]
    nan = {"model": lm.name, "prompt": "hi", "steering": {"plan": "up", "alpha": float("nan")}}
    status, err = post(json.dumps(nan).encode())  # Python's json writes NaN; JSON has none
    assert status == 400 and err["param"] == "steering.alpha"
    big = json.dumps({"model": lm.name, "prompt": "x" * 5000}).encode()
    status, err = post(big)
    assert status == 413 and err["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(10):
            yield b" " * 1000

    status, err = post(chunks())
    assert status == 413
    r = http.get(server.url + "/v1/nothing", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# --- the real packaged target ---------------------------------------------------------------------


@pytest.mark.real
def test_real_model_concurrent_mixed_steering(expected):
    from expertsteer.extract import extract

    lm = load_model("smollm2-135m")
    happy = ["I am so happy today!", "This is wonderful news.", "I love this, it is great."]
    sad = ["I am so sad today.", "This is terrible news.", "I hate this, it is awful."]
    layers = [10, 15]
    states = extract(lm, happy + sad, layers=layers, cache=False, progress=False)
    vectors, alphas = {}, {}
    for k, j in enumerate(layers):
        d = states[k, :3].mean(0) - states[k, 3:].mean(0)
        vectors[j], alphas[j] = d / d.norm(), 0.3 * float(states[k].norm(dim=-1).mean())
    plan = SteeringPlan(vectors=vectors, alphas=alphas, target=ModelInfo.of(lm))
    plans = {"happy": plan, "sad": -plan}
    prompts = ["Tell me about your day.", "How was the movie?", "Describe the weather."]
    cases = [(p, s) for p in prompts for s in (None, {"plan": "happy"}, {"plan": "sad"})]
    n = 16
    want = [expected(lm, plans, p, s, chat=True, n=n) for p, s in cases]
    assert len({want[1], want[2], want[0]}) == 3  # the plans do steer
    app = create_app(lm, plans, max_tokens=64)
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)

        def ask(case):
            prompt, steering = case
            r = client.chat.completions.create(
                model=lm.name,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=n,
                extra_body={"steering": steering} if steering else {},
            )
            return r.choices[0].message.content

        with ThreadPoolExecutor(len(cases)) as pool:
            got = list(pool.map(ask, cases))
        batches = list(app.state.server.engine.batches)
        with pytest.raises(openai.BadRequestError, match="unknown steering plan"):
            ask(("hi", {"plan": "angry"}))
    assert got == want
    assert max(batches) > 1


# --- the request body reader and optional dependencies ----------------------------------------


def test_server_thread_takes_a_free_port_and_stops(lm, plans):
    app = create_app(lm, plans, max_tokens=4)
    srv = ServerThread(app)
    assert srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}"
    assert srv.thread.is_alive()
    srv.stop()
    assert not srv.thread.is_alive()


class _Body:
    def __init__(self, raw: bytes, declared: str):
        self.raw, self.headers = raw, {"content-length": declared}

    async def stream(self):
        for i in range(0, len(self.raw), 7):
            yield self.raw[i : i + 7]


def test_read_json_limits_and_errors():
    assert asyncio.run(read_json(_Body(b'{"a": 1}', "8"), limit=8)) == {"a": 1}
    for raw, declared, status in [
        (b'{"a": 1}', "9", 413),  # the declared length alone is refused
        (b'{"a": 12}', "", 413),  # no declared length: refused while reading
        (b'{"a": 12}', "\u00b9", 413),  # a bogus Content-Length is not trusted
        (b"[1]", "", 400),
        (b"\xff", "", 400),
    ]:
        with pytest.raises(ApiError) as err:
            asyncio.run(read_json(_Body(raw, declared), limit=8))
        assert err.value.status == status


# Copied from tests/test_fuzz.py (JSON values of any shape).
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


@pytest.mark.fuzz
@settings(max_examples=80, deadline=None)
@given(
    raw=st.one_of(st.binary(max_size=80), json_values.map(lambda v: json.dumps(v).encode())),
    declared=st.one_of(st.just(""), st.integers(0, 200).map(str), st.text(max_size=4)),
)
def test_server_request_bodies_are_json_objects_or_a_4xx(raw, declared):
    try:
        data = asyncio.run(read_json(_Body(raw, declared), limit=64))
    except ApiError as exc:
        assert exc.status in (400, 413) and exc.message
        return
    assert isinstance(data, dict) and len(raw) <= 64


def test_create_app_without_fastapi_names_the_extra(monkeypatch):
    """From tests/test_reliability.py::test_missing_optional_dependencies (its serve part)."""
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    lm = tiny_model("llama")
    with pytest.raises(MissingDependencyError, match=r"pip install 'expertsteer\[serve\]'$"):
        create_app(lm, {})
