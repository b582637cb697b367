"""The OpenAI-compatible server, driven by the stock ``openai`` client over loopback.

Also: serving and steering a target sharded with an accelerate ``device_map`` (disk offload).
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from expertsteer.engine import Engine  # noqa: E402
from expertsteer.models import load_model  # noqa: E402
from expertsteer.plan import ModelInfo, SteeringPlan  # noqa: E402
from expertsteer.serve import ServerThread, create_app  # noqa: E402
from expertsteer.steer import generate  # noqa: E402
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


@pytest.fixture(autouse=True)
def _one_thread(request):
    if request.node.get_closest_marker("real"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only spin on a busy machine
    yield
    torch.set_num_threads(before)


def unit(d, seed):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def make_plan(lm, alphas, seed=0):
    vectors = {j: unit(lm.hidden_size, seed + j) for j in alphas}
    return SteeringPlan(vectors=vectors, alphas=alphas, target=ModelInfo.of(lm))


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def plans(lm):
    return {"up": make_plan(lm, {1: 1.5, 2: 1.0}), "down": make_plan(lm, {1: -2.0}, seed=5)}


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


def expected(lm, plans, prompt, steering=None, chat=False, n=MAX_TOKENS):
    """The library's own single-prompt greedy generation: what the server must return."""
    kw = {}
    if steering:
        kw = {
            "plan": plans[steering["plan"]],
            "alpha": steering.get("alpha", 1.0),
            "scope": steering.get("scope", "all"),
        }
    return generate(lm, [prompt], chat_template=chat, max_new_tokens=n, batch_size=1, **kw)[0]


@pytest.fixture
def expect(server, lm, plans):
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


def test_cli_serve_checks_plan_specs(tmp_path):
    from typer.testing import CliRunner

    from expertsteer.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["serve", "--target", "nowhere", "--steer", "no-equals-sign"])
    assert res.exit_code == 2 and "NAME=DIR" in res.output
    res = runner.invoke(app, ["serve", "--target", "nowhere", "--steer", f"a={tmp_path}"])
    assert res.exit_code == 1 and "not a saved SteeringPlan" in res.output


# --- a target sharded with an accelerate device_map ---------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, lm):
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", seed=3, n_layers=4).model
    model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def _disk_offload(saved):
    """Blocks 1 and 3 offloaded to disk (meta on the module, loaded per forward), rest on CPU."""
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu"}
    dm |= {"lm_head": "cpu", **{f"model.layers.{i}": "cpu" for i in (0, 2)}}
    dm |= {f"model.layers.{i}": "disk" for i in (1, 3)}
    return load_model(saved, device_map=dm, offload_folder=str(saved / "offload"))


def _cpu_offload(saved):
    """Every weight held by accelerate's cpu_offload hooks; the modules hold meta tensors."""
    from accelerate import cpu_offload

    from expertsteer.models import wrap_model

    plain = load_model(saved)
    cpu_offload(plain.model, execution_device=torch.device("cpu"))
    return wrap_model(plain.model, plain.tokenizer, name=str(saved))


@pytest.mark.parametrize("shard", [_disk_offload, _cpu_offload], ids=["disk", "cpu_offload"])
def test_device_map_steering_equals_unsharded(saved, shard):
    ref = load_model(saved)
    sharded = shard(saved)
    assert any(p.device.type == "meta" for p in sharded.model.parameters())
    assert sharded.fingerprint == ref.fingerprint  # a plan fitted on one applies to the other
    plan = make_plan(ref, {1: 1.5, 2: -1.0, 3: 0.8})
    plans = [plan, None, -plan, plan]
    kw = dict(plan=plans, chat_template=False, max_new_tokens=10, alpha=[1.0, 1.0, 0.5, 2.0])
    want = generate(ref, PROMPTS[:4], **kw)
    assert generate(sharded, PROMPTS[:4], **kw) == want
    assert want[0] != generate(ref, PROMPTS[:1], chat_template=False, max_new_tokens=10)[0]
    engine = Engine(sharded, max_batch=4)  # the server's path: per-row plans in one batch
    try:
        ids = [sharded.tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
        jobs = [
            dict(prompt_ids=i, max_new_tokens=10, plan=p, alpha=a)
            for i, p, a in zip(ids, plans, kw["alpha"])
        ]
        with ThreadPoolExecutor(4) as pool:
            got = [text for text, _ in pool.map(engine.run, jobs)]
    finally:
        engine.close()
    assert got == want


# --- the real packaged target ---------------------------------------------------------------------


@pytest.mark.real
def test_real_model_concurrent_mixed_steering():
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
