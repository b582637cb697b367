import json

import numpy as np
import pytest

from expertsteer.eval import EvalConfig, load_task, run_eval, write_report
from expertsteer.eval.scoring import mc_correct, option_logprobs
from expertsteer.io import cache_root
from tiny import tiny_model, write_task

REAL_TARBALL = cache_root() / "downloads" / "bigbench-1.0.0.tar.gz"


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path, monkeypatch):
    # Real-model tests keep the shared cache: it holds the converted models.
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


FAST = dict(n_nulls=2, align_texts=40, alphas=(0.0, 1.0, 4.0), layer_counts=(1, 2), n_pairs=2)


def test_end_to_end_on_tiny_models(tmp_path):
    expert = tiny_model("qwen2", seed=1, d=48, n_layers=5)
    target = tiny_model("llama", seed=2, n_layers=4)
    spec = write_task(tmp_path / "task.jsonl")
    config = EvalConfig(
        task=spec,
        target=target,
        expert=expert,
        methods="none,majority,prompt,expert,mean-diff,expertsteer:ridge,control",
        **FAST,
    )
    result = run_eval(config, progress=False)
    report = result.report
    assert report["n"] == {"train": 24, "val": 10, "test": 14}
    assert report["balanced"] and report["seeds"] == [0]
    assert report["majority_rate"] == 0.5  # binary: label-balanced test split
    assert report["library_version"] and "git_commit" in report
    names = [m["name"] for m in report["methods"]]
    assert names == [
        "none",
        "majority",
        "prompt",
        "expert",
        "mean-diff",
        "expertsteer:ridge:depth",
        "expertsteer:ridge:lowest",
        "control:random-expert:ridge:depth",
        "control:target-as-expert:ridge:depth",
        "control:random-expert:ridge:lowest",
        "control:target-as-expert:ridge:lowest",
    ]
    # The reported numbers are the models' own scores on the seeded test split.
    _, val, test = load_task(spec).split(seed=0)
    norm = report["norm"]
    direct = mc_correct(option_logprobs(target, test.items), test.items, norm).mean()
    rows = {m["name"]: m for m in report["methods"]}
    assert rows["none"]["score"] == pytest.approx(direct)
    assert report["models"]["target"]["test"][norm] == pytest.approx(direct)
    expert_norm = report["models"]["expert"]["norm"]
    assert rows["expert"]["score"] == report["models"]["expert"]["test"][expert_norm]
    assert rows["majority"]["score"] == 0.5 and rows["majority"]["balanced_accuracy"] == 0.5
    for m in report["methods"]:
        lo, hi = m["ci95"]
        assert lo <= m["score"] <= hi and m["n_correct"] == round(m["score"] * 14)
        assert m["verdict"] and len(m["per_seed"]) == 1 and m["per_seed"][0]["seed"] == 0
        if m["name"] != "none":
            assert 0 <= m["p_vs_none"] <= m["p_vs_none_adjusted"] <= 1  # Holm never lowers p
    for name in ("expertsteer:ridge:depth", "expertsteer:ridge:lowest"):
        m = rows[name]
        assert m["kind"] == "transfer" and m["alpha"] in (0.0, 1.0, 4.0)
        assert len(m["nulls"]["shuffled_labels"]) == 2 and len(m["nulls"]["random_direction"]) == 2
        assert isinstance(m["beats_null"], bool) and "p_vs_best_baseline" in m
        assert m["p_vs_best_baseline"] <= m["p_adjusted"] and m["best_baseline"] == "mean-diff"
        assert m["null_rank_p"] >= 1 / 3  # two nulls per family: 1/3 is the smallest rank p
        assert m["val_score"] == max(g["score"] for g in report["sweeps"][name])
        variant = name.split(":", 1)[1]
        assert set(m["p_vs_controls"]) == {
            f"control:random-expert:{variant}",
            f"control:target-as-expert:{variant}",
        }
        for control, score in m["control_scores"].items():
            assert score == rows[control]["score"] and rows[control]["kind"] == "control"
        if m["alpha"]:
            assert m["pairs"] and all(j in m["layers"] for _, j in m["pairs"])
    assert rows["mean-diff"]["kind"] == "target-only" and "p_vs_none" in rows["mean-diff"]

    out = write_report(result, tmp_path / "report")
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == spec and saved["n"]["test"] == 14
    for m in saved["methods"]:
        assert {"name", "score", "ci95", "alpha", "pairs", "balanced_accuracy"} <= set(m)
    md = (out / "results.md").read_text()
    assert "| expertsteer:ridge:depth |" in md and "- **control:random-expert:ridge:depth**" in md
    from expertsteer.plan import SteeringPlan

    for name, folder in saved["plans"].items():
        plan = SteeringPlan.from_pretrained(out / folder)
        assert plan.layers == rows[name]["layers"] and rows[name]["alpha"] != 0
    for png in ("accuracy.png", "alpha_sweep.png", "mi_matrix.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_the_papers_auto_encoders_run_end_to_end(tmp_path):
    # ae (the paper's, reconstruction only) and paired-ae through the same harness, with nulls.
    expert = tiny_model("qwen2", seed=1, d=48, n_layers=5)
    target = tiny_model("llama", seed=2, n_layers=4)
    spec = write_task(tmp_path / "task.jsonl")
    methods = "none,expertsteer:ae:lowest,expertsteer:paired-ae:depth"
    config = EvalConfig(task=spec, target=target, expert=expert, methods=methods, **FAST)
    report = run_eval(config, progress=False).report
    rows = {m["name"]: m for m in report["methods"]}
    assert list(rows) == ["none", "expertsteer:ae:lowest", "expertsteer:paired-ae:depth"]
    for name in list(rows)[1:]:
        m = rows[name]
        assert m["kind"] == "transfer" and m["alpha"] in (0.0, 1.0, 4.0)
        assert len(m["nulls"]["shuffled_labels"]) == 2 and isinstance(m["beats_null"], bool)
        assert m["val_score"] == max(g["score"] for g in report["sweeps"][name])


def test_same_seed_same_report(tmp_path):
    target = tiny_model("gpt2", seed=3, n_layers=4)
    spec = write_task(tmp_path / "task.jsonl")
    config = EvalConfig(task=spec, target=target, methods="none,pca", **FAST)
    a, b = (run_eval(config, progress=False).report for _ in range(2))
    assert _scores_only(a) == _scores_only(b)


@pytest.mark.real
def test_mean_beats_sum_on_code_line_description():
    """The issue's observation: SmolLM2 ~0.15 with summed, ~0.62 with mean log-likelihood."""
    from expertsteer.models import load_model

    if not REAL_TARBALL.is_file():
        pytest.skip("BIG-bench sdist not downloaded")
    task = load_task("bigbench:code_line_description")
    scores = option_logprobs(load_model("smollm2-135m"), task.items)
    acc_sum = mc_correct(scores, task.items, "sum").mean()
    acc_mean = mc_correct(scores, task.items, "mean").mean()
    assert acc_sum < 0.3 < 0.5 < acc_mean, (acc_sum, acc_mean)


@pytest.mark.real
def test_real_eval_few_items(tmp_path):
    if not REAL_TARBALL.is_file():
        pytest.skip("BIG-bench sdist not downloaded")
    config = EvalConfig(
        task="bigbench:code_line_description",
        target="smollm2-135m",
        expert="qwen2.5-coder-0.5b",
        methods="none,expert,mean-diff,expertsteer:ridge:depth",
        n_nulls=1,
        alphas=(0.0, 1.0),
        layer_counts=(4,),
        align_texts=64,
        limit=30,  # train 15 / val 6 / test 9: the real path end to end, kept short for CI
    )
    report = run_eval(config, progress=False).report
    rows = {m["name"]: m for m in report["methods"]}
    target = report["models"]["target"]
    other = "sum" if report["norm"] == "mean" else "mean"
    assert target["val"][report["norm"]] >= target["val"][other]  # chosen on validation
    expert = report["models"]["expert"]
    assert rows["expert"]["score"] == expert["test"][expert["norm"]]
    assert np.isfinite([m["score"] for m in report["methods"]]).all()
    assert rows["expertsteer:ridge:depth"]["nulls"]["shuffled_labels"]


def _scores_only(report: dict) -> str:
    """Everything but wall-clock times and the shared-prompt switch itself."""
    report = json.loads(json.dumps(report))
    report.pop("seconds")
    report["config"].pop("shared_prompt")
    for m in report["methods"]:
        m.pop("seconds", None)
        for s in m["per_seed"]:
            s.pop("seconds", None)
    return json.dumps(report, sort_keys=True)


def test_shared_prompt_and_whole_pairs_give_the_same_report(tmp_path):
    expert = tiny_model("qwen2", seed=1, d=48, n_layers=5)
    target = tiny_model("llama", seed=2, n_layers=4)
    target.model.double()  # equal to rounding in float32; exactly equal choices here
    expert.model.double()
    spec = write_task(tmp_path / "task.jsonl")
    methods = "none,prompt,mean-diff,expertsteer:ridge:depth"
    reports = [
        run_eval(
            EvalConfig(
                task=spec,
                target=target,
                expert=expert,
                methods=methods,
                shared_prompt=shared,
                **FAST,
            ),
            progress=False,
        ).report
        for shared in (True, False)
    ]
    assert reports[0]["config"]["shared_prompt"] and not reports[1]["config"]["shared_prompt"]
    assert _scores_only(reports[0]) == _scores_only(reports[1])


def test_seeds_run_their_own_splits_and_pool(tmp_path):
    """Each seed its own split and fits; pooled rows are the exact tests on all seeds' items."""
    from expertsteer.eval.stats import mcnemar_p

    target = tiny_model("llama", seed=2, n_layers=4)
    spec = write_task(tmp_path / "task.jsonl")
    config = EvalConfig(task=spec, target=target, methods="none,mean-diff", seeds=(0, 1), **FAST)
    report = run_eval(config, progress=False).report
    assert report["seeds"] == [0, 1]
    rows = {m["name"]: m for m in report["methods"]}
    md = rows["mean-diff"]
    assert [s["seed"] for s in md["per_seed"]] == [0, 1] and md["n"] == 28
    alone = [
        run_eval(EvalConfig(task=spec, target=target, methods="none,mean-diff", seeds=(s,), **FAST),
                 progress=False).report
        for s in (0, 1)
    ]  # fmt: skip
    per = [{m["name"]: m for m in r["methods"]} for r in alone]
    for k in (0, 1):  # a seed's row in the pooled report is that seed's own report
        assert md["per_seed"][k]["score"] == per[k]["mean-diff"]["score"]
        assert md["per_seed"][k]["alpha"] == per[k]["mean-diff"]["alpha"]
    assert md["score"] == pytest.approx(np.mean([p["mean-diff"]["score"] for p in per]))
    assert md["per_seed"][0]["correct"] == per[0]["mean-diff"]["per_seed"][0]["correct"]
    assert sum(md["per_seed"][0]["correct"]) == per[0]["mean-diff"]["n_correct"]
    # the pooled exact test: the discordant items of both seeds together
    correct = lambda name: np.concatenate(  # noqa: E731
        [_correct(r, name) for r in alone]
    )
    assert md["p_vs_none"] == mcnemar_p(correct("mean-diff"), correct("none"))
    with pytest.raises(ValueError, match="distinct"):
        EvalConfig(task=spec, target=target, seeds=(1, 1)).check()


def _correct(report: dict, name: str) -> np.ndarray:
    """A method's per-item test correctness as the report records it (one seed)."""
    (row,) = [m for m in report["methods"] if m["name"] == name]
    return np.array(row["per_seed"][0]["correct"])


def test_concept_transfer_runs_only_when_asked(tmp_path, monkeypatch):
    import expertsteer.eval.runner as runner_mod
    from expertsteer.eval.tasks import Task
    from tiny import sentiment_items

    expert = tiny_model("qwen2", seed=1, d=48, n_layers=5)
    target = tiny_model("llama", seed=2, n_layers=4)
    items = sentiment_items(40)
    monkeypatch.setattr(runner_mod, "load_task", lambda spec: Task(spec, items, "", "positive"))
    calls = []
    monkeypatch.setattr(runner_mod, "concept_spans", lambda *a, **k: calls.append(1))
    for concept in (False, True):
        config = EvalConfig(
            task="toy",
            target=target,
            expert=expert,
            methods="none,expert",
            concept=concept,
            **FAST,
        )
        assert run_eval(config, progress=False).report["concept_transfer"] is None
        assert len(calls) == int(concept)


def test_generation_rows_pool_seeds_with_exact_paired_tests_holm_adjusted():
    """Hand-computed: pooled over two seeds, 'a' is right on 3 items where none is wrong and
    never the reverse (McNemar 2 · 0.5³ = 0.25), 'b' wrong on 1 where none is right (p 1);
    Holm over the two: 0.5 and 1."""
    from expertsteer.eval.runner import _generation_rows

    runs = [
        {"seed": 0, "generation": {"none": np.array([0.0, 0, 1, 0]), "a": np.array([1.0, 1, 1, 0]),
                                   "b": np.array([0.0, 0, 1, 0])}},
        {"seed": 1, "generation": {"none": np.array([0.0, 1]), "a": np.array([1.0, 1]),
                                   "b": np.array([0.0, 0])}},
    ]  # fmt: skip
    rows = [{"name": "none"}, {"name": "a"}, {"name": "b"}, {"name": "expert"}]
    _generation_rows(rows, runs)
    none, a, b, expert = rows
    assert none["generation_score"] == 2 / 6 and "generation_p_vs_none" not in none
    assert a["generation_score"] == 5 / 6 and b["generation_score"] == 1 / 6
    assert a["generation_p_vs_none"] == 0.25 and b["generation_p_vs_none"] == 1.0
    assert a["generation_p_adjusted"] == 0.5 and b["generation_p_adjusted"] == 1.0
    assert expert == {"name": "expert"}  # not scored by generation
    assert len(a["generation_ci95"]) == 2
