import json

import numpy as np
import pytest
import torch

from expertsteer.artifacts import load_plan
from expertsteer.condition import (
    PROBE_CONFIG,
    STRENGTHS,
    ConditionedPlan,
    ExpertMissingError,
    ExpertProbe,
    ProbeFit,
    condition,
    conditioned_generate,
    default_probe_layers,
    probe_examples,
)
from expertsteer.extract import extract
from expertsteer.io import CorruptFileError
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.steer import generate, sequence_logprobs
from tiny import tiny_model, unit

PROMPTS = ["hello world", "ab", "The quick brown fox", "xyz q"]


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", seed=0), tiny_model("gpt2", seed=1)  # target, expert


def planted(expert, layer=1, scale=3.0, bias=0.2, **kw) -> ExpertProbe:
    return ExpertProbe(ModelInfo.of(expert), layer, scale * unit(expert.hidden_size, 5), bias, **kw)


def target_plan(target) -> SteeringPlan:
    return SteeringPlan(
        vectors={1: unit(target.hidden_size, 1)}, alphas={1: 4.0}, target=ModelInfo.of(target)
    )


def test_planted_probe_gives_the_expected_per_row_strengths(pair):
    _, expert = pair
    probe = planted(expert, slope=1.5, intercept=-0.1)
    h = extract(expert, PROMPTS, layers=[1], position="last", cache=False, progress=False)[0]
    p = torch.sigmoid(1.5 * (h.double() @ probe.weight + 0.2) - 0.1)
    torch.testing.assert_close(probe.strengths_for(expert, PROMPTS), 2 * p - 1, rtol=0, atol=1e-12)
    assert len(set(np.round(p.numpy(), 6))) == len(PROMPTS)  # the rows really differ
    logit = planted(expert, strength="logit").strengths_for(expert, PROMPTS)
    assert logit.abs().max() <= 1.0


def test_strength_maps_are_centred_and_bounded():
    p = torch.tensor([0.0, 0.02, 0.5, 0.98, 1.0], dtype=torch.float64)
    for name in STRENGTHS:
        g = STRENGTHS.make(name)(p)
        assert g[2] == 0.0 and g.abs().max() <= 1.0
        assert torch.all(g[1:] >= g[:-1])  # monotone
        torch.testing.assert_close(g, -g.flip(0))  # odd around p = 0.5


def test_constant_probe_gives_exactly_the_static_result(pair):
    target, expert = pair
    probe = ExpertProbe(ModelInfo.of(expert), 1, torch.zeros(expert.hidden_size), 40.0)
    cplan = ConditionedPlan(target_plan(target), probe)
    assert torch.equal(
        cplan.alphas(expert, PROMPTS, 2.0), torch.full((4,), 2.0, dtype=torch.float64)
    )
    kw = dict(max_new_tokens=6, chat_template=False)
    static = generate(target, PROMPTS, plan=cplan.plan, alpha=2.0, **kw)
    assert conditioned_generate(target, expert, PROMPTS, cplan, alpha=2.0, **kw) == static
    assert static != generate(target, PROMPTS, **kw)  # the plan steers


def test_conditioned_rows_equal_each_row_steered_alone(pair):
    target, expert = pair
    cplan = ConditionedPlan(target_plan(target), planted(expert, scale=30.0))
    a = cplan.alphas(expert, PROMPTS, 1.0)
    conts = [" the", " b", " jumps", " r"]
    got = sequence_logprobs(target, PROMPTS, conts, plan=cplan.plan, alpha=a)
    for k in range(len(PROMPTS)):
        one = sequence_logprobs(
            target, PROMPTS[k : k + 1], conts[k : k + 1], plan=cplan.plan, alpha=float(a[k])
        )
        torch.testing.assert_close(got[k : k + 1], one, rtol=0, atol=1e-5)


def test_probe_fit_finds_the_informative_block_and_calibrates():
    rng = np.random.default_rng(0)
    info = ModelInfo("e", "f" * 16, 4, 8)
    u = rng.normal(size=8)

    def states(n):
        X = {k: torch.from_numpy(rng.normal(size=(n, 8))) for k in (1, 2)}
        y = (X[2].numpy() @ u + 0.3 * rng.normal(size=n) > 0).astype(int)
        return X, y

    (Xt, yt), (Xv, yv) = states(200), states(200)
    fit = ProbeFit(C=1.0).fit(info, Xt, yt, Xv, yv)
    assert fit.probe_.layer == 2
    assert fit.scores_[2]["val_auc"] > 0.95 > 0.7 > fit.scores_[1]["val_auc"]
    p = fit.probe_.probability(Xv[2]).numpy()
    # calibrated: in the confident bins the empirical rate follows p
    assert abs(p[p > 0.9].mean() - yv[p > 0.9].mean()) < 0.1
    with pytest.raises(ValueError, match="of each label"):
        ProbeFit().fit(info, Xt, np.ones(200, int), Xv, yv)


def test_condition_fits_on_a_real_expert_read(pair):
    target, expert = pair
    words = ["good", "fine", "nice", "great", "bad", "awful", "poor", "sad"]
    texts = [f"{w} {k}" for k in range(6) for w in words]
    labels = [int(w in words[:4]) for k in range(6) for w in words]
    cplan = condition(
        target_plan(target), expert, (texts[:32], labels[:32]), (texts[32:], labels[32:])
    )
    assert cplan.probe.layer in default_probe_layers(cplan.plan, expert)
    assert 0.0 <= cplan.probe.metrics["val_auc"] <= 1.0


def test_save_load_and_errors(pair, tmp_path):
    target, expert = pair
    cplan = ConditionedPlan(target_plan(target), planted(expert, slope=0.5))
    cplan.save_pretrained(tmp_path / "c")
    back = load_plan(tmp_path / "c")
    assert isinstance(back, ConditionedPlan)
    assert torch.equal(back.probe.weight, cplan.probe.weight)
    assert back.probe.slope == 0.5 and back.probe.expert == cplan.probe.expert
    assert isinstance(load_plan(cplan.plan.save_pretrained(tmp_path / "s")), SteeringPlan)
    with pytest.raises(ExpertMissingError, match="needs the expert"):
        back.alphas(None, PROMPTS)
    with pytest.raises(ExpertMissingError, match="another model"):
        back.alphas(target, PROMPTS)
    cfg = json.loads((tmp_path / "c" / PROBE_CONFIG).read_text())
    cfg["layer"] = "one"
    (tmp_path / "c" / PROBE_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match="probe is damaged"):
        load_plan(tmp_path / "c")


def test_probe_examples_label_every_option():
    texts, y = probe_examples(["Q: 2+2?", "Is it?\n"], [["3", "4"], ["yes", "no", "maybe"]], [1, 0])
    assert texts == ["Q: 2+2? 3", "Q: 2+2? 4", "Is it?\nyes", "Is it?\nno", "Is it?\nmaybe"]
    assert y.tolist() == [0, 1, 1, 0, 0]
