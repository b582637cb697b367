"""What the user typed, parsed once into typed values (or a usage error naming the option).

Every command parses all of its options here before it loads data or a model, so a typo costs
nothing. Vocabularies (aligners, pairings, estimators, scopes, methods) come from their
registries: a name is listed once, in the module that implements it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import typer

from ..pipeline import READ_POSITIONS
from ..registry import Registry
from ..steer.scope import TokenScope
from ..types import LayerPair, ReadPosition

__all__ = [
    "align_texts",
    "choice",
    "floats",
    "given_pairs",
    "ints",
    "method_names",
    "named_plans",
    "names",
    "read_position",
    "token_scope",
]


def _bad(message: str, hint: str) -> typer.BadParameter:
    return typer.BadParameter(message, param_hint=hint)


def names(text: str) -> list[str]:
    """A comma list of names, blanks dropped."""
    return [p.strip() for p in text.split(",") if p.strip()]


def choice(value: str, options: Registry | Sequence[str], hint: str) -> str:
    """``value`` if it is one of ``options`` (a registry or a tuple of names)."""
    allowed = options.names if isinstance(options, Registry) else tuple(options)
    if value not in allowed:
        raise _bad(f"must be one of {', '.join(allowed)}, not {value!r}", hint)
    return value


def floats(text: str, hint: str) -> list[float]:
    """``"0,0.5,1"`` → ``[0.0, 0.5, 1.0]``: finite numbers, at least one."""
    try:
        values = [float(x) for x in names(text)]
    except ValueError:
        values = []
    if not values or not all(map(math.isfinite, values)):
        raise _bad(f"{text!r} is not a comma list of numbers", hint)
    return values


def ints(text: str, hint: str, minimum: int = 1) -> list[int]:
    """``"1,4"`` → ``[1, 4]``: whole numbers ≥ ``minimum``, at least one."""
    try:
        values = [int(x) for x in names(text)]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise _bad(f"{text!r} is not a comma list of whole numbers >= {minimum}", hint)
    return values


def given_pairs(text: str | None) -> list[LayerPair] | None:
    """``--given "8:10,12:16"`` → ``[(8, 10), (12, 16)]`` (expert:target layer pairs)."""
    if not text:
        return None
    try:
        pairs = [tuple(int(x) for x in p.split(":")) for p in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 0 for p in pairs):
        raise _bad(
            f"{text!r} is not a list of expert:target layer pairs, e.g. '8:10,12:16'", "--given"
        )
    return [(p[0], p[1]) for p in pairs]


def token_scope(text: str, hint: str = "--scope") -> TokenScope:
    """``--scope`` → the :class:`TokenScope` carried inward (``"last: 3"`` == ``"last:3"``)."""
    try:
        return TokenScope.parse(text)
    except ValueError as exc:
        raise _bad(str(exc), hint) from exc


def read_position(text: str, hint: str = "--position") -> ReadPosition:
    """``--position`` → one of the named read positions (``last``, ``mean``)."""
    if text not in READ_POSITIONS:
        raise _bad(f"must be one of {', '.join(READ_POSITIONS)}, not {text!r}", hint)
    return text  # type: ignore[return-value]


def method_names(spec: str, pairings: Sequence[str]) -> list[str]:
    """``--methods`` (with ``--pairings``) → the full method names, checked against the method,
    aligner and pairing registries; a bad name is the registry's error (exit 1, as ever)."""
    from ..eval.methods import parse_methods

    return parse_methods(spec, pairings)


def align_texts(spec: str) -> list[str] | None:
    """``--align-data``: ``generic`` → None (the library's set); else a file, one text a line."""
    if spec == "generic":
        return None
    path = Path(spec)
    if not path.is_file():
        raise _bad(
            f"--align-data must be 'generic' or a text file; {spec} is neither", "--align-data"
        )
    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise _bad(f"{spec} holds no text lines", "--align-data")
    return texts


def named_plans(specs: Sequence[str], hint: str = "--steer") -> dict[str, Path]:
    """``--steer NAME=DIR`` (repeatable) → ``{NAME: DIR}``, each name once."""
    plans: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise _bad(f"{spec!r} is not NAME=DIR", hint)
        if name in plans:
            raise _bad(f"plan name {name!r} given twice", hint)
        plans[name] = Path(folder)
    return plans
