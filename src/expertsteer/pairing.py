"""Choose intervention layer pairs (expert_layer, target_layer) from an MI matrix.

The paper pairs LOW-MI layers; our measurements show a high-MI ridge along matching depths, so
highest-MI, order-preserving (monotone) and depth-following pairings are offered as well. The
strategy names are registered in :data:`PAIRINGS`; :func:`select_pairs` runs any of them.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np
import torch

from expertsteer.registry import Registry, UnknownNameError
from expertsteer.types import LayerPair, Tensor

__all__ = [
    "PAIRINGS",
    "depth_match",
    "depth_pairs",
    "given_pairs",
    "highest_mi_pairs",
    "lowest_mi_pairs",
    "monotone_pairs",
    "select_pairs",
]


def _shape(mi: Tensor) -> tuple[int, int]:
    shape = tuple(torch.as_tensor(mi).shape)
    if len(shape) != 2 or 0 in shape:
        raise ValueError(f"mi must be a non-empty 2-D [L_E, L_T] matrix, got shape {shape}")
    return shape[0], shape[1]


def _as_array(mi: Tensor) -> np.ndarray:
    _shape(mi)
    m = torch.as_tensor(mi).detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(m).all():
        raise ValueError("mi contains NaN or inf values; recompute the MI matrix")
    return m


def _eligible(n_layers: int, exclude_outer: int) -> range:
    """Layers left once the first and last `exclude_outer` blocks are excluded."""
    if exclude_outer < 0:
        raise ValueError(f"exclude_outer must be >= 0, got {exclude_outer}")
    return range(exclude_outer, max(n_layers - exclude_outer, exclude_outer))


def _check_n_pairs(n_pairs: int, possible: int, what: str, exclude_outer: int) -> None:
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    if n_pairs > possible:
        raise ValueError(
            f"n_pairs={n_pairs} is more than the {possible} {what} possible with "
            f"exclude_outer={exclude_outer}; lower n_pairs or exclude_outer"
        )


def _by_target(pairs: Sequence[LayerPair]) -> list[LayerPair]:
    return sorted(((int(i), int(j)) for i, j in pairs), key=lambda p: (p[1], p[0]))


def _submatrix(mi: Tensor, n_pairs: int, exclude_outer: int) -> tuple[np.ndarray, range, range]:
    """The eligible block of mi, after checking that n_pairs one-to-one pairs fit in it."""
    m = _as_array(mi)
    rows, cols = _eligible(m.shape[0], exclude_outer), _eligible(m.shape[1], exclude_outer)
    what = f"one-to-one pairs between {len(rows)} eligible expert and {len(cols)} target layers"
    _check_n_pairs(n_pairs, min(len(rows), len(cols)), what, exclude_outer)
    return m[rows.start : rows.stop, cols.start : cols.stop], rows, cols


def _greedy(mi: Tensor, n_pairs: int, exclude_outer: int, *, highest: bool) -> list[LayerPair]:
    sub, rows, cols = _submatrix(mi, n_pairs, exclude_outer)
    flat = sub.ravel()
    # Stable sort: equal values are taken in row-major order, so ties resolve deterministically.
    order = np.argsort(-flat if highest else flat, kind="stable")
    used_e: set[int] = set()
    used_t: set[int] = set()
    pairs: list[LayerPair] = []
    for idx in order:
        i, j = divmod(int(idx), sub.shape[1])
        if i in used_e or j in used_t:
            continue
        used_e.add(i)
        used_t.add(j)
        pairs.append((rows.start + i, cols.start + j))
        if len(pairs) == n_pairs:
            break
    return _by_target(pairs)


def lowest_mi_pairs(mi: Tensor, n_pairs: int = 4, *, exclude_outer: int = 1) -> list[LayerPair]:
    """The paper's rule: the n_pairs lowest-MI cells, greedily, each layer used at most once."""
    return _greedy(mi, n_pairs, exclude_outer, highest=False)


def highest_mi_pairs(mi: Tensor, n_pairs: int = 4, *, exclude_outer: int = 1) -> list[LayerPair]:
    """The n_pairs highest-MI cells, greedily, each layer used at most once."""
    return _greedy(mi, n_pairs, exclude_outer, highest=True)


def monotone_pairs(mi: Tensor, n_pairs: int = 4, *, exclude_outer: int = 1) -> list[LayerPair]:
    """Exactly n_pairs pairs with i1 < i2 < ... and j1 < j2 < ... maximising the total MI.

    Dynamic programming in O(L_E * L_T * n_pairs).
    """
    sub, rows, cols = _submatrix(mi, n_pairs, exclude_outer)
    n_e, n_t = sub.shape
    # best[t, i, j]: the largest total of t order-preserving pairs within the first i eligible
    # expert rows and first j target columns (-inf where t pairs do not fit).
    best = np.full((n_pairs + 1, n_e + 1, n_t + 1), -np.inf)
    best[0] = 0.0
    for t in range(1, n_pairs + 1):
        for i in range(1, n_e + 1):
            # Either row i is unused, or (i, j) closes the chain; the running max over j
            # covers "column j unused".
            closing = np.maximum(best[t, i - 1, 1:], best[t - 1, i - 1, :-1] + sub[i - 1])
            best[t, i, 1:] = np.maximum.accumulate(closing)
    pairs: list[LayerPair] = []
    t, i, j = n_pairs, n_e, n_t
    while t > 0:
        if best[t, i, j] == best[t, i, j - 1]:
            j -= 1
        elif best[t, i, j] == best[t, i - 1, j]:
            i -= 1
        else:
            pairs.append((rows.start + i - 1, cols.start + j - 1))
            t, i, j = t - 1, i - 1, j - 1
    return _by_target(pairs)


def _round_div(num: int, den: int) -> int:
    """round(num / den) with halves rounded up, in exact integer arithmetic."""
    return (2 * num + den) // (2 * den)


def depth_match(i: int, n_from: int, n_to: int) -> int:
    """The layer of an ``n_to``-layer model at the relative depth of layer ``i`` of ``n_from``.

    ``round(i / (n_from - 1) * (n_to - 1))`` with halves rounded UP (not Python's half-to-even),
    computed exactly in integers; a one-layer model sits at depth 0. The one depth rule of the
    package: step 1 aligns expert layer i with target layer ``depth_match(i, L_E, L_T)``, and
    :func:`depth_pairs` pairs target layer j with expert layer ``depth_match(j, L_T, L_E)``.
    """
    i, n_from, n_to = operator.index(i), operator.index(n_from), operator.index(n_to)
    if n_from < 1 or n_to < 1:
        raise ValueError(f"layer counts must be >= 1, got n_from={n_from} and n_to={n_to}")
    if not 0 <= i < n_from:
        raise ValueError(f"layer {i} is out of range 0..{n_from - 1}")
    return _round_div(i * (n_to - 1), max(n_from - 1, 1))


def depth_pairs(
    n_expert_layers: int, n_target_layers: int, n_pairs: int = 4, *, exclude_outer: int = 1
) -> list[LayerPair]:
    """Pairs that follow relative depth; needs no MI.

    n_pairs target layers evenly spaced over the eligible range (first and last eligible layer
    included; the middle one when n_pairs == 1), each paired with the expert layer at the same
    relative depth, ``depth_match(j, L_T, L_E)`` (halves up), clipped to the eligible range.
    An expert layer may serve several target layers when the expert is shallower.
    """
    rows = _eligible(n_expert_layers, exclude_outer)
    cols = _eligible(n_target_layers, exclude_outer)
    if len(rows) == 0:
        raise ValueError(
            f"no expert layer is eligible: {n_expert_layers} layers with "
            f"exclude_outer={exclude_outer}; lower exclude_outer"
        )
    what = f"distinct target layers among the {len(cols)} eligible ones"
    _check_n_pairs(n_pairs, len(cols), what, exclude_outer)
    lo, hi = cols.start, cols.stop - 1
    if n_pairs == 1:
        targets = [_round_div(lo + hi, 2)]
    else:
        targets = [lo + _round_div(m * (hi - lo), n_pairs - 1) for m in range(n_pairs)]
    pairs = []
    for j in targets:
        i = depth_match(j, n_target_layers, n_expert_layers)
        pairs.append((min(max(i, rows.start), rows.stop - 1), j))
    return _by_target(pairs)


def given_pairs(
    given: Sequence[LayerPair], n_expert_layers: int, n_target_layers: int
) -> list[LayerPair]:
    """Validate user-chosen pairs (in range, no target layer twice); exclude_outer not applied."""
    pairs: list[LayerPair] = []
    seen: set[int] = set()
    for pair in given:
        try:
            i, j = (operator.index(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(
                f"each given pair must be two integers (expert_layer, target_layer), got {pair!r}"
            ) from None
        if not 0 <= i < n_expert_layers:
            raise ValueError(
                f"given pair {(i, j)}: expert layer {i} is out of range 0..{n_expert_layers - 1}"
            )
        if not 0 <= j < n_target_layers:
            raise ValueError(
                f"given pair {(i, j)}: target layer {j} is out of range 0..{n_target_layers - 1}"
            )
        if j in seen:
            raise ValueError(f"target layer {j} appears in more than one given pair")
        seen.add(j)
        pairs.append((i, j))
    if not pairs:
        raise ValueError("given is empty; pass at least one (expert_layer, target_layer) pair")
    return _by_target(pairs)


def select_pairs(
    mi: Tensor | None,
    *,
    strategy: str = "highest",
    n_pairs: int = 4,
    n_expert_layers: int | None = None,
    n_target_layers: int | None = None,
    exclude_outer: int = 1,
    given: Sequence[LayerPair] | None = None,
) -> list[LayerPair]:
    """Pick intervention pairs with one of `PAIRINGS`; the result is sorted by target layer.

    "lowest", "highest" and "monotone" need `mi` [L_E, L_T]; "depth" and "given" only need the
    layer counts, taken from `mi` or from n_expert_layers / n_target_layers. `exclude_outer`
    blocks at both ends of both models are ineligible; "given" ignores exclude_outer and n_pairs.
    """
    if strategy not in PAIRINGS:
        raise UnknownNameError(f"unknown strategy {strategy!r}; choose one of {PAIRINGS.choices()}")
    if given is not None and strategy != "given":
        raise ValueError(f"given pairs are only used with strategy='given', not {strategy!r}")
    if mi is not None:
        shape = _shape(mi)
        counts = {
            "n_expert_layers": (n_expert_layers, shape[0]),
            "n_target_layers": (n_target_layers, shape[1]),
        }
        for name, (count, size) in counts.items():
            if count is not None and count != size:
                raise ValueError(
                    f"mi has shape {shape} but {name}={count}; the MI matrix must be "
                    "[expert layers, target layers]"
                )
        n_expert_layers, n_target_layers = shape
    elif strategy in _NEEDS_MI:
        raise ValueError(f"strategy {strategy!r} needs an MI matrix; pass mi or use 'depth'")
    if strategy in ("depth", "given") and (n_expert_layers is None or n_target_layers is None):
        raise ValueError(
            f"strategy {strategy!r} needs the layer counts: pass mi or both "
            "n_expert_layers and n_target_layers"
        )
    if strategy == "given":
        if given is None:
            raise ValueError("strategy 'given' needs the pairs: pass given=[(expert, target), ...]")
        return given_pairs(given, n_expert_layers, n_target_layers)
    if strategy == "depth":
        return depth_pairs(n_expert_layers, n_target_layers, n_pairs, exclude_outer=exclude_outer)
    return PAIRINGS[strategy](mi, n_pairs, exclude_outer=exclude_outer)


# Each entry is the strategy's own function; their signatures differ (the MI-based ones take the
# matrix, "depth" the layer counts, "given" the pairs), so select_pairs is the uniform entry.
PAIRINGS: Registry[list[LayerPair]] = Registry("pairing strategy")
PAIRINGS.register("lowest", lowest_mi_pairs, "the paper's rule: the lowest-MI cells, one-to-one")
PAIRINGS.register("highest", highest_mi_pairs, "the highest-MI cells, one-to-one")
PAIRINGS.register("monotone", monotone_pairs, "order-preserving pairs with the largest total MI")
PAIRINGS.register("depth", depth_pairs, "layers at the same relative depth (needs no MI)")
PAIRINGS.register("given", given_pairs, "the user's own (expert, target) pairs")
_NEEDS_MI = frozenset({"lowest", "highest", "monotone"})
