"""BIG-bench: extraction from the sdist, task reading, prompts and multiple-choice pairs."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from expertsteer.data.dataset import DataSpecError
from expertsteer.data.sources.bigbench import (
    BIGBENCH,
    append_answer,
    bigbench_flag,
    bigbench_leaves,
    bigbench_prompt,
    bigbench_task,
    bigbench_tasks,
    load_bigbench,
)
from expertsteer.data.specs import load_data
from expertsteer.io import cache_root


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """An empty cache (the isolation tests/test_reliability.py gave every test)."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


REAL_TARBALL = cache_root() / "downloads" / "bigbench-1.0.0.tar.gz"


needs_bigbench = pytest.mark.skipif(
    not (REAL_TARBALL.is_file() or (cache_root() / "bigbench-1.0.0").is_dir()),
    reason="BIG-bench sdist not downloaded (expertsteer.data.download_bigbench())",
)


@needs_bigbench
def test_bigbench_misconceptions():
    ds = load_data("bigbench:misconceptions")
    task = bigbench_task("misconceptions")
    assert ds.kind == "pairs" and len(ds) == 2 * len(task["examples"])
    prefix = task["task_prefix"]
    for k, raw in enumerate(task["examples"]):
        pos, neg = ds.examples[2 * k : 2 * k + 2]
        assert (pos.label, neg.label) == (1, 0) and pos.group == neg.group
        assert pos.prompt == f"{prefix}\nQ: {raw['input']}\nA: " == neg.prompt
        assert pos.text.startswith(pos.prompt) and neg.text.startswith(neg.prompt)
        correct = [option for option, score in raw["target_scores"].items() if score == 1]
        assert [pos.text[len(pos.prompt) :]] == correct
        assert neg.text[len(neg.prompt) :] not in correct


@needs_bigbench
def test_bigbench_seed_draws_wrong_answer_and_choices_are_listed():
    a = load_data("bigbench:code_line_description", seed=0)
    b = load_data("bigbench:code_line_description", seed=1)
    assert [e.text for e in a.examples if e.label] == [e.text for e in b.examples if e.label]
    assert a.texts != b.texts
    first = a.examples[0]
    assert first.text.startswith("Python code:\n") and "\n  choice: " in first.prompt
    assert first.prompt.endswith("\n\nEnglish language description:\n")


@needs_bigbench
def test_bigbench_container_task_loads_its_subtasks():
    names = bigbench_tasks()
    subtasks = [n for n in names if n.startswith("logical_deduction/")]
    assert "logical_deduction" in names and len(subtasks) == 3
    whole = load_data("bigbench:logical_deduction")
    parts = [load_data(f"bigbench:{n}") for n in subtasks]
    assert len(whole) == sum(len(p) for p in parts)
    assert {e.meta["subtask"] for e in whole.examples} == {n.split("/")[1] for n in subtasks}
    assert len(bigbench_task("logical_deduction")["subtasks"]) == 3


@needs_bigbench
def test_bigbench_errors():
    with pytest.raises(DataSpecError, match="not multiple-choice"):
        load_data("bigbench:simple_arithmetic_json")
    with pytest.raises(DataSpecError, match="Did you mean 'misconceptions'") as info:
        load_data("bigbench:misconception")
    assert "bigbench_tasks()" in str(info.value)


def toy_task(name: str, n: int, options: int = 3) -> dict:
    return {
        "canary": "toy canary",
        "name": name,
        "examples": [
            {
                "input": f"{name} {i}",
                "target_scores": {f"o{j}": int(j == i % options) for j in range(options)},
            }
            for i in range(n)
        ],
    }


def make_tarball(path: Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def test_bigbench_extraction_from_a_toy_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    with pytest.raises(DataSpecError, match="download_bigbench"):
        load_data("bigbench:toy")
    base = "bigbench-1.0.0/bigbench/benchmark_tasks/"
    generative = {"canary": "c", "name": "gen", "examples": [{"input": "1+1", "target": "2"}] * 5}
    make_tarball(
        tmp_path / "downloads" / "bigbench-1.0.0.tar.gz",
        {
            "bigbench-1.0.0/setup.py": b"",
            base + "toy/task.json": json.dumps(toy_task("toy", 6)).encode(),
            base + "toy/README.md": b"readme",
            base + "box/task.json": json.dumps({"canary": "c", "name": "box"}).encode(),
            base + "box/a/task.json": json.dumps(toy_task("a", 4)).encode(),
            base + "box/b/task.json": json.dumps(toy_task("b", 5, options=2)).encode(),
            base + "gen/task.json": json.dumps(generative).encode(),
            base + "prog/task.py": b"",
            base + "too/deep/x/task.json": b"{}",
        },
    )
    assert bigbench_tasks() == ["box", "box/a", "box/b", "gen", "toy"]
    root = tmp_path / "bigbench-1.0.0"
    assert {p.name for p in root.rglob("*") if p.is_file()} == {"task.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bigbench-1.0.0", "downloads"]
    toy = load_data("bigbench:toy")
    assert (
        len(toy) == 12
        and toy.texts[0] == "Q: toy 0\n  choice: o0\n  choice: o1\n  choice: o2\nA: o0"
    )
    box = load_data("bigbench:box")
    assert len(box) == 18 and [e.meta["subtask"] for e in box.examples[::8]] == ["a", "b", "b"]
    with pytest.raises(DataSpecError, match="not multiple-choice"):
        load_data("bigbench:gen")


def test_bigbench_corrupt_sdist_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    tarball = tmp_path / "downloads" / "bigbench-1.0.0.tar.gz"
    tarball.parent.mkdir()
    tarball.write_bytes(b"\x1f\x8b\x08\x00not really gzip")
    with pytest.raises(DataSpecError, match="delete it and download it again: python -c"):
        bigbench_tasks()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]


@pytest.mark.real  # one pass over the real 358 MB sdist writing 1.7 GB of task.json files
@pytest.mark.skipif(not REAL_TARBALL.is_file(), reason="BIG-bench sdist not downloaded")
def test_bigbench_extraction_from_the_real_sdist(tmp_path, monkeypatch):
    (tmp_path / "downloads").symlink_to(REAL_TARBALL.parent)
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    try:
        start = time.perf_counter()
        names = bigbench_tasks()
        print(f"BIG-bench task.json extraction: {time.perf_counter() - start:.1f} s")
        assert len(names) == 1041 and "misconceptions" in names
        assert len(load_data("bigbench:misconceptions")) == 438
    finally:  # the files carry BIG-bench's canary: leave no copy behind
        shutil.rmtree(tmp_path / "bigbench-1.0.0", ignore_errors=True)


def test_prompt_flag_and_answer_follow_bigbench():
    assert BIGBENCH == "bigbench-1.0.0"
    task = {"task_prefix": "Answer.\n"}
    assert bigbench_prompt(task, "2+2?", ["5", "4"]) == (
        "Answer.\n\nQ: 2+2?\n  choice: 4\n  choice: 5\nA: "
    )
    plain = {"append_choices_to_input": "false", "example_output_prefix": "\nA:"}
    assert bigbench_prompt(plain, "2+2?", ["5", "4"]) == "Q: 2+2?\nA:"
    assert [bigbench_flag(v) for v in ("false", " True ", 0, 1, True)] == [
        False,
        True,
        False,
        True,
        True,
    ]
    assert append_answer("Q: x\nA: ", "4") == "Q: x\nA: 4"
    assert append_answer("Q: x\nA:", "4") == "Q: x\nA: 4"
    assert append_answer("", "4") == "4"
    # a choice with its own leading space (eval tasks' choices) gets no second one
    assert append_answer("Tweet: hi\nSentiment:", " positive") == "Tweet: hi\nSentiment: positive"
    assert append_answer("A: ", " 4") == "A:  4"  # both sides' whitespace is the text's own


def test_leaves_and_pairs_of_a_toy_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    root = tmp_path / BIGBENCH
    for name, task in {
        "toy": toy_task("toy", 5),
        "box/a": toy_task("a", 4),
        "box/b": toy_task("b", 4, options=2),
    }.items():
        (root / name).mkdir(parents=True)
        (root / name / "task.json").write_text(json.dumps(task))
    assert [name for name, _ in bigbench_leaves("box")] == ["box/a", "box/b"]
    assert [name for name, _ in bigbench_leaves("toy")] == ["toy"]
    with pytest.raises(DataSpecError, match="Did you mean 'toy'"):
        bigbench_leaves("toys")
    data = load_bigbench("my spec", "toy", seed=0)
    assert data.spec == "my spec" and data.kind == "pairs" and len(data) == 10
    # seeded wrong answers: the same seed gives the same pairs
    assert data.texts == load_bigbench("my spec", "toy", seed=0).texts
    with pytest.raises(DataSpecError, match="needs a task"):
        load_bigbench("bigbench:", "", seed=0)


# ----------------------------------------------------------------------------------------------
# moved from tests/test_reliability.py (its BIG-bench half; the data-spec half is in
# tests/data/test_specs.py::test_unknown_data_spec_names)


def test_unknown_bigbench_task_name_suggests(isolated_cache):
    # BIG-bench: a toy sdist with one task; a near miss is suggested
    task = {"examples": [{"input": "q", "target_scores": {"a": 1, "b": 0}}]}
    tarball = cache_root() / "downloads" / "bigbench-1.0.0.tar.gz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz") as tar:
        body = json.dumps(task).encode()
        member = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/misconceptions/task.json")
        member.size = len(body)
        tar.addfile(member, io.BytesIO(body))
    with pytest.raises(DataSpecError) as info:
        load_data("bigbench:misconception")
    assert str(info.value).startswith(
        "unknown BIG-bench task 'misconception'. Did you mean 'misconceptions'? List the 1 task"
    )
