"""expertsteer: steer a target LLM with steering vectors built from an expert model.

The few public names are imported lazily, so ``import expertsteer`` (and the CLI) stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ExpertSteer": "pipeline",
    "fit_target_only": "pipeline",
    "SteeringPlan": "plan",
    "attach": "steer",
    "load_model": "models",
    "wrap_model": "models",
    "extract": "extract",
    "load_data": "data",
    "ConditionedPlan": "condition",
    "condition": "condition",
    "load_plan": "artifacts",
    "LearnedMap": "learned",
    "LearnedMapFit": "learned",
    "DomainGate": "gate",
    "gated_generate": "gate",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'expertsteer' has no attribute {name!r}")
