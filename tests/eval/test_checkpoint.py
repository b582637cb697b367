"""``EvalConfig.checkpoint``: a rerun reads each seed's finished rows back (nothing refitted) and
reports exactly what the first run did; other settings, other items or a damaged file are
computed again."""

import json

import numpy as np
import pytest
import torch

import expertsteer.eval.runner as runner_mod
from expertsteer.eval import EvalConfig, run_eval
from expertsteer.eval.checkpoint import RowStore, _decode, _encode, finished_rows
from expertsteer.learned import LearnedMap
from tiny import planted_map, tiny_model, write_task

FAST = dict(n_nulls=2, align_texts=40, alphas=(1.0, 4.0), layer_counts=(1, 2), n_pairs=2)
METHODS = (
    "none,mean-diff,expertsteer:ridge:depth,control:random-expert:ridge:depth,"
    "expertsteer-cond:own,self-cond,ensemble"
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def models():
    return tiny_model("qwen2", seed=1, d=48, n_layers=5), tiny_model("llama", seed=2, n_layers=4)


def _scores_only(report: dict) -> str:
    report = json.loads(json.dumps(report))
    for k in ("seconds", "git_commit"):
        report.pop(k)
    for m in report["methods"]:
        m.pop("seconds", None)
        for s in m["per_seed"]:
            s.pop("seconds", None)
            s.pop("checkpoint_commit", None)
    return json.dumps(report, sort_keys=True)


def _counting(monkeypatch, name: str) -> list:
    calls = []
    real = getattr(runner_mod, name)
    monkeypatch.setattr(runner_mod, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_a_rerun_reads_every_row_back_and_reports_the_same(tmp_path, models, monkeypatch):
    expert, target = models
    spec = write_task(tmp_path / "task.jsonl")
    folder = tmp_path / "ck"
    config = EvalConfig(
        task=spec, target=target, expert=expert, methods=METHODS, seeds=(0, 1),
        checkpoint=str(folder), **FAST,
    )  # fmt: skip
    first = run_eval(config, progress=False)
    names = [m["name"] for m in first.report["methods"]]
    for seed in (0, 1):
        for name in names:
            assert (folder / f"seed{seed}" / (name.replace(":", "_") + ".json")).is_file()
    assert (folder / "seed0" / "expertsteer-cond_own.plan").is_dir()  # a conditioned plan
    fits = _counting(monkeypatch, "fit_target_only")
    nulls = _counting(monkeypatch, "transfer_nulls")
    zero = _counting(monkeypatch, "zero_shot")
    again = run_eval(config, progress=False)
    assert fits == [] and nulls == [] and len(zero) == 4  # 2 models × 2 seeds: scores cache
    assert _scores_only(again.report) == _scores_only(first.report)
    rows = {m["name"]: m for m in again.report["methods"]}
    assert all("checkpoint_commit" in s for m in rows.values() for s in m["per_seed"])
    assert again.plans.keys() == first.plans.keys()
    for name, plan in first.plans.items():
        kept = again.plans[name]
        static = getattr(plan, "plan", plan)
        assert type(kept) is type(plan) and getattr(kept, "plan", kept).layers == static.layers
        for j, v in static.vectors.items():
            assert np.array_equal(getattr(kept, "plan", kept).vectors[j].numpy(), v.numpy())
    # a clone without the plans' tensors: the rows stand, only their plans are left out
    for tensors in folder.glob("seed*/*.plan/*.safetensors"):
        tensors.unlink()
    bare = run_eval(config, progress=False)
    assert fits == [] and nulls == [] and bare.plans == {}
    assert _scores_only(bare.report) == _scores_only(first.report)


def test_other_settings_or_a_damaged_file_compute_again(tmp_path, models, monkeypatch):
    _, target = models
    spec = write_task(tmp_path / "task.jsonl")
    folder = tmp_path / "ck"
    config = EvalConfig(
        task=spec, target=target, methods="none,mean-diff", checkpoint=str(folder), **FAST
    )
    base = run_eval(config, progress=False).report
    fits = _counting(monkeypatch, "fit_target_only")
    other = EvalConfig(**{**vars(config), "alphas": (2.0,)})
    assert run_eval(other, progress=False).report["methods"][1]["alpha"] == 2.0
    assert len(fits) == 1  # other α grid: refitted (and that file now holds the new row)
    (folder / "seed0" / "mean-diff.json").write_text("{not json")
    again = run_eval(config, progress=False).report
    assert len(fits) == 2 and _scores_only(again) == _scores_only(base)
    fewer = EvalConfig(**{**vars(config), "limit": 40})  # other items: another split
    run_eval(fewer, progress=False)
    assert len(fits) == 3


def test_arrays_round_trip_exactly():
    value = {
        "correct": np.array([1.0, 0.0, 1.0]),
        "spans": np.array([0.1, -2.5e-8], dtype=np.float32),
        "nested": [{"x": np.float64(0.3)}, (1, 2)],
    }
    back = _decode(json.loads(json.dumps(_encode(value))))
    assert back["correct"].dtype == np.float64 and np.array_equal(back["correct"], value["correct"])
    assert back["spans"].dtype == np.float32 and np.array_equal(back["spans"], value["spans"])
    assert back["nested"] == [{"x": 0.3}, [1, 2]]


def test_a_row_without_its_plan_stands_unless_plans_are_needed(tmp_path):
    store = RowStore(tmp_path, 0, {"k": 1})
    store.save("m", {"name": "m", "correct": np.ones(3)})
    assert store.load("m")[0]["correct"].tolist() == [1.0, 1.0, 1.0]
    assert store.missing == []
    body = json.loads((tmp_path / "seed0" / "m.json").read_text())
    body["plan"] = "static"  # says it has a plan, which is not on disk
    (tmp_path / "seed0" / "m.json").write_text(json.dumps(body))
    row, _, plan = store.load("m")  # its numbers stand; the plan is left out, and said so
    assert row["correct"].tolist() == [1.0, 1.0, 1.0] and plan is None
    assert store.missing == ["m"]
    assert RowStore(tmp_path, 0, {"k": 1}, need_plans=True).load("m") is None  # generation
    assert RowStore(tmp_path, 0, {"k": 2}).load("m") is None  # other key
    RowStore(tmp_path, 0, {"k": 2}).save("n", {"name": "n", "correct": np.zeros(2)})
    (tmp_path / "seed0" / "x.json").write_text("{damaged")
    rows = finished_rows(tmp_path, 0)  # progress: every row, whatever its key
    assert [r["name"] for r in rows] == ["m", "n"] and rows[1]["correct"].tolist() == [0.0, 0.0]
    assert finished_rows(tmp_path, 1) == []


def test_a_trained_rows_map_is_kept_and_read_back_as_a_map(tmp_path):
    target, expert = tiny_model("llama"), tiny_model("gpt2", seed=1)
    m = planted_map(target, expert, scale=2.0)
    store = RowStore(tmp_path, 0, {"k": 1})
    store.save("expertsteer-trained:ridge:depth", {"name": "t", "correct": np.ones(2)}, plan=m)
    body = json.loads((tmp_path / "seed0" / "expertsteer-trained_ridge_depth.json").read_text())
    assert body["plan"] == "learned"
    _, _, back = store.load("expertsteer-trained:ridge:depth")
    assert isinstance(back, LearnedMap) and back.scale == 2.0
    assert torch.equal(back.up, m.up) and torch.equal(back.down, m.down)
