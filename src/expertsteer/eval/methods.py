"""The methods an evaluation compares, by name, and the random-direction control.

One registry, :data:`METHODS`: the baselines, one target-only method per direction estimator
(:data:`expertsteer.pipeline.TARGET_METHODS`, derived from the estimators' registry),
``expertsteer:<aligner>:<pairing>``, whose parts are checked against
:data:`expertsteer.align.ALIGNERS` and :data:`expertsteer.pairing.PAIRINGS`, and the controls
that isolate the expert, ``control:<control>:<aligner>:<pairing>`` (:data:`CONTROLS`): the same
pipeline with an expert that knows nothing, or with the target as its own expert. A transfer
is the expert's only where it beats both. A new estimator, aligner or pairing is a method here
with no edit to this file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch

from ..align import ALIGNERS
from ..data import DataSpecError
from ..pairing import PAIRINGS
from ..pipeline import TARGET_METHODS
from ..plan import SteeringPlan
from ..registry import Registry

__all__ = [
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

Kind = Literal[
    "baseline", "target-only", "transfer", "conditioned", "trained", "expert-only", "control"
]
# The stand-in experts of the controls, by name.
CONTROLS: dict[str, str] = {
    "random-expert": "the expert's architecture with re-initialised weights (knows nothing)",
    "target-as-expert": "the target plays the expert (no second model's knowledge)",
}


@dataclass(frozen=True)
class Method:
    """One compared method: what it is called in the report and what it fits."""

    name: str
    kind: Kind
    estimator: str | None = None  # target-only: the estimator fitted on the target's states
    aligner: str | None = None  # transfer / control: ExpertSteer's aligner and pairing
    pairing: str | None = None
    control: str | None = None  # control: the stand-in expert (a key of CONTROLS)
    conditioned: bool = False  # α per input from the expert's probe (expertsteer-cond, ...)
    trained: bool = False  # a per-input delta trained through the target (expertsteer-trained)

    @property
    def variant(self) -> str | None:
        """``<aligner>:<pairing>`` of a transfer or control (the transfer it controls for);
        ``own`` for a conditioned method steering along the target's own direction."""
        if self.aligner:
            return f"{self.aligner}:{self.pairing}"
        return "own" if self.conditioned and self.kind in ("conditioned", "control") else None

    @property
    def controlled(self) -> str | None:
        """The method a control stands in for (same variant, the real expert)."""
        if self.kind != "control":
            return None
        suffix = "-cond" if self.conditioned else "-trained" if self.trained else ""
        return f"expertsteer{suffix}:{self.variant}"


# Method name -> the estimator fitted on the target's own states (one per estimator).
TARGET_ONLY: dict[str, str] = dict(TARGET_METHODS)
# "given" needs explicit layer pairs, which a method name cannot carry.
EVAL_PAIRINGS: tuple[str, ...] = tuple(p for p in PAIRINGS if p != "given")
DEFAULT_PAIRINGS = ("depth", "lowest")
# One trained variant by default (each is a training run): the best measured static transfer's.
DEFAULT_TRAINED = "ridge:depth"

METHODS: Registry[Method] = Registry("method")
METHODS.register("none", partial(Method, "none", "baseline"), "the target alone")
METHODS.register(
    "majority",
    partial(Method, "majority", "baseline"),
    "always the train split's commonest answer (the label prior)",
)
METHODS.register(
    "prompt", partial(Method, "prompt", "baseline"), "the target with the task's instruction"
)
METHODS.register("expert", partial(Method, "expert", "baseline"), "the expert answers itself")
for _name, _est in TARGET_ONLY.items():
    METHODS.register(
        _name,
        partial(Method, _name, "target-only", estimator=_est),
        f"steering by the target's own {_est} direction",
    )


def _expertsteer(aligner: str, pairing: str) -> Method:
    return Method(f"expertsteer:{aligner}:{pairing}", "transfer", aligner=aligner, pairing=pairing)


METHODS.register(
    "expertsteer",
    _expertsteer,
    f"expertsteer[:<{'|'.join(ALIGNERS)}>[:<{'|'.join(EVAL_PAIRINGS)}>]] — the expert's "
    "vector through an aligner (all of them when left out) and the pairings given",
)


def _control(control: str, aligner: str, pairing: str) -> Method:
    return Method(
        f"control:{control}:{aligner}:{pairing}",
        "control",
        aligner=aligner,
        pairing=pairing,
        control=control,
    )


METHODS.register(
    "control",
    _control,
    f"control[:<{'|'.join(CONTROLS)}>[:<aligner>:<pairing>]] — the expertsteer variants "
    "listed (all of them when none is) with a stand-in expert (both controls when left out)",
)


def _conditioned(aligner: str | None = None, pairing: str | None = None) -> Method:
    variant = f"{aligner}:{pairing}" if aligner else "own"
    return Method(
        f"expertsteer-cond:{variant}",
        "conditioned",
        aligner=aligner,
        pairing=pairing,
        conditioned=True,
    )


METHODS.register(
    "expertsteer-cond",
    _conditioned,
    "expertsteer-cond[:own|:<aligner>:<pairing>] — α per option from the expert probe's "
    "judgement of it, along the target's own (self-rfm) or the transferred direction",
)
METHODS.register(
    "self-cond",
    partial(Method, "self-cond", "target-only", conditioned=True),
    "expertsteer-cond:own with the TARGET's own probe (does the expert's judgement add anything?)",
)
METHODS.register(
    "expert-probe",
    partial(Method, "expert-probe", "expert-only"),
    "the expert's probe alone as a classifier (the option it rates likeliest)",
)
METHODS.register(
    "ensemble",
    partial(Method, "ensemble", "expert-only"),
    "w·target + (1-w)·expert option log-likelihoods, w chosen on validation",
)


def _control_cond(control: str, aligner: str | None = None, pairing: str | None = None) -> Method:
    variant = f"{aligner}:{pairing}" if aligner else "own"
    return Method(
        f"control-cond:{control}:{variant}",
        "control",
        aligner=aligner,
        pairing=pairing,
        control=control,
        conditioned=True,
    )


METHODS.register(
    "control-cond",
    _control_cond,
    "control-cond[:<control>[:own|:<aligner>:<pairing>]] — the expertsteer-cond variants listed "
    "with a stand-in expert (target-as-expert:own is self-cond, so it is not repeated)",
)


def _trained(aligner: str, pairing: str) -> Method:
    return Method(
        f"expertsteer-trained:{aligner}:{pairing}",
        "trained",
        aligner=aligner,
        pairing=pairing,
        trained=True,
    )


METHODS.register(
    "expertsteer-trained",
    _trained,
    "expertsteer-trained[:<aligner>:<pairing>] — a low-rank map from the expert's reading of "
    "the prompt to a per-input delta, trained through the frozen target (expertsteer.learned)",
)


def _control_trained(control: str, aligner: str, pairing: str) -> Method:
    return Method(
        f"control-trained:{control}:{aligner}:{pairing}",
        "control",
        aligner=aligner,
        pairing=pairing,
        control=control,
        trained=True,
    )


METHODS.register(
    "control-trained",
    _control_trained,
    "control-trained[:<control>[:<aligner>:<pairing>]] — the expertsteer-trained variants "
    "listed with a stand-in expert (target-as-expert: a low-rank adapter on the target's own "
    "reading)",
)


def methods_help() -> str:
    """The comma-list forms ``--methods`` accepts, from the registries."""
    plain = ",".join(n for n in METHODS if n not in FAMILIES)
    return (
        f"Comma list of {plain}, expertsteer (every aligner × --pairings), "
        f"expertsteer:<{'|'.join(ALIGNERS)}>[:<{'|'.join(EVAL_PAIRINGS)}>], "
        f"control[:<{'|'.join(CONTROLS)}>[:<aligner>:<pairing>]] (controls for the expertsteer "
        "variants listed), expertsteer-cond[:own|:<aligner>:<pairing>], "
        "control-cond[:<control>[:own|:<aligner>:<pairing>]], expertsteer-trained[:<aligner>:"
        "<pairing>], control-trained[:<control>[:<aligner>:<pairing>]], or all (every method "
        "with both controls)."
    )


# Names that stand for a family of variants (expanded by parse_methods).
FAMILIES = (
    "expertsteer", "control", "expertsteer-cond", "control-cond", "expertsteer-trained",
    "control-trained",
)  # fmt: skip


def _unknown(name: str) -> DataSpecError:
    return DataSpecError(
        f"unknown method {name!r}: use {METHODS.choices()}, "
        f"expertsteer:<{'|'.join(ALIGNERS)}>[:<{'|'.join(EVAL_PAIRINGS)}>], "
        f"control:<{'|'.join(CONTROLS)}>:<aligner>:<pairing>, expertsteer-cond:own, "
        "expertsteer-cond:<aligner>:<pairing>, control-cond:<control>:own|<aligner>:<pairing>, "
        "expertsteer-trained:<aligner>:<pairing>, control-trained:<control>:<aligner>:<pairing>"
    )


def _check_pairing(pairing: str, where: str) -> None:
    if pairing not in EVAL_PAIRINGS:
        raise DataSpecError(f"unknown pairing {pairing!r} in {where!r}: use {EVAL_PAIRINGS}")


def resolve(name: str) -> Method:
    """The :class:`Method` a full name (as :func:`parse_methods` returns it) stands for."""
    head, _, rest = name.partition(":")
    if head in ("expertsteer-cond", "control-cond"):
        control = None
        if head == "control-cond":
            control, _, rest = rest.partition(":")
            if control not in CONTROLS:
                raise _unknown(name)
        if rest == "own":
            parts: dict = {}
        else:
            t = resolve(f"expertsteer:{rest}")
            parts = {"aligner": t.aligner, "pairing": t.pairing}
        if control is None:
            return METHODS.make("expertsteer-cond", **parts)
        return METHODS.make("control-cond", control=control, **parts)
    if head in ("expertsteer-trained", "control-trained"):
        control = None
        if head == "control-trained":
            control, _, rest = rest.partition(":")
            if control not in CONTROLS:
                raise _unknown(name)
        t = resolve(f"expertsteer:{rest}")
        if control is None:
            return METHODS.make(head, aligner=t.aligner, pairing=t.pairing)
        return METHODS.make(head, control=control, aligner=t.aligner, pairing=t.pairing)
    if head == "control":
        control, _, rest = rest.partition(":")
        if control not in CONTROLS:
            raise _unknown(name)
        aligner, _, pairing = rest.partition(":")
        if aligner not in ALIGNERS or not pairing:
            raise _unknown(name)
        transfer = resolve(f"expertsteer:{rest}")
        return METHODS.make(
            "control", control=control, aligner=transfer.aligner, pairing=transfer.pairing
        )
    if head == "expertsteer":
        aligner, _, pairing = rest.partition(":")
        if aligner not in ALIGNERS or not pairing:
            raise _unknown(name)
        _check_pairing(pairing, name)
        return METHODS.make("expertsteer", aligner=aligner, pairing=pairing)
    if rest or name not in METHODS:
        raise _unknown(name)
    return METHODS.make(name)


def _transfers(name: str, pairings: Sequence[str]) -> list[str]:
    """``expertsteer[:<aligner>[:<pairing>]]`` expanded to full transfer names."""
    _, _, rest = name.partition(":")
    aligner, _, pairing = rest.partition(":")
    if aligner and aligner not in ALIGNERS:
        raise _unknown(name)
    if pairing:
        _check_pairing(pairing, name)
    for p in [] if pairing else pairings:
        _check_pairing(p, "--pairings")
    return [
        resolve(f"expertsteer:{a}:{p}").name
        for a in ([aligner] if aligner else ALIGNERS)
        for p in ([pairing] if pairing else pairings)
    ]


def _control_names(head: str, name: str, rest: str) -> tuple[list[str], list[str]]:
    """``control[-cond]:<kind>:<variant>`` → its full names; with no variant, the control kinds
    to expand for the listed variants (both when no kind is given)."""
    kind, _, variant = rest.partition(":")
    if kind and kind not in CONTROLS:
        raise _unknown(name)
    kinds = [kind] if kind else list(CONTROLS)
    if variant:
        return [resolve(f"{head}:{k}:{variant}").name for k in kinds], []
    return [], kinds


def parse_methods(
    spec: str | Sequence[str], pairings: Sequence[str] = DEFAULT_PAIRINGS
) -> list[str]:
    """Expand a comma list: ``expertsteer`` → every aligner × ``pairings``;
    ``expertsteer:ridge`` → ridge × ``pairings``; ``expertsteer:ae:lowest`` is one variant;
    ``control`` / ``control:random-expert`` → that control (both when left out) for every
    expertsteer variant in the list (every variant when the list has none);
    ``control:target-as-expert:ae:lowest`` is one control; ``all`` → every method with both
    controls. Unknown names fail here, before any model is loaded."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    if names == ["all"]:
        names = list(METHODS)
    out: list[str] = []
    controls: list[str] = []  # control kinds for the listed variants, expanded at the end
    cond_controls: list[str] = []
    trained_controls: list[str] = []
    for name in filter(None, names):
        head, _, rest = name.partition(":")
        if head == "expertsteer-cond":
            variants = ["own", *(t.partition(":")[2] for t in _transfers("expertsteer", pairings))]
            out += [resolve(f"{head}:{v}").name for v in ([rest] if rest else variants)]
        elif head == "expertsteer-trained":
            variants = [rest] if rest else [DEFAULT_TRAINED]
            out += [resolve(f"{head}:{v}").name for v in variants]
        elif head in ("control", "control-cond", "control-trained"):
            named, kinds = _control_names(head, name, rest)
            out += named
            by_head = {"control": controls, "control-cond": cond_controls}
            by_head.get(head, trained_controls).extend(kinds)
        elif head == "expertsteer":
            out += _transfers(name, pairings)
        else:
            out.append(resolve(name).name)
    if controls:
        variants = [resolve(n).variant for n in out if n.startswith("expertsteer:")]
        if not variants:
            variants = [resolve(n).variant for n in _transfers("expertsteer", pairings)]
        out += [f"control:{k}:{v}" for v in variants for k in dict.fromkeys(controls)]
    if cond_controls:
        variants = [resolve(n).variant for n in out if n.startswith("expertsteer-cond:")]
        out += [
            f"control-cond:{k}:{v}"
            for v in variants or ["own"]
            for k in dict.fromkeys(cond_controls)
            if (k, v) != ("target-as-expert", "own")  # that is self-cond
        ]
    if trained_controls:
        variants = [resolve(n).variant for n in out if n.startswith("expertsteer-trained:")]
        out += [
            f"control-trained:{k}:{v}"
            for v in variants or [DEFAULT_TRAINED]
            for k in dict.fromkeys(trained_controls)
        ]
    out = list(dict.fromkeys(out))
    if not out:
        raise DataSpecError("no methods given")
    return out


def random_plan(plan: SteeringPlan, seed: int) -> SteeringPlan:
    """The control: the same layers and α (so the same added norm), random unit directions."""
    gen = torch.Generator().manual_seed(seed)
    vectors = {}
    for j, v in plan.vectors.items():
        r = torch.randn(v.numel(), generator=gen)
        vectors[j] = r / r.norm()
    return replace(plan, vectors=vectors, method=f"random (seed {seed})", mi_matrix=None)
