import json
import random

import numpy as np
import pytest
import torch

from expertsteer.gate import DomainGate, GateDecision, _choose_threshold, gated_generate
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.steer import generate
from tiny import tiny_model

IN_CHARS, GEN_CHARS = "0123456789qzx", "abcdefghijklmnoprstuvw"


def texts(chars: str, n: int, seed: int) -> list[str]:
    r = random.Random(seed)
    return [
        " ".join(
            "".join(r.choice(chars) for _ in range(r.randint(2, 5))) for _ in range(r.randint(2, 4))
        )
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def gate(lm):
    return DomainGate().fit(lm, texts(IN_CHARS, 40, 0), texts(GEN_CHARS, 40, 1))


def test_fit_learns_a_probe_on_the_middle_block(lm, gate):
    assert gate.layer_ == 1  # 3 blocks: the middle one
    assert gate.weight_.dtype == torch.float32 and gate.weight_.shape == (32,)
    assert set(gate.stats_) == {"val_balanced_accuracy", "val_auc", "n_in", "n_general", "layer"}
    assert (gate.stats_["n_in"], gate.stats_["n_general"], gate.stats_["layer"]) == (40, 40, 1)
    assert gate.stats_["val_balanced_accuracy"] == 1.0 and gate.stats_["val_auc"] == 1.0
    assert gate.threshold_ == 0.5  # perfectly separated validation: the tie goes to 0.5
    # weight_/bias_ act on raw (unstandardised) states of the gate's block
    from expertsteer.extract import extract

    prompts = ["12 qz", "the cat"]
    X = extract(lm, prompts, layers=[1], position="mean", cache=False, progress=False)[0]
    expected = torch.sigmoid(X.double() @ gate.weight_.double() + gate.bias_)
    assert torch.equal(gate.scores(lm, prompts), expected)
    # seeded: a second fit gives the same probe
    again = DomainGate().fit(lm, texts(IN_CHARS, 40, 0), texts(GEN_CHARS, 40, 1))
    assert torch.equal(again.weight_, gate.weight_) and again.threshold_ == gate.threshold_


def test_separates_new_prompts(lm, gate):
    new_in, new_gen = texts(IN_CHARS, 20, 2), texts(GEN_CHARS, 20, 3)
    assert not (set(new_in) | set(new_gen)) & set(texts(IN_CHARS, 40, 0) + texts(GEN_CHARS, 40, 1))
    s_in, s_gen = gate.scores(lm, new_in), gate.scores(lm, new_gen)
    assert s_in.shape == (20,) and ((s_in >= 0) & (s_in <= 1)).all()
    tpr = float((s_in >= gate.threshold_).double().mean())
    tnr = float((s_gen < gate.threshold_).double().mean())
    assert (tpr + tnr) / 2 >= 0.9
    decisions = gate.decide(lm, new_in + new_gen)
    assert all(isinstance(d, GateDecision) for d in decisions)
    assert [d.prompt for d in decisions] == new_in + new_gen
    # other batch composition: float32 states agree to rounding only
    assert [d.score for d in decisions] == pytest.approx(
        torch.cat([s_in, s_gen]).tolist(), abs=1e-6
    )
    assert [d.steer for d in decisions] == [s >= gate.threshold_ for s in torch.cat([s_in, s_gen])]
    assert sum(d.steer for d in decisions[:20]) >= 18 and sum(d.steer for d in decisions[20:]) <= 2
    with pytest.raises(AttributeError):
        decisions[0].steer = False  # frozen


def test_threshold_maximises_balanced_accuracy_ties_nearest_half():
    y = np.array([False, False, True, True])
    assert _choose_threshold(np.array([0.1, 0.2, 0.8, 0.9]), y) == (0.5, 1.0)
    assert _choose_threshold(np.array([0.6, 0.7, 0.8, 0.9]), y) == (0.75, 1.0)
    assert _choose_threshold(np.array([0.1, 0.2, 0.3, 0.4]), y) == pytest.approx((0.25, 1.0))
    # imbalanced: balanced accuracy (not accuracy) decides
    y5 = np.array([False, False, False, False, True])
    t, ba = _choose_threshold(np.array([0.1, 0.2, 0.3, 0.45, 0.4]), y5)
    assert ba == pytest.approx(0.875) and t == pytest.approx(0.35)


def test_gated_generate_steers_only_accepted_rows(lm, gate):
    v = torch.nn.functional.normalize(
        torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0
    )
    plan = SteeringPlan(vectors={1: v}, alphas={1: 30.0}, target=ModelInfo.of(lm))
    prompts = ["12 q9", "the cat", "x7 z3", "sat on"]
    kw = dict(max_new_tokens=6)
    out, decisions = gated_generate(lm, prompts, plan, gate, **kw)
    assert [d.steer for d in decisions] == [True, False, True, False]
    for p, text, d in zip(prompts, out, decisions):
        unsteered = generate(lm, [p], **kw)[0]
        if d.steer:
            steered = generate(lm, [p], plan=plan, **kw)[0]
            assert text == steered
            assert steered != unsteered  # the plan really changes these outputs
        else:
            assert text == unsteered
    # all rejected: nothing is steered
    out2, dec2 = gated_generate(lm, ["the cat", "sat on"], plan, gate, **kw)
    assert not any(d.steer for d in dec2)
    assert out2 == generate(lm, ["the cat", "sat on"], **kw)


def test_save_load_round_trip_and_fingerprint_check(lm, gate, tmp_path):
    gate.save(tmp_path / "g")
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["gate.json", "weight.safetensors"]
    meta = json.loads((tmp_path / "g" / "gate.json").read_text())
    assert meta["layer"] == 1 and meta["threshold"] == gate.threshold_
    assert meta["target"]["fingerprint"] == lm.fingerprint
    loaded = DomainGate.load(tmp_path / "g")
    prompts = texts(IN_CHARS, 3, 7) + texts(GEN_CHARS, 3, 8)
    assert torch.equal(loaded.scores(lm, prompts), gate.scores(lm, prompts))
    assert loaded.decide(lm, prompts) == gate.decide(lm, prompts)
    assert (loaded.bias_, loaded.threshold_, loaded.stats_) == (
        gate.bias_,
        gate.threshold_,
        gate.stats_,
    )
    other = tiny_model("llama", seed=5)
    with pytest.raises(ValueError, match="fitted on"):
        loaded.scores(other, prompts)
    with pytest.raises(ValueError, match="fitted on"):
        gate.decide(other, prompts)
    with pytest.raises(FileNotFoundError):
        DomainGate.load(tmp_path / "missing")


def test_errors(lm):
    ins, gen = texts(IN_CHARS, 6, 0), texts(GEN_CHARS, 6, 1)
    with pytest.raises(ValueError, match="at least 4"):
        DomainGate().fit(lm, ins[:3], gen)
    with pytest.raises(ValueError, match="at least 4"):
        DomainGate().fit(lm, ins, gen[:3])
    with pytest.raises(ValueError, match="both in_domain and general"):
        DomainGate().fit(lm, ins, gen[:5] + [ins[2]])
    for bad in (3, -4):
        with pytest.raises(ValueError, match="out of range"):
            DomainGate(layer=bad).fit(lm, ins, gen)
    assert DomainGate(layer=-1).fit(lm, ins, gen).layer_ == 2
    fresh = DomainGate()
    for use in (
        lambda: fresh.scores(lm, ["a b"]),
        lambda: fresh.decide(lm, ["a b"]),
        lambda: fresh.save("/nonexistent/never"),
        lambda: gated_generate(lm, ["a b"], None, fresh),
    ):
        with pytest.raises(ValueError, match="not fitted"):
            use()
    with pytest.raises(ValueError, match="position"):
        DomainGate(position="first")
    with pytest.raises(ValueError, match="C must be positive"):
        DomainGate(C=0.0)


def test_damaged_gate_file(tmp_path):
    # Copied from tests/test_reliability.py (files: never trusted when damaged).
    from expertsteer.gate import META_FILE
    from expertsteer.io import CorruptFileError

    (tmp_path / META_FILE).write_text('{"format": 1, "bias"')
    with pytest.raises(CorruptFileError, match="gate.json is not valid JSON .*save the gate again"):
        DomainGate.load(tmp_path)
    (tmp_path / META_FILE).write_text("[]")
    with pytest.raises(CorruptFileError, match="holds a JSON list, not a gate"):
        DomainGate.load(tmp_path)
