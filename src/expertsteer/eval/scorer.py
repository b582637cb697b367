"""Multiple-choice correctness of one model on one split, memoised per plan (many per pass)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models import LoadedModel
from ..plan import SteeringPlan
from .scoring import NORMS, mc_correct, option_logprobs, unsteered_logprobs
from .tasks import Task

__all__ = ["Scorer", "zero_shot"]


@dataclass
class Scorer:
    """Multiple-choice correctness of one model on one split, memoised per plan setting.

    Several plans are scored in one pass (a plan per row), each prompt once per plan when
    ``shared_prompt`` (see :func:`option_logprobs`).
    """

    lm: LoadedModel
    task: Task
    batch_size: int
    norm: str = "mean"
    progress: bool | str = False
    shared_prompt: bool = True
    cache: dict = field(default_factory=dict)

    @staticmethod
    def _key(plan: SteeringPlan | None, prefix: str) -> tuple:
        return (prefix, None if plan is None else id(plan))

    def scores_many(
        self, plans: Sequence[SteeringPlan | None], prefix: str = ""
    ) -> list[list[np.ndarray]]:
        # α = 0 is no steering: the unsteered pass is reused
        plans = [None if p is None or not any(p.alphas.values()) else p for p in plans]
        todo: list[SteeringPlan | None] = []
        for p in plans:
            if self._key(p, prefix) not in self.cache and all(p is not q for q in todo):
                todo.append(p)
        if None in todo:  # plan-independent: from the on-disk cache when there
            self.cache[self._key(None, prefix)] = (
                None,
                unsteered_logprobs(
                    self.lm,
                    self.task.items,
                    prefix=prefix,
                    batch_size=self.batch_size,
                    shared_prompt=self.shared_prompt,
                    progress=self.progress,
                ),
            )
            todo.remove(None)
        if todo:
            items = self.task.items
            rows: SteeringPlan | list[SteeringPlan | None] | None = (
                todo[0] if len(todo) == 1 else [p for p in todo for _ in items]
            )
            scores = option_logprobs(
                self.lm,
                list(items) * len(todo),
                plan=rows,
                prefix=prefix,
                batch_size=self.batch_size,
                shared_prompt=self.shared_prompt,
                progress=self.progress,
            )
            for k, p in enumerate(todo):
                # the plan is kept so its id is not reused by another plan
                self.cache[self._key(p, prefix)] = (
                    p,
                    scores[k * len(items) : (k + 1) * len(items)],
                )
        return [self.cache[self._key(p, prefix)][1] for p in plans]

    def scores(self, plan: SteeringPlan | None = None, prefix: str = "") -> list[np.ndarray]:
        return self.scores_many([plan], prefix)[0]

    def correct_many(self, plans: Sequence[SteeringPlan | None]) -> list[np.ndarray]:
        items = self.task.items
        return [mc_correct(s, items, self.norm) for s in self.scores_many(plans)]  # type: ignore[arg-type]

    def correct(self, plan: SteeringPlan | None = None, prefix: str = "") -> np.ndarray:
        return mc_correct(self.scores(plan, prefix), self.task.items, self.norm)  # type: ignore[arg-type]


def zero_shot(val_s: Scorer, test_s: Scorer) -> dict[str, Any]:
    """Accuracy with each normalisation on val and test; the choice is made on val only
    (and set on both scorers)."""
    out: dict[str, Any] = {"name": val_s.lm.name}
    for split_name, s in (("val", val_s), ("test", test_s)):
        out[split_name] = {n: float(mc_correct(s.scores(), s.task.items, n).mean()) for n in NORMS}
    out["norm"] = max(NORMS, key=lambda n: (out["val"][n], n == "mean"))
    val_s.norm = test_s.norm = out["norm"]
    return out
