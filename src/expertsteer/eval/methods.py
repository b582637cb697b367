"""The methods an evaluation compares, by name, and the random-direction control."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..data import DataSpecError
from ..plan import SteeringPlan

__all__ = [
    "ALIGNERS",
    "ALL_METHODS",
    "PAIRINGS",
    "TARGET_ONLY",
    "parse_methods",
    "random_plan",
    "split_expertsteer",
]

TARGET_ONLY = ("mean-diff", "pca", "logistic", "self-rfm")
ALIGNERS = ("ridge", "procrustes", "paired-ae", "ae")
# depth: order-preserving by relative depth (our default); lowest: the paper's lowest-MI rule;
# monotone: the order-preserving assignment along the MI matrix.
PAIRINGS = ("depth", "lowest", "monotone")
DEFAULT_PAIRINGS = ("depth", "lowest")
ALL_METHODS = ("none", "prompt", "expert", *TARGET_ONLY, "expertsteer")


def parse_methods(
    spec: str | Sequence[str], pairings: Sequence[str] = DEFAULT_PAIRINGS
) -> list[str]:
    """Expand a comma list: ``expertsteer`` → every aligner × ``pairings``;
    ``expertsteer:ridge`` → ridge × ``pairings``; ``expertsteer:ae:lowest`` is one variant."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for name in filter(None, names):
        if name in ALL_METHODS and name != "expertsteer":
            out.append(name)
            continue
        head, _, rest = name.partition(":")
        aligner, _, pairing = rest.partition(":")
        if head != "expertsteer" or (aligner and aligner not in ALIGNERS):
            raise DataSpecError(
                f"unknown method {name!r}: use {', '.join(ALL_METHODS)}, "
                f"expertsteer:<{'|'.join(ALIGNERS)}>[:<{'|'.join(PAIRINGS)}>]"
            )
        if pairing and pairing not in PAIRINGS:
            raise DataSpecError(f"unknown pairing {pairing!r} in {name!r}: use {PAIRINGS}")
        for a in [aligner] if aligner else ALIGNERS:
            for p in [pairing] if pairing else pairings:
                out.append(f"expertsteer:{a}:{p}")
    out = list(dict.fromkeys(out))
    if not out:
        raise DataSpecError("no methods given")
    return out


def split_expertsteer(name: str) -> tuple[str, str]:
    """``expertsteer:<aligner>:<pairing>`` → (aligner, pairing)."""
    _, aligner, pairing = name.split(":")
    return aligner, pairing


def random_plan(plan: SteeringPlan, seed: int) -> SteeringPlan:
    """The control: the same layers and α (so the same added norm), random unit directions."""
    gen = torch.Generator().manual_seed(seed)
    vectors = {}
    for j, v in plan.vectors.items():
        r = torch.randn(v.numel(), generator=gen)
        vectors[j] = r / r.norm()
    return replace(plan, vectors=vectors, method=f"random (seed {seed})", mi_matrix=None)
