"""What a transferred method must beat besides the baselines: its nulls and the stand-in experts.

- **Nulls**, per transfer: shuffled-label refits through the same maps (the class balance
  kept) and random unit directions of the same α and layers. They run at the method's tuned α
  and layers, not re-tuned: tuning a null on validation would fit noise there.
- **Controls**, per transfer: the same pipeline with a stand-in expert (:data:`CONTROLS`): the
  expert's architecture with re-initialised weights, or the target as its own expert.
"""

from __future__ import annotations

from typing import Any

from ..data import Dataset
from ..models import LoadedModel, reinitialised
from ..pipeline import ExpertSteer
from ..plan import SteeringPlan
from .methods import CONTROLS, random_plan
from .scorer import Scorer

__all__ = ["NULL_FAMILIES", "null_seed", "stand_in_expert", "transfer_nulls"]

NULL_FAMILIES = ("shuffled_labels", "random_direction")


def null_seed(family: str, seed: int, k: int) -> int:
    """Null k's own seed, distinct across families and evaluation seeds."""
    return 1_000_000 * (1 + NULL_FAMILIES.index(family)) + 1000 * seed + k


def stand_in_expert(control: str, expert: LoadedModel, target: LoadedModel, seed: int):
    """The model that plays the expert in a control (a fresh model for ``random-expert``)."""
    if control == "random-expert":
        return reinitialised(expert, seed=seed)
    if control == "target-as-expert":
        return target
    raise ValueError(f"unknown control {control!r}: use {', '.join(CONTROLS)}")


def transfer_nulls(
    row: dict[str, Any],
    est: ExpertSteer,
    contrast: Dataset,
    tuned: SteeringPlan,
    pairing: str,
    test: Scorer,
    n_nulls: int,
    seed: int,
) -> dict[str, list[float]]:
    """Test accuracy of each null of a tuned transfer (see the module docstring)."""
    layers, alpha = row["layers"], row["alpha"]
    if alpha == 0:  # tuned to no steering: every null is the target alone
        base = float(test.correct().mean())
        return {f: [base] * n_nulls for f in NULL_FAMILIES}
    nulls, randoms = [], []
    for k in range(n_nulls):
        shuffled = contrast.shuffle_labels(seed=null_seed("shuffled_labels", seed, k))
        null = est.replan(shuffled, pairing=pairing)
        common = [j for j in layers if j in null.vectors] or null.layers[: len(layers)]
        nulls.append(null.select(common) * alpha)
        randoms.append(random_plan(tuned, seed=null_seed("random_direction", seed, k)))
    scores = [float(c.mean()) for c in test.correct_many(nulls + randoms)]
    return {"shuffled_labels": scores[:n_nulls], "random_direction": scores[n_nulls:]}
