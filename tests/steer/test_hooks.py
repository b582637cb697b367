import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from steer_helpers import (
    PROMPTS,
    Capture,
    Interrupt,
    batch,
    forward,
    greedy,
    make_plan,
    n_hooks,
    plan_with_norms,
    unit,
)
from transformers import StoppingCriteriaList

from expertsteer.extract import extract
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.steer import SteeringHandle, TokenScope, attach, generate
from tiny import tiny_model

EXACT_ARCHS = ["llama", "qwen2", "gpt2", "gpt_neox", "gemma3", "opt", "phi3", "mpnet"]
SCOPES = ["all", "prompt", "generated", "last:2", ("last", 3), [[0, -1], [1, 2]]]


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
    with attach(lm, plan, alpha=0.7):
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


def test_the_handle_adds_given_deltas_and_knows_no_plan():
    lm = tiny_model("llama")
    enc = batch(lm, PROMPTS[:3], "right")
    mask = enc["attention_mask"][..., None]
    cap = Capture(lm)
    forward(lm, enc)
    base = dict(cap.out)
    shared = 2.0 * unit(lm.hidden_size, 3)[None]  # [1, d]: the same on every row
    per_row = torch.stack([unit(lm.hidden_size, s) for s in range(3)])  # [R, d]
    with SteeringHandle(lm, {0: shared}, 1, TokenScope("all")):
        forward(lm, enc)
        only0 = dict(cap.out)
    with SteeringHandle(lm, {0: shared.expand(3, -1), 2: per_row}, 3, TokenScope("all")) as handle:
        assert sorted(handle.deltas) == [0, 2] and handle.deltas[2].shape == (3, 1, 32)
        forward(lm, enc)
        both = dict(cap.out)
    cap.remove()
    assert torch.equal(only0[0], base[0] + mask * shared)
    assert torch.equal(both[1], only0[1]) and not torch.equal(only0[1], base[1])
    assert torch.equal(both[2], only0[2] + mask * per_row[:, None])
    assert n_hooks(lm) == 0


def test_the_handle_takes_a_scope_written_or_parsed():
    lm = tiny_model("llama")
    scope = TokenScope.parse("last:2")
    with SteeringHandle(lm, {1: unit(32, 0)}, 1, scope) as handle:
        assert handle.scope is scope
    with SteeringHandle(lm, {1: unit(32, 0)}, 1, "last: 2") as handle:
        assert handle.scope == scope


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


# --- batches and rows --------------------------------------------------------------------------


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


def test_bad_batches_fail_at_the_forward():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    enc = batch(lm, PROMPTS, "right")
    with attach(lm, rows=[plan, None]), pytest.raises(ValueError, match="2 per-row"):
        forward(lm, enc)
    with attach(lm, plan, scope=[[0]]), pytest.raises(ValueError, match="position lists"):
        forward(lm, enc)
    with attach(lm, plan, scope=[[99], [0], [0], [0]]), pytest.raises(ValueError, match="range"):
        forward(lm, enc)
    assert n_hooks(lm) == 0


# --- lifetime, safety, gradients ------------------------------------------------------------


def test_hooks_are_removed_after_an_exception():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    with pytest.raises(RuntimeError, match="boom"):
        with attach(lm, plan):
            assert n_hooks(lm) > 0
            raise RuntimeError("boom")
    assert n_hooks(lm) == 0


def test_hooks_are_removed_after_keyboard_interrupt_in_generation():
    lm = tiny_model("gpt2")
    plan = make_plan(lm)
    enc = batch(lm, PROMPTS, "left")
    with pytest.raises(KeyboardInterrupt):
        with attach(lm, plan, scope="prompt"):
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
    with attach(lm, plan, alpha=0.5):
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


# --- reliability (from tests/test_reliability.py): hooks are never left on a model -------------


def test_no_hooks_left_after_an_error_inside_the_forward():
    lm = tiny_model("llama")
    handle_plan = plan_with_norms(lm)
    with pytest.raises(ValueError, match="2 per-row settings but the batch has 3 rows"):
        with attach(lm, handle_plan, alpha=[1.0, 2.0]):
            extract(lm, ["a", "b", "c"], cache=False, progress=False)
    assert n_hooks(lm) == 0
    calls = []

    def interrupt(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    mine = lm.layers.blocks[2].register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract(lm, ["a b", "c", "d e f"], batch_size=1, cache=False, progress=False)
    mine.remove()
    assert n_hooks(lm) == 0


def test_no_hooks_left_after_a_failed_attach(monkeypatch):
    lm = tiny_model("llama")
    plan = plan_with_norms(lm, alphas={0: 1.0, 1: 1.0, 2: 1.0})
    block = lm.layers.blocks[2]
    real = block.register_forward_hook

    def fail(*args, **kwargs):
        raise RuntimeError("cannot hook")

    monkeypatch.setattr(block, "register_forward_hook", fail)
    with pytest.raises(RuntimeError, match="cannot hook"):
        attach(lm, plan)
    monkeypatch.setattr(block, "register_forward_hook", real)
    assert n_hooks(lm) == 0


# --- fuzz (from tests/test_fuzz.py): the steered-token masks against a plain reference ---------

LM = None


def _lm():
    global LM
    if LM is None:
        LM = tiny_model("llama")
    return LM


def reference(kind: str, k: int, rows: tuple, lengths: list[int], step: int) -> list[list[bool]]:
    """Per row, per real token (prompt tokens, then ``step`` generated ones): steered?"""
    out = []
    for b, n in enumerate(lengths):
        keep = []
        for t in range(n + step):
            prompt = t < n
            if kind == "all":
                keep.append(True)
            elif kind == "prompt":
                keep.append(prompt)
            elif kind == "generated":
                keep.append(not prompt)
            elif kind == "last":
                keep.append(prompt and t >= n - k)
            else:
                keep.append(prompt and t in {p % n for p in rows[b]})
        out.append(keep)
    return out


@st.composite
def scope_cases(draw):
    lengths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=4))
    kind = draw(st.sampled_from(["all", "prompt", "generated", "last", "positions"]))
    k = draw(st.integers(1, 9))
    rows = tuple(tuple(draw(st.lists(st.integers(-9, 9), max_size=4))) for _ in range(len(lengths)))
    scope = {"last": f"last:{k}", "positions": [list(r) for r in rows]}.get(kind, kind)
    side = draw(st.sampled_from(["left", "right"]))
    no_mask = draw(st.booleans()) and len(set(lengths)) == 1
    return lengths, kind, k, rows, scope, side, no_mask


@pytest.mark.fuzz
@settings(max_examples=120, deadline=None)
@given(case=scope_cases(), steps=st.integers(0, 3))
def test_scope_masks_match_a_reference(case, steps):
    lengths, kind, k, rows, scope, side, no_mask = case
    lm = _lm()
    plan = SteeringPlan(
        vectors={1: torch.ones(lm.hidden_size)},
        alphas={1: 1.0},
        target=ModelInfo.of(lm),
    )
    B, T = len(lengths), max(lengths)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        if side == "left":
            mask[b, T - n :] = 1
        else:
            mask[b, :n] = 1
    if side == "right" and steps:
        return  # generation pads on the left; right padding is for single forward passes
    bad_rows = kind == "positions" and any(
        not -n <= p < n for r, n in zip(rows, lengths) for p in r
    )
    handle = attach(lm, plan, scope=scope)
    try:
        try:
            handle._prepare(B, T, 0, None if no_mask else mask, torch.device("cpu"))
        except ValueError as exc:
            assert bad_rows and "out of range" in str(exc)
            return
        assert not bad_rows
        expected = reference(kind, k, rows, lengths, steps)
        got = [_real_tokens(handle, mask, no_mask, B, T)]
        full = mask
        for s in range(steps):
            full = torch.cat([full, torch.ones(B, 1, dtype=torch.long)], 1)
            handle._prepare(B, 1, T + s, None if no_mask else full, torch.device("cpu"))
            got.append(_real_tokens(handle, full[:, -1:], no_mask, B, 1))
        per_row = [sum((g[b] for g in got), []) for b in range(B)]
        assert per_row == expected
    finally:
        handle.remove()


def _real_tokens(handle, mask: torch.Tensor, no_mask: bool, B: int, T: int) -> list[list[bool]]:
    """The coefficient at each row's real tokens, in order; padding must never be steered."""
    coef = next(iter(handle._coef.values()))[..., 0].expand(B, T).bool()
    real = torch.ones(B, T, dtype=torch.bool) if no_mask else mask.bool()
    assert not (coef & ~real).any(), "a padding position is steered"
    return [coef[b][real[b]].tolist() for b in range(B)]
