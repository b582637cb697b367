"""SteeringPlan: what a fit produces — per target layer a unit vector and a default α.

Plain data (safetensors + JSON, no pickle), so anything can produce or consume it. The plan
owns its algebra (scaling, sums, :meth:`SteeringPlan.combine`) but knows nothing of hooks:
:func:`expertsteer.steer.attach` puts a plan on a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .io import CorruptFileError, load_tensors, save_tensors, write_json
from .types import LayerPair, Tensor

CONFIG_NAME = "steering_config.json"
TENSORS_NAME = "steering_vectors.safetensors"
FORMAT_VERSION = 1


class PlanMismatchError(ValueError):
    """A plan applied to, or combined with, a model it was not fitted for."""


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a model: enough to refuse a plan on the wrong one."""

    name: str
    fingerprint: str
    n_layers: int
    hidden_size: int

    @classmethod
    def of(cls, lm: Any) -> ModelInfo:
        return cls(lm.name, lm.fingerprint, lm.n_layers, lm.hidden_size)

    @classmethod
    def from_dict(cls, value: Any) -> ModelInfo:
        """From saved JSON, strictly: a damaged or hand-edited entry fails here, not later."""
        d = _dict(value)
        if set(d) != {"name", "fingerprint", "n_layers", "hidden_size"}:
            raise KeyError(
                f"model fields {sorted(d)}; expected fingerprint, hidden_size, n_layers, name"
            )
        n_layers, hidden = _int(d["n_layers"]), _int(d["hidden_size"])
        if n_layers < 1 or hidden < 1:
            raise ValueError(f"n_layers {n_layers} and hidden_size {hidden} must be positive")
        return cls(_str(d["name"]), _str(d["fingerprint"]), n_layers, hidden)


@dataclass
class SteeringPlan:
    """Unit vectors ``vectors[j]`` added as ``alphas[j] * vectors[j]`` to target block ``j``."""

    vectors: dict[int, Tensor]
    alphas: dict[int, float]
    target: ModelInfo
    method: str = "expertsteer"
    expert: ModelInfo | None = None
    pairs: list[LayerPair] = field(default_factory=list)
    layer_norms: dict[int, float] = field(default_factory=dict)
    mi_matrix: Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.vectors = {
            int(j): v.detach().float().cpu().reshape(-1) for j, v in sorted(self.vectors.items())
        }
        self.alphas = {int(j): float(a) for j, a in sorted(self.alphas.items())}
        self.layer_norms = {int(j): float(n) for j, n in sorted(self.layer_norms.items())}
        self.pairs = [(int(i), int(j)) for i, j in self.pairs]
        if not self.vectors:
            raise ValueError("a SteeringPlan needs at least one layer vector")
        if set(self.alphas) != set(self.vectors):
            raise ValueError(
                f"alphas cover layers {sorted(self.alphas)} but vectors cover "
                f"{sorted(self.vectors)}"
            )
        for j, v in self.vectors.items():
            if not 0 <= j < self.target.n_layers:
                raise ValueError(f"layer {j} is outside the target's {self.target.n_layers} layers")
            if v.numel() != self.target.hidden_size:
                raise ValueError(
                    f"vector for layer {j} has {v.numel()} values; the target's "
                    f"hidden size is {self.target.hidden_size}"
                )
            if not torch.isfinite(v).all():
                raise ValueError(f"vector for layer {j} is not finite")
        bad = [j for j, a in self.alphas.items() if not math.isfinite(a)]
        if bad:
            raise ValueError(f"alphas of layers {bad} are not finite")

    @property
    def layers(self) -> list[int]:
        return list(self.vectors)

    def select(self, layers: Sequence[int]) -> SteeringPlan:
        """The same plan on a subset of its layers (pairs kept for those layers)."""
        layers = [int(j) for j in layers]
        unknown = set(layers) - set(self.vectors)
        if unknown or not layers:
            raise ValueError(
                f"layers {sorted(unknown) or layers} are not among the plan's layers {self.layers}"
            )
        return replace(
            self,
            vectors={j: self.vectors[j] for j in layers},
            alphas={j: self.alphas[j] for j in layers},
            layer_norms={j: n for j, n in self.layer_norms.items() if j in layers},
            pairs=[p for p in self.pairs if p[1] in layers],
        )

    def steering_vectors(self, scale: float = 1.0) -> dict[int, Tensor]:
        """What is added to each block's output: ``scale * alpha_j * v_j``."""
        return {j: scale * self.alphas[j] * v for j, v in self.vectors.items()}

    # --- arithmetic (repeng-style): scale, negate, combine ------------------------------

    def __mul__(self, scale: float) -> SteeringPlan:
        return replace(self, alphas={j: a * float(scale) for j, a in self.alphas.items()})

    __rmul__ = __mul__

    def __neg__(self) -> SteeringPlan:
        return self * -1.0

    def __add__(self, other: SteeringPlan) -> SteeringPlan:
        """Both plans at once. On a shared layer the added vectors sum (a_1 v_1 + a_2 v_2)."""
        if not isinstance(other, SteeringPlan):
            return NotImplemented
        if (self.target.fingerprint, self.target.hidden_size) != (
            other.target.fingerprint,
            other.target.hidden_size,
        ):
            raise PlanMismatchError(
                f"cannot add plans fitted for different target models ({self.target.name} "
                f"{self.target.fingerprint} vs {other.target.name} {other.target.fingerprint}); "
                "combine plans fitted for the same target"
            )
        added = self.steering_vectors()
        for j, v in other.steering_vectors().items():
            added[j] = added[j] + v if j in added else v
        alphas = {j: float(v.norm()) for j, v in added.items()}
        vectors = {j: v / alphas[j] if alphas[j] > 0 else v for j, v in added.items()}
        return SteeringPlan(
            vectors=vectors,
            alphas=alphas,
            target=self.target,
            method="sum",
            layer_norms={**other.layer_norms, **self.layer_norms},
            provenance={"sum_of": [self.method, other.method]},
        )

    __radd__ = __add__

    def __sub__(self, other: SteeringPlan) -> SteeringPlan:
        return self + (-other)

    # --- compatibility ------------------------------------------------------------------

    def check_target(self, lm: Any, *, strict: bool = True) -> None:
        """Refuse a model of another width/depth; with ``strict``, any other weights too."""
        if lm.hidden_size != self.target.hidden_size or lm.n_layers != self.target.n_layers:
            raise PlanMismatchError(
                f"plan was fitted for {self.target.name} ({self.target.n_layers} layers, "
                f"hidden {self.target.hidden_size}); {lm.name} has {lm.n_layers} layers, "
                f"hidden {lm.hidden_size}. Use the plan with {self.target.name}, or fit a plan "
                f"for {lm.name} (expertsteer fit --target ...)"
            )
        if strict and lm.fingerprint != self.target.fingerprint:
            raise PlanMismatchError(
                f"plan was fitted for {self.target.name} (fingerprint "
                f"{self.target.fingerprint}), not for {lm.name} ({lm.fingerprint}). Refit it for "
                "this model, or pass strict=False to apply it anyway"
            )

    # --- what is added at inference ---------------------------------------------------------

    @staticmethod
    def combine(
        terms: Sequence[tuple[SteeringPlan, Tensor]],
        layer_alphas: Mapping[int, float] | None = None,
    ) -> dict[int, Tensor]:
        """Per layer ``j`` the additions ``[R, d] = C_j [R, P] @ V_j [P, d]``.

        Each term is a plan and its per-row weight (a float64 ``[R]`` or ``[1]``); ``V_j``
        stacks the unit vectors of the ``P`` plans that steer layer ``j`` and
        ``C_j[r, p] = weight_p[r] · α_j^p`` (``layer_alphas[j]`` replacing every plan's
        ``α_j``). So plans on one row sum their additions, as :meth:`__add__` does.
        """
        layer_alphas = dict(layer_alphas or {})
        layers = sorted({j for plan, _ in terms for j in plan.layers})
        unknown = set(layer_alphas) - set(layers)
        if unknown:
            raise ValueError(f"layer_alphas names layers {sorted(unknown)} that no plan steers")
        R = max(int(w.numel()) for _, w in terms)
        deltas = {}
        for j in layers:
            on_j = [(plan, w) for plan, w in terms if j in plan.vectors]
            V = torch.stack([plan.vectors[j] for plan, _ in on_j])
            # float64 product then one rounding: the same float32 α_j·w as steering_vectors(w)
            C = torch.stack(
                [w.expand(R) * layer_alphas.get(j, plan.alphas[j]) for plan, w in on_j], dim=1
            ).float()
            deltas[j] = C @ V
        return deltas

    # --- persistence ----------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``steering_vectors.safetensors`` and ``steering_config.json`` atomically."""
        directory = Path(directory)
        tensors = {f"layer.{j}": v for j, v in self.vectors.items()}
        if self.mi_matrix is not None:
            tensors["mi_matrix"] = self.mi_matrix.detach().double().cpu()
        digest = save_tensors(directory / TENSORS_NAME, tensors)
        config = {
            "format_version": FORMAT_VERSION,
            "library_version": __version__,
            "method": self.method,
            "target": asdict(self.target),
            "expert": asdict(self.expert) if self.expert else None,
            "pairs": [list(p) for p in self.pairs],
            "alphas": {str(j): a for j, a in self.alphas.items()},
            "layer_norms": {str(j): n for j, n in self.layer_norms.items()},
            "config": self.config,
            "provenance": self.provenance,
            "tensors_sha256": digest,
        }
        write_json(directory / CONFIG_NAME, config)  # last: its checksum vouches for the tensors
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SteeringPlan:
        """Load a plan folder written by :meth:`save_pretrained` (or a hub repo id)."""
        directory = Path(directory)
        if not directory.is_dir():
            directory = _download(str(directory))
        cfg_path, t_path = directory / CONFIG_NAME, directory / TENSORS_NAME
        for p in (cfg_path, t_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p} is missing: {directory} is not a saved SteeringPlan")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise CorruptFileError(f"{cfg_path} is not valid JSON ({exc})") from exc
        if not isinstance(cfg, dict):
            raise CorruptFileError(f"{cfg_path} holds a JSON {type(cfg).__name__}, not a plan")
        if cfg.get("format_version") != FORMAT_VERSION:
            raise CorruptFileError(
                f"{cfg_path} has format_version {cfg.get('format_version')}; "
                f"this library reads {FORMAT_VERSION}"
            )
        try:
            tensors, meta = load_tensors(t_path)
        except CorruptFileError as exc:
            raise CorruptFileError(f"{exc}; save or fit the plan again") from exc
        if meta.get("sha256") != cfg.get("tensors_sha256"):
            raise CorruptFileError(
                f"{t_path} does not match {cfg_path} (checksums differ): "
                "the folder was partly overwritten; save or fit the plan again"
            )
        try:
            return cls(
                vectors={
                    int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("layer.")
                },
                alphas={int(j): _number(a) for j, a in _dict(cfg["alphas"]).items()},
                target=ModelInfo.from_dict(cfg["target"]),
                method=_str(cfg["method"]),
                expert=ModelInfo.from_dict(cfg["expert"]) if cfg.get("expert") else None,
                pairs=[_pair(p) for p in cfg.get("pairs") or []],
                layer_norms={
                    int(j): _number(n) for j, n in _dict(cfg.get("layer_norms") or {}).items()
                },
                mi_matrix=tensors.get("mi_matrix"),
                config=_dict(cfg.get("config") or {}),
                provenance=_dict(cfg.get("provenance") or {}),
            )
        except Exception as exc:  # any malformed field: missing, wrong type, out of range
            raise CorruptFileError(
                f"{cfg_path} does not describe a valid plan ({type(exc).__name__}: {exc}); "
                "re-save it with save_pretrained or refit it"
            ) from exc


# the same as a module function: ``combine(terms, layer_alphas)``
combine = SteeringPlan.combine


# Strict field readers for from_pretrained: a hand-edited or damaged file fails loudly here,
# not later inside a forward hook.


def _dict(value: Any) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _pair(value: Any) -> LayerPair:
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError(f"a layer pair is [expert_layer, target_layer], got {value!r}")
    return _int(value[0]), _int(value[1])


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, TENSORS_NAME]))
    except Exception as exc:
        raise FileNotFoundError(
            f"{repo_id!r} is neither a plan folder nor a reachable hub repo ({exc})"
        ) from exc
