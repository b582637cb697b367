"""Selective steering: steer a request only when the target itself says it is in the domain.

A :class:`DomainGate` is a logistic probe on the TARGET's hidden states at one block (the
middle one by default), trained on in-domain texts against general texts. Its probability
threshold is chosen on a seeded held-out part to maximise balanced accuracy; then the probe is
refitted on all the data. :func:`gated_generate` runs one batch in which the rows the gate
rejects are generated unsteered.

Scoring costs one partial forward per batch: extraction stops at the gate's block.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from .estimators import auc, holdout_split
from .extract import extract
from .io import CorruptFileError, atomic_dir, load_tensors, save_tensors
from .models import LoadedModel
from .steer import generate
from .types import MIN_PER_CLASS, Tensor

__all__ = ["DomainGate", "GateDecision", "gated_generate"]

GATE_FORMAT = 1
WEIGHT_FILE = "weight.safetensors"
META_FILE = "gate.json"


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on one prompt: its in-domain probability and whether it is steered."""

    prompt: str
    score: float
    steer: bool


def _balanced_accuracy(prob: np.ndarray, y: np.ndarray, threshold: float) -> float:
    pred = prob >= threshold
    return 0.5 * (float(pred[y].mean()) + float((~pred[~y]).mean()))


def _choose_threshold(prob: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy): the best on ``prob``; ties go to the one nearest 0.5.

    Candidates are 0.5, the midpoints between consecutive distinct probabilities and one point
    beyond each end, which covers every distinct decision (steer when ``prob >= threshold``).
    """
    u = np.unique(prob)
    cands = [0.5, *((u[:-1] + u[1:]) / 2).tolist(), u[0] / 2, (u[-1] + 1.0) / 2]
    best_t, best_ba = 0.5, -1.0
    for t in cands:
        ba = _balanced_accuracy(prob, y, t)
        if ba > best_ba or (ba == best_ba and abs(t - 0.5) < abs(best_t - 0.5)):
            best_t, best_ba = float(t), ba
    return best_t, best_ba


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and scale per feature; constant features get scale 1 (they standardise to 0)."""
    mean, std = X.mean(0), X.std(0)
    floor = 1e-12 * max(float(std.max()), 1e-300)
    return mean, np.where(std > floor, std, 1.0)


class DomainGate:
    """Probe on the target's own states deciding whether a prompt belongs to the expert's domain.

    Parameters
    ----------
    layer: block whose output is read (None: the middle block, ``n_layers // 2``; negative
        indices count from the end).
    position: ``"mean"`` (mean over tokens, BOS excluded) or ``"last"`` (last token).
    C: inverse L2 regularisation of the logistic probe (on standardised states).
    val_fraction: share of each class held out to choose the threshold.
    seed: seeds the stratified split.
    chat_template: read prompts wrapped in the chat template (as ``extract`` does).
    batch_size: texts per forward when extracting states.

    Learned (after :meth:`fit`): ``weight_`` (float32 ``[d]``, in the units of the raw states),
    ``bias_``, ``threshold_`` (a probability: steer when ``score >= threshold_``), ``layer_``
    (the resolved block), ``fingerprint_`` (the target's) and ``stats_``.
    """

    def __init__(
        self,
        layer: int | None = None,
        position: str = "mean",
        C: float = 1.0,
        val_fraction: float = 0.25,
        seed: int = 0,
        chat_template: bool = False,
        batch_size: int = 16,
    ) -> None:
        if position not in ("mean", "last"):
            raise ValueError(f"position must be 'mean' or 'last', not {position!r}")
        if not C > 0:
            raise ValueError(f"C must be positive, got {C}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.layer = layer
        self.position = position
        self.C = C
        self.val_fraction = val_fraction
        self.seed = seed
        self.chat_template = chat_template
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (
            f"DomainGate(layer={self.layer}, position={self.position!r}, C={self.C}, "
            f"val_fraction={self.val_fraction}, seed={self.seed})"
        )

    # --- fitting -------------------------------------------------------------------------------

    def _resolve_layer(self, lm: LoadedModel) -> int:
        n = lm.n_layers
        if self.layer is None:
            return n // 2
        j = int(self.layer)
        j = j + n if j < 0 else j
        if not 0 <= j < n:
            raise ValueError(
                f"layer {self.layer} is out of range: {lm.name} has {n} blocks (0..{n - 1}); "
                "pass one of those or None for the middle block"
            )
        return j

    def _states(self, lm: LoadedModel, texts: Sequence[str], layer: int) -> Tensor:
        return extract(
            lm,
            texts,
            layers=[layer],
            position=self.position,
            batch_size=self.batch_size,
            chat_template=self.chat_template,
            cache=False,
            progress=False,
        )[0]

    def _probe(self, Z: np.ndarray, y: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=self.C, max_iter=5000, tol=1e-8).fit(Z, y)

    def fit(self, lm: LoadedModel, in_domain: Sequence[str], general: Sequence[str]) -> DomainGate:
        """Learn the probe and its threshold from in-domain and general texts."""
        for name, texts in (("in_domain", in_domain), ("general", general)):
            if isinstance(texts, str):
                raise TypeError(f"{name} must be a list of strings, not one string")
            if len(texts) < MIN_PER_CLASS:
                raise ValueError(
                    f"{name} has {len(texts)} texts; the gate needs at least {MIN_PER_CLASS} "
                    "of each kind (more is better): add examples"
                )
        in_domain, general = list(in_domain), list(general)
        shared = sorted(set(in_domain) & set(general))
        if shared:
            raise ValueError(
                f"{len(shared)} texts are both in_domain and general (e.g. {shared[0]!r}); "
                "remove them from one of the two sets"
            )
        layer = self._resolve_layer(lm)
        X = self._states(lm, in_domain + general, layer).double().numpy()
        y = np.array([True] * len(in_domain) + [False] * len(general))

        gen = torch.Generator().manual_seed(self.seed)
        tr, va = (
            t.numpy() for t in holdout_split(torch.from_numpy(y), None, self.val_fraction, gen)
        )
        mean, scale = _standardise(X[tr])
        probe = self._probe((X[tr] - mean) / scale, y[tr])
        prob_val = probe.predict_proba((X[va] - mean) / scale)[:, 1]
        threshold, val_ba = _choose_threshold(prob_val, y[va])
        val_auc = auc(torch.from_numpy(prob_val), torch.from_numpy(y[va]))

        mean, scale = _standardise(X)  # refit on everything, keeping the threshold
        probe = self._probe((X - mean) / scale, y)
        w = probe.coef_[0] / scale
        self.weight_ = torch.from_numpy(w).float()
        self.bias_ = float(probe.intercept_[0] - float(np.dot(w, mean)))
        self.threshold_ = float(threshold)
        self.layer_ = layer
        self.fingerprint_ = lm.fingerprint
        self.hidden_size_ = lm.hidden_size
        self.model_name_ = lm.name
        self.stats_ = {
            "val_balanced_accuracy": float(val_ba),
            "val_auc": float(val_auc),
            "n_in": len(in_domain),
            "n_general": len(general),
            "layer": layer,
        }
        return self

    # --- use -----------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "weight_"):
            raise ValueError("this DomainGate is not fitted yet: call fit() or DomainGate.load()")

    def _check_model(self, lm: LoadedModel) -> None:
        if lm.fingerprint != self.fingerprint_ or lm.hidden_size != self.hidden_size_:
            raise ValueError(
                f"this gate was fitted on {self.model_name_} (fingerprint {self.fingerprint_}), "
                f"not on {lm.name} ({lm.fingerprint}): its probe reads that model's hidden "
                "states. Fit a gate for this model."
            )

    def scores(self, lm: LoadedModel, prompts: Sequence[str]) -> Tensor:
        """In-domain probability of each prompt (float64 ``[N]``)."""
        self._check_fitted()
        self._check_model(lm)
        X = self._states(lm, prompts, self.layer_).double()
        return torch.sigmoid(X @ self.weight_.double() + self.bias_)

    def decide(self, lm: LoadedModel, prompts: Sequence[str]) -> list[GateDecision]:
        """One decision per prompt: steer when its probability reaches ``threshold_``."""
        s = self.scores(lm, prompts).tolist()
        return [GateDecision(p, float(v), bool(v >= self.threshold_)) for p, v in zip(prompts, s)]

    # --- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``weight.safetensors`` and ``gate.json`` into ``directory`` (atomically)."""
        self._check_fitted()
        meta: dict[str, Any] = {
            "format": GATE_FORMAT,
            "layer": self.layer_,
            "position": self.position,
            "bias": self.bias_,
            "threshold": self.threshold_,
            "stats": self.stats_,
            "target": {
                "name": self.model_name_,
                "fingerprint": self.fingerprint_,
                "hidden_size": self.hidden_size_,
            },
            "params": {
                "layer": self.layer,
                "C": self.C,
                "val_fraction": self.val_fraction,
                "seed": self.seed,
                "chat_template": self.chat_template,
                "batch_size": self.batch_size,
            },
        }
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            save_tensors(tmp / WEIGHT_FILE, {"weight": self.weight_})
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DomainGate:
        """A gate saved by :meth:`save` (safetensors and JSON only, no pickle)."""
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: is {directory} a saved DomainGate?")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptFileError(
                f"{meta_path} is not valid JSON ({exc}); save the gate again"
            ) from exc
        if not isinstance(meta, dict):
            raise CorruptFileError(f"{meta_path} holds a JSON {type(meta).__name__}, not a gate")
        if meta.get("format") != GATE_FORMAT:
            raise ValueError(
                f"{meta_path} has gate format {meta.get('format')!r}; this version reads "
                f"{GATE_FORMAT}"
            )
        weight = load_tensors(directory / WEIGHT_FILE)[0]["weight"]
        target = meta["target"]
        if weight.shape != (target["hidden_size"],) or not math.isfinite(meta["bias"]):
            raise ValueError(f"{directory} is inconsistent: weight {tuple(weight.shape)}")
        gate = cls(position=meta["position"], **meta["params"])
        gate.weight_ = weight.float()
        gate.bias_ = float(meta["bias"])
        gate.threshold_ = float(meta["threshold"])
        gate.layer_ = int(meta["layer"])
        gate.fingerprint_ = target["fingerprint"]
        gate.hidden_size_ = int(target["hidden_size"])
        gate.model_name_ = target["name"]
        gate.stats_ = meta["stats"]
        return gate


def gated_generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    plan: Any,
    gate: DomainGate,
    **generate_kwargs: Any,
) -> tuple[list[str], list[GateDecision]]:
    """Generate all prompts in one call, steering with ``plan`` only the rows the gate accepts.

    Returns the completions and the gate's decisions (so the caller sees which were steered).
    Extra keyword arguments go to :func:`expertsteer.steer.generate`.
    """
    if "plan" in generate_kwargs:
        raise TypeError("pass the plan as the third argument of gated_generate, not plan=")
    prompts = list(prompts)
    decisions = gate.decide(lm, prompts)
    rows = [plan if d.steer else None for d in decisions]
    texts = generate(lm, prompts, plan=rows, **generate_kwargs)
    return texts, decisions
