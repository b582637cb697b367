"""The evaluation's map trained through the target (:mod:`expertsteer.learned`).

``expertsteer-trained:<aligner>:<pairing>``: at the transfer's first pair by MI (the layer its
tuning tries first), a rank-``r`` map from the expert's reading of the prompt to a per-item
delta, initialised from that pair's aligner, trained on the target's loss of the train split's
right answers; the epoch (0: unsteered) chosen by validation accuracy. Every option of an item
gets the item's delta (the expert reads the question, not the answers).
``control-trained:<control>:<aligner>:<pairing>`` trains the same with a stand-in expert: with
``target-as-expert`` it is a low-rank adapter on the target's own reading, so a trained map
counts as the expert's only where it beats that.

Nulls (at the chosen epoch, test only): ``shuffled_inputs`` (the test deltas permuted across
items: another input's reading) and ``random_direction`` (every delta through one random
rotation: the same norms and per-input geometry, in random target directions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..extract import extract
from ..learned import LearnedMap, LearnedMapFit
from ..models import LoadedModel
from ..pipeline import ExpertSteer
from ..plan import ModelInfo, SteeringPlan
from ..tune import layer_order
from .scorer import Scorer
from .scoring import mc_correct, option_logprobs, scored_pair
from .tasks import Task

__all__ = ["TRAINED_NULLS", "trained_row"]

TRAINED_NULLS = ("shuffled_inputs", "random_direction")


def _null_seed(family: str, seed: int, k: int) -> int:
    return 1_000_000 * (3 + TRAINED_NULLS.index(family)) + 1000 * seed + k


def _correct_many(scorer: Scorer, settings: list[list[SteeringPlan]]) -> list[np.ndarray]:
    """Correctness of ``scorer``'s split under each setting (one plan per item), one pass."""
    items = scorer.task.items
    scores = option_logprobs(
        scorer.lm,
        list(items) * len(settings),
        plan=[p for s in settings for p in s],
        batch_size=scorer.batch_size,
        shared_prompt=scorer.shared_prompt,
    )
    n = len(items)
    return [
        mc_correct(scores[k * n : (k + 1) * n], items, scorer.norm) for k in range(len(settings))
    ]


def _states(lm: LoadedModel, task: Task, layer: int, batch_size: int) -> torch.Tensor:
    prompts = [it.prompt for it in task.items]
    return extract(
        lm, prompts, layers=[layer], position="last", batch_size=batch_size, max_length=512,
        progress=False,
    )[0]  # fmt: skip


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed


def trained_row(
    name: str,
    kind: str,
    est: ExpertSteer,
    reader: LoadedModel,
    plan: SteeringPlan,
    splits: tuple[Task, Task, Task],
    scorers: tuple[Scorer, Scorer],
    *,
    n_nulls: int,
    seed: int,
    batch_size: int,
    nulls: bool,
    fit: LearnedMapFit | None = None,
) -> tuple[dict[str, Any], LearnedMap]:
    """The report row of a trained map (module docstring) and the map; ``reader`` is the model
    playing the expert (``est``'s), ``plan`` the transfer whose pairs and maps it starts from."""
    train, val, test = splits
    val_s, test_s = scorers
    j = layer_order(plan)[0]
    i = next(a for a, b in plan.pairs if b == j)
    aligner, _ = est._pair_map(i, j)
    pairs = [scored_pair(it.prompt, it.choices[it.answer]) for it in train.items]
    h = {s: _states(reader, t, i, batch_size) for s, t in (("train", train), ("val", val))}

    def val_score(m: LearnedMap) -> float:
        if m.scale == 0.0:
            return float(val_s.correct().mean())
        return float(_correct_many(val_s, [m.plans(h["val"])])[0].mean())

    fit = (fit or LearnedMapFit(seed=seed)).fit(
        val_s.lm, h["train"], [c for c, _ in pairs], [a for _, a in pairs],
        expert=ModelInfo.of(reader), expert_layer=i, target_layer=j, init=aligner.weight_,
        norm=plan.layer_norms.get(j, 1.0), val=val_score, max_length=512,
    )  # fmt: skip
    m = fit.map_
    h_test = _states(reader, test, i, batch_size)
    row: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "val_score": fit.history_[m.metrics["epoch"]]["val_score"],
        "epoch": m.metrics["epoch"],
        "scale": m.scale,
        "layers": [j] if m.scale != 0 else [],
        "pairs": [[i, j]],
        "history": fit.history_,
    }
    if m.scale == 0.0:
        row["correct"] = test_s.correct()
        if nulls:
            base = float(row["correct"].mean())
            row["nulls"] = {f: [base] * n_nulls for f in TRAINED_NULLS}
        return row, m
    deltas = m.deltas(h_test)
    settings = [m.plans(h_test)]
    if nulls:
        for k in range(n_nulls):
            perm = torch.randperm(len(deltas), generator=torch.Generator().manual_seed(
                _null_seed("shuffled_inputs", seed, k)))  # fmt: skip
            settings.append(m.plans_of(deltas[perm]))
        for k in range(n_nulls):
            q = _rotation(deltas.shape[1], _null_seed("random_direction", seed, k))
            settings.append(m.plans_of(deltas @ q))
    scores = _correct_many(test_s, settings)
    row["correct"] = scores[0]
    if nulls:
        means = [float(c.mean()) for c in scores[1:]]
        row["nulls"] = {"shuffled_inputs": means[:n_nulls], "random_direction": means[n_nulls:]}
    return row, m
