"""The evaluation's expert-conditioned methods and the baselines a reviewer asks of them.

- ``expertsteer-cond:<aligner>:<pairing>`` / ``expertsteer-cond:own``: the transferred or the
  target's own (self-RFM) direction, each option steered with α · g(p), p the expert probe's
  judgement of that option (prompt + option as one input). α and layers tuned on validation
  with the strengths applied.
- ``self-cond``: the same with the TARGET's own probe (does the *expert* add anything?).
- ``expert-probe``: the expert's probe alone as a classifier (the option it rates highest).
- ``ensemble``: ``w · target + (1 - w) · expert`` option log-likelihoods (each model's own
  normalisation), ``w`` chosen on validation; works across tokenizers.
- ``control-cond:<control>:<variant>``: a conditioned variant with a stand-in expert.

Nulls of a conditioned method (at its tuned α and layers): probes refitted on shuffled labels
(the class balance kept) and random directions with the real probe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..condition import ExpertProbe, ProbeFit, default_probe_layers, probe_examples
from ..extract import extract
from ..models import LoadedModel
from ..plan import ModelInfo, SteeringPlan
from .controls import NULL_FAMILIES, null_seed
from .methods import random_plan
from .scorer import Scorer
from .scoring import NORMS, mc_correct, option_logprobs
from .tasks import Task

__all__ = [
    "ConditionedScorer",
    "ENSEMBLE_WEIGHTS",
    "ProbeData",
    "cond_nulls",
    "ensemble_correct",
    "probe_choice_correct",
]

ENSEMBLE_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def _option_texts(task: Task) -> tuple[list[str], np.ndarray]:
    items = task.items
    return probe_examples(
        [it.prompt for it in items], [it.choices for it in items], [it.answer for it in items]
    )


@dataclass
class ProbeData:
    """One model's states of every option of the train / val / test items, at candidate
    blocks, read once (and cached on disk by :func:`extract`) for every probe fitted on them."""

    lm: LoadedModel
    layers: list[int]
    train: Task
    val: Task
    test: Task
    batch_size: int = 16
    states: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split, task in (("train", self.train), ("val", self.val), ("test", self.test)):
            texts, y = _option_texts(task)
            s = extract(
                self.lm,
                texts,
                layers=self.layers,
                position="last",
                batch_size=self.batch_size,
                progress=False,
            )
            self.states[split] = dict(zip(self.layers, s))
            self.labels[split] = y

    def fit(self, *, shuffle_seed: int | None = None) -> ExpertProbe:
        """A probe on train, its block chosen and calibrated on val; ``shuffle_seed``: the
        train labels permuted first (a null: the class balance kept)."""
        y = self.labels["train"]
        if shuffle_seed is not None:
            y = np.random.default_rng(shuffle_seed).permutation(y)
        fit = ProbeFit().fit(
            ModelInfo.of(self.lm), self.states["train"], y, self.states["val"], self.labels["val"]
        )
        return fit.probe_

    def strengths(self, probe: ExpertProbe, split: str) -> list[np.ndarray]:
        """Per item of ``split``, g(p) of each option."""
        g = probe.strengths(self.states[split][probe.layer]).numpy()
        task = getattr(self, split)
        return np.split(g, np.cumsum([len(it.choices) for it in task.items])[:-1])

    def probabilities(self, probe: ExpertProbe, split: str) -> list[np.ndarray]:
        p = probe.probability(self.states[split][probe.layer]).numpy()
        task = getattr(self, split)
        return np.split(p, np.cumsum([len(it.choices) for it in task.items])[:-1])


def probe_layers(lm: LoadedModel, plan: SteeringPlan | None = None) -> list[int]:
    """Candidate blocks: the plan's paired expert blocks, or the middle half of ``lm``."""
    return default_probe_layers(plan, lm)


@dataclass
class ConditionedScorer:
    """A :class:`Scorer` whose every option is steered with its own strength (α · g(p)).

    Several (plan, strengths) settings are scored in one pass; each is memoised by plan."""

    base: Scorer
    strengths: list[np.ndarray]
    cache: dict = field(default_factory=dict)

    def correct_many(
        self,
        plans: Sequence[SteeringPlan | None],
        strengths: Sequence[list[np.ndarray]] | None = None,
    ) -> list[np.ndarray]:
        """Correctness per plan; ``strengths`` (one per plan) overrides the scorer's own."""
        items = self.base.task.items
        per = list(strengths) if strengths is not None else [self.strengths] * len(plans)
        plans = [None if p is None or not any(p.alphas.values()) else p for p in plans]
        keys = [(id(p), id(g)) for p, g in zip(plans, per)]
        todo = {k: (p, g) for k, p, g in zip(keys, plans, per) if p is not None}
        todo = {k: v for k, v in todo.items() if k not in self.cache}
        if todo:
            settings = list(todo.values())
            scores = option_logprobs(
                self.base.lm,
                list(items) * len(settings),
                plan=[p for p, _ in settings for _ in items],
                option_alphas=[a for _, g in settings for a in g],
                batch_size=self.base.batch_size,
                progress=self.base.progress,
            )
            for k, (key, v) in enumerate(todo.items()):
                # the plan and strengths are kept so their ids are not reused
                self.cache[key] = (v, scores[k * len(items) : (k + 1) * len(items)])
        out = []
        for p, key in zip(plans, keys):
            s = self.base.scores() if p is None else self.cache[key][1]
            out.append(mc_correct(s, items, self.base.norm))  # type: ignore[arg-type]
        return out

    def correct(self, plan: SteeringPlan | None = None) -> np.ndarray:
        return self.correct_many([plan])[0]


def probe_choice_correct(data: ProbeData, probe: ExpertProbe, split: str = "test") -> np.ndarray:
    """The probe as a classifier: 1.0 where the option it rates likeliest is the answer."""
    task = getattr(data, split)
    return np.array(
        [
            float(int(np.argmax(p)) == it.answer)
            for p, it in zip(data.probabilities(probe, split), task.items)
        ]
    )


def _combined(t: Scorer, e: Scorer, w: float) -> list[np.ndarray]:
    ct, ce = NORMS.index(t.norm), NORMS.index(e.norm)
    return [
        np.stack([w * a[:, ct] + (1 - w) * b[:, ce]] * 2, 1) for a, b in zip(t.scores(), e.scores())
    ]


def ensemble_correct(
    target: tuple[Scorer, Scorer], expert: tuple[Scorer, Scorer]
) -> tuple[np.ndarray, float, float]:
    """(test correctness, w, validation accuracy): w chosen on validation (ties: more target)."""
    (tv, tt), (ev, et) = target, expert
    items_v, items_t = tv.task.items, tt.task.items
    val = {
        w: float(mc_correct(_combined(tv, ev, w), items_v, "sum").mean()) for w in ENSEMBLE_WEIGHTS
    }
    w = max(val, key=lambda k: (val[k], k))
    return mc_correct(_combined(tt, et, w), items_t, "sum"), float(w), val[w]


def cond_nulls(
    data: ProbeData,
    probe: ExpertProbe,
    tuned: SteeringPlan,
    alpha: float,
    test: Scorer,
    n_nulls: int,
    seed: int,
) -> dict[str, list[float]]:
    """Test accuracy of each null of a tuned conditioned method (module docstring), under the
    transfers' family names: ``shuffled_labels`` (the probe refitted on permuted labels) and
    ``random_direction`` (the real probe, random unit directions)."""
    if alpha == 0:
        base = float(test.correct().mean())
        return {f: [base] * n_nulls for f in NULL_FAMILIES}
    shuffled = [
        data.strengths(data.fit(shuffle_seed=null_seed("shuffled_labels", seed, k)), "test")
        for k in range(n_nulls)
    ]
    real = data.strengths(probe, "test")
    randoms = [
        random_plan(tuned, seed=null_seed("random_direction", seed, k)) for k in range(n_nulls)
    ]
    scorer = ConditionedScorer(test, real)
    scores = scorer.correct_many([tuned] * n_nulls + randoms, shuffled + [real] * n_nulls)
    acc = [float(c.mean()) for c in scores]
    return {"shuffled_labels": acc[:n_nulls], "random_direction": acc[n_nulls:]}
