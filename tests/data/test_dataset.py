"""The dataset type: examples, splits, limits, the label-shuffle null, and the fitting checks."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch

from expertsteer.data.dataset import (
    MIN_PER_CLASS,
    Dataset,
    DataSpecError,
    Example,
    check_classes,
    check_dataset,
)
from expertsteer.data.specs import load_data
from expertsteer.pipeline import ExpertSteer, fit_target_only

POS = ["good", "great", "nice", "happy", "love", "fine", "best"]
NEG = ["bad", "awful", "sad", "hate", "worst", "poor", "ugly"]
NEUTRAL = ["the", "cat", "sat", "on", "a", "mat", "then", "ran", "to", "house", "tree", "blue"]


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def labelled(n_pos: int, n_neg: int) -> list[dict]:
    return [{"text": f"good {i}", "label": 1} for i in range(n_pos)] + [
        {"text": f"bad {i}", "label": 0} for i in range(n_neg)
    ]


def synthetic(n: int = 24, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    examples = []
    for k in range(n):
        words = rng.sample(NEUTRAL, 3) + rng.sample(POS if k % 2 == 0 else NEG, 2)
        rng.shuffle(words)
        examples.append(Example(" ".join(words) + f" {k}", int(k % 2 == 0)))
    return Dataset("synthetic", "labelled", tuple(examples))


def align_texts(n: int = 40, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(NEUTRAL + POS + NEG, k=8)) + f" #{k}" for k in range(n)]


def labelled_ds(n_pos: int, n_neg: int) -> Dataset:
    examples = [Example(f"p{i}", 1) for i in range(n_pos)] + [
        Example(f"n{i}", 0) for i in range(n_neg)
    ]
    return Dataset("toy", "labelled", tuple(examples))


def pairs_ds(n: int) -> Dataset:
    examples = [Example(f"{s}{g}", y, g) for g in range(n) for s, y in (("y", 1), ("n", 0))]
    return Dataset("toy", "pairs", tuple(examples))


def test_split_labelled_is_stratified_disjoint_and_seeded():
    ds = labelled_ds(40, 160)
    parts = ds.split((0.7, 0.15, 0.15), seed=3)
    assert [len(p) for p in parts] == [140, 30, 30]
    assert [int(p.labels.sum()) for p in parts] == [28, 6, 6]
    all_texts = [t for p in parts for t in p.texts]
    assert sorted(all_texts) == sorted(ds.texts)
    assert [p.texts for p in parts] == [p.texts for p in ds.split((0.7, 0.15, 0.15), seed=3)]
    assert parts[0].texts != ds.split((0.7, 0.15, 0.15), seed=4)[0].texts


def test_split_pairs_keeps_pairs_whole():
    ds = pairs_ds(21)
    parts = ds.split((0.5, 0.5), seed=0)
    assert [len(p) for p in parts] in ([22, 20], [20, 22])
    groups = [set(p.groups.tolist()) for p in parts]
    assert not groups[0] & groups[1] and groups[0] | groups[1] == set(range(21))
    for p in parts:  # Dataset itself refuses a half pair; check the counts too
        assert int(p.labels.sum()) * 2 == len(p)


def test_split_errors():
    with pytest.raises(ValueError, match="sum to 1"):
        labelled_ds(10, 10).split((0.5, 0.4))
    with pytest.raises(ValueError, match="positive"):
        labelled_ds(10, 10).split((1.0, 0.0))
    with pytest.raises(ValueError, match="non-empty"):
        pairs_ds(2).split((0.4, 0.3, 0.3))


def test_limit_balanced_seeded_and_shortfall():
    ds = labelled_ds(50, 50)
    a = ds.limit(11, seed=5)
    assert len(a) == 11 and int(a.labels.sum()) == 6
    assert a.texts == ds.limit(11, seed=5).texts and a.texts != ds.limit(11, seed=6).texts
    short = labelled_ds(3, 50).limit(10)
    assert int(short.labels.sum()) == 3 and len(short) == 10
    assert ds.limit(1000) is ds
    p = pairs_ds(30).limit(11, seed=1)
    assert len(p) == 10 and p.groups.unique().numel() == 5
    assert p.texts == pairs_ds(30).limit(11, seed=1).texts


def test_subset_must_keep_whole_pairs():
    ds = pairs_ds(4)
    assert ds.subset([2, 3]).texts == ["y1", "n1"]
    with pytest.raises(ValueError, match="exactly one positive and one negative"):
        ds.subset([0, 1, 2])


def test_examples_are_hashable_and_read_only():
    a = Example("t", 1, meta={"k": "v"})
    assert a == Example("t", 1, meta={"k": "v"}) and hash(a) == hash(Example("t", 1))
    with pytest.raises(TypeError):
        a.meta["k"] = "w"  # type: ignore[index]


def test_shuffle_labels_is_a_valid_null():
    from expertsteer.data import Dataset, Example

    labelled = Dataset("x", "labelled", tuple(Example(f"t{k}", k % 2) for k in range(40)))
    null = labelled.shuffle_labels(seed=3)
    assert null.texts == labelled.texts
    assert sorted(null.labels.tolist()) == sorted(labelled.labels.tolist())
    assert not torch.equal(null.labels, labelled.labels)
    assert torch.equal(null.labels, labelled.shuffle_labels(seed=3).labels)
    pairs = Dataset("p", "pairs", tuple(Example(f"t{k}", k % 2, group=k // 2) for k in range(40)))
    flipped = pairs.shuffle_labels(seed=0)  # Dataset validation: one positive per pair still
    assert torch.equal(flipped.groups, pairs.groups)
    assert 0 < int((flipped.labels != pairs.labels).sum()) < 40


def test_dataset_refuses_bad_kinds_labels_and_groups():
    with pytest.raises(ValueError, match="kind must be 'labelled' or 'pairs'"):
        Dataset("x", "mixed", ())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        Dataset("x", "labelled", (Example("a", 2),))
    with pytest.raises(ValueError, match="labelled examples carry no group"):
        Dataset("x", "labelled", (Example("a", 1, group=0),))
    assert repr(labelled_ds(3, 2)) == "Dataset('toy', labelled, 5 examples: 3 positive, 2 negative)"


def test_check_classes_and_check_dataset():
    assert MIN_PER_CLASS == 4
    check_classes(labelled_ds(4, 4))
    check_classes(pairs_ds(4))
    with pytest.raises(DataSpecError, match="no usable examples"):
        check_classes(Dataset("empty", "labelled", ()))
    with pytest.raises(DataSpecError, match="3 contrast pairs; at least 4 are needed"):
        check_classes(pairs_ds(3))
    with pytest.raises(DataSpecError, match="every example is negative"):
        check_dataset(labelled_ds(0, 8))


# ----------------------------------------------------------------------------------------------
# copied from tests/test_reliability.py


def test_one_class_data(tmp_path):
    spec = write_jsonl(tmp_path / "d.jsonl", labelled(8, 0))
    with pytest.raises(DataSpecError) as info:
        load_data(spec)
    msg = str(info.value)
    assert "every example is positive (1)" in msg and "needs both classes" in msg
    assert "add at least 4 negative (0) examples" in msg


def test_too_few_examples_for_the_splits():
    data = synthetic(8)
    with pytest.raises(ValueError) as info:
        data.split((0.8, 0.1, 0.1))
    msg = str(info.value)
    assert "8 examples are too few to split into 3 non-empty parts" in msg
    assert "part(s) [2] would be empty" in msg and "use more data, fewer parts" in msg


@pytest.mark.parametrize(
    "examples, message",
    [
        ([Example(f"t{i}", 1) for i in range(8)], "every example is positive (1)"),
        (
            [Example(f"t{i}", i % 2) for i in range(8)] + [Example("t0", 0)],
            "example 8 repeats the text of example 0 ('t0'); remove duplicates",
        ),
        (
            [Example(f"t{i}", i % 2) for i in range(8)] + [Example("  ", 1)],
            "examples [8] have empty texts; remove them or fill them in",
        ),
        ([Example(f"t{i}", i % 2) for i in range(6)], "3 positive and 3 negative examples"),
    ],
)
def test_hand_built_data_is_refused_before_any_model_is_loaded(examples, message):
    data = Dataset("mine", "labelled", tuple(examples))
    # Model names that cannot load: the data error must come first.
    missing = "/nonexistent/expert-model"
    with pytest.raises(DataSpecError) as info:
        ExpertSteer(missing, missing, align_texts=align_texts(), progress=False).fit(data)
    assert message in str(info.value)
    with pytest.raises(DataSpecError, match=re.escape(message)):
        fit_target_only(missing, data, progress=False)
    with pytest.raises(DataSpecError, match=re.escape(message)):
        check_dataset(data)
