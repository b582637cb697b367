import warnings

import pytest
import torch
from steer_helpers import PROMPTS, batch, forward, make_plan, n_hooks, plan_with_norms

from expertsteer.plan import PlanMismatchError, SteeringPlan
from expertsteer.steer import (
    ALPHA_WARN_RATIO,
    SteeringStrengthWarning,
    TokenScope,
    attach,
    generate,
    parse_alpha,
    sequence_logprobs,
)
from tiny import tiny_model


def test_parse_alpha_gives_one_float64_tensor():
    for given, want in [(2.0, [2.0]), (3, [3.0]), ([1.0, -0.5], [1.0, -0.5]), ((0.25,), [0.25])]:
        a = parse_alpha(given)
        assert a.dtype == torch.float64 and a.ndim == 1 and a.tolist() == want
    a = parse_alpha(torch.tensor([[0.1], [0.2]]))  # float32 in: float64, flat
    assert a.dtype == torch.float64 and a.shape == (2,)
    assert a.tolist() == [float(torch.tensor(0.1)), float(torch.tensor(0.2))]
    same = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert parse_alpha(same).data_ptr() == same.data_ptr()  # already parsed: no copy
    for bad in (float("nan"), [1.0, float("inf")], []):
        with pytest.raises(ValueError, match="alpha must be finite"):
            parse_alpha(bad)


def test_alpha_reaches_combine_as_the_parsed_tensor(monkeypatch):
    lm = tiny_model("llama")
    plan = make_plan(lm)
    seen = []
    real = SteeringPlan.combine

    def spy(terms, layer_alphas=None):
        seen.append([w for _, w in terms])
        return real(terms, layer_alphas)

    monkeypatch.setattr(SteeringPlan, "combine", staticmethod(spy))
    alpha = torch.tensor([0.5, 2.0], dtype=torch.float64)
    attach(lm, plan, alpha=alpha).remove()
    # the caller's tensor itself (a view of it), not a copy through a list
    assert torch.equal(seen[-1][0], alpha) and seen[-1][0].data_ptr() == alpha.data_ptr()
    attach(lm, rows=[plan, None], alpha=alpha).remove()
    assert torch.equal(seen[-1][0], torch.tensor([0.5, 0.0], dtype=torch.float64))
    assert all(w.dtype == torch.float64 for ws in seen for w in ws)


def test_deltas_are_the_plans_combined():
    lm = tiny_model("llama")
    a, b = make_plan(lm, {1: 2.0, 2: 1.0}, seed=0), make_plan(lm, {2: -1.0}, seed=4)
    with attach(lm, a, rows=[b, None, b], alpha=[1.0, 0.5, 2.0]) as handle:
        w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
        on = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
        want = SteeringPlan.combine([(a, w), (b, on * w)])
        assert handle.n_rows == 3 and sorted(handle.deltas) == [1, 2]
        for j, delta in want.items():
            assert torch.equal(handle.deltas[j], delta[:, None])


def test_attach_takes_a_scope_written_or_parsed():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    scope = TokenScope.parse("last:2")
    with attach(lm, plan, scope=scope) as handle:
        assert handle.scope is scope
    with attach(lm, plan, scope="last: 2") as handle:
        assert handle.scope == scope
    with attach(lm, plan, scope=[[0], [1]]) as handle:
        assert handle.scope == TokenScope("positions", positions=((0,), (1,)))


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
    with pytest.raises(TypeError, match="expected SteeringPlan objects, got str"):
        attach(lm, ["not a plan"])
    assert n_hooks(lm) == 0


def test_the_warning_threshold():
    lm = tiny_model("llama")
    plan = plan_with_norms(lm, alphas={1: 1.0}, norms={1: 10.0})  # unit vector: |delta| = α
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attach(lm, plan, alpha=ALPHA_WARN_RATIO * 10.0).remove()  # at the limit: fine
        attach(lm, make_plan(lm), alpha=1e3).remove()  # no recorded norm: nothing to compare
    with pytest.warns(SteeringStrengthWarning, match="layer 1: 40.1 vs mean norm 10"):
        attach(lm, plan, alpha=40.1).remove()


# --- reliability (from tests/test_reliability.py) ---------------------------------------------


def test_plan_for_another_hidden_size():
    lm = tiny_model("llama")
    plan = plan_with_norms(lm)
    wide = tiny_model("llama", d=48)
    with pytest.raises(PlanMismatchError) as info:
        attach(wide, plan)
    msg = str(info.value)
    assert "plan was fitted for tiny-llama (3 layers, hidden 32); tiny-llama has 3 layers" in msg
    assert "hidden 48. Use the plan with tiny-llama, or fit a plan for tiny-llama" in msg
    assert n_hooks(wide) == 0


def test_plan_for_another_target():
    lm = tiny_model("llama")
    other = tiny_model("llama", seed=5)
    with pytest.raises(PlanMismatchError) as info:
        generate(other, ["ab"], plan=plan_with_norms(lm), chat_template=False, max_new_tokens=2)
    msg = str(info.value)
    assert f"(fingerprint {lm.fingerprint}), not for tiny-llama ({other.fingerprint})" in msg
    assert "Refit it for this model, or pass strict=False to apply it anyway" in msg
    assert n_hooks(other) == 0
    with pytest.raises(PlanMismatchError, match="combine plans fitted for the same target"):
        plan_with_norms(lm) + plan_with_norms(other)


def test_unknown_layer_alphas():
    """The attach part of test_reliability.py::test_unknown_layer_indices."""
    lm = tiny_model("llama")
    plan = plan_with_norms(lm)
    with pytest.raises(ValueError, match=r"layer_alphas names layers \[2\] that no plan steers"):
        attach(lm, plan, layer_alphas={2: 1.0})
    assert n_hooks(lm) == 0


def test_absurd_alpha_warns():
    lm = tiny_model("llama")
    plan = plan_with_norms(lm, alphas={1: 2.0}, norms={1: 10.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plan's own α (0.2 × norm) and 10× it are fine
        attach(lm, plan).remove()
        attach(lm, plan, alpha=10.0).remove()
    with pytest.warns(SteeringStrengthWarning) as record:
        attach(lm, plan, alpha=-50.0).remove()
    msg = str(record[0].message)
    assert "steering adds more than 4x the hidden states' own size" in msg
    assert "layer 1: 100 vs mean norm 10 (10x)" in msg
    assert "Lower alpha (or layer_alphas); the plan's default is alpha=1" in msg
    with pytest.warns(SteeringStrengthWarning, match="layer 1: 45"):
        generate(
            lm, ["ab"], plan=plan, layer_alphas={1: 45.0}, chat_template=False, max_new_tokens=1
        )
    assert n_hooks(lm) == 0


def test_no_hooks_left_after_a_refused_attach():
    """The attach part of test_reliability.py::test_no_hooks_left_after_a_failed_plan_load (its
    CLI part is in tests/cli/test_generate.py)."""
    lm = tiny_model("llama")
    with pytest.raises(PlanMismatchError):
        attach(lm, plan_with_norms(tiny_model("llama", seed=9)))
    with pytest.raises(ValueError, match="alpha must be finite"):
        attach(lm, plan_with_norms(lm), alpha=float("nan"))
    assert n_hooks(lm) == 0


def test_attach_is_public_at_the_top_level():
    import expertsteer
    from expertsteer.steer.attach import attach as attach_impl

    assert expertsteer.attach is attach_impl
    assert "attach" in expertsteer.__all__
