"""Nulls and stand-in experts: seeds, the α = 0 shortcut, and what each control loads."""

import numpy as np
import pytest

from expertsteer.eval import load_task
from expertsteer.eval.controls import NULL_FAMILIES, null_seed, stand_in_expert, transfer_nulls
from expertsteer.eval.scorer import Scorer
from expertsteer.pipeline import ExpertSteer
from tiny import align_texts, tiny_model, write_task


def test_null_seeds_never_collide_across_families_and_seeds():
    seeds = {null_seed(f, s, k) for f in NULL_FAMILIES for s in range(5) for k in range(50)}
    assert len(seeds) == 2 * 5 * 50


def test_stand_in_experts():
    expert, target = (
        tiny_model("qwen2", seed=1, d=48, n_layers=5),
        tiny_model("llama", seed=2, n_layers=4),
    )
    assert stand_in_expert("target-as-expert", expert, target, 0) is target
    fresh = stand_in_expert("random-expert", expert, target, 3)
    assert fresh.fingerprint != expert.fingerprint and fresh.n_layers == expert.n_layers
    with pytest.raises(ValueError, match="random-expert, target-as-expert"):
        stand_in_expert("nobody", expert, target, 0)


def test_transfer_nulls(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    expert, target = (
        tiny_model("qwen2", seed=1, d=48, n_layers=5),
        tiny_model("llama", seed=2, n_layers=4),
    )
    task = load_task(write_task(tmp_path / "task.jsonl", n=40))
    train, _, test = task.split(seed=0)
    contrast = train.contrast(seed=0)
    est = ExpertSteer(expert, target, n_pairs=2, align_texts=align_texts(), progress=False)
    plan = est.fit(contrast)
    scorer = Scorer(target, test, 8)
    row = {"layers": plan.layers[:1], "alpha": 2.0}
    tuned = plan.select(row["layers"]) * 2.0
    nulls = transfer_nulls(row, est, contrast, tuned, "depth", scorer, 3, seed=0)
    assert [len(nulls[f]) for f in NULL_FAMILIES] == [3, 3]
    assert all(0 <= x <= 1 for f in NULL_FAMILIES for x in nulls[f])
    assert nulls == transfer_nulls(row, est, contrast, tuned, "depth", scorer, 3, seed=0)
    base = float(scorer.correct().mean())
    untuned = transfer_nulls({"layers": [], "alpha": 0}, est, contrast, tuned, "depth", scorer,
                             4, seed=0)  # fmt: skip
    assert untuned == {f: [base] * 4 for f in NULL_FAMILIES}
    assert np.isfinite(base)
