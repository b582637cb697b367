"""``expertsteer models``: the packaged catalog as a table, and ``--prepare`` converting only
installed models; nothing here loads or converts a model."""

import re

import pytest
from cli_helpers import flat
from typer.testing import CliRunner

from expertsteer import catalog
from expertsteer.cli import app
from expertsteer.cli import models as models_module


@pytest.fixture
def prepared(monkeypatch) -> list[str]:
    """Each catalog model's state fixed (ready, installed, then missing ones, the last ready);
    model_path records its calls."""
    names = list(catalog.CATALOG)
    states = {name: ("ready", "installed", "missing")[min(k, 2)] for k, name in enumerate(names)}
    states[names[-1]] = "ready"
    calls = []

    def no_model(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr(catalog, "status", lambda entry: states[entry.name])
    monkeypatch.setattr(catalog, "model_path", lambda name, **kw: calls.append(name))
    monkeypatch.setattr(catalog, "convert", no_model)
    monkeypatch.setattr("expertsteer.models.load_model", no_model)
    return calls


def table_rows(output: str) -> list[list[str]]:
    """The table's body rows, one list of cells per model (wrapped cells joined)."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if not cells:
            continue
        if cells[0]:
            rows.append(cells)
        else:  # a wrapped continuation line
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells)]
    return rows


def test_every_catalog_model_is_listed_with_its_state(prepared):
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    rows = table_rows(result.output)
    assert [r[0] for r in rows] == list(catalog.CATALOG)
    for row, entry in zip(rows, catalog.CATALOG.values()):
        assert row[1:6] == [
            entry.description,
            entry.family,
            entry.kind,
            str(entry.n_layers),
            str(entry.hidden_size),
        ]
    names = list(catalog.CATALOG)
    assert [r[6] for r in rows][:3] == ["ready", "installed (converts on first use)", "missing"]
    missing = catalog.get_entry(names[2])
    assert f"{missing.name} is not installed: {missing.install_command}" in flat(result)
    assert flat(result).count("is not installed:") == len(names[2:-1])
    assert f"expertsteer catalog (cache: {catalog.cache_root()})" in flat(result)
    assert prepared == []  # listing converts nothing


def test_prepare_converts_the_installed_models_and_skips_the_missing(prepared):
    names = list(catalog.CATALOG)
    result = CliRunner().invoke(app, ["models", "--prepare", "all"])
    assert result.exit_code == 0, result.output
    skipped = names[2:-1]
    assert prepared == [n for n in names if n not in skipped]
    text = flat(result)
    for name in skipped:
        entry = catalog.get_entry(name)
        assert f"skip {name}: not installed ({entry.install_command})" in text
    for name in prepared:
        assert re.search(rf"{re.escape(name)}: ready \(\d+\.\d s\)", text)

    prepared.clear()
    result = CliRunner().invoke(app, ["models", "--prepare", names[1], "--prepare", names[2]])
    assert result.exit_code == 0 and prepared == [names[1]]
    assert f"skip {names[2]}: not installed" in flat(result)


def test_models_is_a_registered_command():
    result = CliRunner().invoke(app, ["models", "--help"])
    assert result.exit_code == 0
    assert models_module.models.__doc__.split("\n")[0] in flat(result)


def test_prepare_refuses_unknown_names_before_converting(monkeypatch):
    converted = []
    monkeypatch.setattr(catalog, "model_path", lambda name: converted.append(name))
    result = CliRunner().invoke(app, ["models", "--prepare", "smollm2-135m", "--prepare", "nope"])
    assert result.exit_code == 2 and converted == []
    assert "unknown catalog models ['nope']; use smollm2-135m" in flat(result)
