"""Learned maps served: per request the expert reads the prompt and that row gets its own delta
(exactly learned_generate of the prompt alone), beside static and conditioned rows in one batch;
the delta's norm is reported per choice; a map without its expert does not start."""

import asyncio

import pytest

from expertsteer.condition import ExpertMissingError
from expertsteer.learned import learned_generate
from expertsteer.serve import ApiError, Conditioning, Engine, Job, SteeringServer
from expertsteer.steer import generate
from tiny import planted_map, tiny_model

N = 8
PROMPTS = ["hi there", "The quick brown fox"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """The library's reads below (learned_generate) cache states: in the test's folder."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def expert():
    return tiny_model("gpt2", seed=1)


@pytest.fixture(scope="module")
def learned(lm, expert):
    return planted_map(lm, expert, scale=3.0)


@pytest.fixture(scope="module")
def server(lm, plans, learned, expert):
    srv = SteeringServer(
        lm, {**plans, "map": learned}, expert=expert, model_id="tiny", max_tokens=N,
        batch_window_s=0.5,
    )  # fmt: skip
    yield srv
    srv.close()


def body(prompt, steering=None):
    return {"model": "tiny", "prompt": prompt, "max_tokens": N, "steering": steering}


def run(server, *bodies, chat=False):
    async def gather():
        return await asyncio.gather(*(server.complete(server.parse(b, chat=chat)) for b in bodies))

    out = asyncio.run(gather())
    assert server.engine.wait_idle(60)
    return out


def alone(lm, expert, m, prompt, alpha=1.0, chat=False):
    kw = dict(alpha=alpha, chat_template=chat, max_new_tokens=N, batch_size=1)
    return learned_generate(lm, expert, [prompt], m, **kw)[0]


def test_each_request_gets_its_own_delta_in_one_batch(server, lm, expert, plans, learned, expected):
    steering = {"plan": "map", "alpha": 1.5}
    server.engine.batches.clear()
    got = run(server, body(PROMPTS[0], steering), body(PROMPTS[1], steering), body(PROMPTS[0]))
    assert server.engine.batches == [3]  # one mixed batch: two learned rows and an unsteered one
    norms = learned.deltas(learned.read(expert, PROMPTS)).norm(dim=1)
    for r, prompt, norm in zip(got, PROMPTS, norms):
        assert r["choices"][0]["text"] == alone(lm, expert, learned, prompt, alpha=1.5)
        own = r["choices"][0]["steering"]
        assert own == {"delta_norm": pytest.approx(float(norm), rel=1e-5), "alpha": 1.5}
        assert r["steering"] == {**steering, "scope": "all", "expert": expert.name}
    assert got[0]["choices"][0]["text"] != got[1]["choices"][0]["text"]
    assert got[2]["choices"][0]["text"] == expected(lm, plans, PROMPTS[0], n=N)
    assert got[2]["steering"] is None


def test_a_static_row_shares_the_batch_and_keeps_its_own_plan(server, lm, expert, plans, learned):
    """A map's row and a static plan's row (same scope) decode in one batch, each what it
    would be alone."""
    server.engine.batches.clear()
    got = run(server, body(PROMPTS[1], {"plan": "map"}), body(PROMPTS[1], {"plan": "up"}))
    assert server.engine.batches == [2]
    assert got[0]["choices"][0]["text"] == alone(lm, expert, learned, PROMPTS[1])
    static = {"plan": "up"}
    want = generate(lm, [PROMPTS[1]], plan=plans["up"], chat_template=False, max_new_tokens=N)
    assert got[1]["choices"][0]["text"] == want[0]
    assert got[1]["steering"] == {**static, "alpha": 1.0, "scope": "all"}


def test_chat_requests_are_read_by_their_last_user_message(server, lm, expert, learned):
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    chat = {"model": "tiny", "messages": msgs, "max_tokens": N, "steering": {"plan": "map"}}
    (r,) = run(server, chat, chat=True)
    assert r["choices"][0]["message"]["content"] == alone(
        lm, expert, learned, PROMPTS[0], chat=True
    )
    system_only = {**chat, "messages": [{"role": "system", "content": "be brief"}]}
    with pytest.raises(ApiError, match="reads each prompt with the expert"):
        server.parse(system_only, chat=True)


def test_models_lists_the_map_with_the_expert(server, expert):
    (model,) = server.models()["data"]
    assert model["conditioned_plans"] == ["map"] and model["expert"] == expert.name


def test_no_expert_or_another_model_or_target_does_not_start(lm, learned, expert):
    with pytest.raises(ExpertMissingError, match="plan 'map': this learned map reads"):
        SteeringServer(lm, {"map": learned})
    with pytest.raises(ExpertMissingError, match="plan 'map': .* is another model"):
        SteeringServer(lm, {"map": learned}, expert=lm)
    other = tiny_model("llama", seed=7)
    with pytest.raises(ValueError, match="plan 'map': plan was fitted for"):
        SteeringServer(other, {"map": learned}, expert=expert)


def test_the_engine_sets_a_learned_rows_plan_and_reports_its_norm(lm, expert, learned):
    engine = Engine(lm, max_batch=4, batch_window_s=0.2)
    try:
        ids = lm.tokenizer(PROMPTS[1])["input_ids"]
        condition = Conditioning(learned, expert, PROMPTS[1])
        text, done = engine.run(dict(prompt_ids=ids, max_new_tokens=N, condition=condition))
        assert text == alone(lm, expert, learned, PROMPTS[1])
        norm = float(learned.deltas(learned.read(expert, [PROMPTS[1]])).norm())
        assert done.delta_norm == pytest.approx(norm, rel=1e-5)
        assert done.p is None and done.strength is None
        with pytest.raises(ValueError, match="gets its plan from the expert"):
            Job(ids, N, print, plan=learned.plans_of(learned.up[:, :1].T)[0], condition=condition)
    finally:
        engine.close()
