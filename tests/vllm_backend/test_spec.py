"""Plans and steering as plain data (no vLLM needed)."""

import pytest
import torch

from expertsteer.condition import ConditionedPlan, ExpertProbe
from expertsteer.learned import LearnedMap
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.vllm_backend.spec import (
    is_conditioned,
    is_learned,
    load_plan,
    parse_scope,
    plan_payload,
    reads_with_expert,
    steering_spec,
)
from tiny import planted_map, tiny_model


def test_steering_spec():
    assert steering_spec({"plan": "a"}, ["a"]) == {"plan": "a", "alpha": 1.0, "scope": "all"}
    assert steering_spec({"plan": "a", "alpha": 2, "scope": "last:3"}, ["a"]) == {
        "plan": "a",
        "alpha": 2.0,
        "scope": "last:3",
    }
    assert steering_spec(None, ["a"]) is None
    assert steering_spec({"plan": None}, ["a"]) is None
    cases = [
        ({"plan": "a", "alpha": float("nan")}, "finite"),
        ({"plan": "a", "alpha": True}, "finite"),
        ({"plan": "a", "scope": "x"}, "scope"),
        ({"plan": "a", "scope": 3}, "string"),
        ({"p": 1}, "unknown fields"),
        ({"plan": "b"}, "unknown steering plan 'b'; this server has: \\['a'\\]"),
        ("a", "must be an object"),
    ]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match):
            steering_spec(bad, ["a"])


def test_parse_scope():
    assert parse_scope("all") == ("all", 0)
    assert parse_scope("last:4") == ("last", 4)
    assert parse_scope("generated")[0] == "generated"
    with pytest.raises(ValueError, match="not supported on vLLM"):
        parse_scope([[1, 2]])


def _plan(d=16, n_layers=4):
    info = ModelInfo("tiny", "0" * 64, n_layers, d)
    vecs = {1: torch.arange(d, dtype=torch.float32), 3: -torch.ones(d)}
    return SteeringPlan(vecs, {1: 0.5, 3: 2.0}, info)


def test_plan_payload_is_plain_lists_of_the_static_plan(tmp_path):
    plan = _plan()
    got = plan_payload(plan)
    assert got == {
        "layers": [1, 3],
        "vectors": [list(map(float, range(16))), [-1.0] * 16],
        "alphas": [0.5, 2.0],
        "hidden_size": 16,
        "n_layers": 4,
        "target": "tiny",
    }
    expert = ModelInfo("ex", "1" * 64, 2, 8)
    cplan = ConditionedPlan(plan, ExpertProbe(expert, 1, torch.ones(8), 0.0))
    assert is_conditioned(cplan) and not is_conditioned(plan)
    assert plan_payload(cplan) == got  # the workers get the static plan; α comes per request
    cplan.save_pretrained(tmp_path / "c")
    plan.save_pretrained(tmp_path / "s")
    assert isinstance(load_plan(tmp_path / "c"), ConditionedPlan)
    assert isinstance(load_plan(tmp_path / "s"), SteeringPlan)
    assert load_plan(plan) is plan


def test_a_learned_map_is_its_block_with_a_zero_vector_and_requests_bring_deltas(tmp_path):
    target, expert = tiny_model("llama"), tiny_model("gpt2", seed=1)
    m = planted_map(target, expert, layer=2)
    m.save_pretrained(tmp_path / "map")
    assert isinstance(load_plan(tmp_path / "map"), LearnedMap) and load_plan(m) is m
    assert is_learned(m) and reads_with_expert(m) and not is_conditioned(m)
    payload = plan_payload(m)
    assert payload["layers"] == [2] and payload["alphas"] == [0.0]
    assert payload["vectors"] == [[0.0] * target.hidden_size]
    delta = {"vector": [0.5, -0.5], "norm": 3}
    with pytest.raises(ValueError, match="unknown fields"):  # a client cannot send one
        steering_spec({"plan": "a", "delta": delta}, ["a"])
    got = steering_spec({"plan": "a", "delta": delta}, ["a"], delta=True)
    assert got == {"plan": "a", "alpha": 1.0, "scope": "all", "delta": {**delta, "norm": 3.0}}
    for bad in ({"vector": [], "norm": 1}, {"vector": [1.0], "norm": -1}, {"vector": [1.0]},
                {"vector": [float("nan")], "norm": 1}, [1.0]):  # fmt: skip
        with pytest.raises(ValueError, match="steering.delta must be"):
            steering_spec({"plan": "a", "delta": bad}, ["a"], delta=True)
