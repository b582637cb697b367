"""domainsteer: domains, expert vs everyday contrast pairs, and the polysemy-trap benchmark."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from expertsteer.data import sources as sources_mod
from expertsteer.data.dataset import DataSpecError
from expertsteer.data.sources import did_you_mean
from expertsteer.data.sources.domainsteer import (
    domainsteer_benchmark,
    domainsteer_domains,
    load_domainsteer,
)
from expertsteer.data.specs import load_data


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


def test_load_domainsteer_keeps_the_spec_and_needs_a_domain():
    data = load_domainsteer("my spec", "3001")
    assert data.spec == "my spec" and data.examples == load_data("domainsteer:3001").examples
    with pytest.raises(DataSpecError, match="needs a domain"):
        load_domainsteer("domainsteer:", "")
    assert domainsteer_benchmark("all") == domainsteer_benchmark()


def test_did_you_mean():
    assert did_you_mean("Misconception", ["misconceptions", "other"]) == (
        " Did you mean 'misconceptions'?"
    )
    assert did_you_mean("zzz", ["misconceptions"]) == ""


# ----------------------------------------------------------------------------------------------
# copied from tests/test_reliability.py


@pytest.mark.skipif(
    not any(d.metadata["Name"] == "domainsteer" for d in md.distributions()),
    reason="needs the domainsteer package",
)
def test_unknown_domain():
    with pytest.raises(DataSpecError, match=r"unknown domainsteer domain 'agricultural biotech'"):
        load_data("domainsteer:agricultural biotech")


def test_missing_optional_dependencies_domainsteer(monkeypatch):
    real = md.distribution

    def distribution(name):
        if name == "domainsteer":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(sources_mod.md, "distribution", distribution)
    with pytest.raises(DataSpecError) as info:
        load_data("domainsteer:3001")
    assert str(info.value) == (
        "this data needs the 'domainsteer' package: pip install domainsteer (or every data "
        "package: pip install 'expertsteer[data]')"
    )
