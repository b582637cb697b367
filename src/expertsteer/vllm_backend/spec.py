"""Plans and a request's steering as plain data: what ``collective_rpc`` carries to the workers
and what a request names (``{"plan", "alpha", "scope"}``), checked once at the front.

A learned map is registered as its target block with a zero vector; each of its requests
brings its own delta (``"delta": {"vector": unit [d], "norm": n}``, set by
:class:`~expertsteer.vllm_backend.SteeredLLM` from the expert's reading, never by a client)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

XARG = "steering"  # extra_args key of a request's steering dict (Python entry point)
XARGS_FLAT = ("steering_plan", "steering_alpha", "steering_scope")  # vllm_xargs over HTTP
PLAN_NAMES_ENV = "EXPERTSTEER_VLLM_PLANS"  # plan names the middleware accepts (JSON list)
DEFAULT_NAME = "default"
DELTA = "delta"  # a learned map's per-request vector (the Python front sets it)


def plan_payload(plan: Any) -> dict[str, Any]:
    """A :class:`~expertsteer.plan.SteeringPlan` as lists (what ``collective_rpc`` carries); a
    conditioned plan sends its static plan (its α per request comes from the front); a learned
    map its block with a zero vector (each request brings its delta)."""
    if is_learned(plan):
        import torch

        plan = plan.plans_of(torch.zeros(1, plan.target.hidden_size))[0]
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
    """A plan object as it is, or a saved folder (static, expert-conditioned or a learned map)."""
    from ..artifacts import load_plan
    from ..condition import ConditionedPlan
    from ..learned import LearnedMap
    from ..plan import SteeringPlan

    if isinstance(value, SteeringPlan | ConditionedPlan | LearnedMap):
        return value
    return load_plan(value)


def is_conditioned(plan: Any) -> bool:
    return hasattr(plan, "probe")


def is_learned(plan: Any) -> bool:
    return hasattr(plan, "plans_of")


def reads_with_expert(plan: Any) -> bool:
    """A conditioned plan or a learned map: its requests need the expert's reading first."""
    return is_conditioned(plan) or is_learned(plan)


def parse_scope(value: Any) -> tuple[str, int]:
    """A written scope as ``(kind, k)``: all, prompt, generated or last:K."""
    from ..steer.scope import TokenScope

    scope = TokenScope.parse(value)
    if scope.kind == "positions":
        raise ValueError("explicit position scopes are not supported on vLLM")
    return scope.kind, scope.k


def steering_spec(
    value: Any, plans: Sequence[str], *, delta: bool = False
) -> dict[str, Any] | None:
    """A request's steering checked against the plan names: ``{"plan", "alpha", "scope"}``
    (``None``: unsteered); with ``delta`` (the workers, behind the Python front) also a learned
    map's ``"delta"``. Raises ``ValueError`` with a message for the client."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError('steering must be an object like {"plan": "NAME", "alpha": 1.0}')
    unknown = sorted(set(value) - {"plan", "alpha", "scope", *([DELTA] if delta else [])})
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
    out = {"plan": name, "alpha": float(alpha), "scope": scope}
    if DELTA in value:
        out[DELTA] = _delta(value[DELTA])
    return out


def _delta(value: Any) -> dict[str, Any]:
    ok = isinstance(value, Mapping) and isinstance(value.get("vector"), list)
    vector, norm = (value.get("vector"), value.get("norm")) if ok else (None, None)
    numbers = ok and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        for x in [*vector, norm]
    )
    if not numbers or not vector or norm < 0:
        raise ValueError('steering.delta must be {"vector": [finite numbers], "norm": n >= 0}')
    return {"vector": [float(x) for x in vector], "norm": float(norm)}
