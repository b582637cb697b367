"""GGUF control-vector export/import, checked against repeng's own reader, writer and hooks."""

import importlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expertsteer.export import export_gguf, import_gguf, read_gguf
from expertsteer.extract import extract
from expertsteer.io import CorruptFileError
from expertsteer.plan import CONFIG_NAME, TENSORS_NAME, ModelInfo, SteeringPlan
from expertsteer.steer import attach
from tiny import export_plan, tiny_model, unit


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only spin on a busy machine
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def repeng():
    """repeng 0.4 (installed with --no-deps by scripts/setup.sh: it pins numpy<2).

    Its only numpy-2 incompatibility is ``np.float_`` in type annotations, evaluated at import;
    the alias is restored for the import only. Everything used below is repeng's own code.
    """
    if importlib.util.find_spec("repeng") is None:
        pytest.skip("repeng is not installed: pip install --no-deps repeng (see scripts/setup.sh)")
    restore = "float_" not in np.__dict__
    np.float_ = np.float64
    try:
        return importlib.import_module("repeng")
    finally:
        if restore:
            del np.float_


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", n_layers=4)


def logits(lm, text="hello world", **steer):
    ids = lm.tokenizer(text, return_tensors="pt")["input_ids"]
    if not steer:
        return lm.model(input_ids=ids).logits
    with attach(lm, **steer):
        return lm.model(input_ids=ids).logits


# --- the file layout, read by repeng ---------------------------------------------------------


def test_repeng_reads_our_file(tmp_path, lm, repeng):
    plan = export_plan(lm)
    path = export_gguf(plan, tmp_path / "v.gguf", alpha=0.5, model_hint="llama")
    cv = repeng.ControlVector.import_gguf(str(path))
    assert cv.model_type == "llama"
    assert sorted(cv.directions) == plan.layers  # direction.N is plan layer N: no shift
    handle = attach(lm, plan, alpha=0.5)
    try:  # bit-equal to what our hooks add
        for j in plan.layers:
            assert np.array_equal(cv.directions[j], handle.deltas[j].reshape(-1).numpy())
    finally:
        handle.remove()


def test_layer_convention_matches_repeng_control_model(tmp_path, lm, repeng):
    """repeng's ControlModel wraps ``model.layers[N]`` for direction N: the same logits as ours."""
    plan = export_plan(lm)
    ours = logits(lm, plan=plan, alpha=0.5)
    base = logits(lm)
    cv = repeng.ControlVector.import_gguf(str(export_gguf(plan, tmp_path / "v.gguf", alpha=0.5)))
    wrapped = repeng.ControlModel(lm.model, list(cv.directions))
    try:
        wrapped.set_control(cv, 1.0)
        ids = lm.tokenizer("hello world", return_tensors="pt")["input_ids"]
        theirs = wrapped(input_ids=ids).logits
    finally:
        wrapped.unwrap()
    assert not torch.allclose(ours, base)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)
    # a one-block shift would not match
    shifted = SteeringPlan(
        vectors={j + 1: v for j, v in plan.vectors.items() if j + 1 < lm.n_layers},
        alphas={j + 1: a for j, a in plan.alphas.items() if j + 1 < lm.n_layers},
        target=plan.target,
    )
    assert not torch.allclose(logits(lm, plan=shifted, alpha=0.5), theirs, atol=1e-4)


def test_repeng_layer_ids_are_block_outputs(lm, repeng):
    """repeng's layer N reads hidden_states[N + 1]: the output of block N, as our extract does."""
    texts = ["I love this", "I hate this", "what a great day", "what an awful day"] * 2
    dataset = [repeng.DatasetEntry(texts[i], texts[i + 1]) for i in range(0, len(texts), 2)]
    cv = repeng.ControlVector.train(lm.model, lm.tokenizer, dataset, hidden_layers=[2])
    states = extract(lm, texts, position="last", layers=[2], cache=False, progress=False)[0].numpy()
    from sklearn.decomposition import PCA

    pc = PCA(n_components=1).fit(states[::2] - states[1::2]).components_[0]
    cos = float(
        np.dot(pc, cv.directions[2]) / np.linalg.norm(pc) / np.linalg.norm(cv.directions[2])
    )
    assert abs(cos) > 1 - 1e-4


# --- files written by repeng, read by us ------------------------------------------------------


def test_we_read_repengs_file(tmp_path, lm, repeng):
    dirs = {j: unit(lm.hidden_size, j).numpy() * s for j, s in ((1, 3.0), (2, -0.5))}
    path = tmp_path / "repeng.gguf"
    repeng.ControlVector(model_type="llama", directions=dirs).export_gguf(str(path))
    with pytest.raises(ValueError, match="pass target="):
        import_gguf(path)
    plan = import_gguf(path, lm)
    assert plan.layers == [1, 2] and plan.method == "gguf"
    assert plan.provenance["model_hint"] == "llama"
    for j, d in dirs.items():
        torch.testing.assert_close(plan.steering_vectors()[j], torch.from_numpy(d))
        assert abs(float(plan.vectors[j].norm()) - 1) < 1e-6
    # and it steers as repeng's ControlModel does with coeff 1
    wrapped = repeng.ControlModel(lm.model, [1, 2])
    try:
        wrapped.set_control(repeng.ControlVector("llama", dirs), 1.0)
        ids = lm.tokenizer("hello world", return_tensors="pt")["input_ids"]
        theirs = wrapped(input_ids=ids).logits
    finally:
        wrapped.unwrap()
    torch.testing.assert_close(logits(lm, plan=plan), theirs, rtol=0, atol=1e-5)


# --- round trips --------------------------------------------------------------------------------


def test_round_trip_unbaked_is_bit_exact(tmp_path, lm):
    plan = export_plan(lm)
    path = export_gguf(plan, tmp_path / "v.gguf", bake_alpha=False)
    directions, meta = read_gguf(path)
    for j in plan.layers:  # the file holds the unit vectors themselves
        assert torch.equal(directions[j], plan.vectors[j])
    back = import_gguf(path)
    for j in plan.layers:
        assert torch.equal(back.vectors[j], plan.vectors[j])
    assert back.alphas == plan.alphas and back.layer_norms == plan.layer_norms
    assert (back.target, back.method, back.pairs, back.config) == (
        plan.target,
        plan.method,
        plan.pairs,
        plan.config,
    )
    again = export_gguf(back, tmp_path / "again.gguf", bake_alpha=False)
    for j, v in read_gguf(again)[0].items():
        assert torch.equal(v, directions[j])
    for j in plan.layers:  # and it steers identically
        assert torch.equal(back.steering_vectors(0.5)[j], plan.steering_vectors(0.5)[j])


def test_round_trip_baked(tmp_path, lm):
    plan = export_plan(lm)
    path = export_gguf(plan, tmp_path / "v.gguf", alpha=-0.5)
    directions, meta = read_gguf(path)
    assert meta["expertsteer.alpha_baked"] is True and meta["expertsteer.alpha"] == -0.5
    back = import_gguf(path)
    assert back.target == plan.target and back.provenance["baked_alpha"] == -0.5
    for j in plan.layers:  # the baked addition, as one unit vector and α = its norm
        assert torch.equal(directions[j], plan.steering_vectors(-0.5)[j])
        torch.testing.assert_close(back.steering_vectors()[j], directions[j], rtol=1e-6, atol=0)
    torch.testing.assert_close(
        logits(lm, plan=back), logits(lm, plan=plan, alpha=-0.5), rtol=0, atol=1e-5
    )


def test_target_may_be_given_for_our_files(tmp_path, lm):
    other = tiny_model("llama", seed=1, n_layers=4)
    path = export_gguf(export_plan(lm), tmp_path / "v.gguf")
    assert import_gguf(path, other).target == ModelInfo.of(other)
    with pytest.raises(ValueError, match="hidden size"):
        import_gguf(path, tiny_model("llama", d=16))
    with pytest.raises(ValueError, match="beyond"):
        import_gguf(path, tiny_model("llama", n_layers=2))


# --- refusals and corruption --------------------------------------------------------------------


def test_block_zero_and_settings_refused(tmp_path, lm):
    with pytest.raises(ValueError, match="block 0"):
        export_gguf(export_plan(lm, {0: 1.0, 2: 1.0}), tmp_path / "v.gguf")
    with pytest.raises(ValueError, match="baked"):
        export_gguf(export_plan(lm), tmp_path / "v.gguf", alpha=2.0, bake_alpha=False)
    with pytest.raises(ValueError, match="finite"):
        export_gguf(export_plan(lm), tmp_path / "v.gguf", alpha=float("nan"))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp files left


def test_corrupt_and_foreign_files(tmp_path, lm):
    import gguf

    path = export_gguf(export_plan(lm), tmp_path / "v.gguf")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # inside the last tensor's values
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="checksum"):
        import_gguf(bad)
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CorruptFileError, match="not a readable GGUF"):
        import_gguf(trunc)
    model = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(str(model), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CorruptFileError, match="not a control vector"):
        import_gguf(model, lm)
    with pytest.raises(FileNotFoundError):
        import_gguf(tmp_path / "missing.gguf", lm)


def test_overwrite_is_atomic(tmp_path, lm, monkeypatch):
    path = export_gguf(export_plan(lm), tmp_path / "v.gguf")
    before = path.read_bytes()
    import gguf

    def boom(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export_gguf(export_plan(lm, {2: 5.0}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["v.gguf"]


# ----------------------------------------------------------------------------------------------
# fuzzing: damaged GGUF files and any plan metadata give a plan or a clear error

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# ----------------------------------------------------------------------------------------------
# plan loader: a valid plan or a CorruptFileError


def _fuzz_plan() -> SteeringPlan:
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
            _fuzz_plan().save_pretrained(d)
            _SAVED.update({n: (Path(d) / n).read_bytes() for n in (CONFIG_NAME, TENSORS_NAME)})
    return _SAVED


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


# ----------------------------------------------------------------------------------------------
# GGUF control vectors (export.py): a plan or a clear error


def _gguf_bytes() -> bytes:
    export = pytest.importorskip("expertsteer.export")
    if "gguf" not in _SAVED:
        with tempfile.TemporaryDirectory() as d:
            export.export_gguf(_fuzz_plan(), Path(d) / "v.gguf")
            _SAVED["gguf"] = (Path(d) / "v.gguf").read_bytes()
    return _SAVED["gguf"]


@pytest.mark.fuzz
@FUZZ
@given(
    cut=st.one_of(st.none(), st.floats(0, 1, exclude_max=True)),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
    with_target=st.booleans(),
)
def test_damaged_gguf_control_vectors(cut, edits, with_target):
    raw = bytearray(_gguf_bytes())
    for where, byte in edits:
        raw[int(where * len(raw))] = byte
    if cut is not None:
        raw = raw[: int(len(raw) * cut)]
    from expertsteer.export import import_gguf

    target = _fuzz_plan().target if with_target else None
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.gguf"
        path.write_bytes(bytes(raw))
        try:
            plan = import_gguf(path, target)
        except ValueError as exc:
            mismatch = ("for another model", "beyond", "pass target=")
            assert isinstance(exc, CorruptFileError) or any(m in str(exc) for m in mismatch), exc
            return
    assert all(torch.isfinite(v).all() for v in plan.vectors.values())


# ----------------------------------------------------------------------------------------------
# GGUF plan metadata


@pytest.mark.fuzz
@settings(max_examples=40, deadline=None)
@given(saved=json_values, mutate=st.sampled_from(["replace", "target", "alphas", "expert"]))
def test_gguf_plan_metadata_of_any_shape(saved, mutate):
    """Our GGUF files carry the plan's JSON; whatever it holds, import gives a plan or an error."""
    export = pytest.importorskip("expertsteer.export")
    import gguf
    import numpy as np

    from expertsteer.io import tensors_digest

    plan = _fuzz_plan()
    meta = json.loads(_saved()[CONFIG_NAME])
    if mutate != "replace" and isinstance(meta, dict):
        meta[mutate] = saved
        saved = meta
    tensors = {f"direction.{j}": v for j, v in plan.vectors.items()}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.gguf"
        writer = gguf.GGUFWriter(path, export.ARCH)
        writer.add_uint32(f"{export.ARCH}.layer_count", len(tensors))
        writer.add_uint32(export.KEY_VERSION, export.FORMAT_VERSION)
        writer.add_bool(export.KEY_BAKED, False)
        writer.add_string(export.KEY_PLAN, json.dumps(saved))
        writer.add_string(export.KEY_DIGEST, tensors_digest(tensors))
        for name, t in tensors.items():
            writer.add_tensor(name, t.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        try:
            export.import_gguf(path)
        except ValueError as exc:
            mismatch = ("for another model", "beyond", "pass target=")
            assert isinstance(exc, CorruptFileError) or any(m in str(exc) for m in mismatch), exc
