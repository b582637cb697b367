"""One evaluation: fit every method on train, tune α / layers on validation, score on test.

Both models stay loaded for the run (scoring needs the target throughout, and the expert
answers the task itself); hidden states come from the on-disk cache, so an interrupted run
resumes without recomputing them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..data import load_data
from ..models import LoadedModel, load_model
from ..pipeline import ExpertSteer, fit_target_only
from ..plan import SteeringPlan
from ..tune import tune
from .methods import DEFAULT_PAIRINGS, parse_methods, random_plan, resolve
from .scoring import (
    NORMS,
    concept_margin,
    generation_scores,
    mc_correct,
    option_logprobs,
    unsteered_logprobs,
)
from .stats import bootstrap_ci, paired_bootstrap_p, ratio_ci
from .tasks import Task, load_task

__all__ = ["EvalConfig", "EvalResult", "run_eval"]


@dataclass
class EvalConfig:
    """What to compare, on which task and split. ``methods`` as for :func:`parse_methods`."""

    task: str
    target: str | LoadedModel
    expert: str | LoadedModel | None = None
    train_data: str | None = None  # a data spec; None: the task's own train split as pairs
    methods: str | Sequence[str] = "all"
    pairings: Sequence[str] = DEFAULT_PAIRINGS
    limit: int | None = None
    seed: int = 0
    alphas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0)
    layer_counts: Sequence[int] = (1, 4)
    n_pairs: int = 4
    n_nulls: int = 3
    concept_alpha: float = 1.0
    generation: bool = False  # also score greedy answers by alias match (test only)
    batch_size: int = 16
    align_texts: int = 192  # generic alignment texts per ExpertSteer fit
    shared_prompt: bool = True  # each prompt once, its choices on its KV cache (same scores)

    def method_names(self) -> list[str]:
        """The full method names compared (those needing an expert dropped when there is none)."""
        names = parse_methods(self.methods, self.pairings)
        if self.expert is None:
            names = [n for n in names if n != "expert" and resolve(n).kind != "transfer"]
        return names

    def check(self) -> list[str]:
        """Every setting a user typed, checked before a model loads; the method names."""
        names = self.method_names()
        alphas = list(self.alphas)
        if not alphas or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in alphas):
            raise ValueError(f"alphas must be a non-empty list of finite numbers, not {alphas}")
        counts = list(self.layer_counts)
        if (
            not counts
            or any(isinstance(k, bool) or not isinstance(k, int) for k in counts)
            or (min(counts) < 1)
        ):
            raise ValueError(f"layer counts must be whole numbers >= 1, not {counts}")
        if self.n_pairs < 1 or self.n_nulls < 0:
            raise ValueError(
                f"need n_pairs >= 1 and n_nulls >= 0, not {self.n_pairs} and {self.n_nulls}"
            )
        return names


@dataclass
class EvalResult:
    """What :func:`run_eval` returns: the JSON-ready report and the live plans behind it."""

    report: dict[str, Any]  # see :func:`expertsteer.eval.write_report`
    # The tuned plans (α and layers as chosen on validation) that steer, by method name.
    plans: dict[str, SteeringPlan] = field(default_factory=dict)
    mi_plan: SteeringPlan | None = None  # the first transfer plan with an MI matrix (heat-map)


@dataclass
class _Scorer:
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


def _load(ref: str | LoadedModel) -> LoadedModel:
    return ref if isinstance(ref, LoadedModel) else load_model(ref)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


def _zero_shot(val_s: _Scorer, test_s: _Scorer) -> dict[str, Any]:
    """Accuracy with each normalisation on val and test; the choice is made on val only
    (and set on both scorers)."""
    out: dict[str, Any] = {"name": val_s.lm.name}
    for split_name, s in (("val", val_s), ("test", test_s)):
        out[split_name] = {n: float(mc_correct(s.scores(), s.task.items, n).mean()) for n in NORMS}
    out["norm"] = max(NORMS, key=lambda n: (out["val"][n], n == "mean"))
    val_s.norm = test_s.norm = out["norm"]
    return out


def run_eval(
    config: EvalConfig,
    *,
    progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run the comparison; the report and the tuned plans (see :func:`write_report`)."""
    t_start = time.perf_counter()
    methods = config.check()
    task = load_task(config.task, seed=config.seed)
    train, val, test = task.split(seed=config.seed, limit=config.limit)
    contrast = (
        load_data(config.train_data, seed=config.seed)
        if config.train_data
        else train.contrast(seed=config.seed)
    )
    _log(
        progress,
        f"{task.name}: train {len(train)} / val {len(val)} / test {len(test)} items; "
        f"{len(contrast)} contrast examples; methods: {', '.join(methods)}",
    )
    step = on_step or (lambda _: None)

    target = _load(config.target)
    needs_expert = any(m == "expert" or resolve(m).kind == "transfer" for m in methods)
    expert = _load(config.expert) if needs_expert and config.expert is not None else None

    shared = config.shared_prompt

    def scorers(lm: LoadedModel) -> tuple[_Scorer, _Scorer]:
        bar = (lambda split: f"{lm.name} {split}") if progress else (lambda split: False)
        return (
            _Scorer(lm, val, config.batch_size, progress=bar("val"), shared_prompt=shared),
            _Scorer(lm, test, config.batch_size, progress=bar("test"), shared_prompt=shared),
        )

    val_s, test_s = scorers(target)
    models = {"target": _zero_shot(val_s, test_s)}
    norm = models["target"]["norm"]
    expert_test = None
    if expert is not None:
        try:
            expert_val, expert_test = scorers(expert)
            models["expert"] = _zero_shot(expert_val, expert_test)
        except ValueError as exc:  # an encoder cannot answer a multiple-choice task
            models["expert"] = {"name": expert.name, "skipped": str(exc)}
            expert_test = None
    _log(progress, f"zero-shot accuracy (val / test): {models}")
    step("zero-shot")

    rows: list[dict[str, Any]] = []
    sweeps: dict[str, list[dict]] = {}
    plans: dict[str, SteeringPlan] = {}
    estimators: dict[str, ExpertSteer] = {}

    def tuned(name: str, plan: SteeringPlan, kind: str, **extra: Any) -> None:
        ks = sorted({min(k, len(plan.layers)) for k in config.layer_counts})
        result = tune(
            plan,
            metrics=lambda ps: [float(c.mean()) for c in val_s.correct_many(ps)],
            alphas=config.alphas,
            n_layers=ks,
            progress=progress,
        )
        sweeps[name] = result.grid
        best = result.apply_to(plan)
        plans[name] = best
        rows.append(
            {
                "name": name,
                "kind": kind,
                "correct": test_s.correct(best),
                "val_score": result.score,
                "alpha": result.alpha,
                "layers": list(result.layers) if result.alpha != 0 else [],
                "pairs": [list(p) for p in best.pairs] if best.pairs else None,
                **extra,
            }
        )
        step(name)

    for name in methods:
        t0 = time.perf_counter()
        method = resolve(name)
        if name == "none":
            rows.append({"name": name, "kind": "baseline", "correct": test_s.correct()})
        elif name == "prompt":
            prefix = task.instruction.strip() + "\n\n"
            rows.append(
                {"name": name, "kind": "baseline", "correct": test_s.correct(prefix=prefix)}
            )
        elif name == "expert":
            if expert_test is None:
                continue
            rows.append({"name": name, "kind": "baseline", "correct": expert_test.correct()})
        elif method.kind == "target-only":
            plan = fit_target_only(
                target,
                contrast,
                method=name,
                n_layers=config.n_pairs,
                seed=config.seed,
                batch_size=config.batch_size,
                progress=progress,
            )
            tuned(name, plan, "target-only")
        else:
            aligner, pairing = method.aligner, method.pairing
            assert expert is not None and aligner is not None and pairing is not None
            if aligner not in estimators:
                estimators[aligner] = ExpertSteer(
                    expert,
                    target,
                    aligner=aligner,
                    n_pairs=config.n_pairs,
                    n_align_texts=config.align_texts,
                    batch_size=config.batch_size,
                    seed=config.seed,
                    progress=progress,
                )
                estimators[aligner].fit(contrast)
            est = estimators[aligner]
            plan = est.replan(contrast, pairing=pairing)
            tuned(name, plan, "transfer")
            _controls(rows[-1], est, contrast, plans[name], pairing, test_s, config)
        if rows and rows[-1]["name"] == name:
            rows[-1]["seconds"] = round(time.perf_counter() - t0, 1)
        _log(
            progress,
            f"{name}: test accuracy {rows[-1]['correct'].mean():.3f}"
            if rows and rows[-1]["name"] == name
            else f"{name}: skipped",
        )

    _statistics(rows, config.seed)
    if config.generation:
        _generation(rows, plans, target, test, config)
    concept = _concept(task, train, test, target, expert, norm, config, progress)
    mi_plan = next((plans[r["name"]] for r in rows if r["kind"] == "transfer"), None)
    report = {
        "task": task.name,
        "target": target.name,
        "expert": expert.name if expert is not None else config.expert,
        "n": {"train": len(train), "val": len(val), "test": len(test)},
        "n_contrast": len(contrast),
        "train_data": config.train_data or "task train split (correct vs wrong answer pairs)",
        "norm": norm,
        "models": models,
        "methods": [_public(r) for r in rows],
        "concept_transfer": concept,
        "sweeps": sweeps,
        "config": _config_json(config) | {"methods": methods},
        "library_version": __version__,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    return EvalResult(
        report=report,
        plans={name: plan for name, plan in plans.items() if any(plan.alphas.values())},
        mi_plan=mi_plan if mi_plan is not None and mi_plan.mi_matrix is not None else None,
    )


def _controls(
    row: dict[str, Any],
    est: ExpertSteer,
    contrast,
    tuned_plan: SteeringPlan,
    pairing: str,
    test_s: _Scorer,
    config: EvalConfig,
) -> None:
    """Shuffled-label nulls through the same map and random directions of the same norm, at
    the method's tuned α and layers (not re-tuned: tuning a null would fit noise on val)."""
    layers, alpha = row["layers"], row["alpha"]
    shuffled, random_ = [], []
    if alpha == 0:  # tuned to no steering: every control is the target alone
        base = float(test_s.correct().mean())
        shuffled, random_ = [base] * config.n_nulls, [base] * config.n_nulls
    else:
        nulls, randoms = [], []
        for s in range(config.n_nulls):
            null = est.replan(contrast.shuffle_labels(seed=1000 + s), pairing=pairing)
            common = [j for j in layers if j in null.vectors] or null.layers[: len(layers)]
            nulls.append(null.select(common) * alpha)
            randoms.append(random_plan(tuned_plan, seed=2000 + s))
        scores = [float(c.mean()) for c in test_s.correct_many(nulls + randoms)]
        shuffled, random_ = scores[: len(nulls)], scores[len(nulls) :]
    score = float(row["correct"].mean())
    row["nulls"] = {"shuffled_labels": shuffled, "random_direction": random_}
    # With α = 0 the method is the target alone: it cannot beat anything.
    row["beats_null"] = bool(alpha != 0 and score > max(shuffled + random_))


def _statistics(rows: list[dict[str, Any]], seed: int) -> None:
    none = next((r for r in rows if r["name"] == "none"), None)
    baselines = [r for r in rows if r["kind"] == "target-only"]
    # The best target-only baseline is chosen on validation, never on test.
    best = max(baselines, key=lambda r: r["val_score"], default=None)
    for r in rows:
        c = r["correct"]
        r["score"] = float(c.mean())
        r["ci95"] = list(bootstrap_ci(c, seed=seed))
        if none is not None and r is not none:
            r["p_vs_none"] = paired_bootstrap_p(c, none["correct"], seed=seed)
        if best is not None and r is not best and r["kind"] in ("transfer", "target-only"):
            r["best_baseline"] = best["name"]
            r["p_vs_best_baseline"] = paired_bootstrap_p(c, best["correct"], seed=seed)


def _generation(rows, plans, target, test: Task, config: EvalConfig) -> None:
    for r in rows:
        if r["name"] in ("expert",):
            continue
        prefix = test.instruction.strip() + "\n\n" if r["name"] == "prompt" else ""
        correct, _ = generation_scores(
            target,
            test.items,
            plan=plans.get(r["name"]),
            prefix=prefix,
            batch_size=config.batch_size,
        )
        r["generation_score"] = float(correct.mean())
        r["generation_ci95"] = list(bootstrap_ci(correct, seed=config.seed))


def _concept(task, train, test, target, expert, norm, config, progress) -> dict | None:
    """Effect of the expert's concept vector as a fraction of the target's own at the same α:
    per test item the concept choice's margin at +α minus at −α, ratio of means with a CI."""
    data = train.concept_data()
    if data is None or expert is None:
        return None
    _log(progress, f"concept transfer ({task.concept_name})")
    indices = [task.concept_index(item) for item in test.items]
    scorer = _Scorer(
        target,
        test,
        config.batch_size,
        norm,
        "concept" if progress else False,
        shared_prompt=config.shared_prompt,
    )
    est = ExpertSteer(
        expert,
        target,
        n_pairs=config.n_pairs,
        n_align_texts=config.align_texts,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    plans = {"expertsteer": est.fit(data)}
    plans["target mean-diff"] = fit_target_only(
        target, data, method="mean-diff", layers=plans["expertsteer"].layers, progress=progress
    )
    plans["null (shuffled labels)"] = est.replan(data.shuffle_labels(seed=1000))
    a = config.concept_alpha
    signed = [plan * sign for plan in plans.values() for sign in (a, -a)]
    margins = [concept_margin(s, indices, norm) for s in scorer.scores_many(signed)]
    spans = {name: margins[2 * k] - margins[2 * k + 1] for k, name in enumerate(plans)}
    own = spans["target mean-diff"]
    out = {"concept": task.concept_name, "alpha": a, "norm": norm, "n": len(indices), "plans": {}}
    for name, span in spans.items():
        ratio, lo, hi = ratio_ci(span, own, seed=config.seed)
        out["plans"][name] = {
            "span": float(span.mean()),
            "span_ci95": list(bootstrap_ci(span, seed=config.seed)),
            "fraction_of_own": ratio,
            "fraction_ci95": [lo, hi],
        }
    return out


def _config_json(config: EvalConfig) -> dict[str, Any]:
    out = {}
    for k, v in vars(config).items():
        if isinstance(v, LoadedModel):
            v = v.name
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "correct"}
    out.setdefault("alpha", None)
    out.setdefault("pairs", None)
    out["n_correct"] = int(row["correct"].sum())
    return out
