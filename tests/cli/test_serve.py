"""``expertsteer serve``: the plan options are checked before the model is loaded; an
expert-conditioned plan is served with its expert (``--expert``), or refused at start-up."""

import dataclasses

import pytest
import torch
from cli_helpers import flat
from typer.testing import CliRunner

from expertsteer.cli import app
from expertsteer.cli.serve import LOOPBACK
from expertsteer.condition import ConditionedPlan, ExpertProbe
from expertsteer.plan import ModelInfo
from tiny import plan_with_norms, planted_map, tiny_model


def test_cli_serve_checks_plan_specs(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["serve", "--target", "nowhere", "--steer", "no-equals-sign"])
    assert res.exit_code == 2 and "NAME=DIR" in res.output
    res = runner.invoke(app, ["serve", "--target", "nowhere", "--steer", f"a={tmp_path}"])
    assert res.exit_code == 1 and "not a saved SteeringPlan" in res.output


def test_a_plan_name_given_twice_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    def loader(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr("expertsteer.models.load_model", loader)
    argv = ["serve", "--target", "x", "--steer", f"a={tmp_path}", "--steer", f"a={tmp_path}"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2 and "plan name 'a' given twice" in res.output


@pytest.fixture
def served(monkeypatch) -> list[dict]:
    """The CLI's call of expertsteer.serve.serve, recorded instead of run (a tiny target)."""
    calls = []
    lm = tiny_model("llama")
    monkeypatch.setattr("expertsteer.models.load_model", lambda ref: lm)
    monkeypatch.setattr(
        "expertsteer.serve.serve",
        lambda lm, plans, **kw: calls.append({"lm": lm, "plans": plans, **kw}),
    )
    return calls


@pytest.mark.parametrize("host", LOOPBACK)
def test_the_server_gets_every_setting(tmp_path, served, host):
    lm = tiny_model("llama")
    plan_with_norms(lm).save_pretrained(tmp_path / "up")
    argv = ["serve", "--target", "x", "--steer", f"up={tmp_path / 'up'}", "--host", host]
    argv += ["--port", "8123", "--max-tokens", "7", "--max-body-bytes", "99", "--max-batch", "2"]
    res = CliRunner().invoke(app, argv, env={"EXPERTSTEER_API_KEY": None})
    assert res.exit_code == 0, res.output
    (call,) = served
    assert call["lm"].name == "tiny-llama" and sorted(call["plans"]) == ["up"]
    assert call["plans"]["up"].alphas == {1: 2.0}
    assert {k: v for k, v in call.items() if k not in ("lm", "plans")} == {
        "host": host,
        "port": 8123,
        "api_key": None,
        "max_tokens": 7,
        "max_body_bytes": 99,
        "max_batch": 2,
        "expert": None,
    }
    assert f"serving tiny-llama with plans ['up'] on http://{host}:8123/v1" in flat(res)
    assert "warning" not in res.output


def test_a_public_host_without_a_key_is_warned_about(served):
    argv = ["serve", "--target", "x", "--host", "0.0.0.0"]
    res = CliRunner().invoke(app, argv, env={"EXPERTSTEER_API_KEY": None})
    assert res.exit_code == 0, res.output
    assert "warning: listening on 0.0.0.0 without --api-key" in flat(res)
    assert served[0]["plans"] == {} and served[0]["host"] == "0.0.0.0"
    res = CliRunner().invoke(app, argv, env={"EXPERTSTEER_API_KEY": "k"})
    assert res.exit_code == 0 and "warning" not in res.output and served[1]["api_key"] == "k"


@pytest.fixture
def served_with_expert(monkeypatch) -> tuple[list[dict], dict]:
    """As ``served``, with two model references: ``x`` (a tiny llama) and ``ex`` (a gpt2)."""
    calls = []
    models = {"x": tiny_model("llama"), "ex": tiny_model("gpt2", seed=1)}
    monkeypatch.setattr("expertsteer.models.load_model", lambda ref: models[ref])
    monkeypatch.setattr(
        "expertsteer.serve.serve",
        lambda lm, plans, **kw: calls.append({"lm": lm, "plans": plans, **kw}),
    )
    return calls, models


def save_conditioned(folder, target, expert, name=None):
    info = ModelInfo.of(expert)
    if name is not None:
        info = dataclasses.replace(info, name=name)
    probe = ExpertProbe(info, 1, torch.zeros(expert.hidden_size), 40.0)
    ConditionedPlan(plan_with_norms(target), probe).save_pretrained(folder)


def test_a_conditioned_plan_is_served_with_its_expert(tmp_path, served_with_expert):
    calls, models = served_with_expert
    save_conditioned(tmp_path / "c", models["x"], models["ex"])
    plan_with_norms(models["x"]).save_pretrained(tmp_path / "s")
    argv = ["serve", "--target", "x", "--steer", f"c={tmp_path / 'c'}"]
    argv += ["--steer", f"s={tmp_path / 's'}", "--expert", "ex"]
    res = CliRunner().invoke(app, argv, env={"EXPERTSTEER_API_KEY": None})
    assert res.exit_code == 0, res.output
    (call,) = calls
    assert call["expert"] is models["ex"] and isinstance(call["plans"]["c"], ConditionedPlan)
    assert "expert tiny-gpt2 reads the prompts of plans ['c']" in flat(res)


def test_a_learned_map_is_served_with_its_expert(tmp_path, served_with_expert):
    from expertsteer.learned import LearnedMap

    calls, models = served_with_expert
    planted_map(models["x"], models["ex"]).save_pretrained(tmp_path / "m")
    argv = ["serve", "--target", "x", "--steer", f"m={tmp_path / 'm'}", "--expert", "ex"]
    res = CliRunner().invoke(app, argv, env={"EXPERTSTEER_API_KEY": None})
    assert res.exit_code == 0, res.output
    (call,) = calls
    assert call["expert"] is models["ex"] and isinstance(call["plans"]["m"], LearnedMap)
    assert "expert tiny-gpt2 reads the prompts of plans ['m']" in flat(res)
    other = CliRunner().invoke(app, [*argv[:-2], "--expert", "x"])  # the target is not it
    assert other.exit_code == 1 and "is another model" in flat(other) and len(calls) == 1


def test_a_conditioned_plan_without_its_expert_does_not_start(tmp_path, served_with_expert):
    calls, models = served_with_expert
    save_conditioned(tmp_path / "c", models["x"], models["ex"], name="no-such-expert")
    argv = ["serve", "--target", "x", "--steer", f"c={tmp_path / 'c'}"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 1 and not calls
    assert "error: c: this plan is expert-conditioned: it needs the expert 'no-such-expert'" in (
        flat(res)
    )
    assert "pass --expert MODEL" in flat(res) and "Traceback" not in res.output
    res = CliRunner().invoke(app, [*argv, "--expert", "x"])  # the target is another model
    assert res.exit_code == 1 and "is another model" in flat(res) and not calls


def test_an_expert_without_a_conditioned_plan_is_a_usage_error(tmp_path, served_with_expert):
    calls, models = served_with_expert
    plan_with_norms(models["x"]).save_pretrained(tmp_path / "s")
    argv = ["serve", "--target", "x", "--steer", f"s={tmp_path / 's'}", "--expert", "ex"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2 and not calls
    assert "Invalid value for --expert: is only for expert-conditioned plans" in flat(res)


def test_vllm_engine_refuses_an_expert_before_anything_starts(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the vLLM server was started")

    monkeypatch.setattr("expertsteer.vllm_backend.serve_vllm", never)
    argv = ["serve", "--target", "x", "--engine", "vllm", "--expert", "y"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2 and "vLLM's server does not read an expert" in flat(res)


def test_vllm_engine_refuses_a_learned_map_before_anything_starts(monkeypatch, tmp_path):
    def never(*args, **kwargs):
        raise AssertionError("the vLLM server was started")

    monkeypatch.setattr("expertsteer.vllm_backend.serve_vllm", never)
    target, expert = tiny_model("llama"), tiny_model("gpt2", seed=1)
    planted_map(target, expert).save_pretrained(tmp_path / "map")
    argv = ["serve", "--target", "x", "--engine", "vllm", "--steer", f"m={tmp_path / 'map'}"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2, res.output
    assert "m: a learned map needs its expert to read each prompt" in flat(res)
    assert "--engine hf" in flat(res)
