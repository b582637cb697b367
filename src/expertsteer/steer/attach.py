"""Put plans on a model: check them, turn plans × α into per-layer deltas, hook those in.

α is parsed once, by :func:`parse_alpha`, into one float64 tensor (``[1]`` or one value per
row) and stays a tensor down to the deltas the hooks add.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch

from ..models import LoadedModel
from ..plan import SteeringPlan
from ..types import Tensor
from .hooks import SteeringHandle
from .scope import Scope, TokenScope

Alpha = float | Sequence[float] | Tensor

# Adding more than this multiple of a layer's mean hidden-state norm swamps the model's own
# signal (the default α is 0.15×): such settings are almost always a mistake.
ALPHA_WARN_RATIO = 4.0


class SteeringStrengthWarning(UserWarning):
    """The steering added to a layer is far larger than the layer's own hidden states."""


def parse_alpha(alpha: Alpha) -> Tensor:
    """α as a float64 tensor ``[1]`` (every row) or ``[R]`` (one per row); finite numbers only."""
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if a.numel() == 0 or not torch.isfinite(a).all():
        raise ValueError(f"alpha must be finite numbers, not {alpha!r}")
    return a


def attach(
    lm: LoadedModel,
    plan: SteeringPlan | Sequence[SteeringPlan] | None = None,
    *,
    alpha: Alpha = 1.0,
    layer_alphas: Mapping[int, float] | None = None,
    scope: Scope | TokenScope = "all",
    rows: Sequence[SteeringPlan | None] | None = None,
    strict: bool = True,
) -> SteeringHandle:
    """Steer ``lm`` with ``plan`` (one plan or several, summed) on every row, and/or ``rows``.

    ``alpha`` scales every plan's α_j: a number, or one per batch row. ``rows[b]`` is the plan
    of batch row ``b`` (``None``: not steered); ``layer_alphas`` overrides α_j per layer.
    Returns a handle (also a context manager) whose removal restores the model exactly:
    ``with attach(lm, plan, alpha=2.0, scope="prompt"): lm.model.generate(...)``.
    """
    if plan is None and rows is None:
        raise ValueError("attach needs a plan or per-row plans (rows=)")
    plans = [] if plan is None else [plan] if isinstance(plan, SteeringPlan) else list(plan)
    row_plans = [] if rows is None else [p for p in rows if p is not None]
    for p in (*plans, *row_plans):
        if not isinstance(p, SteeringPlan):
            raise TypeError(f"expected SteeringPlan objects, got {type(p).__name__}")
        p.check_target(lm, strict=strict)
    token_scope = TokenScope.parse(scope)
    weights = parse_alpha(alpha)
    n_rows = weights.numel() if rows is None else len(rows)
    if weights.numel() not in (1, n_rows):
        raise ValueError(f"alpha gives {weights.numel()} values for {n_rows} rows")
    terms = [(p, weights) for p in plans]
    seen: list[SteeringPlan] = []
    for p in row_plans:
        if not any(p is q for q in seen):  # one term per distinct plan object
            seen.append(p)
            on = torch.tensor([float(r is p) for r in rows], dtype=torch.float64)
            terms.append((p, on * weights))
    if not terms:
        raise ValueError("rows holds no plan: every row is None")
    deltas = SteeringPlan.combine(terms, layer_alphas)
    _warn_if_too_strong(deltas, [p for p, _ in terms])
    return SteeringHandle(lm, deltas, n_rows, token_scope)


def _warn_if_too_strong(deltas: Mapping[int, Tensor], plans: Sequence[SteeringPlan]) -> None:
    """Warn when an addition exceeds ALPHA_WARN_RATIO × the layer's recorded mean norm."""
    loud = []
    for j, delta in deltas.items():
        norms = [p.layer_norms[j] for p in plans if p.layer_norms.get(j, 0) > 0]
        if norms:
            added, ref = float(delta.norm(dim=-1).max()), max(norms)
            if added > ALPHA_WARN_RATIO * ref:
                loud.append(f"layer {j}: {added:.3g} vs mean norm {ref:.3g} ({added / ref:.0f}x)")
    if loud:
        warnings.warn(
            SteeringStrengthWarning(
                f"steering adds more than {ALPHA_WARN_RATIO:g}x the hidden states' own size "
                f"({'; '.join(loud)}); the model's signal is swamped and outputs degrade to "
                "noise. Lower alpha (or layer_alphas); the plan's default is alpha=1"
            ),
            stacklevel=3,
        )
