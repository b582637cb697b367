import json

import pytest
import torch

from expertsteer.condition import ExpertMissingError
from expertsteer.extract import extract
from expertsteer.io import CorruptFileError
from expertsteer.learned import CONFIG, LearnedMap, LearnedMapFit, frozen, learned_generate
from expertsteer.plan import ModelInfo
from expertsteer.steer import generate, sequence_logprobs
from tiny import n_hooks, planted_map, tiny_model

PROMPTS = [f"Tweet {k}: {w}\nSentiment:" for k, w in enumerate(["good", "bad", "sad", "nice"] * 3)]
ANSWERS = [" positive" if k % 4 in (0, 3) else " negative" for k in range(len(PROMPTS))]


def states(expert, prompts=PROMPTS, layer=1):
    return extract(expert, prompts, layers=[layer], position="last", cache=False)[0]


def fitted(target, expert, **kw) -> LearnedMapFit:
    init = torch.randn(
        target.hidden_size, expert.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    return LearnedMapFit(**{"rank": 4, "epochs": 3, "lr": 2e-2, "batch_size": 4, **kw}).fit(
        target, states(expert), PROMPTS, ANSWERS, expert=ModelInfo.of(expert), expert_layer=1,
        target_layer=1, init=init, norm=5.0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pair():
    return tiny_model("llama", seed=0), tiny_model("gpt2", seed=1, d=48)  # target, expert


def test_deltas_are_the_documented_map_and_plans_add_exactly_them(pair):
    target, expert = pair
    m = fitted(target, expert).map_
    h = states(expert)
    want = m.scale * m.norm * (((h - m.mean) / m.std) @ m.down.T) @ m.up.T
    torch.testing.assert_close(m.deltas(h), want, rtol=0, atol=0)
    assert len({tuple(d.round(decimals=4).tolist()) for d in want}) == len(PROMPTS)  # per input
    for plan, d in zip(m.plans(h), want):
        torch.testing.assert_close(plan.steering_vectors()[1], d, rtol=1e-6, atol=1e-6)
        assert plan.pairs == [(1, 1)] and plan.expert == ModelInfo.of(expert)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_training_lowers_the_right_answers_loss_through_the_frozen_target(arch, pair):
    _, expert = pair
    target = tiny_model(arch, seed=2)
    before = [p.detach().clone() for p in target.model.parameters()]
    fit = fitted(target, expert)
    m = fit.map_
    assert m.metrics["epoch"] == 3 and m.scale != 0.0  # no val: the last epoch
    base = sequence_logprobs(target, PROMPTS, ANSWERS)
    steered = sequence_logprobs(target, PROMPTS, ANSWERS, plan=m.plans(states(expert)))
    assert float(steered.mean()) > float(base.mean()) + 0.05
    losses = [h["train_loss"] for h in fit.history_[1:]]
    assert losses[-1] < losses[0]
    # the target is untouched: same weights, no gradients kept, no hooks left
    for p, q in zip(target.model.parameters(), before):
        assert torch.equal(p, q) and p.grad is None
    assert n_hooks(target) == 0


def test_an_untrained_map_is_the_unsteered_target_and_validation_can_keep_it(pair):
    target, expert = pair
    init = torch.randn(target.hidden_size, expert.hidden_size)
    # a validation score that never improves: epoch 0 (scale 0) stands
    kept = LearnedMapFit(rank=4, epochs=2, lr=2e-2, batch_size=4).fit(
        target, states(expert), PROMPTS, ANSWERS, expert=ModelInfo.of(expert), expert_layer=1,
        target_layer=1, init=init, norm=5.0, val=lambda m: 0.0,
    )  # fmt: skip
    assert kept.map_.scale == 0.0 and kept.map_.metrics["epoch"] == 0
    assert [h["val_score"] for h in kept.history_] == [0.0, 0.0, 0.0]
    assert kept.history_[-1]["scale"] != 0.0  # it did train
    plans = kept.map_.plans(states(expert))
    torch.testing.assert_close(
        sequence_logprobs(target, PROMPTS, ANSWERS, plan=plans),
        sequence_logprobs(target, PROMPTS, ANSWERS),
        rtol=0,
        atol=0,
    )


def test_validation_picks_the_best_epoch(pair):
    target, expert = pair
    init = torch.randn(target.hidden_size, expert.hidden_size)
    scores = iter([0.1, 0.3, 0.9, 0.2])
    fit = LearnedMapFit(rank=2, epochs=3, lr=2e-2, batch_size=4).fit(
        target, states(expert), PROMPTS, ANSWERS, expert=ModelInfo.of(expert), expert_layer=1,
        target_layer=1, init=init, norm=5.0, val=lambda m: next(scores),
    )  # fmt: skip
    assert fit.map_.metrics["epoch"] == 2
    assert fit.map_.scale == fit.history_[2]["scale"] != fit.history_[3]["scale"]


def test_save_and_load_round_trip_and_damage_is_named(pair, tmp_path):
    target, expert = pair
    m = fitted(target, expert, epochs=1).map_
    m.save_pretrained(tmp_path / "map")
    back = LearnedMap.from_pretrained(tmp_path / "map")
    h = states(expert)
    torch.testing.assert_close(back.deltas(h), m.deltas(h), rtol=0, atol=0)
    assert back.metrics == json.loads(json.dumps(m.metrics))
    cfg = json.loads((tmp_path / "map" / CONFIG).read_text())
    cfg["scale"] = "big"
    (tmp_path / "map" / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match="damaged learned map"):
        LearnedMap.from_pretrained(tmp_path / "map")
    with pytest.raises(FileNotFoundError, match="not a learned map"):
        LearnedMap.from_pretrained(tmp_path / "nothing")


def test_bad_input_is_named(pair):
    target, expert = pair
    with pytest.raises(ValueError, match="another model"):
        fitted(target, expert, epochs=1).map_.read(target, PROMPTS)
    with pytest.raises(ValueError, match="one of each"):
        LearnedMapFit().fit(
            target, states(expert), PROMPTS[:3], ANSWERS, expert=ModelInfo.of(expert),
            expert_layer=1, target_layer=1, init=torch.zeros(32, 48), norm=1.0,
        )  # fmt: skip
    with pytest.raises(ValueError, match="rank"):
        fitted(target, expert, rank=99)


def test_frozen_restores_the_flags():
    lm = tiny_model("llama")
    flags = [p.requires_grad for p in lm.model.parameters()]
    with pytest.raises(RuntimeError):
        with frozen(lm):
            assert not any(p.requires_grad for p in lm.model.parameters())
            raise RuntimeError
    assert [p.requires_grad for p in lm.model.parameters()] == flags


def test_learned_generate_is_generate_with_each_prompts_own_delta(pair, tmp_path, monkeypatch):
    """Exactly steer.generate with the per-row plans of the expert's reading, scaled by alpha;
    the deltas really differ per prompt and change the text."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    target, expert = pair
    m = planted_map(target, expert, scale=3.0)
    prompts = PROMPTS[:4]
    kw = dict(max_new_tokens=6, chat_template=False)
    got = learned_generate(target, expert, prompts, m, alpha=1.5, **kw)
    want = generate(target, prompts, plan=m.plans(states(expert, prompts)), alpha=1.5, **kw)
    assert got == want
    assert got != generate(target, prompts, **kw)
    norms = m.deltas(states(expert, prompts)).norm(dim=1)
    assert float(norms.max() - norms.min()) > 1e-3 * float(norms.max())
    assert n_hooks(target) == 0


def test_the_expert_and_the_target_are_checked(pair):
    target, expert = pair
    m = planted_map(target, expert)
    with pytest.raises(ExpertMissingError, match="reads each prompt with the expert"):
        m.check_expert(None)
    with pytest.raises(ExpertMissingError, match="is another model"):
        m.read(target, PROMPTS)
    m.check_target(target)
    with pytest.raises(ValueError, match="plan was fitted for"):
        m.check_target(expert)


def test_the_start_is_the_ridge_map_on_standardised_states_at_unit_rms():
    """Full rank: up @ down is the ridge map moved onto z (init · diag(std)) divided by its
    RMS output on the rows; rank 1 keeps its top singular direction."""
    from expertsteer.learned import _init_factors

    g = torch.Generator().manual_seed(0)
    init, x = torch.randn(6, 5, generator=g), torch.randn(20, 5, generator=g) * 3 + 1
    std = x.std(0)
    z = (x - x.mean(0)) / std
    up, down = _init_factors(init, z, std, rank=5)
    rms = float((z @ (init * std).T).pow(2).sum(1).mean().sqrt())
    torch.testing.assert_close(up @ down, init * std / rms, rtol=1e-5, atol=1e-6)
    assert float((z @ down.T @ up.T).pow(2).sum(1).mean().sqrt()) == pytest.approx(1.0, abs=1e-5)
    up1, down1 = _init_factors(init, z, std, rank=1)
    u, _, vh = torch.linalg.svd(init * std)
    assert abs(float(up1[:, 0] @ u[:, 0])) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(torch.nn.functional.cosine_similarity(down1[0], vh[0], dim=0))) == (
        pytest.approx(1.0, abs=1e-5)
    )
