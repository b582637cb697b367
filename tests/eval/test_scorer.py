"""The memoised scorer: many plans in one pass equal one plan at a time; zero-shot's choice."""

import numpy as np

from expertsteer.eval import load_task
from expertsteer.eval.scorer import Scorer, zero_shot
from expertsteer.pipeline import fit_target_only
from tiny import tiny_model, write_task


def fit_plan(target, task):
    return fit_target_only(target, task.contrast(seed=0), n_layers=2, progress=False)


def test_grid_cells_and_nulls_scored_together_equal_one_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    target = tiny_model("llama", seed=2, n_layers=4)
    target.model.double()
    task = load_task(write_task(tmp_path / "task.jsonl", n=12))
    plan = fit_plan(target, task)
    plans = [plan * a for a in (0.0, 1.0, 4.0)] + [plan.select(plan.layers[:1]) * 2.0, None]
    together = Scorer(target, task, batch_size=5).scores_many(plans)
    for p, scores in zip(plans, together):
        alone = Scorer(target, task, batch_size=3).scores(p)
        for a, b in zip(scores, alone):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    assert not np.allclose(np.concatenate(together[1]), np.concatenate(together[0]))


def test_zero_shot_picks_the_norm_on_validation_and_sets_it_on_both(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    target = tiny_model("llama", seed=2, n_layers=4)
    _, val, test = load_task(write_task(tmp_path / "task.jsonl", n=40)).split(seed=0)
    val_s, test_s = Scorer(target, val, 8), Scorer(target, test, 8)
    out = zero_shot(val_s, test_s)
    assert out["norm"] == max(("sum", "mean"), key=lambda n: (out["val"][n], n == "mean"))
    assert val_s.norm == test_s.norm == out["norm"]
    assert out["test"][out["norm"]] == test_s.correct().mean()
