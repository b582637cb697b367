"""Plans and steering as plain data (no vLLM needed)."""

import pytest
import torch

from expertsteer.condition import ConditionedPlan, ExpertProbe
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.vllm_backend.spec import (
    is_conditioned,
    load_plan,
    parse_scope,
    plan_payload,
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


def test_a_learned_map_is_refused_with_where_it_runs(tmp_path):
    target, expert = tiny_model("llama"), tiny_model("gpt2", seed=1)
    m = planted_map(target, expert)
    m.save_pretrained(tmp_path / "map")
    for value in (m, tmp_path / "map"):
        with pytest.raises(ValueError, match="per-prompt delta.*on the HF path"):
            load_plan(value)
