"""One loader for every saved kind (static, conditioned, learned map), and the expert's reader."""

import pytest
import torch

from expertsteer.artifacts import expert_reader, load_plan
from expertsteer.condition import ConditionedPlan, ExpertProbe
from expertsteer.io import CorruptFileError
from expertsteer.learned import CONFIG, LearnedMap
from expertsteer.plan import ModelInfo, SteeringPlan
from tiny import planted_map, tiny_model, unit


@pytest.fixture(scope="module")
def kinds():
    target, expert = tiny_model("llama"), tiny_model("gpt2", seed=1)
    static = SteeringPlan({1: unit(target.hidden_size, 0)}, {1: 2.0}, ModelInfo.of(target))
    probe = ExpertProbe(ModelInfo.of(expert), 1, unit(expert.hidden_size, 3), 0.1)
    return static, ConditionedPlan(static, probe), planted_map(target, expert, scale=2.0)


def test_load_plan_gives_back_each_kind(kinds, tmp_path):
    static, cplan, m = kinds
    for name, saved in zip(("s", "c", "m"), kinds):
        saved.save_pretrained(tmp_path / name)
    s, c, back = (load_plan(tmp_path / n) for n in ("s", "c", "m"))
    assert type(s) is SteeringPlan and torch.equal(s.vectors[1], static.vectors[1])
    assert isinstance(c, ConditionedPlan) and torch.equal(c.probe.weight, cplan.probe.weight)
    assert isinstance(back, LearnedMap) and torch.equal(back.up, m.up) and back.scale == 2.0


def test_a_damaged_map_folder_is_named_not_read_as_another_kind(kinds, tmp_path):
    kinds[2].save_pretrained(tmp_path / "m")
    (tmp_path / "m" / CONFIG).write_text("{")
    with pytest.raises(CorruptFileError, match="damaged learned map"):
        load_plan(tmp_path / "m")


def test_expert_reader_is_the_probe_the_map_or_nothing(kinds):
    static, cplan, m = kinds
    assert expert_reader(cplan) is cplan.probe and expert_reader(m) is m
    assert expert_reader(static) is None
