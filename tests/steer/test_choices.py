import functools

import pytest
import torch
import transformers as tf
from steer_helpers import make_plan, n_hooks
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from expertsteer.models import wrap_model
from expertsteer.steer import TokenScope
from expertsteer.steer import choices as choices_module
from expertsteer.steer.choices import choice_logprobs, shared_length
from expertsteer.steer.infer import pair_tokens, sequence_logprobs
from tiny import ARCHS, ENCODERS, VOCAB, tiny_model

PROMPTS = ["the cat sat", "a b", "xyz qq rr", "hello there my friend", "z"]
CHOICES = [
    [" on", " under", " by"],
    [" c", " dd"],
    [" s", " tt", " uuu", " v"],
    [" !", " ?"],
    [" y"],
]
SCOPES = ["all", "prompt", "generated", "last:2", [[0, -1], [1], [-2], [0], [0]]]
CAUSAL = [a for a in ARCHS if a not in ENCODERS]


def per_option(value, choices=CHOICES):
    return [v for v, cs in zip(value, choices) for _ in cs]


def full_sequence(lm, prompts, choices, **kw):
    """The reference: every prompt + choice scored whole by sequence_logprobs, regrouped."""
    flat = [c for cs in choices for c in cs]
    per_token = sequence_logprobs(
        lm, per_option(prompts, choices), flat, reduce="none", batch_size=3, **kw
    )
    out, r = [], 0
    for cs in choices:
        block = per_token[r : r + len(cs)]
        width = int((~block.isnan()).sum(1).max())
        out.append(block[:, :width])
        r += len(cs)
    return out


def assert_same(got, ref, atol):
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a, b, rtol=0, atol=atol, equal_nan=True)


def float64(arch, **kw):
    lm = tiny_model(arch, **kw)
    lm.model.double()
    return lm


@pytest.mark.parametrize("arch", CAUSAL)
@pytest.mark.parametrize("scope", SCOPES, ids=["all", "prompt", "generated", "last2", "positions"])
def test_equals_full_sequence_scoring(arch, scope):
    lm = float64(arch, padding_side="left")  # the tokenizer's own padding side plays no part
    plan = make_plan(lm, {1: 2.0, 2: -1.0})
    rows = [plan, None, 0.5 * plan, plan, None]
    alphas = [1.0, 0.0, 2.0, -1.0, 3.0]
    cases = [
        ({}, {}),
        ({"plan": plan}, {"plan": plan}),
        ({"plan": rows}, {"plan": per_option(rows)}),
        ({"plan": plan, "alpha": alphas}, {"plan": plan, "alpha": per_option(alphas)}),
    ]
    for ours, theirs in cases:
        if ours:
            ours = {**ours, "scope": scope}
            theirs = {**theirs, "scope": per_option(scope) if isinstance(scope, list) else scope}
        got = choice_logprobs(lm, PROMPTS, CHOICES, batch_size=2, **ours)
        assert_same(got, full_sequence(lm, PROMPTS, CHOICES, **theirs), atol=1e-10)
    # and the steering did something
    steered = choice_logprobs(lm, PROMPTS, CHOICES, plan=plan, scope=scope)
    plain = choice_logprobs(lm, PROMPTS, CHOICES)
    assert any(not torch.allclose(a, b, equal_nan=True) for a, b in zip(steered, plain))
    assert n_hooks(lm) == 0


def test_float32_within_rounding():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    got = choice_logprobs(lm, PROMPTS, CHOICES, plan=plan, batch_size=4)
    assert_same(got, full_sequence(lm, PROMPTS, CHOICES, plan=plan), atol=1e-5)


def merging_model():
    """A tiny llama whose tokenizer merges "a"+"b" into one token, spaces included in words."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    vocab["ab"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(" ", "isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=len(vocab),
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = tf.LlamaForCausalLM(config).eval().double()
    return wrap_model(model, fast, name="tiny-merging")


@pytest.mark.parametrize("scope", ["all", "prompt", "last:1", "last:3"])
def test_a_tokenizer_merging_across_the_boundary(scope):
    lm = merging_model()
    prompts, choices = ["xxa", "qqa"], [["b", "c", "bb"], ["c", "d"]]
    ids, splits = pair_tokens(lm, ["xxa"] * 3, choices[0], chat_template=False)
    assert ids[0][-1] == len(VOCAB) and splits == [3, 4, 3]  # "a"+"b" became one token "ab"
    plan = make_plan(lm, {1: 2.0})
    for kw in ({}, {"plan": plan, "scope": scope}):
        got = choice_logprobs(lm, prompts, choices, **kw)
        assert_same(got, full_sequence_of(lm, prompts, choices, **kw), atol=1e-10)


def full_sequence_of(lm, prompts, choices, **kw):
    flat = [c for cs in choices for c in cs]
    rep = [p for p, cs in zip(prompts, choices) for _ in cs]
    per_token = sequence_logprobs(lm, rep, flat, reduce="none", **kw)
    out, r = [], 0
    for cs in choices:
        block = per_token[r : r + len(cs)]
        out.append(block[:, : int((~block.isnan()).sum(1).max())])
        r += len(cs)
    return out


def test_shared_length():
    everything = TokenScope.parse("all")
    # the common run, one token short of the earliest split point
    assert shared_length([[1, 5, 6, 7], [1, 5, 6, 8, 9]], [3, 3], everything) == 2
    assert shared_length([[1, 5, 6, 7], [1, 5, 9, 8]], [3, 3], everything) == 2
    assert shared_length([[1, 5, 6, 7], [1, 4, 6, 8]], [3, 3], everything) == 1
    assert shared_length([[1, 5, 6, 7], [1, 5, 6, 8]], [2, 3], everything) == 1
    assert shared_length([[1, 5]], [1], everything) == 0
    # last:K with split points that differ: the tokens steered differ from where K starts
    last2 = TokenScope.parse("last:2")
    assert shared_length([[1, 5, 6, 7, 8, 9]] * 2, [5, 5], last2) == 4
    assert shared_length([[1, 5, 6, 7, 8, 9]] * 2, [5, 4], last2) == 2
    # explicit positions count from each option's own split point
    at = TokenScope.at([[-1]])
    assert shared_length([[1, 5, 6, 7, 8, 9]] * 2, [5, 4], at) == 3
    assert shared_length([[1, 5, 6, 7, 8, 9]] * 2, [5, 5], at) == 4


def test_steered_matches_the_hooks_rules():
    scope = TokenScope.parse("last:2")
    assert scope.steered(4, 6) == [False, False, True, True, False, False]
    assert TokenScope.parse("prompt").steered(2, 3) == [True, True, False]
    assert TokenScope.parse("generated").steered(2, 3) == [False, False, True]
    assert TokenScope.at([[0], [-1, 1]]).steered(3, 4, row=1) == [False, True, True, False]


def test_the_prompt_runs_once_per_item():
    lm = tiny_model("llama")
    seen = []
    hook = lm.model.register_forward_pre_hook(
        lambda m, args, kw: seen.append(
            int(kw["attention_mask"][:, -kw["input_ids"].shape[1] :].sum())
        ),
        with_kwargs=True,
    )
    try:
        choice_logprobs(lm, PROMPTS, CHOICES, batch_size=8)
        shared = sum(seen)
        seen.clear()
        full_sequence(lm, PROMPTS, CHOICES)
        whole = sum(seen)
    finally:
        hook.remove()
    ids, _ = pair_tokens(lm, per_option(PROMPTS), [c for cs in CHOICES for c in cs], False)
    assert whole == sum(map(len, ids))
    assert shared < 0.6 * whole


def test_bad_arguments_and_no_hooks_left():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    with pytest.raises(ValueError, match="one list of choices per prompt"):
        choice_logprobs(lm, ["a", "b"], [[" x"]])
    with pytest.raises(ValueError, match="non-empty list of choice strings"):
        choice_logprobs(lm, ["a"], [[]])
    with pytest.raises(ValueError, match="non-empty list of choice strings"):
        choice_logprobs(lm, ["a"], [" x"])
    with pytest.raises(ValueError, match="alpha gives 3 values for 2 prompts"):
        choice_logprobs(lm, ["a", "b"], [[" x"], [" y"]], plan=plan, alpha=[1, 2, 3])
    with pytest.raises(ValueError, match="row 0 has 2 prompt tokens; positions \\[5\\]"):
        choice_logprobs(lm, ["a"], [[" x", " y"]], plan=plan, scope=[[5]])
    assert n_hooks(lm) == 0
    with pytest.raises(ValueError, match="encoder"):
        choice_logprobs(tiny_model("bert"), ["a"], [[" x"]])


@pytest.mark.parametrize("arch", CAUSAL[:2])
@pytest.mark.parametrize("whole", [False, True], ids=["shared", "whole"])
def test_long_prompts_keep_to_the_token_budget_and_project_only_scored_positions(
    arch, whole, monkeypatch
):
    lm = float64(arch)
    if whole:  # every item scored whole (as when its options share no leading tokens)
        monkeypatch.setattr(choices_module, "shared_length", lambda *a, **k: 0)
    plan = make_plan(lm, {1: 2.0})
    long_prompts = [" ".join(["the cat sat"] * 12), " ".join(["xyz qq"] * 15), "a b"]
    choices = [[" on", " under"], [" s", " tt", " v"], [" c", " dd"]]
    shapes, kept = [], []
    forward = lm.model.forward

    @functools.wraps(forward)  # keeps forward's signature: logits_to_keep is looked up there
    def spy(*args, **kw):
        shapes.append(tuple(kw["input_ids"].shape))
        kept.append(kw.get("logits_to_keep"))
        return forward(*args, **kw)

    lm.model.forward = spy
    try:
        got = choice_logprobs(
            lm, long_prompts, choices, plan=plan, scope="all", batch_size=8, max_tokens=60
        )
    finally:
        lm.model.forward = forward
    # every option pass keeps to the budget or holds one item alone
    longest = max(len(lm.tokenizer(p + c[0])["input_ids"]) for p, c in zip(long_prompts, choices))
    assert longest > 30  # the budget really splits these items
    assert all(r * w <= 60 or r <= 3 for r, w in shapes)
    # options are projected onto the vocabulary only where they are scored
    if whole:
        assert all(k is not None and k < w / 2 for k, (_, w) in zip(kept, shapes) if w > 30)
    else:  # the shared passes project one position, the option passes only the options
        assert kept[0::2] == [1] * (len(kept) // 2)
        assert all(k <= w for k, (_, w) in zip(kept[1::2], shapes[1::2]))
    ref = full_sequence(lm, long_prompts, choices, plan=plan, scope="all")
    assert_same(got, ref, atol=1e-10)
