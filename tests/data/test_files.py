"""Your own data files: .jsonl / .json / .csv records, their errors, and fuzzing the reader."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from expertsteer.data.dataset import MIN_PER_CLASS, Dataset, DataSpecError, check_dataset
from expertsteer.data.files import FILE_SUFFIXES, load_file
from expertsteer.data.specs import load_data

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def labelled(n_pos: int, n_neg: int) -> list[dict]:
    return [{"text": f"good {i}", "label": 1} for i in range(n_pos)] + [
        {"text": f"bad {i}", "label": 0} for i in range(n_neg)
    ]


def pairs(n: int) -> list[dict]:
    return [{"prompt": f"Q{i}?", "positive": f"yes {i}", "negative": f"no {i}"} for i in range(n)]


def test_jsonl_labelled(tmp_path):
    records = [
        {"text": "a", "label": 1, "source": "x"},
        {"text": "b", "label": True},
        {"text": "c", "label": "Positive", "prompt": "Say:"},
        {"text": "d", "label": "1"},
        {"text": "e", "label": 0},
        {"text": "f", "label": False},
        {"text": "g", "label": "negative"},
        {"text": "h", "label": "FALSE", "prompt": ""},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps(r) for r in records[:4])
        + "\n\n"
        + "\n".join(json.dumps(r) for r in records[4:])
    )
    ds = load_data(str(path))
    assert ds.kind == "labelled" and ds.groups is None and len(ds) == 8
    assert ds.texts == ["a", "b", "Say:\nc", "d", "e", "f", "g", "h"]
    assert ds.labels.tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and ds.labels.dtype == torch.long
    assert ds.examples[2].prompt == "Say:" and ds.examples[7].prompt is None
    assert dict(ds.examples[0].meta) == {"source": "x"}


def test_jsonl_pairs(tmp_path):
    records = pairs(4) + [{"prompt": "", "positive": "right", "negative": "wrong"}]
    ds = load_data(write_jsonl(tmp_path / "p.jsonl", records))
    assert ds.kind == "pairs" and len(ds) == 10
    assert ds.texts[:2] == ["Q0? yes 0", "Q0? no 0"] and ds.texts[-2:] == ["right", "wrong"]
    assert ds.labels.tolist() == [1, 0] * 5
    assert ds.groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ds.examples[0].prompt == "Q0?" and ds.examples[-1].prompt is None


def test_csv_labelled(tmp_path):
    path = tmp_path / "d.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:  # with a byte-order mark
        w = csv.writer(f)
        w.writerow(["text", "label", "prompt", "note"])
        for i in range(4):
            w.writerow([f"pos, {i}", "true", "", "n"])
            w.writerow([f"neg\n{i}", "0", "Q", ""])
    ds = load_data(str(path))
    assert ds.kind == "labelled" and ds.labels.tolist() == [1, 0] * 4
    assert ds.texts[:2] == ["pos, 0", "Q\nneg\n0"]
    assert dict(ds.examples[0].meta) == {"note": "n"}


def test_json_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(pairs(4)))
    ds = load_data(str(path))
    assert ds.kind == "pairs" and ds.texts == [
        t for i in range(4) for t in (f"Q{i}? yes {i}", f"Q{i}? no {i}")
    ]


FILE_ERRORS = [
    ("d.jsonl", [{"text": "a"}] + labelled(4, 4), "lacks field(s) label"),
    ("d.jsonl", [{"foo": 1}] + labelled(4, 4), "lacks field(s) text, label"),
    ("d.jsonl", [{"positive": "a", "prompt": "q"}] + pairs(4), "lacks field(s) negative"),
    ("d.jsonl", labelled(4, 4) + [{"text": "  ", "label": 1}], "line 9: 'text' is empty"),
    ("d.jsonl", labelled(4, 4) + [{"text": 3, "label": 1}], "'text' must be a string"),
    ("d.jsonl", labelled(4, 4) + [{"text": "z", "label": "maybe"}], "is not one of 1, 0"),
    (
        "d.jsonl",
        labelled(4, 4) + [{"text": "good 1", "label": 0}],
        "line 9 repeats the text of line 2",
    ),
    ("d.jsonl", labelled(8, 0), "both classes"),
    ("d.jsonl", labelled(3, 8), "at least 4 of each class"),
    ("d.jsonl", pairs(3), "3 contrast pairs"),
    ("d.jsonl", pairs(4) + [{"prompt": "q", "positive": "a", "negative": "a"}], "same text"),
    ("d.jsonl", labelled(4, 4) + pairs(1), "a file holds one shape"),
    ("d.jsonl", [{"text": "a", "label": 1, "positive": "b"}], "mixes labelled fields"),
    ("d.jsonl", labelled(4, 4) + [[1, 2]], "line 9 is a JSON list"),
    ("d.jsonl", [], "holds no records"),
    ("d.json", {"examples": labelled(4, 4)}, "a .json data file holds a list"),
]


@pytest.mark.parametrize(("name", "content", "message"), FILE_ERRORS)
def test_file_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        write_jsonl(path, content)
    else:
        path.write_text(json.dumps(content))
    with pytest.raises(DataSpecError) as info:
        load_data(str(path))
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_fields_message_lists_accepted_shapes(tmp_path):
    with pytest.raises(DataSpecError) as info:
        load_data(write_jsonl(tmp_path / "d.jsonl", [{"txt": "a", "label": 1}]))
    assert "{text, label[, prompt]}" in str(info.value)
    assert "{positive, negative[, prompt]}" in str(info.value)


def test_malformed_files(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(DataSpecError, match=r"line 2 is not valid JSON"):
        load_data(str(bad_json))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataSpecError, match="is not UTF-8"):
        load_data(str(latin))
    other = tmp_path / "data.txt"
    other.write_text("hello")
    with pytest.raises(DataSpecError, match=r"must end in \.jsonl, \.json, \.csv"):
        load_data(str(other))
    with pytest.raises(DataSpecError, match="is not an existing file"):
        load_data(str(tmp_path / "missing.jsonl"))


def test_load_file_keeps_the_spec_and_checks_no_class_counts(tmp_path):
    assert FILE_SUFFIXES == (".jsonl", ".json", ".csv")
    path = tmp_path / "few.jsonl"
    write_jsonl(path, labelled(1, 0))
    data = load_file(path, "my spec")  # class counts are load_data's check, not the reader's
    assert data.spec == "my spec" and data.texts == ["good 0"] and data.kind == "labelled"
    with pytest.raises(DataSpecError, match="is not an existing file"):
        load_file(tmp_path / "missing.csv", "missing.csv")


# ----------------------------------------------------------------------------------------------
# hypothesis: the file loader

texts = st.text(min_size=1, max_size=30).filter(lambda t: t.strip() and "\x00" not in t)


label_forms = {1: [1, True, "1", "true", "Positive"], 0: [0, False, "0", "FALSE", "negative"]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    unique=st.lists(texts, min_size=8, max_size=20, unique=True),
    extra_labels=st.lists(st.integers(0, 1), min_size=20, max_size=20),
    form=st.integers(0, 4),
)
def test_property_labelled_round_trip(tmp_path_factory, unique, extra_labels, form):
    y = [1] * 4 + [0] * 4 + extra_labels[: len(unique) - 8]
    path = tmp_path_factory.mktemp("prop") / "d.jsonl"
    write_jsonl(path, [{"text": t, "label": label_forms[v][form]} for t, v in zip(unique, y)])
    ds = load_data(str(path))
    assert ds.kind == "labelled" and ds.texts == unique and ds.labels.tolist() == y


@settings(max_examples=60, deadline=None)
@given(
    answers=st.lists(texts, min_size=8, max_size=16, unique=True),
    prompts=st.lists(st.text(max_size=10), min_size=8, max_size=8),
)
def test_property_pairs_round_trip(tmp_path_factory, answers, prompts):
    n = len(answers) // 2
    records = [
        {"prompt": prompts[i % 8], "positive": answers[2 * i], "negative": answers[2 * i + 1]}
        for i in range(n)
    ]
    expected = []
    for r in records:
        p = r["prompt"] if r["prompt"].strip() else ""
        expected += [f"{p} {r['positive']}" if p else r["positive"]]
        expected += [f"{p} {r['negative']}" if p else r["negative"]]
    path = tmp_path_factory.mktemp("prop") / "p.jsonl"
    write_jsonl(path, records)
    if len(set(expected)) < len(expected):  # prompt + answer can collide: must be refused
        with pytest.raises(DataSpecError, match="repeats the text"):
            load_data(str(path))
        return
    ds = load_data(str(path))
    assert ds.texts == expected
    assert ds.labels.tolist() == [1, 0] * n
    assert ds.groups.tolist() == [i // 2 for i in range(2 * n)]


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


@settings(max_examples=80, deadline=None)
@given(garbage=st.text(min_size=1, max_size=60), position=st.integers(0, 8))
@example(garbage="1" * 5000, position=0)  # json refuses ints this long with a plain ValueError
@example(garbage="[" * 100_000, position=3)
@example(garbage='{"text": "x", "label": NaN}', position=8)
def test_property_garbage_line_raises_data_spec_error(tmp_path_factory, garbage, position):
    line = garbage.replace("\n", " ").replace("\r", " ")
    if not line.strip() or _is_json_object(line) and ("text" in line or "positive" in line):
        return  # blank lines are skipped; a (maybe valid) record is not garbage
    lines = [json.dumps(r) for r in labelled(4, 4)]
    lines.insert(position, line)
    path = tmp_path_factory.mktemp("prop") / "g.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    with pytest.raises(DataSpecError):
        load_data(str(path))


@settings(max_examples=80, deadline=None)
@given(content=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
@example(content=b"text,label\n" + b"x" * 200_000 + b",1\n", suffix=".csv")
@example(content=b"text,label\r\na,1\r\nb", suffix=".csv")
def test_property_any_bytes_load_or_data_spec_error(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("prop") / f"f{suffix}"
    path.write_bytes(content)
    try:
        load_data(str(path))
    except DataSpecError:
        pass


# ----------------------------------------------------------------------------------------------
# copied from tests/test_reliability.py


def test_empty_and_duplicate_texts_in_a_file(tmp_path):
    empty = write_jsonl(tmp_path / "e.jsonl", labelled(4, 4) + [{"text": " ", "label": 1}])
    with pytest.raises(DataSpecError, match=r"e\.jsonl: line 9: 'text' is empty"):
        load_data(empty)
    dup = write_jsonl(tmp_path / "d.jsonl", labelled(4, 4) + [{"text": "bad 0", "label": 1}])
    with pytest.raises(DataSpecError, match="line 9 repeats the text of line 5; remove dupl"):
        load_data(dup)


# ----------------------------------------------------------------------------------------------
# copied from tests/test_fuzz.py: a Dataset or a DataSpecError

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


@pytest.mark.fuzz
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


@pytest.mark.fuzz
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


@pytest.mark.fuzz
@FUZZ
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_random_bytes_give_a_dataset_or_a_data_spec_error(tmp_path, raw, suffix):
    path = tmp_path / f"bytes{suffix}"
    path.write_bytes(raw)
    _load_or_error(path, None)
