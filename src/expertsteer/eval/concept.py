"""Concept transfer: how far the expert's concept vector moves the target, beside its nulls.

Per test item, the concept choice's margin at +α minus at −α (its *span*), for the expert's
vector, the target's own mean-diff vector at the same layers, and the expert vector's nulls
(shuffled labels through the same maps, random directions of the same norm). Seeds pool by
concatenating items; null k pools as its mean over seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models import LoadedModel
from ..pipeline import ExpertSteer, fit_target_only
from .controls import NULL_FAMILIES, null_seed
from .methods import random_plan
from .scorer import Scorer
from .scoring import concept_margin
from .stats import bootstrap_ci, pooled_nulls, ratio_ci, worst_rank_p
from .tasks import Task

__all__ = ["OWN", "concept_report", "concept_spans"]

OWN = "target mean-diff"  # the reference every span is a fraction of


def concept_spans(
    task: Task,
    train: Task,
    test: Task,
    target: LoadedModel,
    expert: LoadedModel,
    *,
    norm: str,
    alpha: float,
    n_nulls: int,
    seed: int,
    pipeline: dict[str, Any],
    shared_prompt: bool = True,
    progress: bool = False,
) -> dict[str, Any] | None:
    """One seed's spans per plan and per null, or None when the task names no concept."""
    data = train.concept_data()
    if data is None:
        return None
    indices = [task.concept_index(item) for item in test.items]
    scorer = Scorer(
        target, test, pipeline["batch_size"], norm, "concept" if progress else False,
        shared_prompt=shared_prompt,
    )  # fmt: skip
    est = ExpertSteer(expert, target, seed=seed, progress=progress, **pipeline)
    plans = {"expertsteer": est.fit(data)}
    plans[OWN] = fit_target_only(
        target, data, method="mean-diff", layers=plans["expertsteer"].layers, progress=progress
    )
    nulls = {
        "shuffled_labels": [
            est.replan(data.shuffle_labels(seed=null_seed("shuffled_labels", seed, k)))
            for k in range(n_nulls)
        ],
        "random_direction": [
            random_plan(plans["expertsteer"], seed=null_seed("random_direction", seed, k))
            for k in range(n_nulls)
        ],
    }
    every = [*plans.values(), *nulls["shuffled_labels"], *nulls["random_direction"]]
    signed = [plan * sign for plan in every for sign in (alpha, -alpha)]
    margins = [concept_margin(s, indices, norm) for s in scorer.scores_many(signed)]
    spans = [margins[2 * k] - margins[2 * k + 1] for k in range(len(every))]
    out: dict[str, Any] = {"spans": dict(zip(plans, spans[: len(plans)]))}
    rest = spans[len(plans) :]
    out["null_spans"] = {"shuffled_labels": rest[:n_nulls], "random_direction": rest[n_nulls:]}
    return out


def concept_report(
    per_seed: list[dict[str, Any]], *, concept: str, alpha: float, norm: str, seed: int
) -> dict[str, Any]:
    """The report's ``concept_transfer`` section from every seed's spans."""
    spans = {
        name: np.concatenate([s["spans"][name] for s in per_seed]) for name in per_seed[0]["spans"]
    }
    own = spans[OWN]
    out: dict[str, Any] = {
        "concept": concept, "alpha": alpha, "norm": norm, "n": int(own.size), "plans": {}
    }  # fmt: skip
    for name, span in spans.items():
        ratio, lo, hi = ratio_ci(span, own, seed=seed)
        out["plans"][name] = {
            "span": float(span.mean()),
            "span_ci95": list(bootstrap_ci(span, seed=seed)),
            "fraction_of_own": ratio,
            "fraction_ci95": [lo, hi],
        }
    nulls = pooled_nulls(
        [{f: [a.mean() for a in s["null_spans"][f]] for f in NULL_FAMILIES} for s in per_seed]
    )
    out["null_spans"] = nulls
    out["null_rank_p"] = worst_rank_p(out["plans"]["expertsteer"]["span"], nulls)
    return out
