"""One evaluation: fit every method on train, tune α / layers on validation, score on test,
once per seed; then the exact tests, nulls and controls over the pooled seeds (:mod:`.summary`).

Both models stay loaded for the run (scoring needs the target throughout, and the expert
answers the task itself); hidden states come from the on-disk cache, so an interrupted run
resumes without recomputing them.
"""

from __future__ import annotations

import gc
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..condition import ConditionedPlan
from ..data import load_data
from ..learned import LearnedMap
from ..models import LoadedModel, load_model
from ..pipeline import ExpertSteer, fit_target_only
from ..plan import SteeringPlan
from ..provenance import git_commit
from ..tune import tune
from .checkpoint import CONCEPT, RowStore, fingerprint
from .concept import concept_report, concept_spans
from .conditioned import (
    ConditionedScorer,
    ProbeData,
    cond_nulls,
    ensemble_correct,
    probe_choice_correct,
    probe_layers,
)
from .controls import stand_in_expert, transfer_nulls
from .learned import trained_row
from .methods import DEFAULT_PAIRINGS, parse_methods, resolve
from .scorer import Scorer, zero_shot
from .scoring import generation_scores
from .stats import bootstrap_ci, holm, mcnemar_p
from .summary import Run, summarise
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
    seeds: Sequence[int] = (0,)  # each: its own split, fits and nulls; reports pool them
    balance: bool | None = None  # label-balanced splits; None: for binary tasks
    alphas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0)
    layer_counts: Sequence[int] = (1, 4)
    n_pairs: int = 4
    n_nulls: int = 20
    concept: bool = True  # also measure concept transfer where the task names a concept
    concept_alpha: float = 1.0
    concept_items: int | None = None  # score concept transfer on the first N test items only
    generation: bool = False  # also score greedy answers by alias match (test only)
    batch_size: int = 16
    align_texts: int = 192  # generic alignment texts per ExpertSteer fit
    shared_prompt: bool = True  # each prompt once, its choices on its KV cache (same scores)
    max_prompt_chars: int | None = None  # leave out longer items (as the screen does)
    checkpoint: str | None = None  # folder of finished rows per seed and method (resumable)

    def method_names(self) -> list[str]:
        """The full method names compared (those needing an expert dropped when there is none)."""
        names = parse_methods(self.methods, self.pairings)
        if self.expert is None:
            names = [n for n in names if not _needs_expert(n)]
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
        seeds = list(self.seeds)
        if (
            not seeds
            or len(set(seeds)) != len(seeds)
            or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
        ):
            raise ValueError(f"seeds must be distinct whole numbers, at least one, not {seeds}")
        return names


@dataclass
class EvalResult:
    """What :func:`run_eval` returns: the JSON-ready report and the live plans behind it."""

    report: dict[str, Any]  # see :func:`expertsteer.eval.write_report`
    # The tuned plans (α and layers as chosen on validation) that steer, by method name, and
    # the trained maps whose chosen epoch steers (scale not 0): the first seed's.
    plans: dict[str, SteeringPlan | ConditionedPlan | LearnedMap] = field(default_factory=dict)
    mi_plan: SteeringPlan | None = None  # the first transfer plan with an MI matrix (heat-map)


def _needs_expert(name: str) -> bool:
    return name == "expert" or resolve(name).kind in (
        "transfer",
        "conditioned",
        "trained",
        "expert-only",
        "control",
    )


def _load(ref: str | LoadedModel) -> LoadedModel:
    return ref if isinstance(ref, LoadedModel) else load_model(ref)


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, flush=True)


def _zero_shot_line(models: dict[str, Any]) -> str:
    parts = []
    for role, m in models.items():
        if "skipped" in m:
            parts.append(f"{role} {m['name']}: cannot answer ({m['skipped']})")
        else:
            norm = m["norm"]
            parts.append(
                f"{role} {m['name']}: val {m['val'][norm]:.3f} / test {m['test'][norm]:.3f}"
            )
    return "zero-shot accuracy (" + "; ".join(parts) + ")"


def run_eval(
    config: EvalConfig,
    *,
    progress: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run the comparison over every seed; the report and the tuned plans (see
    :func:`write_report`)."""
    t_start = time.perf_counter()
    methods = config.check()
    task = load_task(config.task)
    if config.max_prompt_chars is not None:
        task = task.within(config.max_prompt_chars)
    target = _load(config.target)
    needs_expert = any(map(_needs_expert, methods))
    expert = _load(config.expert) if needs_expert and config.expert is not None else None
    runs = [
        _run_seed(config, seed, task, methods, target, expert, progress, on_step)
        for seed in config.seeds
    ]
    first = runs[0]
    concept = None
    spans = [r["concept"] for r in runs if r["concept"] is not None]
    if len(spans) == len(runs) and spans:
        concept = concept_report(
            spans,
            concept=str(task.concept_name),
            alpha=config.concept_alpha,
            norm=first["norm"],
            seed=config.seeds[0],
        )
    rows = summarise(runs)
    _generation_rows(rows, runs)
    models = _pooled_models(runs)
    _gap_closed(rows, models)
    norms = Counter(r["norm"] for r in runs)
    report = {
        "task": task.name,
        "target": target.name,
        "expert": expert.name if expert is not None else config.expert,
        "seeds": list(config.seeds),
        "n": first["n"],
        "n_contrast": first["n_contrast"],
        "balanced": first["balanced"],
        "train_data": config.train_data or "task train split (correct vs wrong answer pairs)",
        "norm": norms.most_common(1)[0][0],
        "majority_rate": float(np.mean([r["majority_rate"] for r in runs])),
        "models": models,
        "methods": rows,
        "concept_transfer": concept,
        "sweeps": first["sweeps"],
        "config": _config_json(config) | {"methods": methods},
        "library_version": __version__,
        "git_commit": git_commit(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    plans = first["plans"]
    mi_plan = next(
        (plans[r["name"]] for r in rows if r["kind"] == "transfer" and r["name"] in plans), None
    )
    steering = {name: plan for name, plan in plans.items() if any(_static(plan).alphas.values())}
    steering |= {name: m for name, m in first.get("learned", {}).items() if m.scale != 0}
    return EvalResult(
        report=report,
        plans=steering,
        mi_plan=mi_plan if mi_plan is not None and mi_plan.mi_matrix is not None else None,
    )


def _generation_rows(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> None:
    """Generation scores pooled over seeds, with the exact McNemar test against ``none``'s
    greedy answers on the same items, Holm-adjusted across the methods scored."""
    if not runs[0]["generation"]:
        return
    pooled = {
        name: np.concatenate([r["generation"][name] for r in runs])
        for name in runs[0]["generation"]
    }
    scored = [row for row in rows if row["name"] in pooled]
    for row in scored:
        gen = pooled[row["name"]]
        row["generation_score"] = float(gen.mean())
        row["generation_ci95"] = list(bootstrap_ci(gen, seed=runs[0]["seed"]))
        if "none" in pooled and row["name"] != "none":
            row["generation_p_vs_none"] = mcnemar_p(gen, pooled["none"])
    tested = [row for row in scored if "generation_p_vs_none" in row]
    for row, p in zip(tested, holm([row["generation_p_vs_none"] for row in tested])):
        row["generation_p_adjusted"] = p


def _gap_closed(rows: list[dict[str, Any]], models: dict[str, Any]) -> None:
    """Per row, the fraction of the target → expert zero-shot gap it closes (where the expert
    is better zero-shot): 0 = the target alone, 1 = as good as the expert."""
    t, e = models.get("target", {}), models.get("expert", {})
    if "test" not in t or "test" not in e:
        return
    t_acc, e_acc = t["test"][t["norm"]], e["test"][e["norm"]]
    if e_acc <= t_acc:
        return
    for row in rows:
        row["gap_closed"] = (row["score"] - t_acc) / (e_acc - t_acc)


def _pooled_models(runs: list[Run]) -> dict[str, Any]:
    """Zero-shot accuracy per model: the mean over seeds, and each seed's."""
    out: dict[str, Any] = {}
    for role, first in runs[0]["models"].items():
        if "skipped" in first:
            out[role] = first
            continue
        per = [r["models"][role] for r in runs]
        out[role] = {
            "name": first["name"],
            "val": {n: float(np.mean([p["val"][n] for p in per])) for n in first["val"]},
            "test": {n: float(np.mean([p["test"][n] for p in per])) for n in first["test"]},
            "norm": Counter(p["norm"] for p in per).most_common(1)[0][0],
            "per_seed": per,
        }
    return out


def _run_seed(
    config: EvalConfig,
    seed: int,
    task: Task,
    methods: list[str],
    target: LoadedModel,
    expert: LoadedModel | None,
    progress: bool,
    on_step: Callable[[str], None] | None,
) -> Run:
    """Every method on one seed's split: per-item test correctness and what was tuned."""
    balanced = task.binary if config.balance is None else config.balance
    train, val, test = task.split(seed=seed, limit=config.limit, balance=balanced)
    contrast = (
        load_data(config.train_data, seed=seed) if config.train_data else train.contrast(seed=seed)
    )
    _log(
        progress,
        f"{task.name}, seed {seed}: train {len(train)} / val {len(val)} / test {len(test)} "
        f"items{' (label-balanced)' if balanced else ''}; {len(contrast)} contrast examples; "
        f"methods: {', '.join(methods)}",
    )
    step = on_step or (lambda _: None)
    shared = config.shared_prompt
    store = (
        RowStore(
            config.checkpoint,
            seed,
            fingerprint(config, seed, (train, val, test)),
            need_plans=config.generation,
        )  # fmt: skip
        if config.checkpoint
        else None
    )

    def scorers(lm: LoadedModel) -> tuple[Scorer, Scorer]:
        bar = (lambda split: f"{lm.name} {split}") if progress else (lambda split: False)
        return (
            Scorer(lm, val, config.batch_size, progress=bar("val"), shared_prompt=shared),
            Scorer(lm, test, config.batch_size, progress=bar("test"), shared_prompt=shared),
        )

    val_s, test_s = scorers(target)
    models = {"target": zero_shot(val_s, test_s)}
    expert_val = expert_test = None
    if expert is not None:
        try:
            expert_val, expert_test = scorers(expert)
            models["expert"] = zero_shot(expert_val, expert_test)
        except ValueError as exc:  # an encoder cannot answer a multiple-choice task
            models["expert"] = {"name": expert.name, "skipped": str(exc)}
            expert_test = None
    _log(progress, _zero_shot_line(models))
    step("zero-shot")

    labels = test.labels()
    majority = Counter(train.labels()).most_common(1)[0][0]
    majority_correct = np.array([float(lab == majority) for lab in labels])
    pipeline = dict(
        n_pairs=config.n_pairs, n_align_texts=config.align_texts, batch_size=config.batch_size
    )
    rows: list[dict[str, Any]] = []
    sweeps: dict[str, list[dict]] = {}
    plans: dict[str, SteeringPlan] = {}
    estimators: dict[tuple[str | None, str], ExpertSteer] = {}
    stand_ins: dict[str, LoadedModel] = {}
    own: dict[str, SteeringPlan] = {}
    readers: dict[str, LoadedModel] = {}  # conditioned or trained method -> the model it reads
    probe_sets: dict[tuple[str, tuple[int, ...]], ProbeData] = {}
    learned: dict[str, LearnedMap] = {}  # trained method -> its map (saved like a plan)
    last_use = {resolve(n).control: k for k, n in enumerate(methods) if resolve(n).control}

    def tuned(name: str, plan: SteeringPlan, kind: str, val=val_s, test=test_s) -> dict[str, Any]:
        ks = sorted({min(k, len(plan.layers)) for k in config.layer_counts})
        result = tune(
            plan,
            metrics=lambda ps: [float(c.mean()) for c in val.correct_many(ps)],
            alphas=config.alphas,
            n_layers=ks,
            progress=progress,
        )
        sweeps[name] = result.grid
        best = result.apply_to(plan)
        plans[name] = best
        return {
            "name": name,
            "kind": kind,
            "correct": test.correct(best),
            "val_score": result.score,
            "alpha": result.alpha,
            "layers": list(result.layers) if result.alpha != 0 else [],
            "pairs": [list(p) for p in best.pairs] if best.pairs else None,
        }

    def source(control: str | None) -> LoadedModel:
        """The model playing the expert: the expert, or a control's stand-in (built once)."""
        assert expert is not None
        if control is None:
            return expert
        if control not in stand_ins:
            stand_ins[control] = stand_in_expert(control, expert, target, seed)
        return stand_ins[control]

    def estimator(control: str | None, aligner: str) -> ExpertSteer:
        if (control, aligner) not in estimators:
            estimators[(control, aligner)] = ExpertSteer(
                source(control), target, aligner=aligner, seed=seed, progress=progress,
                **pipeline,
            )  # fmt: skip
            estimators[(control, aligner)].fit(contrast)
        return estimators[(control, aligner)]

    def own_plan() -> SteeringPlan:
        """The target's own direction of the conditioned methods (self-rfm's fit, once)."""
        if "own" not in own:
            own["own"] = fit_target_only(
                target, contrast, method="self-rfm", n_layers=config.n_pairs, seed=seed,
                batch_size=config.batch_size, progress=progress,
            )  # fmt: skip
        return own["own"]

    def probe_data(key: str, lm: LoadedModel, layers: list[int]) -> ProbeData:
        if (key, tuple(layers)) not in probe_sets:
            probe_sets[(key, tuple(layers))] = ProbeData(
                lm, layers, train, val, test, batch_size=config.batch_size
            )
        return probe_sets[(key, tuple(layers))]

    def conditioned(name: str, method) -> dict[str, Any] | None:
        """A row of a conditioned method or of the expert-only baselines."""
        if name == "ensemble":
            if expert_test is None:
                return None
            c, w, v = ensemble_correct((val_s, test_s), (expert_val, expert_test))
            return {"name": name, "kind": method.kind, "correct": c, "val_score": v, "weight": w}
        if name == "self-cond":
            lm, key = target, "target"
        elif method.control is not None:
            lm, key = source(method.control), method.control
        else:
            lm, key = expert, "expert"
        assert lm is not None
        if method.variant in (None, "own"):
            plan = own_plan()
            layers = probe_layers(lm)
        else:
            plan = estimator(method.control, method.aligner).replan(
                contrast, pairing=method.pairing
            )
            layers = probe_layers(lm, plan)
        data = probe_data(key, lm, layers)
        probe = data.fit()
        if name == "expert-probe":
            c = probe_choice_correct(data, probe)
            v = float(probe_choice_correct(data, probe, "val").mean())
            return {"name": name, "kind": method.kind, "correct": c, "val_score": v}
        val_c = ConditionedScorer(val_s, data.strengths(probe, "val"))
        test_c = ConditionedScorer(test_s, data.strengths(probe, "test"))
        row = tuned(name, plan, method.kind, val=val_c, test=test_c)
        row["probe"] = {
            "layer": probe.layer,
            **{k: v for k, v in probe.metrics.items() if k != "candidates"},
        }
        if method.kind == "conditioned":
            row["nulls"] = cond_nulls(
                data, probe, plans[name], row["alpha"], test_c.base, config.n_nulls, seed
            )
        plans[name] = ConditionedPlan(plans[name], probe)  # saved with its probe
        if method.control is None:  # a stand-in is freed before generation scoring
            readers[name] = lm
        return row

    def trained(name: str, method) -> dict[str, Any]:
        """A row of a map trained through the target (eval/learned.py)."""
        est = estimator(method.control, method.aligner)
        reader = source(method.control)
        row, m = trained_row(
            name, method.kind, est, reader, est.replan(contrast, pairing=method.pairing),
            (train, val, test), (val_s, test_s), n_nulls=config.n_nulls, seed=seed,
            batch_size=config.batch_size, nulls=method.kind == "trained",
        )  # fmt: skip
        learned[name] = m
        if method.control is None:  # a stand-in is freed before generation scoring
            readers[name] = reader
        return row

    for k, name in enumerate(methods):
        t0 = time.perf_counter()
        method = resolve(name)
        row: dict[str, Any] | None = {"name": name, "kind": method.kind}
        kept = store.load(name) if store is not None else None
        if kept is not None:
            row, sweep, plan = kept
            if sweep is not None:
                sweeps[name] = sweep
            if isinstance(plan, LearnedMap):
                learned[name] = plan
            elif plan is not None:
                plans[name] = plan
            if isinstance(plan, ConditionedPlan | LearnedMap) and method.control is None:
                readers[name] = target if name == "self-cond" else expert
            rows.append(row)
            step(name)
            gone = "; its plan's files are unreadable: left out" if name in store.missing else ""
            _log(progress, f"{name}: test accuracy {row['correct'].mean():.3f} (checkpoint{gone})")
            continue
        if name == "none":
            row["correct"] = test_s.correct()
        elif name == "majority":
            row["correct"] = majority_correct
            row["answer"] = majority
        elif name == "prompt":
            row["correct"] = test_s.correct(prefix=task.instruction.strip() + "\n\n")
        elif name == "expert":
            row = None if expert_test is None else {**row, "correct": expert_test.correct()}
        elif method.trained:
            row = trained(name, method)
        elif method.conditioned or method.kind == "expert-only":
            row = conditioned(name, method)
        elif method.kind == "target-only":
            plan = fit_target_only(
                target, contrast, method=name, n_layers=config.n_pairs, seed=seed,
                batch_size=config.batch_size, progress=progress,
            )  # fmt: skip
            row = tuned(name, plan, "target-only")
        else:
            assert expert is not None and method.aligner is not None and method.pairing
            est = estimator(method.control, method.aligner)
            plan = est.replan(contrast, pairing=method.pairing)
            row = tuned(name, plan, method.kind)
            if method.kind == "transfer":
                row["nulls"] = transfer_nulls(
                    row, est, contrast, plans[name], method.pairing, test_s, config.n_nulls, seed
                )
        if method.control and last_use[method.control] == k:  # free a stand-in model
            for done in [key for key in estimators if key[0] == method.control]:
                del estimators[done]
            for done in [key for key in probe_sets if key[0] == method.control]:
                del probe_sets[done]
            stand_ins.pop(method.control, None)
            gc.collect()
        if row is None:
            _log(progress, f"{name}: skipped")
            continue
        row["seconds"] = round(time.perf_counter() - t0, 1)
        if store is not None:
            store.save(name, row, sweeps.get(name), plans.get(name, learned.get(name)))
        rows.append(row)
        step(name)
        _log(progress, f"{name}: test accuracy {row['correct'].mean():.3f}")

    generation = (
        _generation(rows, plans, readers, learned, target, test, config)
        if config.generation
        else {}
    )
    concept = None
    if config.concept and expert is not None and task.concept_name is not None:
        _log(progress, f"concept transfer ({task.concept_name}), seed {seed}")
        head = (
            test
            if config.concept_items is None
            else test.subset(range(min(config.concept_items, len(test))))
        )
        kept = store.load(CONCEPT) if store is not None else None
        if kept is not None:
            concept = kept[0]
            concept.pop("checkpoint_commit", None)
        else:
            concept = concept_spans(
                task, train, head, target, expert, norm=models["target"]["norm"],
                alpha=config.concept_alpha, n_nulls=config.n_nulls, seed=seed, pipeline=pipeline,
                shared_prompt=shared, progress=progress,
            )  # fmt: skip
            if store is not None and concept is not None:
                store.save(CONCEPT, concept)
    return {
        "seed": seed,
        "rows": rows,
        "labels": labels,
        "n": {"train": len(train), "val": len(val), "test": len(test)},
        "n_contrast": len(contrast),
        "balanced": balanced,
        "norm": models["target"]["norm"],
        "majority_rate": float(majority_correct.mean()),
        "models": models,
        "sweeps": sweeps,
        "plans": plans,
        "learned": learned,
        "generation": generation,
        "concept": concept,
    }


def _static(plan: SteeringPlan | ConditionedPlan) -> SteeringPlan:
    return plan.plan if isinstance(plan, ConditionedPlan) else plan


def _generation(
    rows, plans, readers, learned, target, test: Task, config: EvalConfig
) -> dict[str, np.ndarray]:
    """Greedy answers scored by alias match, per method that steers or prompts the target; a
    conditioned method's α per prompt from its probe's reading of the prompt (no options
    here: only the reading of the question can act)."""
    out = {}
    for r in rows:
        name = r["name"]
        if name in ("expert", "majority", "expert-probe", "ensemble"):
            continue
        plan, alpha = plans.get(name), 1.0
        if resolve(name).trained:  # per-prompt deltas from the expert's reading
            if name not in readers or name not in learned:  # a stand-in: freed by now
                continue
            m = learned[name]
            plan = m.plans(m.read(readers[name], [it.prompt for it in test.items]))
        elif isinstance(plan, ConditionedPlan):
            if name not in readers:  # a control's stand-in: freed by now
                continue
            alpha = plan.alphas(readers[name], [it.prompt for it in test.items])
            plan = plan.plan
        prefix = test.instruction.strip() + "\n\n" if name == "prompt" else ""
        out[name], _ = generation_scores(
            target, test.items, plan=plan, alpha=alpha, prefix=prefix, batch_size=config.batch_size
        )
    return out


def _config_json(config: EvalConfig) -> dict[str, Any]:
    out = {}
    for k, v in vars(config).items():
        if isinstance(v, LoadedModel):
            v = v.name
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
