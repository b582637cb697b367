"""From per-seed correctness to report rows: hand-made runs, exact expectations."""

import numpy as np
import pytest

from expertsteer.eval.stats import holm, mcnemar_p
from expertsteer.eval.summary import summarise


def _run(seed: int, rows: dict[str, tuple[str, list[int]]], **extra) -> dict:
    n = len(next(iter(rows.values()))[1])
    out = []
    for name, (kind, correct) in rows.items():
        row = {"name": name, "kind": kind, "correct": np.array(correct, dtype=float)}
        row.update(extra.get(name, {}))
        out.append(row)
    return {"seed": seed, "rows": out, "labels": ["a", "b"] * (n // 2)}


NONE = [0] * 20 + [1] * 20
BASE = [1] * 4 + [0] * 16 + [1] * 20  # 4 wins over none
BETTER = [1] * 40  # 20 wins over none, 16 over BASE


def test_a_transfer_that_beats_everything_gets_the_positive_verdict():
    transfer = {"val_score": 0.0, "alpha": 1.0, "nulls": {
        "shuffled_labels": [0.5] * 20, "random_direction": [0.6] * 20}}  # fmt: skip
    run = _run(
        0,
        {
            "none": ("baseline", NONE),
            "mean-diff": ("target-only", BASE),
            "expertsteer:ridge:depth": ("transfer", BETTER),
            "control:random-expert:ridge:depth": ("control", NONE),
            "control:target-as-expert:ridge:depth": ("control", NONE),
        },
        **{"mean-diff": {"val_score": 0.7}, "expertsteer:ridge:depth": transfer,
           "control:random-expert:ridge:depth": {"val_score": 0.5},
           "control:target-as-expert:ridge:depth": {"val_score": 0.5}},
    )  # fmt: skip
    rows = {r["name"]: r for r in summarise([run])}
    t = rows["expertsteer:ridge:depth"]
    assert t["p_vs_none"] == pytest.approx(2 * 0.5**20)
    assert t["best_baseline"] == "mean-diff"
    assert t["p_vs_best_baseline"] == pytest.approx(2 * 0.5**16)
    assert t["null_rank_p"] == pytest.approx(1 / 21)
    assert t["p_vs_controls"] == {
        "control:random-expert:ridge:depth": pytest.approx(2 * 0.5**20),
        "control:target-as-expert:ridge:depth": pytest.approx(2 * 0.5**20),
    }
    # Holm over the rows that have the test, in report order
    family = [rows[n].get("p_vs_none") for n in rows]
    assert [rows[n].get("p_vs_none_adjusted") for n in rows] == holm(family)
    assert t["verdict"].startswith("the expert helps") and t["beats_null"]
    assert rows["mean-diff"]["verdict"].startswith("no different from none")  # 4 of 4: p 0.125
    assert rows["none"]["balanced_accuracy"] == 0.5 and t["balanced_accuracy"] == 1.0


def test_a_transfer_its_controls_match_is_not_the_experts():
    transfer = {"val_score": 0.0, "alpha": 1.0, "nulls": {
        "shuffled_labels": [0.5] * 20, "random_direction": [0.5] * 20}}  # fmt: skip
    run = _run(
        0,
        {
            "none": ("baseline", NONE),
            "expertsteer:ridge:depth": ("transfer", BETTER),
            "control:random-expert:ridge:depth": ("control", BETTER),
        },
        **{"expertsteer:ridge:depth": transfer},
    )
    t = {r["name"]: r for r in summarise([run])}["expertsteer:ridge:depth"]
    assert t["verdict"] == "not shown: not above random-expert (p 1.00)"


def test_significantly_worse_than_the_best_baseline_is_not_beating_it():
    """Two seeds chose different best baselines: the verdict compares with their pooled score."""
    nulls = {"val_score": 0.0, "alpha": 1.0, "nulls": {
        "shuffled_labels": [0.0] * 20, "random_direction": [0.0] * 20}}  # fmt: skip
    runs = []
    for seed, (pca_val, md_val) in enumerate(((0.9, 0.1), (0.1, 0.9))):
        rows = {
            "none": ("baseline", [0] * 40),
            "pca": ("target-only", [1] * 40),
            "mean-diff": ("target-only", [1] * 40),
            "expertsteer:ridge:depth": ("transfer", [1] * 10 + [0] * 30),
        }
        extra = {"pca": {"val_score": pca_val}, "mean-diff": {"val_score": md_val},
                 "expertsteer:ridge:depth": nulls}  # fmt: skip
        runs.append(_run(seed, rows, **extra))
    t = {r["name"]: r for r in summarise(runs)}["expertsteer:ridge:depth"]
    assert t["best_baseline"] == "mean-diff, pca" and t["best_baseline_score"] == 1.0
    assert t["p_vs_best_baseline"] < 1e-10  # significant, but the other way
    assert "not above mean-diff, pca" in t["verdict"]


def test_ties_with_nulls_count_against_the_method():
    transfer = {"val_score": 0.0, "alpha": 1.0, "nulls": {
        "shuffled_labels": [1.0] + [0.5] * 19, "random_direction": [0.5] * 20}}  # fmt: skip
    run = _run(0, {"none": ("baseline", NONE), "expertsteer:ae:lowest": ("transfer", BETTER)},
               **{"expertsteer:ae:lowest": transfer})  # fmt: skip
    t = summarise([run])[1]
    assert t["null_rank_p"] == pytest.approx(2 / 21) and not t["beats_null"]
    assert "not above its nulls (rank p 0.10)" in t["verdict"]


def test_seeds_pool_items_and_keep_per_seed_rows():
    rng = np.random.default_rng(0)
    runs, cs = [], {"none": [], "pca": []}
    for seed in (0, 1, 2):
        none, pca = (rng.random(20) < 0.5).astype(int), (rng.random(20) < 0.7).astype(int)
        cs["none"].append(none)
        cs["pca"].append(pca)
        rows = {"none": ("baseline", list(none)), "pca": ("target-only", list(pca))}
        runs.append(_run(seed, rows, pca={"val_score": 0.6, "alpha": float(seed)}))
    (none, pca) = summarise(runs)
    allp, alln = np.concatenate(cs["pca"]), np.concatenate(cs["none"])
    assert pca["p_vs_none"] == mcnemar_p(allp, alln) and pca["n"] == 60
    assert pca["score"] == pytest.approx(allp.mean())
    assert pca["score_sd"] == pytest.approx(np.std([c.mean() for c in cs["pca"]], ddof=1))
    assert [s["alpha"] for s in pca["per_seed"]] == [0.0, 1.0, 2.0]
    assert pca["alpha"] == 0.0  # the first seed's, as its validation chose
    assert pca["per_seed"][1]["correct"] == list(cs["pca"][1])
    assert pca["per_seed"][2]["p_vs_none"] == mcnemar_p(cs["pca"][2], cs["none"][2])


def test_nothing_to_summarise():
    with pytest.raises(ValueError, match="no seeds"):
        summarise([])
