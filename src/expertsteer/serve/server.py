"""The request handling behind the HTTP app: checked plans, one engine, requests in and out.

A parsed :class:`~.protocol.Request` becomes one engine :class:`~.engine.Job` per prompt; the
jobs' events (from the engine's worker thread) come back on an asyncio queue and are shaped
into a whole response or a stream of chunks. Testable without HTTP.

An expert-conditioned plan (:class:`~expertsteer.condition.ConditionedPlan`) or a learned map
(:class:`~expertsteer.learned.LearnedMap`) is registered like a static plan; the server then
holds its ``expert`` beside the target (checked against the probe or the map at start-up), and
each of the plan's jobs carries a :class:`~.engine.Conditioning`: the engine has the expert read
the prompt (:attr:`.protocol.Request.reads`) and steers that row with the request's α times
g(p), or with the map's delta for that prompt times the request's α.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from ..models import LoadedModel
from ..plan import SteeringPlan
from . import responses
from .engine import Conditioning, Engine, Event, Job
from .protocol import DEFAULT_MAX_TOKENS, ApiError, Request, parse_request

if TYPE_CHECKING:
    from ..condition import ConditionedPlan
    from ..learned import LearnedMap


class SteeringServer:
    """One target model, its named steering plans, and the engine that runs their requests;
    ``expert``: the model expert-conditioned plans and learned maps need (one, shared)."""

    def __init__(
        self,
        lm: LoadedModel,
        plans: "Mapping[str, SteeringPlan | ConditionedPlan | LearnedMap]",
        *,
        expert: LoadedModel | None = None,
        model_id: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        max_batch: int = 8,
        batch_window_s: float = 0.01,
        strict: bool = True,
    ) -> None:
        if lm.kind != "causal":
            raise ValueError(f"{lm.name} is an encoder; serving needs a causal LM")
        for name, plan in plans.items():
            # a ConditionedPlan: its direction is checked on the target, its probe on the
            # expert; a LearnedMap: itself on both
            reader = None
            if not isinstance(plan, SteeringPlan):
                from ..artifacts import expert_reader

                reader = expert_reader(plan)
            direction = plan if reader is None or reader is plan else plan.plan
            try:
                direction.check_target(lm, strict=strict)
            except ValueError as exc:
                raise ValueError(f"plan {name!r}: {exc}") from exc
            if reader is not None:
                from ..condition import ExpertMissingError

                try:
                    reader.check_expert(expert)
                except ExpertMissingError as exc:
                    raise ExpertMissingError(f"plan {name!r}: {exc}") from exc
        self.lm, self.plans, self.expert = lm, dict(plans), expert
        self.conditioned = sorted(n for n, p in plans.items() if not isinstance(p, SteeringPlan))
        self.model_id = model_id or lm.name
        self.max_tokens = max_tokens
        config = getattr(lm.model, "config", None)
        self.context = getattr(config, "max_position_embeddings", None)
        self.engine = Engine(lm, max_batch=max_batch, batch_window_s=batch_window_s)
        self.created = int(time.time())

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_id,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "expertsteer",
                    "steering_plans": sorted(self.plans),
                    **self._expert_info(),
                }
            ],
        }

    def _expert_info(self) -> dict[str, Any]:
        if not self.conditioned:
            return {}
        assert self.expert is not None
        return {"conditioned_plans": self.conditioned, "expert": self.expert.name}

    def parse(self, body: dict[str, Any], *, chat: bool) -> Request:
        """A request body checked against this server (see :func:`.protocol.parse_request`)."""
        return parse_request(
            body,
            chat=chat,
            lm=self.lm,
            model_id=self.model_id,
            plans=self.plans,
            max_tokens=self.max_tokens,
            context=self.context,
        )

    def submit(self, req: Request) -> tuple[asyncio.Queue, list[Job]]:
        """Queue one job per prompt; their events arrive as ``(index, Event)`` on the queue."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        jobs = []
        for i, ids in enumerate(req.prompts):

            def on_event(ev: Event, i: int = i) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: server shut down
                    loop.call_soon_threadsafe(events.put_nowait, (i, ev))

            reader = req.steering.reader
            condition = None if reader is None else Conditioning(reader, self.expert, req.reads[i])
            job = Job(
                prompt_ids=ids,
                max_new_tokens=req.max_tokens,
                on_event=on_event,
                plan=req.steering.plan,
                alpha=req.steering.alpha,
                scope=req.steering.scope,
                sampling=req.sampling,
                stop=req.stop,
                condition=condition,
            )
            self.engine.submit(job)
            jobs.append(job)
        return events, jobs

    async def complete(self, req: Request) -> dict[str, Any]:
        events, jobs = self.submit(req)
        texts = [""] * len(jobs)
        finals: dict[int, Event] = {}
        try:
            while len(finals) < len(jobs):
                i, ev = await events.get()
                if ev.kind == "delta":
                    texts[i] += ev.text
                elif ev.kind == "error":
                    raise ApiError(500, ev.text, kind="server_error")
                else:
                    finals[i] = ev
        finally:
            for job in jobs:
                job.cancelled = True  # no-op for finished jobs; frees rows if the client left
        return responses.completion_body(req, self.model_id, texts, finals)

    async def stream(self, req: Request) -> AsyncIterator[str]:
        events, jobs = self.submit(req)
        out = responses.Chunks(req, self.model_id)
        finals: dict[int, Event] = {}
        try:
            if req.chat:
                yield out.opening(len(jobs))
            while len(finals) < len(jobs):
                i, ev = await events.get()
                if ev.kind == "delta":
                    yield out.delta(i, ev.text)
                elif ev.kind == "error":
                    yield responses.error_event(ev.text)
                    return
                else:
                    finals[i] = ev
                    yield out.final(i, ev.finish_reason, ev)
            if req.include_usage:
                yield out.usage(finals.values())
            yield responses.DONE
        finally:
            for job in jobs:
                job.cancelled = True

    def close(self) -> None:
        self.engine.close()
