"""One registry per vocabulary: the names a user may type, what each builds, and its help line.

CLI choices, validation messages and help texts are derived from a registry, so a name is
listed in exactly one place. Wherever a name is accepted, an instance is accepted too (its
hyper-parameters reach the fit): :meth:`Registry.make` hands back a fresh clone of it.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_P = TypeVar("_P", bound="HyperParams")


class HyperParams:
    """scikit-learn's convention for a registered class (aligners, estimators): the named
    arguments of ``__init__`` are its hyper-parameters, kept as attributes of the same name;
    learned state ends in ``_`` and is not copied by :meth:`clone`."""

    @classmethod
    def param_names(cls) -> list[str]:
        """Hyper-parameter names: the named arguments of ``__init__``."""
        params = inspect.signature(cls.__init__).parameters.values()
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [p.name for p in params if p.kind in named and p.name != "self"]

    def get_params(self) -> dict[str, Any]:
        """Hyper-parameters by name, as passed to ``__init__``."""
        return {name: getattr(self, name) for name in self.param_names()}

    def clone(self: _P) -> _P:
        """A fresh, unfitted instance with the same hyper-parameters (copied, not shared)."""
        return type(self)(**copy.deepcopy(self.get_params()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class UnknownNameError(ValueError):
    """A name that is not in a registry."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: Callable[..., T]
    help: str


class Registry(Generic[T]):
    """Names of one vocabulary (aligners, estimators, pairings …) in the order registered."""

    def __init__(self, what: str) -> None:
        self.what = what  # singular noun for messages: "aligner", "pairing strategy"
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, factory: Callable[..., T], help: str = "") -> Callable[..., T]:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = Entry(name, factory, help)
        return factory

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Callable[..., T]:
        return self._entries[self.check(name)].factory

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def entry(self, name: str) -> Entry[T]:
        return self._entries[self.check(name)]

    def check(self, name: str) -> str:
        """``name`` itself, or an :class:`UnknownNameError` listing the valid names."""
        if name in self._entries:
            return name
        close = difflib.get_close_matches(str(name), self._entries, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown {self.what} {name!r}: use {self.choices()}.{hint}")

    def make(self, spec: str | T, **kwargs: Any) -> T:
        """A new object: built from a registered name, or a clone of a given instance."""
        if isinstance(spec, str):
            return self[spec](**kwargs)
        if kwargs:
            what = f"keyword arguments {sorted(kwargs)}"
            raise TypeError(f"{what} only go with a name of a {self.what}")
        clone = getattr(spec, "clone", None)
        return clone() if callable(clone) else copy.deepcopy(spec)

    def choices(self, sep: str = ", ") -> str:
        return sep.join(self._entries)

    def help(self) -> str:
        """One line per name: ``name — help``."""
        return "; ".join(
            f"{e.name}: {e.help}" if e.help else e.name for e in self._entries.values()
        )
