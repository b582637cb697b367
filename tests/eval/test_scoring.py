import numpy as np
import pytest
import torch

from expertsteer.eval.scoring import (
    alias_match,
    concept_margin,
    continuation,
    generation_correct,
    mc_correct,
    option_logprobs,
)
from expertsteer.eval.tasks import Item
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.steer import sequence_logprobs
from tiny import tiny_model


def test_mc_correct_by_sum_and_by_mean():
    items = [Item("q", ("a", "b"), 0), Item("q2", ("a", "b", "c"), 2)]
    # columns: summed, per-token mean log-likelihood
    scores = [
        np.array([[-6.0, -1.0], [-4.0, -2.0]]),  # sum prefers b (wrong), mean prefers a (right)
        np.array([[-3.0, -3.0], [-3.0, -1.5], [-2.0, -1.0]]),  # both prefer c (right)
    ]
    assert mc_correct(scores, items, "sum").tolist() == [0.0, 1.0]
    assert mc_correct(scores, items, "mean").tolist() == [1.0, 1.0]
    # ties go to the first choice
    tie = [np.array([[-1.0, -1.0], [-1.0, -1.0]])]
    assert mc_correct(tie, [Item("q", ("a", "b"), 1)], "sum").tolist() == [0.0]


def test_concept_margin():
    scores = [np.array([[-1.0, 0.0], [-3.0, 0.0], [-5.0, 0.0]])]
    assert concept_margin(scores, [0], "sum").tolist() == [3.0]  # -1 - mean(-3, -5)


def test_continuation_spacing():
    assert continuation("Q: x\nA:", "yes") == " yes"
    assert continuation("Q: x\nA: ", "yes") == "yes"
    assert continuation("Sentiment:", " positive") == " positive"


@pytest.mark.parametrize(
    "text, aliases, expected",
    [
        ("It is the Protein Sequence.", ["protein sequence"], True),
        ("proteins sequenced", ["protein sequence"], False),  # whole words only
        ("A codon-meaning table", ["codon meaning"], True),  # punctuation ignored
        ("nothing here", ["", "x y"], False),
    ],
)
def test_alias_match(text, aliases, expected):
    assert alias_match(text, aliases) is expected


def test_generation_correct():
    item = Item(
        "q",
        ("amino acid sequence", "program"),
        0,
        aliases=("protein sequence",),
        traps=("software commands",),
    )
    assert generation_correct("Amino acid sequence", item)  # exact (normalised)
    assert generation_correct("It gives the protein sequence.", item)
    assert not generation_correct("protein sequence or software commands", item)  # hedging
    assert not generation_correct("program instructions", item)


def test_option_logprobs_match_sequence_logprobs():
    lm = tiny_model("llama", seed=0, n_layers=3)
    items = [Item("abc:", ("x", "yz"), 0), Item("de f", ("g", "hij", "k"), 1)]
    out = option_logprobs(lm, items)
    assert [s.shape for s in out] == [(2, 2), (3, 2)]
    prompts = ["abc:", "abc:", "de f", "de f", "de f"]
    conts = [" x", " yz", " g", " hij", " k"]
    sums = sequence_logprobs(lm, prompts, conts, reduce="sum")
    means = sequence_logprobs(lm, prompts, conts, reduce="mean")
    got = np.concatenate(out)
    assert np.allclose(got[:, 0], sums.numpy(), atol=1e-5)
    assert np.allclose(got[:, 1], means.numpy(), atol=1e-5)
    # steered scoring differs, and α = 0 is the unsteered score
    info = ModelInfo.of(lm)
    plan = SteeringPlan({1: torch.ones(lm.hidden_size)}, {1: 3.0}, info)
    steered = np.concatenate(option_logprobs(lm, items, plan=plan))
    assert not np.allclose(steered, got)
    assert np.allclose(np.concatenate(option_logprobs(lm, items, plan=plan, alpha=0.0)), got)
