"""The ``--expert`` of ``generate`` and ``serve``: the model expert-reading plans read with.

A conditioned plan (a plan folder holding ``probe.json``) and a learned map (a folder holding
``learned_map.json``; both :func:`~expertsteer.artifacts.load_plan`) need their expert loaded
beside the target. ``--expert`` names it like any model option (catalog
name, path, GGUF or hub id); left out, it is the name the plan recorded when that name loads
here without the network (an installed catalog model, an existing path, a hub model already in
the local cache), else the command fails with :class:`~expertsteer.condition.ExpertMissingError`'s
message. Whatever loads is checked against the recorded fingerprint before anything runs.

``--expert`` with only static plans is a usage error: nothing would read with it, and the user
who gave it expected conditioning.

Both kinds answer the same two questions through
:func:`~expertsteer.artifacts.expert_reader`: which expert it recorded (``.expert``) and whether
a loaded model is it (``.check_expert``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

from .. import catalog

__all__ = ["conditioned", "expert_ref", "load_expert", "loads_locally"]


def conditioned(plans: Mapping[str, Any]) -> dict[str, Any]:
    """The plans among ``plans`` (name → plan) that need an expert: conditioned plans and
    learned maps."""
    from ..artifacts import expert_reader

    return {n: p for n, p in plans.items() if expert_reader(p) is not None}


def loads_locally(name: str) -> bool:
    """Whether ``name`` is a model that loads without the network: an installed catalog model,
    an existing path, or a hub id whose files are already in the local hub cache."""
    if name in catalog.CATALOG:
        return catalog.status(catalog.get_entry(name)) != "missing"
    if Path(name).expanduser().exists():
        return True
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid hub id either
        return False


def expert_ref(plans: Mapping[str, Any], given: str | None) -> str | None:
    """The expert to load for ``plans`` (checked before any model loads): ``given``, else the
    first conditioned plan's recorded expert when it loads here; None when no plan needs one."""
    from ..artifacts import expert_reader
    from ..condition import ExpertMissingError

    needing = conditioned(plans)
    if not needing:
        if given is not None:
            raise typer.BadParameter(
                "is only for expert-conditioned plans (a plan folder with probe.json) and "
                "learned maps (learned_map.json); "
                f"{', '.join(sorted(plans)) or 'no plan'} {'is' if len(plans) == 1 else 'are'} "
                "static",
                param_hint="--expert",
            )
        return None
    if given is not None:
        return given
    name, plan = next(iter(needing.items()))
    recorded = expert_reader(plan).expert.name
    if loads_locally(recorded):
        return recorded
    try:
        expert_reader(plan).check_expert(None)
    except ExpertMissingError as exc:
        raise ExpertMissingError(
            f"{name}: {exc}; {recorded!r}, the expert it recorded, does not load here "
            "(not an installed catalog model, an existing path nor a cached hub model): pass "
            "--expert MODEL"
        ) from None
    raise AssertionError("check_expert(None) must refuse")  # pragma: no cover


def load_expert(plans: Mapping[str, Any], ref: str | None, *, target_ref: str, target: Any) -> Any:
    """The expert ``ref`` (the target itself when it is the same model reference), checked
    against every plan that reads with it (:class:`ExpertMissingError` on another model)."""
    if ref is None:
        return None
    from ..artifacts import expert_reader
    from ..condition import ExpertMissingError
    from ..models import load_model

    expert = target if ref == target_ref else load_model(ref)
    for name, plan in conditioned(plans).items():
        try:
            expert_reader(plan).check_expert(expert)
        except ExpertMissingError as exc:
            raise ExpertMissingError(f"{name}: {exc}") from None
    return expert
