"""Which tokens are steered: :class:`TokenScope`, parsed once from what a user typed.

A scope is a frozen, hashable value, so callers can batch requests by it: ``"last:3"`` and
``"last: 3"`` parse to the same ``TokenScope("last", k=3)``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..registry import Registry
from ..types import Tensor

# "all" | "prompt" | "generated" | "last:K" | ("last", K) | per-row prompt positions
Scope = str | tuple[str, int] | Sequence[Sequence[int]]
ScopeKind = Literal["all", "prompt", "generated", "last", "positions"]
PLAIN_KINDS = ("all", "prompt", "generated")  # written as their name alone


@dataclass(frozen=True)
class TokenScope:
    """Which tokens are steered. Positions count real (non-padding) tokens of each row."""

    kind: ScopeKind
    k: int = 0
    positions: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def parse(cls, scope: Scope | TokenScope) -> TokenScope:
        """A scope from its written forms; a :class:`TokenScope` is returned as it is."""
        if isinstance(scope, TokenScope):
            return scope
        if isinstance(scope, str):
            if scope in PLAIN_KINDS:
                return SCOPES.make(scope)
            if scope.startswith("last:") and scope[5:].strip().isdecimal():
                return cls.last(int(scope[5:]))
        elif isinstance(scope, tuple) and len(scope) == 2 and scope[0] == "last":
            return cls.last(_scope_int(scope[1], scope))
        elif isinstance(scope, Sequence) and all(
            isinstance(p, Sequence) and not isinstance(p, str) for p in scope
        ):
            return cls.at(tuple(tuple(_scope_int(i, scope) for i in p) for p in scope))
        raise ValueError(
            f"scope must be 'all', 'prompt', 'generated', 'last:K', ('last', K) or a list of "
            f"per-row prompt position lists, not {scope!r}"
        )

    @classmethod
    def last(cls, k: int) -> TokenScope:
        """The last ``k`` prompt tokens of each row."""
        if k < 1:
            raise ValueError(f"scope last:K needs K >= 1, not {k}")
        return cls("last", k=k)

    @classmethod
    def at(cls, positions: Sequence[Sequence[int]]) -> TokenScope:
        """Explicit prompt positions, one list per row (negative counts from the end)."""
        return cls("positions", positions=tuple(tuple(p) for p in positions))

    def subset(self, rows: Sequence[int]) -> TokenScope:
        """The scope of a sub-batch (explicit positions are per row)."""
        if self.kind != "positions":
            return self
        return TokenScope("positions", positions=tuple(self.positions[i] for i in rows))

    def mask(self, pos: Tensor, prompt_len: Tensor, select: Tensor | None = None) -> Tensor:
        """Which tokens are steered (bool, ``pos``'s shape): ``pos`` their absolute positions
        ``[B, T]``, ``prompt_len`` each row's prompt length ``[B, 1]``; ``positions`` scopes
        need ``select``, a ``[B, L]`` bool map of the chosen prompt positions."""
        if self.kind == "all":
            return torch.ones_like(pos, dtype=torch.bool)
        if self.kind == "prompt":
            return pos < prompt_len
        if self.kind == "generated":
            return pos >= prompt_len
        if self.kind == "last":
            return (pos >= prompt_len - self.k) & (pos < prompt_len)
        assert select is not None, "a positions scope needs its select map"
        return select.gather(1, pos.clamp(0, select.shape[1] - 1)) & (pos < prompt_len)

    def steered(self, prompt_len: int, n: int, row: int = 0) -> list[bool]:
        """:meth:`mask` for one sequence's first ``n`` tokens (row ``row`` of the scope's
        positions; out-of-range explicit positions are left out here, the hooks refuse them)."""
        select = None
        if self.kind == "positions":
            select = torch.zeros(1, max(prompt_len, 1), dtype=torch.bool)
            for p in self.positions[row]:
                if -prompt_len <= p < prompt_len:
                    select[0, p % prompt_len] = True
        pos = torch.arange(n)[None]
        return self.mask(pos, torch.tensor([[prompt_len]]), select)[0].tolist()

    def __str__(self) -> str:
        """The written form: ``all``, ``last:3``, … (positions as their row lists)."""
        if self.kind == "last":
            return f"last:{self.k}"
        if self.kind == "positions":
            return str([list(p) for p in self.positions])
        return self.kind


def _scope_int(value: Any, scope: Any) -> int:
    try:
        return operator.index(value)  # ints only: 2.7 is not silently read as token 2
    except TypeError:
        raise ValueError(
            f"scope {scope!r}: {value!r} is not an integer token count/position"
        ) from None


# The scope kinds as a user writes them (CLI choices and help text come from here).
SCOPES: Registry[TokenScope] = Registry("token scope")
SCOPES.register("all", lambda: TokenScope("all"), "every real token, prompt and generated")
SCOPES.register("prompt", lambda: TokenScope("prompt"), "the prompt's tokens only")
SCOPES.register("generated", lambda: TokenScope("generated"), "the generated tokens only")
SCOPES.register("last:K", TokenScope.last, "the last K prompt tokens (e.g. last:3)")
SCOPES.register(
    "positions", TokenScope.at, "explicit per-row prompt positions (Python API and server)"
)
# The scopes a user writes as a string (CLI, a request's steering.scope); positions are a list.
WRITTEN_SCOPES: tuple[str, ...] = tuple(n for n in SCOPES.names if n != "positions")
