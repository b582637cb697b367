"""The Python entry point: vLLM's ``LLM`` with named steering plans, static, expert-conditioned
or learned maps (the expert, an HF model here beside the engine, reads each prompt and sets
that request's α, or its own delta, before it is sent)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .spec import (
    DEFAULT_NAME,
    DELTA,
    XARG,
    is_conditioned,
    is_learned,
    load_plan,
    plan_payload,
    reads_with_expert,
    steering_spec,
)

EXTENSION = "expertsteer.vllm_backend.worker.SteeringWorkerExtension"
_UNSET: Any = object()


def named_plans(plans: Any) -> dict[str, Any]:
    """``{name: plan}`` from one plan (named ``"default"``) or a mapping of plans or folders."""
    if plans is None:
        return {}
    if isinstance(plans, Mapping):
        return {str(n): load_plan(p) for n, p in plans.items()}
    return {DEFAULT_NAME: load_plan(plans)}


def model_folder(model: str | os.PathLike) -> str:
    """A local folder or hub id as it is; a catalog name as its converted HF folder."""
    if Path(model).exists():
        return str(model)
    from ..catalog import get_entry, model_path

    try:
        get_entry(str(model))
    except (KeyError, ValueError):
        return str(model)
    return str(model_path(str(model)))


class SteeredLLM:
    """vLLM's ``LLM`` with named steering plans, per request or as a global default.

    ``plans``: one plan (named ``"default"``) or ``{name: plan or folder}``; ``default``:
    ``{"plan": NAME, "alpha": α, "scope": ...}`` (or just a name) applied to requests that do
    not bring their own. An expert-conditioned plan
    (:class:`~expertsteer.condition.ConditionedPlan`) needs ``expert`` (a loaded model or a name
    for :func:`~expertsteer.models.load_model`): each request's α becomes ``α · g(p)``, the
    expert's probe reading the prompt's text, as :func:`~expertsteer.condition.conditioned_generate`
    does on the HF path; a learned map (:class:`~expertsteer.learned.LearnedMap`) too, each
    request then carrying its own delta, as :func:`~expertsteer.learned.learned_generate`.
    Other keyword arguments go to ``vllm.LLM`` (``dtype``,
    ``tensor_parallel_size``, ``max_model_len``, …); ``enforce_eager`` and
    ``enable_prefix_caching`` are fixed to what the hooks need.

    >>> llm = SteeredLLM("smollm2-135m", {"calm": "plans/calm"}, dtype="float32")
    >>> llm.generate(["Hi"], steering={"plan": "calm", "alpha": 2.0}, max_tokens=16)
    """

    def __init__(
        self,
        model: str | os.PathLike,
        plans: Any = None,
        *,
        default: Any = None,
        expert: Any = None,
        **vllm_kwargs: Any,
    ) -> None:
        from vllm import LLM

        if isinstance(expert, str | os.PathLike):
            from ..models import load_model

            expert = load_model(expert)
        self.expert = expert
        for key, value in (("enforce_eager", True), ("enable_prefix_caching", False)):
            if vllm_kwargs.setdefault(key, value) != value:
                raise ValueError(f"steering on vLLM needs {key}={value}")
        vllm_kwargs["worker_extension_cls"] = EXTENSION
        self.plans = named_plans(plans)
        self._check_plans(self.plans)  # before the engine starts: fail fast
        self.llm = LLM(model=model_folder(model), **vllm_kwargs)
        self.set_plans(self.plans, default)

    def _check_plans(self, plans: Mapping[str, Any]) -> None:
        for plan in plans.values():
            if is_conditioned(plan):
                plan.probe.check_expert(self.expert)  # ExpertMissingError, naming the expert
            elif is_learned(plan):
                plan.check_expert(self.expert)

    def set_plans(self, plans: Any, default: Any = None) -> list[dict[str, Any]]:
        """Replace the plans (and the default) in every worker."""
        plans = named_plans(plans)
        self._check_plans(plans)
        if isinstance(default, str):
            default = {"plan": default}
        if default is None and len(plans) == 1 and DEFAULT_NAME in plans:
            default = {"plan": DEFAULT_NAME}
        self.plans, self.default = plans, steering_spec(default, list(plans))
        # A conditioned default (or a map's) is applied here, per prompt; the workers' default
        # would steer a request that bypasses this front unscaled (or with no delta).
        worker_default = None if self._reads(self.default) else self.default
        payload = {n: plan_payload(p) for n, p in self.plans.items()}
        return self.llm.collective_rpc("expertsteer_set_plans", args=(payload, worker_default))

    def _reads(self, spec: Mapping[str, Any] | None) -> bool:
        return spec is not None and reads_with_expert(self.plans[spec["plan"]])

    def info(self) -> list[dict[str, Any]]:
        return self.llm.collective_rpc("expertsteer_info")

    def sampling_params(self, steering: Any = _UNSET, **kwargs: Any) -> Any:
        """``SamplingParams`` (greedy unless told otherwise) carrying a request's steering;
        ``steering`` left out: the default; ``None``: unsteered. A conditioned plan's α here is
        used as given (:meth:`complete` scales it by the expert's reading first)."""
        return self._params(_UNSET if steering is _UNSET else self._spec(steering), **kwargs)

    def _params(self, spec: Any, **kwargs: Any) -> Any:
        """``SamplingParams`` carrying an already checked spec (a map's delta included)."""
        from vllm import SamplingParams

        kwargs.setdefault("temperature", 0.0)
        extra = dict(kwargs.pop("extra_args", None) or {})
        if spec is not _UNSET:
            extra[XARG] = spec
        return SamplingParams(extra_args=extra or None, **kwargs)

    def _spec(self, steering: Any) -> dict[str, Any] | None:
        if steering is _UNSET:
            return self.default
        if isinstance(steering, str):
            steering = {"plan": steering}
        return steering_spec(steering, list(self.plans))

    def _reader(self, plan: str, prompts: Sequence[Any], is_kind: Any, kind: str) -> Any:
        """Plan ``plan``, checked to be ``kind`` and read on text prompts (its expert reads
        the prompt's text)."""
        found = self.plans[plan]
        if not is_kind(found):
            raise ValueError(f"plan {plan!r} is not {kind}")
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError(
                f"plan {plan!r} is {kind}: its expert reads the prompt's text, so give text "
                "prompts, not token ids"
            )
        return found

    def strengths(self, plan: str, prompts: Sequence[str]) -> tuple[list[float], list[float]]:
        """``(p, g(p))`` per prompt: the expert's probe of conditioned plan ``plan`` reading
        each prompt (nothing cached on disk: prompts are not written anywhere)."""
        probe = self._reader(plan, prompts, is_conditioned, "expert-conditioned").probe
        states = probe.read(self.expert, list(prompts), cache=False)
        return probe.probability(states).tolist(), probe.strengths(states).tolist()

    def deltas(self, plan: str, prompts: Sequence[str]) -> Any:
        """Learned map ``plan``'s delta per prompt ``[n, d]``, the expert reading each prompt
        (nothing cached on disk)."""
        m = self._reader(plan, prompts, is_learned, "a learned map")
        return m.deltas(m.read(self.expert, list(prompts), cache=False))

    def _resolve(
        self, prompts: Sequence[str | Sequence[int]], steering: Any
    ) -> list[dict[str, Any] | None]:
        """One checked spec per prompt, a conditioned plan's α already times the expert's g,
        a learned map's with its own delta (as LearnedMap.plans_of splits it: unit vector and
        norm)."""
        n = len(prompts)
        if isinstance(steering, list):
            if len(steering) != n:
                raise ValueError(f"{len(steering)} steering settings for {n} prompts")
            specs = [self._spec(s) for s in steering]
        else:
            specs = [self._spec(steering)] * n
        specs = [None if s is None else dict(s) for s in specs]
        rows: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            if self._reads(spec):
                rows.setdefault(spec["plan"], []).append(i)
        for name, idx in rows.items():
            texts = [prompts[i] for i in idx]
            if is_learned(self.plans[name]):
                for i, d in zip(idx, self.deltas(name, texts)):
                    n = float(d.norm())
                    unit = d / n if n > 0 else d
                    specs[i][DELTA] = {"vector": unit.tolist(), "norm": n}
                continue
            _, g = self.strengths(name, texts)
            for i, gi in zip(idx, g):
                specs[i]["alpha"] = float(specs[i]["alpha"] * gi)
        return specs

    def complete(
        self,
        prompts: Sequence[str | Sequence[int]],
        steering: Any = _UNSET,
        *,
        use_tqdm: bool = False,
        **sampling: Any,
    ) -> list[Any]:
        """vLLM ``RequestOutput`` per prompt. ``steering``: one for every prompt or a list with
        one per prompt (a mixed batch); prompts are text or token ids (text for a conditioned
        plan: its expert reads it)."""
        params = [self._params(spec, **sampling) for spec in self._resolve(prompts, steering)]
        inputs = [
            p if isinstance(p, str) else {"prompt_token_ids": [int(t) for t in p]} for p in prompts
        ]
        return self.llm.generate(inputs, params, use_tqdm=use_tqdm)

    def generate(
        self, prompts: Sequence[str | Sequence[int]], steering: Any = _UNSET, **sampling: Any
    ) -> list[str]:
        """The completion text of each prompt (see :meth:`complete`)."""
        return [out.outputs[0].text for out in self.complete(prompts, steering, **sampling)]
