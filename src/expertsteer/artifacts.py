"""Saved steering, whatever its kind: one loader for a plan folder, and the expert's reader.

A folder from ``save_pretrained`` holds a static :class:`~expertsteer.plan.SteeringPlan`, an
expert-conditioned :class:`~expertsteer.condition.ConditionedPlan` (its probe's files beside the
plan's) or a :class:`~expertsteer.learned.LearnedMap` (``learned_map.json``). The two that read
each input with the expert share what the commands need of them (:func:`expert_reader`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .condition import PROBE_CONFIG, ConditionedPlan
from .learned import CONFIG, LearnedMap
from .plan import SteeringPlan

__all__ = ["expert_reader", "load_plan"]

Loaded = SteeringPlan | ConditionedPlan | LearnedMap


def load_plan(directory: str | Path) -> Loaded:
    """A saved folder: a learned map when it holds ``learned_map.json``, conditioned when it
    holds a probe, else a static plan (a hub repo id too)."""
    if (Path(directory) / CONFIG).is_file():
        return LearnedMap.from_pretrained(directory)
    if (Path(directory) / PROBE_CONFIG).is_file():
        return ConditionedPlan.from_pretrained(directory)
    return SteeringPlan.from_pretrained(directory)


def expert_reader(plan: Any) -> Any:
    """What reads a plan's inputs with the expert (it has ``expert``, ``check_expert`` and
    ``read``): a conditioned plan's probe, a learned map itself; None for a static plan."""
    if isinstance(plan, ConditionedPlan):
        return plan.probe
    return plan if isinstance(plan, LearnedMap) else None
