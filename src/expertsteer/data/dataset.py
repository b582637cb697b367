"""The dataset type: labelled examples or contrast pairs, their splits, and the checks that a
dataset can be fitted on (both classes, at least ``MIN_PER_CLASS`` of each, no repeated text)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

import torch

from ..types import MIN_PER_CLASS

__all__ = [
    "MIN_PER_CLASS",
    "DataSpecError",
    "Dataset",
    "Example",
    "Kind",
    "check_classes",
    "check_dataset",
]

Kind = Literal["labelled", "pairs"]


class DataSpecError(ValueError):
    """A data spec or data file that cannot be turned into examples; the message says why."""


@dataclass(frozen=True)
class Example:
    """One text whose hidden state is read, with its label and contrast-pair group."""

    text: str
    label: int  # 1 = positive (concept / expert sense / correct answer), 0 = negative
    group: int | None = None  # a positive and a negative with the same group form a pair
    prompt: str | None = None  # the question part, when the text is prompt + answer
    # Left out of the hash so that examples stay hashable; stored as a read-only view.
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


@dataclass(frozen=True, repr=False)
class Dataset:
    """Examples of one kind: ``labelled`` (group None) or ``pairs`` (whole contrast pairs)."""

    spec: str
    kind: Kind
    examples: tuple[Example, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "examples", tuple(self.examples))
        if self.kind not in ("labelled", "pairs"):
            raise ValueError(f"kind must be 'labelled' or 'pairs', not {self.kind!r}")
        if any(e.label not in (0, 1) for e in self.examples):
            raise ValueError("labels must be 0 or 1")
        if self.kind == "labelled":
            if any(e.group is not None for e in self.examples):
                raise ValueError("labelled examples carry no group; use kind='pairs' for pairs")
            return
        per_group = Counter((e.group, e.label) for e in self.examples)
        groups = {e.group for e in self.examples}
        if None in groups or any(per_group[g, 0] != 1 or per_group[g, 1] != 1 for g in groups):
            raise ValueError(
                "every contrast pair needs exactly one positive and one negative with the same "
                "group; select whole groups (split and limit do)"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        n_pos = sum(e.label for e in self.examples)
        return (
            f"Dataset({self.spec!r}, {self.kind}, {len(self)} examples: "
            f"{n_pos} positive, {len(self) - n_pos} negative)"
        )

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([e.label for e in self.examples], dtype=torch.long)

    @property
    def groups(self) -> torch.Tensor | None:
        """Pair ids (``torch.long``) for pair data, None for labelled data."""
        if self.kind == "labelled":
            return None
        return torch.tensor([e.group for e in self.examples], dtype=torch.long)

    def subset(self, indices: Iterable[int]) -> Dataset:
        """The examples at ``indices``, in that order (pair data must keep whole pairs)."""
        return Dataset(self.spec, self.kind, tuple(self.examples[int(i)] for i in indices))

    def _strata(self) -> list[list[list[int]]]:
        """Units that must stay together (pairs, or single examples), by stratum (label)."""
        if self.kind == "pairs":
            by_group: dict[int | None, list[int]] = {}
            for i, e in enumerate(self.examples):
                by_group.setdefault(e.group, []).append(i)
            return [list(by_group.values())]
        return [[[i] for i, e in enumerate(self.examples) if e.label == y] for y in (0, 1)]

    def split(
        self, fractions: Sequence[float] = (0.7, 0.15, 0.15), *, seed: int = 0
    ) -> tuple[Dataset, ...]:
        """Seeded split into ``len(fractions)`` disjoint non-empty parts.

        Pairs are never divided (pair data is split by group); labelled data is stratified by
        label. Each part keeps the original order.
        """
        fractions = [float(f) for f in fractions]
        if not fractions or not all(f > 0 for f in fractions):
            raise ValueError(f"fractions must be positive, got {fractions}")
        total = sum(fractions)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {total}")
        rng = random.Random(seed)
        parts: list[list[int]] = [[] for _ in fractions]
        for units in self._strata():
            rng.shuffle(units)
            start = 0
            for part, count in zip(parts, _allocate(len(units), fractions)):
                part.extend(i for unit in units[start : start + count] for i in unit)
                start += count
        if not all(parts):
            empty = [k for k, part in enumerate(parts) if not part]
            pairs = f" ({len(self._strata()[0])} pairs)" if self.kind == "pairs" else ""
            raise ValueError(
                f"{len(self)} examples{pairs} are too few to split into {len(fractions)} "
                f"non-empty parts with fractions {fractions} (part(s) {empty} would be empty); "
                "use more data, fewer parts or larger fractions for the small parts"
            )
        return tuple(self.subset(sorted(p)) for p in parts)

    def shuffle_labels(self, *, seed: int = 0) -> Dataset:
        """The null control: same texts, labels permuted (pairs: each pair's sides swapped at
        random, so every pair keeps one positive and one negative)."""
        rng = random.Random(seed)
        if self.kind == "pairs":
            flip = {g: rng.random() < 0.5 for g in {e.group for e in self.examples}}
            labels = [1 - e.label if flip[e.group] else e.label for e in self.examples]
        else:
            labels = [e.label for e in self.examples]
            rng.shuffle(labels)
        examples = tuple(replace(e, label=y) for e, y in zip(self.examples, labels))
        return Dataset(
            spec=f"{self.spec} (shuffled labels, seed {seed})", kind=self.kind, examples=examples
        )

    def limit(self, n: int, *, seed: int = 0) -> Dataset:
        """A seeded, class-balanced subset of ``n`` examples (``n // 2`` whole pairs for pairs).

        Labelled data takes ``n // 2`` per class (the odd one positive); a class with too few
        gives its shortfall to the other. The original order is kept.
        """
        if n >= len(self):
            return self
        rng = random.Random(seed)
        if self.kind == "pairs":
            if n < 2:
                raise ValueError(f"limit must be >= 2 (one pair) for pair data, got {n}")
            units = self._strata()[0]
            keep = [i for unit in rng.sample(units, n // 2) for i in unit]
            return self.subset(sorted(keep))
        if n < 1:
            raise ValueError(f"limit must be >= 1, got {n}")
        neg, pos = ([i for i, e in enumerate(self.examples) if e.label == y] for y in (0, 1))
        n_neg = min(n // 2, len(neg))
        n_pos = min(n - n_neg, len(pos))
        n_neg = min(n - n_pos, len(neg))
        return self.subset(sorted(rng.sample(neg, n_neg) + rng.sample(pos, n_pos)))


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` into counts proportional to ``fractions`` (largest remainder)."""
    total = sum(fractions)
    raw = [f * n / total for f in fractions]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda k: (counts[k] - raw[k], k))
    for k in by_remainder[: n - sum(counts)]:
        counts[k] += 1
    return counts


def check_dataset(data: Dataset) -> None:
    """Refuse data no plan can be fitted on: empty or repeated texts, one class, too few.

    :func:`load_data` guarantees all this; fitting calls it again (before any model is loaded)
    for a :class:`Dataset` built by hand.
    """
    empty = [i for i, t in enumerate(data.texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise DataSpecError(
            f"{data.spec}: examples {empty[:10]} have empty texts; remove them or fill them in"
        )
    first: dict[str, int] = {}
    for i, t in enumerate(data.texts):
        if t in first:
            raise DataSpecError(
                f"{data.spec}: example {i} repeats the text of example {first[t]} ({t[:60]!r}); "
                "remove duplicates (a repeated text counts twice and can land on both sides of "
                "a split)"
            )
        first[t] = i
    check_classes(data)


def check_classes(data: Dataset) -> None:
    """Refuse data with no examples, one class, or fewer than ``MIN_PER_CLASS`` per class
    (pairs: fewer than ``MIN_PER_CLASS`` pairs)."""
    if not data.examples:
        raise DataSpecError(
            f"{data.spec}: no usable examples; at least {MIN_PER_CLASS} per class are needed"
        )
    n_pos = sum(e.label for e in data.examples)
    n_neg = len(data) - n_pos
    if data.kind == "pairs":
        if n_pos < MIN_PER_CLASS:
            raise DataSpecError(
                f"{data.spec}: {n_pos} contrast pairs; at least {MIN_PER_CLASS} are needed, "
                "add more pairs"
            )
        return
    if not n_pos or not n_neg:
        names = ["negative (0)", "positive (1)"]
        only, other = (names[1], names[0]) if n_pos else (names[0], names[1])
        raise DataSpecError(
            f"{data.spec}: every example is {only}; a steering direction needs both classes, "
            f"add at least {MIN_PER_CLASS} {other} examples"
        )
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise DataSpecError(
            f"{data.spec}: {n_pos} positive and {n_neg} negative examples; at least "
            f"{MIN_PER_CLASS} of each class are needed, add more examples"
        )
