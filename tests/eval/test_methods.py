"""The compared methods: the registry derived from the estimators, aligners and pairings, name
resolution, comma-list expansion and the random-direction control."""

import pytest
import torch

from expertsteer.align import ALIGNERS
from expertsteer.data import DataSpecError
from expertsteer.eval import methods
from expertsteer.eval.methods import (
    CONTROLS,
    DEFAULT_PAIRINGS,
    EVAL_PAIRINGS,
    METHODS,
    TARGET_ONLY,
    Method,
    methods_help,
    parse_methods,
    random_plan,
    resolve,
)
from expertsteer.pairing import PAIRINGS
from expertsteer.pipeline import TARGET_METHODS
from expertsteer.plan import ModelInfo, SteeringPlan

ALIGNERS_NOW = ["ae", "paired-ae", "procrustes", "ridge"]
TARGET_ONLY_NOW = {
    "mean-diff": "mean-diff",
    "pca": "pca",
    "logistic": "logistic",
    "self-rfm": "rfm",
}
UNKNOWN_TAIL = (
    ": use none, majority, prompt, expert, mean-diff, pca, logistic, self-rfm, expertsteer, "
    "control, expertsteer-cond, self-cond, expert-probe, ensemble, control-cond, "
    "expertsteer-trained, control-trained, "
    "expertsteer:<ae|paired-ae|procrustes|ridge>[:<lowest|highest|monotone|depth>], "
    "control:<random-expert|target-as-expert>:<aligner>:<pairing>, expertsteer-cond:own, "
    "expertsteer-cond:<aligner>:<pairing>, control-cond:<control>:own|<aligner>:<pairing>, "
    "expertsteer-trained:<aligner>:<pairing>, control-trained:<control>:<aligner>:<pairing>"
)


# --- the registry -----------------------------------------------------------------------------


def test_registry_is_derived_from_the_other_registries():
    assert TARGET_ONLY == dict(TARGET_METHODS)
    assert list(METHODS) == [
        "none", "majority", "prompt", "expert", *TARGET_METHODS, "expertsteer", "control",
        "expertsteer-cond", "self-cond", "expert-probe", "ensemble", "control-cond",
        "expertsteer-trained", "control-trained",
    ]  # fmt: skip
    assert EVAL_PAIRINGS == tuple(p for p in PAIRINGS if p != "given")
    assert list(ALIGNERS) == ALIGNERS_NOW  # the (alphabetical) order "expertsteer" expands in


def test_registry_contents_pinned():
    assert TARGET_ONLY == TARGET_ONLY_NOW
    assert list(METHODS) == [
        "none",
        "majority",
        "prompt",
        "expert",
        "mean-diff",
        "pca",
        "logistic",
        "self-rfm",
        "expertsteer",
        "control",
        "expertsteer-cond",
        "self-cond",
        "expert-probe",
        "ensemble",
        "control-cond",
        "expertsteer-trained",
        "control-trained",
    ]
    assert CONTROLS == {
        "random-expert": "the expert's architecture with re-initialised weights (knows nothing)",
        "target-as-expert": "the target plays the expert (no second model's knowledge)",
    }
    assert EVAL_PAIRINGS == ("lowest", "highest", "monotone", "depth")
    assert DEFAULT_PAIRINGS == ("depth", "lowest")
    assert METHODS.what == "method"
    assert METHODS.entry("none").help == "the target alone"
    assert METHODS.entry("majority").help == (
        "always the train split's commonest answer (the label prior)"
    )
    assert METHODS.entry("prompt").help == "the target with the task's instruction"
    assert METHODS.entry("expert").help == "the expert answers itself"
    assert METHODS.entry("self-rfm").help == "steering by the target's own rfm direction"
    assert METHODS.entry("expertsteer").help == (
        "expertsteer[:<ae|paired-ae|procrustes|ridge>[:<lowest|highest|monotone|depth>]] — the "
        "expert's vector through an aligner (all of them when left out) and the pairings given"
    )


def test_methods_help():
    assert methods_help() == (
        "Comma list of none,majority,prompt,expert,mean-diff,pca,logistic,self-rfm,self-cond,"
        "expert-probe,ensemble, expertsteer (every "
        "aligner × --pairings), expertsteer:<ae|paired-ae|procrustes|ridge>"
        "[:<lowest|highest|monotone|depth>], control[:<random-expert|target-as-expert>"
        "[:<aligner>:<pairing>]] (controls for the expertsteer variants listed), "
        "expertsteer-cond[:own|:<aligner>:<pairing>], "
        "control-cond[:<control>[:own|:<aligner>:<pairing>]], "
        "expertsteer-trained[:<aligner>:<pairing>], "
        "control-trained[:<control>[:<aligner>:<pairing>]], or all (every "
        "method with both controls)."
    )


# --- resolve ----------------------------------------------------------------------------------


def test_resolve_baselines_and_target_only():
    for name in ("none", "majority", "prompt", "expert"):
        assert resolve(name) == Method(name, "baseline")
    for name, est in TARGET_ONLY_NOW.items():
        assert resolve(name) == Method(name, "target-only", estimator=est)
    assert resolve("self-rfm").estimator == "rfm"


def test_resolve_transfer():
    m = resolve("expertsteer:ae:lowest")
    assert m == Method("expertsteer:ae:lowest", "transfer", aligner="ae", pairing="lowest")
    assert m.estimator is None
    for a in ALIGNERS_NOW:
        for p in EVAL_PAIRINGS:
            assert resolve(f"expertsteer:{a}:{p}").name == f"expertsteer:{a}:{p}"
    assert resolve("none") is not resolve("none") and resolve("none") == resolve("none")
    assert m.variant == "ae:lowest" and resolve("none").variant is None


def test_resolve_control():
    m = resolve("control:random-expert:ridge:depth")
    assert m == Method(
        "control:random-expert:ridge:depth",
        "control",
        aligner="ridge",
        pairing="depth",
        control="random-expert",
    )
    assert m.variant == "ridge:depth"
    assert resolve("control:target-as-expert:ae:lowest").control == "target-as-expert"


@pytest.mark.parametrize(
    "name",
    [
        "magic",
        "",
        "expertsteer",  # a full name names its aligner and pairing
        "expertsteer:ridge",
        "expertsteer:lasso:depth",
        "expertsteer::depth",
        "none:x",
        "Mean-Diff",
        "control",  # a full name names its control, aligner and pairing
        "control:nobody:ridge:depth",
        "control:random-expert:ridge",
    ],
)
def test_resolve_unknown_names_the_valid_ones(name):
    with pytest.raises(DataSpecError) as info:
        resolve(name)
    assert str(info.value) == f"unknown method {name!r}" + UNKNOWN_TAIL


@pytest.mark.parametrize("pairing", ["best", "given"])
def test_resolve_unknown_pairing(pairing):
    name = f"expertsteer:ridge:{pairing}"
    with pytest.raises(DataSpecError) as info:
        resolve(name)
    assert str(info.value) == (
        f"unknown pairing {pairing!r} in {name!r}: use ('lowest', 'highest', 'monotone', 'depth')"
    )


# --- parse_methods ----------------------------------------------------------------------------


def test_parse_methods():
    assert parse_methods("none,mean-diff") == ["none", "mean-diff"]
    assert parse_methods("expertsteer:ridge") == [
        "expertsteer:ridge:depth",
        "expertsteer:ridge:lowest",
    ]
    assert len(parse_methods("expertsteer")) == 8
    assert parse_methods("expertsteer:ae:monotone,none") == ["expertsteer:ae:monotone", "none"]
    for bad in ("magic", "expertsteer:lasso", "expertsteer:ridge:best", ""):
        with pytest.raises(DataSpecError):
            parse_methods(bad)


def test_parse_expertsteer_expands_aligners_in_registry_order():
    assert parse_methods("expertsteer") == [
        "expertsteer:ae:depth",
        "expertsteer:ae:lowest",
        "expertsteer:paired-ae:depth",
        "expertsteer:paired-ae:lowest",
        "expertsteer:procrustes:depth",
        "expertsteer:procrustes:lowest",
        "expertsteer:ridge:depth",
        "expertsteer:ridge:lowest",
    ]
    assert parse_methods("expertsteer", pairings=("monotone",)) == [
        f"expertsteer:{a}:monotone" for a in ALIGNERS_NOW
    ]
    assert parse_methods("expertsteer:procrustes", pairings=["highest", "depth"]) == [
        "expertsteer:procrustes:highest",
        "expertsteer:procrustes:depth",
    ]
    # a named pairing ignores the pairings given
    assert parse_methods("expertsteer:ae:lowest", pairings=("given",)) == ["expertsteer:ae:lowest"]


def test_parse_controls_follow_the_listed_transfers():
    assert parse_methods("expertsteer:ridge:depth,expertsteer:ae:lowest,control") == [
        "expertsteer:ridge:depth",
        "expertsteer:ae:lowest",
        "control:random-expert:ridge:depth",
        "control:target-as-expert:ridge:depth",
        "control:random-expert:ae:lowest",
        "control:target-as-expert:ae:lowest",
    ]
    assert parse_methods("control:target-as-expert,expertsteer:ridge:depth") == [
        "expertsteer:ridge:depth",
        "control:target-as-expert:ridge:depth",
    ]
    assert parse_methods("control:random-expert:ae:monotone") == [
        "control:random-expert:ae:monotone"
    ]
    assert parse_methods("control:random-expert:ae:lowest,control") == [
        "control:random-expert:ae:lowest",
        *[f"control:{c}:{a}:{p}" for a in ALIGNERS_NOW for p in DEFAULT_PAIRINGS
          for c in ("random-expert", "target-as-expert")
          if (c, a, p) != ("random-expert", "ae", "lowest")],
    ]  # fmt: skip
    with pytest.raises(DataSpecError, match="unknown method 'control:nobody'"):
        parse_methods("control:nobody")


def test_parse_all():
    transfers = [f"{a}:{p}" for a in ALIGNERS_NOW for p in DEFAULT_PAIRINGS]
    both = ("random-expert", "target-as-expert")
    everything = parse_methods("all")
    assert everything == [
        "none",
        "majority",
        "prompt",
        "expert",
        "mean-diff",
        "pca",
        "logistic",
        "self-rfm",
        *(f"expertsteer:{v}" for v in transfers),
        "expertsteer-cond:own",
        *(f"expertsteer-cond:{v}" for v in transfers),
        "self-cond",
        "expert-probe",
        "ensemble",
        "expertsteer-trained:ridge:depth",  # one trained variant: each is a training run
        *(f"control:{c}:{v}" for v in transfers for c in both),
        # target-as-expert:own is self-cond, not repeated
        "control-cond:random-expert:own",
        *(f"control-cond:{c}:{v}" for v in transfers for c in both),
        *(f"control-trained:{c}:ridge:depth" for c in both),
    ]
    assert parse_methods(["all"]) == everything
    assert parse_methods(" all ", pairings=("lowest",))[8:12] == [
        f"expertsteer:{a}:lowest" for a in ALIGNERS_NOW
    ]


def test_parse_strips_skips_empties_and_deduplicates():
    assert parse_methods(" none , ,pca,none,") == ["none", "pca"]
    assert parse_methods(["pca", "expertsteer:ridge:depth", "expertsteer:ridge"]) == [
        "pca",
        "expertsteer:ridge:depth",
        "expertsteer:ridge:lowest",
    ]


def test_parse_errors_are_exact():
    with pytest.raises(DataSpecError) as info:
        parse_methods("none,magic")
    assert str(info.value) == "unknown method 'magic'" + UNKNOWN_TAIL
    with pytest.raises(DataSpecError) as info:
        parse_methods("expertsteer:lasso")
    assert str(info.value) == "unknown method 'expertsteer:lasso'" + UNKNOWN_TAIL
    with pytest.raises(DataSpecError) as info:
        parse_methods("expertsteer:ridge:best")
    assert str(info.value) == (
        "unknown pairing 'best' in 'expertsteer:ridge:best': "
        "use ('lowest', 'highest', 'monotone', 'depth')"
    )
    with pytest.raises(DataSpecError) as info:
        parse_methods("expertsteer:ridge", pairings=("depth", "given"))
    assert str(info.value) == (
        "unknown pairing 'given' in '--pairings': use ('lowest', 'highest', 'monotone', 'depth')"
    )
    for empty in ("", " , ", []):
        with pytest.raises(DataSpecError) as info:
            parse_methods(empty)
        assert str(info.value) == "no methods given"


def test_parse_checks_before_expanding():
    # The bad name fails even after good ones: nothing is returned half-parsed.
    with pytest.raises(DataSpecError, match="unknown method 'expertsteer:lasso'"):
        parse_methods("none,expertsteer,expertsteer:lasso")


def test_public_names():
    assert methods.__all__ == [
        "CONTROLS",
        "DEFAULT_PAIRINGS",
        "EVAL_PAIRINGS",
        "METHODS",
        "Method",
        "TARGET_ONLY",
        "parse_methods",
        "random_plan",
        "resolve",
    ]


# --- the random-direction control -------------------------------------------------------------


def test_random_plan_keeps_layers_and_norms():
    info = ModelInfo("m", "f", 4, 8)
    plan = SteeringPlan({1: torch.ones(8) / 8**0.5, 2: torch.eye(8)[0]}, {1: 2.0, 2: 3.0}, info)
    r = random_plan(plan, seed=0)
    assert r.alphas == plan.alphas and r.layers == plan.layers
    for j in r.layers:
        assert r.vectors[j].norm() == pytest.approx(1.0)
        assert abs(float(r.vectors[j] @ plan.vectors[j])) < 0.99
    assert torch.equal(random_plan(plan, 0).vectors[1], r.vectors[1])


def test_random_plan_names_its_seed_and_drops_the_mi_matrix():
    info = ModelInfo("m", "f", 4, 8)
    plan = SteeringPlan(
        {1: 3 * torch.eye(8)[1]}, {1: 2.0}, info, method="mean-diff", mi_matrix=torch.ones(4, 4)
    )
    r = random_plan(plan, seed=7)
    assert r.method == "random (seed 7)" and r.mi_matrix is None
    assert r.target == plan.target and r.alphas == {1: 2.0}
    assert r.vectors[1].shape == (8,) and float(r.vectors[1].norm()) == pytest.approx(1.0)
    assert not torch.equal(random_plan(plan, 8).vectors[1], r.vectors[1])
    assert plan.method == "mean-diff" and torch.equal(plan.vectors[1], 3 * torch.eye(8)[1])
