"""Expert-conditioned plans served: per request the expert reads the prompt (a chat's last user
message) and that request's α becomes α·g(p); requests with different strengths share a batch;
a constant probe is the static plan; a conditioned plan without its expert does not start."""

import asyncio
import json

import pytest
import torch

from expertsteer.condition import ConditionedPlan, ExpertMissingError, ExpertProbe
from expertsteer.condition import conditioned_generate as library
from expertsteer.plan import ModelInfo
from expertsteer.serve import ApiError, Engine, Job, SteeringServer, create_app
from tiny import tiny_model, unit

N = 8
PROMPTS = ["hi there", "The quick brown fox"]  # g(p) ≈ -0.45 and +0.23 under the probe below


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The library's reads below (conditioned_generate) cache states: in the test's folder."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def expert():
    return tiny_model("gpt2", seed=1)


@pytest.fixture(scope="module")
def cplans(lm, expert, make_plan):
    """``cond``: a probe that tells PROMPTS apart; ``const``: weight 0, bias 40 (g = 1)."""
    direction = make_plan(lm, {1: 0.8})
    info = ModelInfo.of(expert)
    planted = ExpertProbe(info, 1, 30.0 * unit(expert.hidden_size, 5), 0.2)
    constant = ExpertProbe(info, 1, torch.zeros(expert.hidden_size), 40.0)
    return {
        "cond": ConditionedPlan(direction, planted),
        "const": ConditionedPlan(direction, constant),
    }


@pytest.fixture(scope="module")
def server(lm, plans, cplans, expert):
    srv = SteeringServer(
        lm, {**plans, **cplans}, expert=expert, model_id="tiny", max_tokens=N, batch_window_s=0.5
    )
    yield srv
    srv.close()


def body(prompt, steering=None, **kw):
    return {"model": "tiny", "prompt": prompt, "max_tokens": N, "steering": steering, **kw}


def run(server, *bodies, chat=False):
    """Whole responses of ``bodies`` sent at once; then the model is free for the library."""

    async def gather():
        return await asyncio.gather(*(server.complete(server.parse(b, chat=chat)) for b in bodies))

    out = asyncio.run(gather())
    assert server.engine.wait_idle(60)
    return out


def alone(lm, expert, cplan, prompt, alpha=1.0, chat=False):
    """conditioned_generate on this prompt alone: what the server must return."""
    kw = dict(alpha=alpha, chat_template=chat, max_new_tokens=N, batch_size=1)
    return library(lm, expert, [prompt], cplan, **kw)[0]


def strength(cplan, expert, prompt):
    """(p, g(p)) of ``prompt`` read alone, as conditioned_generate reads it."""
    states = cplan.probe.read(expert, [prompt])
    return float(cplan.probe.probability(states)[0]), float(cplan.probe.strengths(states)[0])


def test_each_request_gets_its_own_strength_in_one_batch(
    server, lm, expert, plans, cplans, expected
):
    """Two conditioned requests and a static one decoded together: each conditioned row is
    exactly conditioned_generate of its prompt alone (token for token, greedy), the static row
    the static plan's; the strengths differ and are reported per choice."""
    cond = {"plan": "cond", "alpha": 1.5}
    server.engine.batches.clear()
    got = run(
        server,
        body(PROMPTS[0], cond),
        body(PROMPTS[1], cond),
        body(PROMPTS[0], {"plan": "up"}),
    )
    assert server.engine.batches == [3]  # one mixed batch
    for r, prompt in zip(got, PROMPTS):
        assert r["choices"][0]["text"] == alone(lm, expert, cplans["cond"], prompt, alpha=1.5)
        p, g = strength(cplans["cond"], expert, prompt)
        own = r["choices"][0]["steering"]
        assert own["p"] == pytest.approx(p, abs=1e-6)
        assert own["strength"] == pytest.approx(g, abs=1e-6)
        assert own["alpha"] == pytest.approx(1.5 * g, abs=1e-6)
        assert r["steering"] == {**cond, "scope": "all", "expert": expert.name}
    g0, g1 = (r["choices"][0]["steering"]["strength"] for r in got[:2])
    assert g0 < -0.3 and g1 > 0.1  # really different strengths, opposite signs
    assert got[0]["choices"][0]["text"] != got[1]["choices"][0]["text"]
    assert got[2]["choices"][0]["text"] == expected(lm, plans, PROMPTS[0], {"plan": "up"}, n=N)
    assert "steering" not in got[2]["choices"][0]  # static: no per-choice strength
    assert got[2]["steering"] == {"plan": "up", "alpha": 1.0, "scope": "all"}


def test_several_prompts_of_one_request_each_get_their_strength(server, lm, expert, cplans):
    (r,) = run(server, body(PROMPTS, {"plan": "cond"}))
    for choice, prompt in zip(r["choices"], PROMPTS):
        assert choice["text"] == alone(lm, expert, cplans["cond"], prompt)
    strengths = [c["steering"]["strength"] for c in r["choices"]]
    assert strengths[0] < 0 < strengths[1]


def test_a_constant_probe_is_exactly_the_static_plan(server, lm, expert, cplans, expected):
    """weight 0, bias 40: p = sigmoid(40) = 1.0 in float64, g = 1; α·g is α itself."""
    got = run(server, *(body(p, {"plan": "const", "alpha": 2.0}) for p in PROMPTS))
    static = {"static": cplans["const"].plan}
    for r, prompt in zip(got, PROMPTS):
        want = expected(lm, static, prompt, {"plan": "static", "alpha": 2.0}, n=N)
        assert r["choices"][0]["text"] == want
        assert r["choices"][0]["steering"] == {"p": 1.0, "strength": 1.0, "alpha": 2.0}


def test_chat_requests_are_read_by_their_last_user_message(server, lm, expert, cplans):
    """The expert reads the last user message as written (not the target's rendered template):
    a one-message chat equals conditioned_generate on that message with the chat template."""
    steering = {"plan": "cond"}
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    chat = {"model": "tiny", "messages": msgs, "max_tokens": N, "steering": steering}
    history = [{"role": "user", "content": "xyz q"}, {"role": "assistant", "content": "ok"}]
    (r, longer) = run(server, chat, {**chat, "messages": history + msgs}, chat=True)
    assert r["choices"][0]["message"]["content"] == alone(
        lm, expert, cplans["cond"], PROMPTS[0], chat=True
    )
    _, g = strength(cplans["cond"], expert, PROMPTS[0])
    assert r["choices"][0]["steering"]["strength"] == pytest.approx(g, abs=1e-6)
    assert longer["choices"][0]["steering"]["strength"] == pytest.approx(g, abs=1e-6)
    system_only = {**chat, "messages": [{"role": "system", "content": "be brief"}]}
    with pytest.raises(ApiError, match="last user message") as err:
        server.parse(system_only, chat=True)
    assert err.value.status == 400
    server.parse({**system_only, "steering": {"plan": "up"}}, chat=True)  # static: fine


def test_stream_reports_each_choice_strength_on_its_final_chunk(server, lm, expert, cplans):
    async def chunks():
        req = server.parse(body(PROMPTS, {"plan": "cond"}, stream=True), chat=False)
        return [part async for part in server.stream(req)]

    parts = asyncio.run(chunks())
    assert server.engine.wait_idle(60)
    data = [json.loads(p[len("data: ") :]) for p in parts[:-1]]
    finals = {
        c["choices"][0]["index"]: c["choices"][0]
        for c in data
        if c["choices"][0].get("finish_reason")
    }
    for i, prompt in enumerate(PROMPTS):
        text = "".join(c["choices"][0]["text"] for c in data if c["choices"][0]["index"] == i)
        assert text == alone(lm, expert, cplans["cond"], prompt)
        _, g = strength(cplans["cond"], expert, prompt)
        assert finals[i]["steering"]["strength"] == pytest.approx(g, abs=1e-6)


def test_models_lists_the_conditioned_plans_and_the_expert(server, expert):
    (model,) = server.models()["data"]
    assert model["steering_plans"] == ["cond", "const", "down", "up"]
    assert model["conditioned_plans"] == ["cond", "const"] and model["expert"] == expert.name


def test_no_expert_or_another_model_does_not_start(lm, cplans):
    with pytest.raises(ExpertMissingError, match="plan 'cond': this plan is expert-conditioned"):
        SteeringServer(lm, {"cond": cplans["cond"]})
    with pytest.raises(ExpertMissingError, match="needs the expert"):
        create_app(lm, {"cond": cplans["cond"]})
    with pytest.raises(ExpertMissingError, match="plan 'cond': .* is another model"):
        SteeringServer(lm, {"cond": cplans["cond"]}, expert=lm)


def test_the_engine_scales_a_conditioned_row_and_reports_it(lm, expert, cplans):
    """Engine level: Conditioning on a job; the row's done event carries p and g(p)."""
    from expertsteer.serve import Conditioning

    cplan = cplans["cond"]
    engine = Engine(lm, max_batch=4, batch_window_s=0.2)
    try:
        ids = lm.tokenizer(PROMPTS[1])["input_ids"]
        spec = dict(prompt_ids=ids, max_new_tokens=N, plan=cplan.plan, alpha=1.0)
        text, done = engine.run(
            {**spec, "condition": Conditioning(cplan.probe, expert, PROMPTS[1])}
        )
        assert text == alone(lm, expert, cplan, PROMPTS[1])
        p, g = strength(cplan, expert, PROMPTS[1])
        assert done.p == pytest.approx(p, abs=1e-6) and done.strength == pytest.approx(g, abs=1e-6)
        with pytest.raises(ValueError, match="needs the plan"):
            Job(ids, N, print, condition=Conditioning(cplan.probe, expert, "x"))
    finally:
        engine.close()


def test_served_over_http_with_the_openai_client(lm, plans, cplans, expert):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from expertsteer.serve import ServerThread

    app = create_app(lm, {**plans, **cplans}, expert=expert, max_tokens=N)
    with ServerThread(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        r = client.completions.create(
            model=lm.name,
            prompt=PROMPTS[0],
            max_tokens=N,
            extra_body={"steering": {"plan": "cond"}},
        )
        assert app.state.server.engine.wait_idle(60)
        assert r.choices[0].text == alone(lm, expert, cplans["cond"], PROMPTS[0])
        assert r.model_extra["steering"]["expert"] == expert.name
        _, g = strength(cplans["cond"], expert, PROMPTS[0])
        assert r.choices[0].model_extra["steering"]["strength"] == pytest.approx(g, abs=1e-6)
