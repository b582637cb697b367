import json

import numpy as np
import pytest

from expertsteer.artifacts import load_plan
from expertsteer.condition import ConditionedPlan
from expertsteer.eval import EvalConfig, load_task, run_eval, write_report
from expertsteer.eval.conditioned import (
    ENSEMBLE_WEIGHTS,
    ConditionedScorer,
    ProbeData,
    cond_nulls,
    ensemble_correct,
    probe_choice_correct,
)
from expertsteer.eval.methods import parse_methods, resolve
from expertsteer.eval.scorer import Scorer, zero_shot
from expertsteer.eval.scoring import option_logprobs
from expertsteer.plan import ModelInfo, SteeringPlan
from tiny import tiny_model, unit, write_task

FAST = dict(n_nulls=3, align_texts=40, alphas=(0.0, 1.0, 4.0), layer_counts=(1, 2), n_pairs=2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def setup(tmp_path):
    expert = tiny_model("qwen2", seed=1, d=48, n_layers=5)
    target = tiny_model("llama", seed=2, n_layers=4)
    spec = write_task(tmp_path / "task.jsonl")
    train, val, test = load_task(spec).split(seed=0, balance=True)
    return expert, target, spec, (train, val, test)


def plan_for(lm, alpha=6.0):
    return SteeringPlan(
        vectors={1: unit(lm.hidden_size, 3), 2: unit(lm.hidden_size, 4)},
        alphas={1: alpha, 2: alpha},
        target=ModelInfo.of(lm),
    )


def test_conditioned_scorer_is_static_at_strength_one_and_unsteered_at_zero(setup):
    _, target, _, (_, _, test) = setup
    base = Scorer(target, test, batch_size=8)
    plan = plan_for(target)
    ones = [np.ones(len(it.choices)) for it in test.items]
    zeros = [np.zeros(len(it.choices)) for it in test.items]
    static = option_logprobs(target, test.items, plan=plan, shared_prompt=False)
    cond = option_logprobs(target, test.items, plan=plan, option_alphas=ones)
    for a, b in zip(static, cond):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    none = option_logprobs(target, test.items)
    for a, b in zip(none, option_logprobs(target, test.items, plan=plan, option_alphas=zeros)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # per option: an option's own strength only acts on that option's score
    mixed = [np.array([1.0] + [0.0] * (len(it.choices) - 1)) for it in test.items]
    got = option_logprobs(target, test.items, plan=plan, option_alphas=mixed)
    for g, s, n in zip(got, static, none):
        np.testing.assert_allclose(g[0], s[0], rtol=0, atol=1e-5)
        np.testing.assert_allclose(g[1:], n[1:], rtol=0, atol=1e-5)
    c = ConditionedScorer(base, ones)
    assert np.array_equal(c.correct(plan), base.correct(plan))
    assert np.array_equal(ConditionedScorer(base, zeros).correct(plan), base.correct())
    with pytest.raises(ValueError, match="one multiplier per choice"):
        option_logprobs(target, test.items, plan=plan, option_alphas=ones[:-1])


def test_ensemble_weight_is_chosen_on_validation(setup):
    expert, target, _, (_, val, test) = setup
    t = Scorer(target, val, 8), Scorer(target, test, 8)
    e = Scorer(expert, val, 8), Scorer(expert, test, 8)
    zero_shot(*t), zero_shot(*e)
    correct, w, v = ensemble_correct(t, e)
    assert w in ENSEMBLE_WEIGHTS and 0.0 <= v <= 1.0
    # never worse on validation than either model alone (w = 1, w = 0 are in the grid)
    assert v >= max(float(t[0].correct().mean()), float(e[0].correct().mean())) - 1e-12
    if w == 1.0:
        assert np.array_equal(correct, t[1].correct())


def test_probe_data_probe_and_nulls(setup):
    expert, target, _, (train, val, test) = setup
    data = ProbeData(expert, [1, 2, 3], train, val, test, batch_size=8)
    assert data.states["train"][1].shape == (sum(len(i.choices) for i in train.items), 48)
    probe = data.fit()
    assert probe.layer in (1, 2, 3)
    g = data.strengths(probe, "test")
    assert [len(x) for x in g] == [len(i.choices) for i in test.items]
    assert all(np.all(np.abs(x) <= 1) for x in g)
    c = probe_choice_correct(data, probe)
    p = data.probabilities(probe, "test")
    assert c.tolist() == [float(np.argmax(q) == it.answer) for q, it in zip(p, test.items)]
    shuffled = data.fit(shuffle_seed=7)
    assert not np.allclose(shuffled.weight.numpy(), probe.weight.numpy())
    base = Scorer(target, test, 8)
    nulls = cond_nulls(data, probe, plan_for(target), 1.0, base, 3, seed=0)
    assert sorted(nulls) == ["random_direction", "shuffled_labels"]
    assert all(len(v) == 3 and all(0 <= x <= 1 for x in v) for v in nulls.values())
    flat = cond_nulls(data, probe, plan_for(target), 0.0, base, 2, seed=0)
    assert flat["shuffled_labels"] == [float(base.correct().mean())] * 2


def test_method_names_and_links():
    names = parse_methods("expertsteer-cond,self-cond,control-cond", pairings=("depth",))
    assert names[0] == "expertsteer-cond:own"
    assert "expertsteer-cond:ridge:depth" in names
    assert "control-cond:random-expert:own" in names
    assert "control-cond:target-as-expert:own" not in names  # that is self-cond
    assert resolve("control-cond:target-as-expert:ridge:depth").controlled == (
        "expertsteer-cond:ridge:depth"
    )
    assert resolve("control:random-expert:ridge:depth").controlled == "expertsteer:ridge:depth"
    assert resolve("self-cond").kind == "target-only"
    everything = parse_methods("all")
    for n in ("expertsteer-cond:own", "self-cond", "expert-probe", "ensemble"):
        assert n in everything


def report_plans(out):
    return json.loads((out / "results.json").read_text())["plans"]


def test_conditioned_methods_end_to_end(setup, tmp_path):
    expert, target, spec, _ = setup
    methods = (
        "none,self-rfm,expertsteer-cond:own,expertsteer-cond:ridge:depth,self-cond,"
        "expert-probe,ensemble,control-cond"
    )
    result = run_eval(
        EvalConfig(
            task=spec,
            target=target,
            expert=expert,
            methods=methods,
            generation=True,
            **{**FAST, "alphas": (1.0, 4.0)},  # no α = 0: every tuned plan steers
        ),
        progress=False,
    )
    report = result.report
    rows = {m["name"]: m for m in report["methods"]}
    assert list(rows) == [
        "none",
        "self-rfm",
        "expertsteer-cond:own",
        "expertsteer-cond:ridge:depth",
        "self-cond",
        "expert-probe",
        "ensemble",
        "control-cond:random-expert:own",
        "control-cond:random-expert:ridge:depth",
        "control-cond:target-as-expert:ridge:depth",
    ]
    own = rows["expertsteer-cond:own"]
    assert own["kind"] == "conditioned" and "null_rank_p" in own
    assert set(own["p_vs_controls"]) == {"control-cond:random-expert:own", "self-cond"}
    assert set(rows["expertsteer-cond:ridge:depth"]["p_vs_controls"]) == {
        "control-cond:random-expert:ridge:depth",
        "control-cond:target-as-expert:ridge:depth",
        "self-cond",
    }
    assert own["probe"]["layer"] in range(5) and "val_auc" in own["probe"]
    assert rows["ensemble"]["weight"] in ENSEMBLE_WEIGHTS
    assert own["verdict"] and all(0 <= r["score"] <= 1 for r in rows.values())
    # self-cond is a target-only method: a candidate for the best baseline
    assert rows["self-cond"]["kind"] == "target-only"
    # generation: a conditioned method's α per prompt from its probe's reading of the prompt
    assert "generation_score" in own and "generation_score" in rows["self-cond"]
    assert "generation_score" not in rows["control-cond:random-expert:own"]  # freed stand-in
    # the tuned conditioned plans are saved with their probes
    out = write_report(result, tmp_path / "report")
    for name in ("expertsteer-cond:own", "expertsteer-cond:ridge:depth", "self-cond"):
        saved = load_plan(out / report_plans(out)[name])
        assert isinstance(saved, ConditionedPlan)
        assert saved.probe.layer == rows[name]["probe"]["layer"]
    assert not isinstance(load_plan(out / report_plans(out)["self-rfm"]), ConditionedPlan)
