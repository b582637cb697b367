"""Choose the global α and the number of steered layers on a validation split.

The caller supplies the metric (higher is better), computed on validation data only, e.g. the
accuracy of multiple-choice scoring under steering; ``tune`` only searches the grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .plan import SteeringPlan

DEFAULT_ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)


@dataclass(frozen=True)
class TuneResult:
    """The best setting and every point tried (for the α-sweep plot)."""

    alpha: float
    layers: tuple[int, ...]
    score: float
    grid: list[dict] = field(default_factory=list)

    def apply_to(self, plan: SteeringPlan) -> SteeringPlan:
        """``plan`` restricted to the chosen layers and scaled by the chosen α."""
        return plan.select(self.layers) * self.alpha


def layer_order(plan: SteeringPlan) -> list[int]:
    """Layers by the MI of their pair, highest first (plan order when there is no MI)."""
    if plan.mi_matrix is None or not plan.pairs:
        return list(plan.layers)
    mi = {j: float(plan.mi_matrix[i, j]) for i, j in plan.pairs if j in plan.vectors}
    return sorted(plan.layers, key=lambda j: -mi.get(j, float("-inf")))


def tune(
    plan: SteeringPlan,
    metric: Callable[[SteeringPlan], float] | None = None,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n_layers: Sequence[int] | None = None,
    order: Sequence[int] | None = None,
    metrics: Callable[[list[SteeringPlan]], Sequence[float]] | None = None,
    progress: bool = True,
) -> TuneResult:
    """Grid search over global α × the first k layers of ``order`` (default :func:`layer_order`).

    ``metric(candidate_plan)`` scores a steered setting on validation data; or ``metrics``
    scores every candidate of the grid in one call (e.g. one batched pass with a plan per row).
    α = 0 (no steering) is scored once. Ties go to the smaller |α|, then to fewer layers: the
    least intervention.
    """
    if (metric is None) == (metrics is None):
        raise ValueError("pass either metric (one plan) or metrics (every candidate at once)")
    order = list(order) if order is not None else layer_order(plan)
    if sorted(order) != sorted(plan.layers):
        raise ValueError(f"order {order} must list the plan's layers {plan.layers} once each")
    ks = sorted(set(n_layers)) if n_layers is not None else list(range(1, len(order) + 1))
    if not ks or not alphas or any(not 1 <= k <= len(order) for k in ks):
        raise ValueError(f"need at least one α and layer counts within 1..{len(order)}")
    candidates = [(0.0, 0)] if 0.0 in alphas else []
    candidates += [(float(a), k) for a in alphas if a != 0.0 for k in ks]
    cells = [(a, k, tuple(sorted(order[: max(k, 1)]))) for a, k in candidates]
    plans = [plan.select(layers) * a for a, _, layers in cells]
    if metrics is not None:
        scores = [float(s) for s in metrics(plans)]
        if len(scores) != len(plans):
            raise ValueError(f"metrics gave {len(scores)} scores for {len(plans)} candidates")
    else:
        assert metric is not None
        bar = tqdm(plans, desc="tune α / layers", disable=not progress)
        scores = [float(metric(p)) for p in bar]
    grid = [
        {"alpha": a, "n_layers": k, "layers": list(layers), "score": score}
        for (a, k, layers), score in zip(cells, scores)
    ]
    best = max(grid, key=lambda g: (g["score"], -abs(g["alpha"]), -g["n_layers"]))
    return TuneResult(best["alpha"], tuple(best["layers"]), best["score"], grid)
