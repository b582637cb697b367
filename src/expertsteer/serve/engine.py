"""A generation worker for serving: one thread owns the model and runs requests in micro-batches.

Steering hooks live on the shared model, so two requests must never run their own forwards at
the same time. Here one worker thread runs every forward: requests that arrive together (and
sample alike) are padded into one batch and steered per row (``attach(lm, rows=...)``: a row
without a plan gets an exact zero addition), so requests with different plans never see each
other's steering. ``max_batch=1`` is the plain lock: one request at a time.

New tokens are read by a stopping criterion (called once per decoding step with every row's
new token), which also enforces each row's own ``max_new_tokens``, EOS and stop strings, and
hands text deltas to the request's ``on_event`` callback (from the worker thread).

A job carries typed values only (a parsed :class:`TokenScope`, a float α): the engine never
parses, and batches by value, so jobs whose scopes were spelled differently still share a batch.

A job the expert reads (:class:`Conditioning`) is steered by the expert's state of the job's
text: an expert-conditioned plan's probe scales the job's α by ``g(p)``; a learned map turns the
state into the row's own delta (the job's plan). The worker reads every such row of a batch
(one expert prefill per reader, up to its block) just before the batch runs, so the expert,
like the target, is only ever run by the worker thread (it may even be the target itself), and
rows with different strengths or deltas share a batch (plans and α are per row).
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models import LoadedModel
from ..plan import SteeringPlan
from ..steer import TokenScope, attach

ALL = TokenScope("all")


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``temperature == 0`` is greedy (the default)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generate_kwargs(self) -> dict[str, Any]:
        if self.greedy:
            return {"do_sample": False}
        # top_k=0: OpenAI semantics have no top-k (a model's generation_config may set one)
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}


@dataclass(frozen=True)
class Event:
    """``delta`` (new text), ``done`` (finish_reason, token counts) or ``error`` (message)."""

    kind: str
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    p: float | None = None  # a conditioned row's probe probability (``done`` events)
    strength: float | None = None  # ... and its g(p): the row's α was the job's α times this
    delta_norm: float | None = None  # a learned map's row: the norm of its delta (before α)


@dataclass(frozen=True)
class Conditioning:
    """A row the expert reads: ``expert`` reads ``text``, and ``reader`` turns its state into
    the row's steering: an :class:`~expertsteer.condition.ExpertProbe` into ``g(p)`` in
    [-1, 1], which scales the job's α; a :class:`~expertsteer.learned.LearnedMap` into the
    row's own delta, which becomes the job's plan."""

    reader: Any
    expert: LoadedModel | None  # None fails the row's batch (ExpertMissingError), never unsteers
    text: str | None

    @property
    def per_input_delta(self) -> bool:
        """Whether the reader is a learned map (the row's plan is its own delta)."""
        from ..learned import LearnedMap  # only for rows that read: it brings in scikit-learn

        return isinstance(self.reader, LearnedMap)


def read_strengths(
    probe: Any, expert: LoadedModel | None, texts: Sequence[str | None]
) -> tuple[list[float], list[float]]:
    """``(p, g(p))`` per text, as :meth:`ExpertProbe.strengths_for` reads them, but nothing is
    cached: a served prompt is never written to disk."""
    if any(t is None for t in texts):
        raise ValueError("a conditioned row needs the text its expert reads")
    states = probe.read(expert, texts, cache=False)
    return probe.probability(states).tolist(), probe.strengths(states).tolist()


def read_plans(
    learned: Any, expert: LoadedModel | None, texts: Sequence[str | None]
) -> tuple[list[SteeringPlan], list[float]]:
    """A learned map's plan per text and its delta's norm, as
    :func:`~expertsteer.learned.learned_generate` reads them (nothing cached)."""
    if any(t is None for t in texts):
        raise ValueError("a row the expert reads needs the text it reads")
    deltas = learned.deltas(learned.read(expert, texts, cache=False))
    return learned.plans_of(deltas), deltas.norm(dim=1).tolist()


_ids = itertools.count()


@dataclass
class Job:
    """One prompt to complete. ``on_event`` is called from the worker thread.

    ``scope`` is a parsed :class:`TokenScope` (parse user text at the boundary, e.g. with
    ``TokenScope.parse``); ``alpha`` scales the plan's per-layer α of this row, times the
    expert's ``g(p)`` when ``condition`` holds a probe (the worker fills ``p`` and
    ``strength``). With a learned map's ``condition`` the job has no plan of its own: the
    worker sets ``plan`` (and ``delta_norm``) from the expert's reading.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    on_event: Callable[[Event], None]
    plan: SteeringPlan | None = None
    alpha: float = 1.0
    scope: TokenScope = ALL
    sampling: Sampling = Sampling()
    stop: tuple[str, ...] = ()
    condition: Conditioning | None = None
    cancelled: bool = False  # set by the caller (client gone): the row stops at the next step
    id: int = field(default_factory=lambda: next(_ids))
    p: float | None = None  # set by the worker for a conditioned job, before its batch runs
    strength: float | None = None
    delta_norm: float | None = None  # set by the worker for a learned map's job

    @property
    def row_alpha(self) -> float:
        """The α this row is steered with: ``alpha``, times ``g(p)`` when conditioned."""
        return self.alpha if self.strength is None else self.alpha * self.strength

    def __post_init__(self) -> None:
        if self.condition is not None:
            if self.condition.per_input_delta and self.plan is not None:
                raise ValueError("a learned map's job gets its plan from the expert: plan=None")
            if not self.condition.per_input_delta and self.plan is None:
                raise ValueError("a conditioned job needs the plan whose α it scales")
        # checked here, in the caller's thread: a bad job must not reach the worker
        if not isinstance(self.scope, TokenScope):
            raise TypeError(
                f"Job.scope must be a TokenScope (TokenScope.parse({self.scope!r})), "
                f"not {type(self.scope).__name__}"
            )
        if self.scope.kind == "positions":  # per-row positions cannot follow a row into a batch
            raise ValueError("a job's scope must be 'all', 'prompt', 'generated' or 'last:K'")

    @property
    def steered(self) -> bool:
        """Whether the row is steered (a learned map's job before its plan is set, too)."""
        return self.plan is not None or self.condition is not None

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share a batch (one scope per batch; a seed needs its own)."""
        seed_key = self.id if self.sampling.seed is not None else None
        return (self.sampling.temperature, self.sampling.top_p, seed_key)


class Row:
    """The decoding state of one job inside a batch: ``add`` each new token, it emits events.

    Text is handed out as deltas, holding back what could still become a stop string (and a
    half-decoded UTF-8 character); EOS or a stop string ends it with ``stop``, the job's
    ``max_new_tokens`` with ``length``.
    """

    def __init__(self, job: Job, tokenizer: Any, eos: set[int]) -> None:
        self.job, self.tokenizer, self.eos = job, tokenizer, eos
        self.tokens: list[int] = []
        self.sent = 0  # characters of the text already handed out
        self.done = False
        self.hold = max((len(s) for s in job.stop), default=1) - 1

    def add(self, token: int) -> None:
        if self.job.cancelled:
            self.finish("cancelled")
            return
        if token in self.eos:
            self.finish("stop", n_extra=1)
            return
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = self._stop_at(text)
        if cut is not None:
            self._emit(text[:cut])
            self.finish("stop")
        elif len(self.tokens) >= self.job.max_new_tokens:
            self._emit(text)
            self.finish("length")
        else:
            # hold back what could still become a stop string, and half a UTF-8 character
            end = len(text) - self.hold
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
            self._emit(text[:end])

    def _stop_at(self, text: str) -> int | None:
        start = max(0, self.sent - self.hold)
        found = [i for i in (text.find(s, start) for s in self.job.stop) if i >= 0]
        return min(found) if found else None

    def _emit(self, text: str) -> None:
        if len(text) > self.sent:
            self.job.on_event(Event("delta", text[self.sent :]))
            self.sent = len(text)

    def finish(self, reason: str, n_extra: int = 0) -> None:
        if self.done:
            return
        self.done = True
        if reason == "length":  # generation ended: whatever was held back goes out
            self._emit(self.tokenizer.decode(self.tokens, skip_special_tokens=True))
        if reason != "cancelled":
            self.job.on_event(
                Event(
                    "done",
                    finish_reason=reason,
                    prompt_tokens=len(self.job.prompt_ids),
                    completion_tokens=len(self.tokens) + n_extra,
                    p=self.job.p,
                    strength=self.job.strength,
                    delta_norm=self.job.delta_norm,
                )
            )


class RowsDone:
    """A stopping criterion: feeds each step's new tokens to the rows, says which are done."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if not row.done:
                row.add(token)
        return torch.tensor([r.done for r in self.rows], device=input_ids.device)


def eos_ids(lm: LoadedModel) -> set[int]:
    """The token ids that end a row: the generation config's and the tokenizer's EOS."""
    ids: set[int] = set()
    for source in (getattr(lm.model, "generation_config", None), lm.tokenizer):
        eos = getattr(source, "eos_token_id", None)
        ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return ids


class Engine:
    """Runs :class:`Job` s on ``lm`` from one worker thread, ``max_batch`` rows at a time.

    Jobs queued while a batch runs, or arriving within ``batch_window_s`` of the first, join
    the next batch when they sample alike (scopes may differ only for unsteered rows).
    """

    def __init__(
        self, lm: LoadedModel, *, max_batch: int = 8, batch_window_s: float = 0.01
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.lm, self.max_batch, self.batch_window_s = lm, max_batch, batch_window_s
        self.eos = eos_ids(lm)
        pad = lm.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos, default=0)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue, waiting for a compatible batch
        self._thread = threading.Thread(target=self._loop, name="expertsteer-engine", daemon=True)
        self._closed = False
        self._pending = 0  # submitted jobs whose batch has not returned yet
        self._idle = threading.Condition()
        self.batches: list[int] = []  # sizes of the batches run (diagnostics)
        self._thread.start()

    # --- public ------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")
        with self._idle:
            self._pending += 1
        self._queue.put(job)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job's batch has returned (the model is free again)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def run(self, job_args: dict[str, Any]) -> tuple[str, Event]:
        """Submit one job and wait: (its text, its ``done`` event). For scripts and tests."""
        done = threading.Event()
        parts: list[str] = []
        final: list[Event] = []

        def on_event(ev: Event) -> None:
            if ev.kind == "delta":
                parts.append(ev.text)
            else:
                final.append(ev)
                done.set()

        self.submit(Job(on_event=on_event, **job_args))
        done.wait()
        if final[0].kind == "error":
            raise RuntimeError(final[0].text)
        return "".join(parts), final[0]

    def close(self, timeout: float | None = 30.0) -> None:
        """Run the jobs submitted before this call, then stop the thread; later ones are refused."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # --- worker ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                break
            try:
                self._run(batch)
            finally:
                with self._idle:
                    self._pending -= len(batch)
                    self._idle.notify_all()
        pending = self._held
        while not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if job is not None:
                job.on_event(Event("error", "the server is shutting down"))

    def _compatible(self, batch: list[Job], job: Job) -> bool:
        if job.batch_key() != batch[0].batch_key():
            return False
        scopes = {j.scope for j in batch if j.steered}
        return not job.steered or not scopes or scopes == {job.scope}

    def _take(self, batch: list[Job]) -> None:
        """Move compatible held jobs into ``batch`` (oldest first)."""
        keep = []
        for job in self._held:
            if len(batch) < self.max_batch and self._compatible(batch, job):
                batch.append(job)
            else:
                keep.append(job)
        self._held = keep

    def _gather(self) -> list[Job] | None:
        first = self._held.pop(0) if self._held else self._queue.get()
        if first is None:
            return None
        batch = [first]
        self._take(batch)
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch:
            try:
                job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # seen again after this batch: stop then
                break
            if self._compatible(batch, job):
                batch.append(job)
            else:
                self._held.append(job)
        return batch

    def _run(self, batch: list[Job]) -> None:
        jobs = [j for j in batch if not j.cancelled]
        if not jobs:
            return
        self.batches.append(len(jobs))
        rows = [Row(j, self.lm.tokenizer, self.eos) for j in jobs]
        try:
            self._condition(jobs)
            self._generate(jobs, rows)
        except Exception as exc:  # the batch fails; the worker keeps serving
            for row in rows:
                if not row.done:
                    row.done = True
                    row.job.on_event(Event("error", f"generation failed: {exc}"))
            return
        for row in rows:  # generate stopped on its own max_new_tokens (safety net)
            row.finish("length")

    @staticmethod
    def _condition(jobs: Sequence[Job]) -> None:
        """Each conditioned job's ``p`` and ``strength``, each learned map's job its ``plan``:
        one expert read per (reader, expert)."""
        groups: dict[tuple[int, int], list[Job]] = {}
        for job in jobs:
            if job.condition is not None:
                key = (id(job.condition.reader), id(job.condition.expert))
                groups.setdefault(key, []).append(job)
        for group in groups.values():
            c = group[0].condition
            assert c is not None
            texts = [j.condition.text for j in group]
            if c.per_input_delta:
                plans, norms = read_plans(c.reader, c.expert, texts)
                for job, plan, norm in zip(group, plans, norms):
                    job.plan, job.delta_norm = plan, norm
                continue
            p, g = read_strengths(c.reader, c.expert, texts)
            for job, pk, gk in zip(group, p, g):
                job.p, job.strength = pk, gk

    @torch.no_grad()
    def _generate(self, jobs: Sequence[Job], rows: list[Row]) -> None:
        lm = self.lm
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.full((len(jobs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for r, job in enumerate(jobs):  # left padding: every row's next token is at the end
            ids[r, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            mask[r, width - len(job.prompt_ids) :] = 1
        plans = [j.plan for j in jobs]
        handle = None
        if any(p is not None for p in plans):
            scope = next(j.scope for j in jobs if j.plan is not None)
            alpha = torch.tensor([j.row_alpha for j in jobs], dtype=torch.float64)  # [R]: α per row
            handle = attach(lm, rows=plans, alpha=alpha, scope=scope)
        sampling = jobs[0].sampling
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        from transformers import StoppingCriteriaList

        with handle or contextlib.nullcontext():
            lm.model.generate(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                max_new_tokens=max(j.max_new_tokens for j in jobs),
                pad_token_id=self.pad_id,
                stopping_criteria=StoppingCriteriaList([RowsDone(rows)]),
                **sampling.generate_kwargs(),
            )
