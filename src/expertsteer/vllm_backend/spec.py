"""Plans and a request's steering as plain data: what ``collective_rpc`` carries to the workers
and what a request names (``{"plan", "alpha", "scope"}``), checked once at the front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

XARG = "steering"  # extra_args key of a request's steering dict (Python entry point)
XARGS_FLAT = ("steering_plan", "steering_alpha", "steering_scope")  # vllm_xargs over HTTP
PLAN_NAMES_ENV = "EXPERTSTEER_VLLM_PLANS"  # plan names the middleware accepts (JSON list)
DEFAULT_NAME = "default"


def plan_payload(plan: Any) -> dict[str, Any]:
    """A :class:`~expertsteer.plan.SteeringPlan` as lists (what ``collective_rpc`` carries); a
    conditioned plan sends its static plan (its α per request comes from the front)."""
    plan = getattr(plan, "plan", plan)
    return {
        "layers": [int(j) for j in plan.layers],
        "vectors": [plan.vectors[j].float().tolist() for j in plan.layers],
        "alphas": [float(plan.alphas[j]) for j in plan.layers],
        "hidden_size": int(plan.target.hidden_size),
        "n_layers": int(plan.target.n_layers),
        "target": plan.target.name,
    }


def load_plan(value: Any) -> Any:
    """A plan object as it is, or a saved plan folder (static or expert-conditioned)."""
    from ..artifacts import load_plan
    from ..condition import ConditionedPlan
    from ..learned import LearnedMap
    from ..plan import SteeringPlan

    plan = value if isinstance(value, SteeringPlan | ConditionedPlan | LearnedMap) else None
    plan = load_plan(value) if plan is None else plan
    if isinstance(plan, LearnedMap):
        raise ValueError(
            "a learned map (learned_map.json) adds a per-prompt delta, which the vLLM backend "
            "does not apply yet: use it on the HF path (expertsteer generate/serve --engine hf, "
            "expertsteer.learned.learned_generate)"
        )
    return plan


def is_conditioned(plan: Any) -> bool:
    return hasattr(plan, "probe")


def parse_scope(value: Any) -> tuple[str, int]:
    """A written scope as ``(kind, k)``: all, prompt, generated or last:K."""
    from ..steer.scope import TokenScope

    scope = TokenScope.parse(value)
    if scope.kind == "positions":
        raise ValueError("explicit position scopes are not supported on vLLM")
    return scope.kind, scope.k


def steering_spec(value: Any, plans: Sequence[str]) -> dict[str, Any] | None:
    """A request's steering checked against the plan names: ``{"plan", "alpha", "scope"}``
    (``None``: unsteered). Raises ``ValueError`` with a message for the client."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError('steering must be an object like {"plan": "NAME", "alpha": 1.0}')
    unknown = sorted(set(value) - {"plan", "alpha", "scope"})
    if unknown:
        raise ValueError(f"steering has unknown fields {unknown}; use plan, alpha, scope")
    name = value.get("plan")
    if name is None:
        return None
    if not isinstance(name, str) or name not in plans:
        raise ValueError(f"unknown steering plan {name!r}; this server has: {sorted(plans)}")
    alpha = value.get("alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ValueError(f"steering.alpha must be a finite number, not {alpha!r}")
    scope = value.get("scope", "all")
    if not isinstance(scope, str):
        raise ValueError(f"steering.scope must be a string, not {scope!r}")
    parse_scope(scope)
    return {"plan": name, "alpha": float(alpha), "scope": scope}
