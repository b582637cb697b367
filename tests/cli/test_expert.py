"""``--expert`` of generate and serve: which model a conditioned plan's probe reads with (given,
or the recorded one when it loads here), refused for static plans, checked by fingerprint."""

import dataclasses

import pytest
import torch
import typer

from expertsteer import catalog
from expertsteer.cli.expert import conditioned, expert_ref, load_expert, loads_locally
from expertsteer.condition import ConditionedPlan, ExpertMissingError, ExpertProbe
from expertsteer.plan import ModelInfo
from tiny import plan_with_norms, tiny_model


@pytest.fixture(scope="module")
def models():
    return tiny_model("llama"), tiny_model("gpt2", seed=1)  # target, expert


def cplan(target, expert, name=None) -> ConditionedPlan:
    info = ModelInfo.of(expert)
    if name is not None:
        info = dataclasses.replace(info, name=name)
    probe = ExpertProbe(info, 1, torch.zeros(expert.hidden_size), 0.0)
    return ConditionedPlan(plan_with_norms(target), probe)


def test_loads_locally(tmp_path, monkeypatch):
    assert loads_locally(str(tmp_path))
    assert not loads_locally("no-such-expert")  # a hub id, not in the local cache
    assert not loads_locally("not a hub id!")
    name = next(iter(catalog.CATALOG))
    monkeypatch.setattr(catalog, "status", lambda entry: "missing")
    assert not loads_locally(name)
    monkeypatch.setattr(catalog, "status", lambda entry: "installed")
    assert loads_locally(name)


def test_expert_ref(tmp_path, models):
    target, expert = models
    static = {"s": plan_with_norms(target)}
    assert expert_ref(static, None) is None and conditioned(static) == {}
    with pytest.raises(
        typer.BadParameter,
        match=r"only for expert-conditioned plans \(a plan folder with probe.json\) and learned "
        r"maps \(learned_map.json\); s is static",
    ):
        expert_ref(static, "ex")
    here = {"c": cplan(target, expert, name=str(tmp_path)), **static}
    assert list(conditioned(here)) == ["c"]
    assert expert_ref(here, "given") == "given"
    assert expert_ref(here, None) == str(tmp_path)  # the recorded expert loads here
    gone = {"c": cplan(target, expert, name="no-such-expert")}
    with pytest.raises(
        ExpertMissingError, match="c: this plan is expert-conditioned.*pass --expert"
    ):
        expert_ref(gone, None)


def test_load_expert_checks_the_fingerprint(models, monkeypatch):
    target, expert = models
    plans = {"c": cplan(target, expert)}
    monkeypatch.setattr("expertsteer.models.load_model", lambda ref: {"ex": expert}[ref])
    assert load_expert(plans, None, target_ref="t", target=target) is None
    assert load_expert(plans, "ex", target_ref="t", target=target) is expert
    with pytest.raises(ExpertMissingError, match="c: the probe was fitted on .* another model"):
        load_expert(plans, "t", target_ref="t", target=target)  # the target itself: not loaded
    self_judged = {"c": cplan(target, target)}  # the target as its own expert
    assert load_expert(self_judged, "t", target_ref="t", target=target) is target
