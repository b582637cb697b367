"""Expert-conditioned strength: the expert reads each input, and its probe says how hard to steer.

A static plan adds ``α · v`` to every input, so it cannot carry what the expert knows about
*this* input. A :class:`ConditionedPlan` scales each row's α by ``g(p)``: ``p`` is the
calibrated probability an :class:`ExpertProbe` (a logistic probe on the expert's hidden state
at one block, last token) gives the input's belonging to the class the plan's vector points to
(label 1), and ``g`` a centred, bounded map (:data:`STRENGTHS`): the target is pushed towards
that class where the expert thinks the input is in it, away where it thinks not, and barely
where it is unsure. The direction is any plan: the transferred vector, or the target's own
("the expert judges, the target's direction acts").

Cost: one expert prefill per input, up to the probe's block (extraction stops there).

Fitting (:class:`ProbeFit`, sklearn style): a probe per candidate expert block on the train
states, the block chosen by validation AUC, then Platt-calibrated on validation. Saved beside
the plan's own files (``probe.safetensors`` + ``probe.json``): a plan folder holding them is
a conditioned plan (:func:`expertsteer.artifacts.load_plan`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from .data.sources.bigbench import append_answer
from .estimators import auc
from .extract import extract
from .io import CorruptFileError, load_tensors, save_tensors, write_json
from .plan import ModelInfo, SteeringPlan
from .registry import HyperParams, Registry
from .types import MIN_PER_CLASS, Tensor

__all__ = [
    "STRENGTHS",
    "ConditionedPlan",
    "ExpertProbe",
    "ProbeFit",
    "check_expert_model",
    "condition",
    "conditioned_generate",
    "default_probe_layers",
    "probe_examples",
]

PROBE_FORMAT = 1
PROBE_TENSORS = "probe.safetensors"
PROBE_CONFIG = "probe.json"
# logit(p) / LOGIT_SCALE, clipped to [-1, 1]: full strength from p ≈ 0.98 (logit 4) on.
LOGIT_SCALE = 4.0

Strength = Callable[[Tensor], Tensor]
STRENGTHS: Registry[Strength] = Registry("strength map")
STRENGTHS.register(
    "centred", lambda: lambda p: 2.0 * p - 1.0, "2p - 1: linear in the probe's probability"
)
STRENGTHS.register(
    "logit",
    lambda: lambda p: (torch.logit(p, eps=1e-12) / LOGIT_SCALE).clamp(-1.0, 1.0),
    f"logit(p) / {LOGIT_SCALE:g}, clipped to [-1, 1]: full strength once the probe is sure",
)


class ExpertMissingError(ValueError):
    """A conditioned plan used without the expert it needs (or with another model)."""


def check_expert_model(info: ModelInfo, lm: Any, *, missing: str, fitted: str) -> None:
    """Refuse a missing expert (``missing`` names what needs it) or another model than
    ``info`` (``fitted`` names what was fitted on it), with :class:`ExpertMissingError`."""
    if lm is None:
        raise ExpertMissingError(
            f"{missing} {info.name!r} loaded beside the target (Python: "
            "expert=load_model(...); CLI: --expert)"
        )
    if lm.fingerprint != info.fingerprint:
        raise ExpertMissingError(
            f"{fitted} {info.name!r} (fingerprint {info.fingerprint[:12]}); {lm.name!r} "
            f"({lm.fingerprint[:12]}) is another model"
        )


@dataclass(frozen=True)
class ExpertProbe:
    """``p = sigmoid(slope · (w · h + bias) + intercept)`` on the expert's state ``h`` at
    ``layer`` (last token of the input, as the plan's texts were read); ``strength`` maps p to
    a row's α multiplier in [-1, 1]."""

    expert: ModelInfo
    layer: int
    weight: Tensor  # [d] on raw states (the fit's standardisation folded in)
    bias: float
    slope: float = 1.0  # Platt calibration, fitted on validation
    intercept: float = 0.0
    strength: str = "centred"
    max_length: int | None = 512
    chat_template: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        STRENGTHS.check(self.strength)
        object.__setattr__(self, "weight", self.weight.detach().double().cpu().reshape(-1))
        if self.weight.numel() != self.expert.hidden_size:
            raise ValueError(
                f"probe weight has {self.weight.numel()} values; the expert's hidden size is "
                f"{self.expert.hidden_size}"
            )
        if not 0 <= self.layer < self.expert.n_layers:
            raise ValueError(
                f"probe layer {self.layer} outside the expert's 0..{self.expert.n_layers - 1}"
            )

    def probability(self, states: Tensor) -> Tensor:
        """Calibrated p per row of ``states`` ``[n, d]`` (float64)."""
        z = states.double() @ self.weight + self.bias
        return torch.sigmoid(self.slope * z + self.intercept)

    def strengths(self, states: Tensor) -> Tensor:
        """The α multiplier per row, ``g(p)`` in [-1, 1] (float64)."""
        return STRENGTHS.make(self.strength)(self.probability(states))

    def check_expert(self, lm: Any) -> None:
        check_expert_model(
            self.expert, lm, missing="this plan is expert-conditioned: it needs the expert",
            fitted="the probe was fitted on",
        )  # fmt: skip

    def read(
        self,
        lm: Any,
        texts: Sequence[str],
        *,
        batch_size: int = 16,
        progress: bool = False,
        cache: bool | str | Path = True,
    ) -> Tensor:
        """The expert's states ``[n, d]`` at the probe's block (a prefill stopping there);
        ``cache=False`` for served prompts (they must not land in the on-disk state cache)."""
        self.check_expert(lm)
        return extract(
            lm,
            list(texts),
            layers=[self.layer],
            position="last",
            batch_size=batch_size,
            chat_template=self.chat_template,
            max_length=self.max_length,
            progress=progress,
            cache=cache,
        )[0]

    def strengths_for(self, lm: Any, texts: Sequence[str], **kw: Any) -> Tensor:
        return self.strengths(self.read(lm, texts, **kw))

    # --- persistence ----------------------------------------------------------------------

    def to_files(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        config = {
            "format_version": PROBE_FORMAT,
            "expert": asdict(self.expert),
            "layer": self.layer,
            "bias": self.bias,
            "slope": self.slope,
            "intercept": self.intercept,
            "strength": self.strength,
            "max_length": self.max_length,
            "chat_template": self.chat_template,
            "metrics": self.metrics,
        }
        return {"weight": self.weight}, config

    @classmethod
    def from_files(cls, tensors: Mapping[str, Tensor], config: Mapping[str, Any]) -> ExpertProbe:
        if config.get("format_version") != PROBE_FORMAT:
            raise CorruptFileError(
                f"probe format_version {config.get('format_version')}; this library reads "
                f"{PROBE_FORMAT}"
            )
        ml = config.get("max_length")
        return cls(
            expert=ModelInfo.from_dict(config["expert"]),
            layer=_int(config["layer"]),
            weight=tensors["weight"],
            bias=_num(config["bias"]),
            slope=_num(config["slope"]),
            intercept=_num(config["intercept"]),
            strength=str(config["strength"]),
            max_length=None if ml is None else _int(ml),
            chat_template=bool(config.get("chat_template", False)),
            metrics=dict(config.get("metrics") or {}),
        )


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected a whole number, got {v!r}")
    return v


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise TypeError(f"expected a finite number, got {v!r}")
    return float(v)


def probe_examples(
    prompts: Sequence[str], choices: Sequence[Sequence[str]], answers: Sequence[int]
):
    """Every option of every item as one probe input (label 1: the right answer), in the text
    form the plan's contrast pairs use (``append_answer``: prompt, space, answer)."""
    texts, labels = [], []
    for prompt, opts, answer in zip(prompts, choices, answers):
        for k, c in enumerate(opts):
            texts.append(append_answer(prompt, c))
            labels.append(int(k == answer))
    return texts, np.array(labels)


class ProbeFit(HyperParams):
    """Fit an :class:`ExpertProbe` (sklearn style: learned state in ``probe_``, ``scores_``).

    - ``C``: the logistic probe's inverse regularisation (class-balanced weights, standardised
      states).
    - ``strength``: a name in :data:`STRENGTHS`.
    """

    def __init__(
        self, *, C: float = 0.1, strength: str = "centred", max_length: int | None = 512
    ) -> None:
        self.C, self.strength, self.max_length = C, strength, max_length

    def fit(
        self,
        expert: ModelInfo,
        train_states: Mapping[int, Tensor],
        y: np.ndarray,
        val_states: Mapping[int, Tensor],
        y_val: np.ndarray,
        *,
        chat_template: bool = False,
    ) -> ProbeFit:
        """One probe per block in ``train_states`` (``{layer: [n, d]}``); the block with the
        best validation AUC is kept and calibrated on validation (never on test)."""
        STRENGTHS.check(self.strength)
        y, y_val = np.asarray(y).astype(int), np.asarray(y_val).astype(int)
        for what, lab in (("train", y), ("validation", y_val)):
            counts = np.bincount(lab, minlength=2)
            if len(counts) != 2 or counts.min() < MIN_PER_CLASS:
                raise ValueError(
                    f"the probe's {what} inputs need >= {MIN_PER_CLASS} of each label (0/1), "
                    f"have {counts.tolist()}"
                )
        if set(train_states) != set(val_states) or not train_states:
            raise ValueError("train and validation states must cover the same blocks")
        scores: dict[int, dict[str, float]] = {}
        fitted: dict[int, tuple[np.ndarray, float]] = {}
        for layer in sorted(train_states):
            X = train_states[layer].double().numpy()
            mu, sd = X.mean(0), X.std(0) + 1e-6
            clf = LogisticRegression(C=self.C, class_weight="balanced", max_iter=2000)
            clf.fit((X - mu) / sd, y)
            w = clf.coef_[0] / sd
            b = float(clf.intercept_[0] - (mu * w).sum())
            z_val = val_states[layer].double().numpy() @ w + b
            fitted[layer] = (w, b)
            scores[layer] = {
                "train_auc": auc(torch.from_numpy(X @ w + b), torch.from_numpy(y)),
                "val_auc": auc(torch.from_numpy(z_val), torch.from_numpy(y_val)),
            }
        layer = max(scores, key=lambda k: (scores[k]["val_auc"], -k))
        w, b = fitted[layer]
        z_val = val_states[layer].double().numpy() @ w + b
        platt = LogisticRegression(C=1e6, max_iter=2000).fit(z_val[:, None], y_val)
        self.scores_ = scores
        self.probe_ = ExpertProbe(
            expert=expert,
            layer=layer,
            weight=torch.from_numpy(w),
            bias=b,
            slope=float(platt.coef_[0, 0]),
            intercept=float(platt.intercept_[0]),
            strength=self.strength,
            max_length=self.max_length,
            chat_template=chat_template,
            metrics={
                "layer": layer,
                **scores[layer],
                "candidates": {str(k): v for k, v in scores.items()},
            },
        )
        return self


@dataclass
class ConditionedPlan:
    """A plan whose α, per input, is scaled by the expert probe's judgement of that input."""

    plan: SteeringPlan
    probe: ExpertProbe

    @property
    def expert(self) -> ModelInfo:
        return self.probe.expert

    def alphas(self, expert: Any, texts: Sequence[str], alpha: float = 1.0, **kw: Any) -> Tensor:
        """Each input's α: ``alpha · g(p)``, the expert reading each text (float64 ``[n]``)."""
        return alpha * self.probe.strengths_for(expert, texts, **kw)

    def __mul__(self, scale: float) -> ConditionedPlan:
        return ConditionedPlan(self.plan * scale, self.probe)

    __rmul__ = __mul__

    def select(self, layers: Sequence[int]) -> ConditionedPlan:
        return ConditionedPlan(self.plan.select(layers), self.probe)

    def save_pretrained(self, directory: str | Path) -> Path:
        """The plan's own files, then the probe's (its JSON last, with the weight's checksum)."""
        directory = Path(directory)
        self.plan.save_pretrained(directory)
        tensors, config = self.probe.to_files()
        config["tensors_sha256"] = save_tensors(directory / PROBE_TENSORS, tensors)
        write_json(directory / PROBE_CONFIG, config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ConditionedPlan:
        plan = SteeringPlan.from_pretrained(directory)
        directory = Path(directory)
        path = directory / PROBE_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {directory} holds a static plan")
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
            tensors, meta = load_tensors(directory / PROBE_TENSORS)
            if meta.get("sha256") != config.get("tensors_sha256"):
                raise CorruptFileError("the probe's weight and its JSON do not match")
            probe = ExpertProbe.from_files(tensors, config)
        except (CorruptFileError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise CorruptFileError(
                f"{directory}'s probe is damaged ({type(exc).__name__}: {exc}); refit it"
            ) from exc
        if plan.expert is not None and plan.expert.fingerprint != probe.expert.fingerprint:
            # A transferred direction from one expert judged by another is allowed, but named.
            plan.provenance.setdefault("probe_expert", probe.expert.name)
        return cls(plan, probe)


def default_probe_layers(plan: SteeringPlan | None, expert: Any, n: int = 4) -> list[int]:
    """The expert blocks a probe is tried at: the plan's paired expert blocks when the plan was
    fitted from this expert, else ``n`` blocks spread over the middle half of its depth."""
    if (
        plan is not None
        and plan.expert is not None
        and plan.expert.fingerprint == expert.fingerprint
        and plan.pairs
    ):
        return sorted({i for i, _ in plan.pairs})
    L = expert.n_layers
    return sorted({min(L - 1, round(L * (0.25 + 0.5 * k / max(n - 1, 1)))) for k in range(n)})


def condition(
    plan: SteeringPlan,
    expert: Any,
    train: tuple[Sequence[str], Sequence[int]],
    val: tuple[Sequence[str], Sequence[int]],
    *,
    layers: Sequence[int] | None = None,
    fit: ProbeFit | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> ConditionedPlan:
    """``plan`` conditioned on ``expert``: a probe fitted on the expert's states of the train
    ``(texts, labels)`` (label 1: the class ``plan`` steers towards), its block chosen and its
    probability calibrated on ``val``."""
    fit = (fit or ProbeFit()).clone()
    layers = list(layers) if layers is not None else default_probe_layers(plan, expert)

    def states(texts: Sequence[str]) -> dict[int, Tensor]:
        s = extract(
            expert,
            list(texts),
            layers=layers,
            position="last",
            batch_size=batch_size,
            max_length=fit.max_length,
            progress=progress,
        )
        return dict(zip(layers, s))

    fit.fit(
        ModelInfo.of(expert),
        states(train[0]),
        np.asarray(train[1]),
        states(val[0]),
        np.asarray(val[1]),
    )
    return ConditionedPlan(plan, fit.probe_)


def conditioned_generate(
    target: Any,
    expert: Any,
    prompts: Sequence[str],
    cplan: ConditionedPlan,
    *,
    alpha: float = 1.0,
    **kw: Any,
) -> list[str]:
    """:func:`~expertsteer.steer.generate` with each prompt's α set by the expert's reading of
    it (the expert reads the prompt as written, before any chat template)."""
    from .steer import generate

    row_alpha = cplan.alphas(expert, prompts, alpha, batch_size=kw.get("batch_size", 8))
    return generate(target, prompts, plan=cplan.plan, alpha=row_alpha, **kw)
