import json

import numpy as np
import pytest
import torch

from expertsteer.artifacts import load_plan
from expertsteer.eval import EvalConfig, load_task, run_eval, write_report
from expertsteer.eval.learned import TRAINED_NULLS
from expertsteer.eval.methods import parse_methods, resolve
from expertsteer.eval.scoring import mc_correct, option_logprobs
from expertsteer.learned import LearnedMap
from tiny import tiny_model, write_task

FAST = dict(n_nulls=2, align_texts=40, alphas=(0.0, 1.0), layer_counts=(1,), n_pairs=2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


def test_method_names_and_links():
    names = parse_methods("expertsteer-trained,control-trained")
    assert names == [
        "expertsteer-trained:ridge:depth",
        "control-trained:random-expert:ridge:depth",
        "control-trained:target-as-expert:ridge:depth",
    ]
    assert resolve(names[0]).kind == "trained" and resolve(names[0]).trained
    assert all(resolve(n).controlled == names[0] for n in names[1:])
    assert set(names) <= set(parse_methods("all"))
    assert parse_methods("expertsteer-trained:ae:lowest,control-trained:random-expert") == [
        "expertsteer-trained:ae:lowest",
        "control-trained:random-expert:ae:lowest",
    ]


def test_trained_methods_end_to_end(tmp_path):
    expert = tiny_model("qwen2", seed=1, d=48, n_layers=5)
    target = tiny_model("llama", seed=2, n_layers=4)
    spec = write_task(tmp_path / "task.jsonl")
    methods = "none,mean-diff,expertsteer-trained,control-trained"
    config = EvalConfig(
        task=spec, target=target, expert=expert, methods=methods, generation=True, **FAST
    )
    report = run_eval(config, progress=False).report
    rows = {m["name"]: m for m in report["methods"]}
    real = rows["expertsteer-trained:ridge:depth"]
    assert real["kind"] == "trained" and real["epoch"] in range(5)
    history = real["per_seed"][0]["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    assert history[0]["scale"] == 0.0 and history[0]["train_loss"] is None
    # the epoch is validation's choice (ties: the earliest)
    vals = [h["val_score"] for h in history]
    assert real["epoch"] == vals.index(max(vals)) and real["val_score"] == max(vals)
    assert {f: len(v) for f, v in real["nulls"].items()} == {f: 2 for f in TRAINED_NULLS}
    assert set(real["p_vs_controls"]) == {
        "control-trained:random-expert:ridge:depth",
        "control-trained:target-as-expert:ridge:depth",
    }
    assert real["null_rank_p"] >= 1 / 3 and real["verdict"]
    assert "nulls" not in rows["control-trained:random-expert:ridge:depth"]
    # epoch 0 chosen: exactly the target alone, its nulls too
    _, _, test = load_task(spec).split(seed=0)
    none = mc_correct(option_logprobs(target, test.items), test.items, report["norm"])
    if real["epoch"] == 0:
        assert real["score"] == rows["none"]["score"] == none.mean()
        assert all(v == [none.mean()] * 2 for v in real["nulls"].values())
    else:
        assert real["scale"] != 0.0 and real["layers"] == [real["pairs"][0][1]]
    assert np.isclose(rows["none"]["score"], none.mean())
    # generation: the trained map's per-prompt deltas from the expert's reading of the prompt
    assert "generation_score" in real and "generation_score" in rows["none"]
    assert "generation_score" not in rows["control-trained:random-expert:ridge:depth"]  # freed
    if real["epoch"] == 0:
        assert real["generation_score"] == rows["none"]["generation_score"]


def test_a_trained_map_that_steers_is_scored_with_its_nulls(tmp_path, monkeypatch):
    # validation left out: the last epoch stands, so the map steers and its nulls are scored
    from expertsteer.learned import LearnedMapFit

    fitted = []
    real_fit = LearnedMapFit.fit

    def fit_without_val(self, *args, **kw):
        kw["val"] = None
        fitted.append(real_fit(self, *args, **kw))
        return fitted[-1]

    monkeypatch.setattr(LearnedMapFit, "fit", fit_without_val)
    expert = tiny_model("qwen2", seed=1, d=48, n_layers=5)
    target = tiny_model("llama", seed=2, n_layers=4)
    spec = write_task(tmp_path / "task.jsonl")
    config = EvalConfig(
        task=spec, target=target, expert=expert, methods="none,expertsteer-trained", **FAST
    )
    result = run_eval(config, progress=False)
    report = result.report
    real = {m["name"]: m for m in report["methods"]}["expertsteer-trained:ridge:depth"]
    m = fitted[0].map_
    assert real["epoch"] == 4 and real["scale"] == m.scale != 0.0
    _, _, test = load_task(spec).split(seed=0)
    plans = m.plans(m.read(expert, [it.prompt for it in test.items]))
    want = mc_correct(option_logprobs(target, test.items, plan=plans), test.items, report["norm"])
    assert real["score"] == want.mean()
    assert real["per_seed"][0]["correct"] == [int(x) for x in want]
    assert {f: len(v) for f, v in real["nulls"].items()} == {f: 2 for f in TRAINED_NULLS}
    assert all(0.0 <= x <= 1.0 for v in real["nulls"].values() for x in v)
    # the map is the run's artifact: written with the report, read back by load_plan
    write_report(result, tmp_path / "out")
    folder = json.loads((tmp_path / "out" / "results.json").read_text())["plans"]
    back = load_plan(tmp_path / "out" / folder["expertsteer-trained:ridge:depth"])
    h = m.read(expert, [it.prompt for it in test.items])
    assert isinstance(back, LearnedMap)
    torch.testing.assert_close(back.deltas(h), m.deltas(h), rtol=0, atol=0)
