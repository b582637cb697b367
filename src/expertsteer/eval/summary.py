"""From per-seed correctness to the report's method rows: exact tests, Holm, ranks, verdicts.

One function, :func:`summarise`, serves one seed and many: seeds are pooled by concatenating
their test items (each seed's split, fits and nulls are its own), and every per-seed row is the
same function applied to that seed alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .methods import resolve
from .stats import balanced_accuracy, bootstrap_ci, holm, mcnemar_p, pooled_nulls, worst_rank_p

__all__ = ["LEVEL", "Run", "summarise", "verdict"]

# The methods whose claim is the expert's: nulls, controls and the full verdict.
TRANSFERRED = ("transfer", "conditioned", "trained")
LEVEL = 0.05  # every "beats" in a verdict: at this level, Holm-adjusted where it says so
# One seed: its rows (name, kind, correct, val_score, ...) and the test items' labels.
Run = dict[str, Any]


def _best(rows: list[dict]) -> dict | None:
    """The best target-only baseline, chosen on validation (never on test)."""
    baselines = [r for r in rows if r["kind"] == "target-only"]
    return max(baselines, key=lambda r: r["val_score"], default=None)


def _concat(runs: Sequence[Run], pick) -> np.ndarray | None:
    parts = [pick(run) for run in runs]
    return None if any(p is None for p in parts) else np.concatenate(parts)


def _row(run: Run, name: str) -> dict | None:
    return next((r for r in run["rows"] if r["name"] == name), None)


def _stats(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Pooled statistics of every method present in all ``runs``."""
    names = [r["name"] for r in runs[0]["rows"]]
    names = [n for n in names if all(_row(run, n) is not None for run in runs)]
    labels = [lab for run in runs for lab in run["labels"]]
    pooled = {n: np.concatenate([_row(run, n)["correct"] for run in runs]) for n in names}
    none = pooled.get("none")
    best = _concat(runs, lambda run: b["correct"] if (b := _best(run["rows"])) else None)
    best_names = sorted({b["name"] for run in runs if (b := _best(run["rows"]))})
    out = []
    for name in names:
        kind = resolve(name).kind
        c = pooled[name]
        seeds = [float(_row(run, name)["correct"].mean()) for run in runs]
        row: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "score": float(c.mean()),
            "score_sd": float(np.std(seeds, ddof=1)) if len(seeds) > 1 else 0.0,
            "balanced_accuracy": balanced_accuracy(c, labels),
            "ci95": list(bootstrap_ci(c, seed=runs[0]["seed"])),
            "n_correct": int(c.sum()),
            "n": int(c.size),
        }
        if none is not None and name != "none":
            row["p_vs_none"] = mcnemar_p(c, none)
        is_best = all((b := _best(run["rows"])) is not None and b["name"] == name for run in runs)
        if best is not None and kind != "baseline" and not is_best:
            row["best_baseline"] = ", ".join(best_names)
            row["best_baseline_score"] = float(best.mean())  # pooled: each seed's own best
            row["p_vs_best_baseline"] = mcnemar_p(c, best)
        if kind in TRANSFERRED:
            nulls = pooled_nulls([_row(run, name).get("nulls", {}) for run in runs])
            row["null_rank_p"] = worst_rank_p(row["score"], nulls)
            controls = [o for o in names if resolve(o).controlled == name]
            if kind == "conditioned" and "self-cond" in pooled:
                controls.append("self-cond")  # the target judging itself: the expert's control
            row["p_vs_controls"] = {o: mcnemar_p(c, pooled[o]) for o in controls}
            row["control_scores"] = {o: float(pooled[o].mean()) for o in controls}
        out.append(row)
    families = (("p_vs_best_baseline", "p_adjusted"), ("p_vs_none", "p_vs_none_adjusted"))
    for key, adjusted in families:
        for row, p in zip(out, holm([r.get(key) for r in out])):
            if p is not None:
                row[adjusted] = p
    scores = {r["name"]: r["score"] for r in out}
    for row in out:
        row["verdict"] = verdict(row, scores)
    return out


def _better(row: dict, p_key: str, than: float) -> bool:
    p = row.get(p_key)
    return p is not None and p < LEVEL and row["score"] > than


def verdict(row: dict[str, Any], scores: dict[str, float]) -> str:
    """One line: what the method's numbers support (Holm-adjusted where a family is tested)."""
    name, kind = row["name"], row["kind"]
    if name == "none":
        return "the target alone"
    if name == "majority":
        return "the label prior (always the commonest train answer)"
    none = scores.get("none")
    vs_none = ""
    if none is not None and "p_vs_none_adjusted" in row:
        p = row["p_vs_none_adjusted"]
        if p < LEVEL:
            vs_none = f"{'beats' if row['score'] > none else 'worse than'} none (p_adj {p:.3f})"
        else:
            vs_none = f"no different from none (p_adj {p:.2f})"
    if kind not in TRANSFERRED:
        return vs_none or "-"
    failed = []
    if none is not None and not _better(row, "p_vs_none_adjusted", none):
        failed.append(vs_none)
    rank = row.get("null_rank_p")
    if rank is None or rank >= LEVEL:
        failed.append("no nulls" if rank is None else f"not above its nulls (rank p {rank:.2f})")
    controls = row.get("p_vs_controls", {})
    if not controls:
        failed.append("no controls run")
    for other, p in controls.items():
        if not (p < LEVEL and row["score"] > row["control_scores"][other]):
            short = other if ":" not in other else other.split(":")[1]
            failed.append(f"not above {short} (p {p:.2f})")
    best = row.get("best_baseline")
    if best and not _better(row, "p_adjusted", row["best_baseline_score"]):
        failed.append(f"not above {best} (p_adj {row.get('p_adjusted', 1.0):.2f})")
    if not failed:
        return "the expert helps: beats none, its nulls, its controls and " + (best or "-")
    return "not shown: " + "; ".join(failed)


def summarise(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The report's method rows: pooled over ``runs`` (one per seed) with ``per_seed`` rows."""
    if not runs:
        raise ValueError("nothing to summarise: no seeds ran")
    pooled = _stats(runs)
    per_seed = [{r["name"]: r for r in _stats([run])} for run in runs]
    for row in pooled:
        row["per_seed"] = []
        for run, stats in zip(runs, per_seed):
            source = next(r for r in run["rows"] if r["name"] == row["name"])
            extra = {k: v for k, v in source.items() if k not in ("correct", "name", "kind")}
            seed_row = {"seed": run["seed"], **extra, **stats[row["name"]]}
            # per test item, in split order: lets a reader redo any test or pool reports
            seed_row["correct"] = [int(x) for x in source["correct"]]
            for k in ("name", "kind", "per_seed"):
                seed_row.pop(k, None)
            row["per_seed"].append(seed_row)
        first = row["per_seed"][0]  # α, layers, pairs as tuned on the first seed's validation
        for k in (
            "alpha",
            "layers",
            "pairs",
            "val_score",
            "nulls",
            "probe",
            "weight",
            "epoch",
            "scale",
        ):
            if k in first:
                row[k] = first[k]
        row.setdefault("alpha", None)  # every row has them: None where nothing was tuned
        row.setdefault("pairs", None)
        if "null_rank_p" in row:
            row["beats_null"] = bool(row["null_rank_p"] is not None and row["null_rank_p"] < LEVEL)
        row["seconds"] = round(sum(s.get("seconds", 0.0) for s in row["per_seed"]), 1)
    return pooled
