"""A map trained through the target: the expert's reading of each prompt becomes its own delta.

Static and conditioned plans add a fixed direction (scaled per input at most). A
:class:`LearnedMap` adds a *per-input* vector at one target block ``j``::

    delta(x) = scale · ρ_j · up @ down @ z(x),   z(x) = (h_i(x) - mean) / std

``h_i(x)`` is the expert's state at block ``i`` (last token of the prompt: the expert reads the
question, not an answer), ``up @ down`` a rank-``r`` map initialised from the truncated SVD of
the ridge aligner's map i → j (so it starts as "the target-state deviation the expert
predicts"), ``ρ_j`` the target block's mean residual norm, and ``scale`` starts at 0: the
untrained map is the unsteered target. :class:`LearnedMapFit` trains ``up``, ``down`` and
``scale`` on the frozen target's next-token loss of the right answer on the training split,
keeping the epoch (0 included) a validation score picks.

Cost: one expert prefill per prompt up to block i, as a conditioned plan. Saved as
safetensors + JSON (:meth:`LearnedMap.save_pretrained`); nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .condition import check_expert_model
from .extract import extract
from .io import CorruptFileError, load_tensors, save_tensors, write_json
from .models import LoadedModel
from .plan import ModelInfo, SteeringPlan
from .registry import HyperParams
from .steer.hooks import SteeringHandle
from .steer.infer import keeps_logits, pad_ids, pad_token_id, pair_tokens
from .types import Tensor

__all__ = ["LearnedMap", "LearnedMapFit", "frozen", "learned_generate"]

FORMAT = 1
TENSORS = "learned_map.safetensors"
CONFIG = "learned_map.json"
_TENSOR_NAMES = ("up", "down", "mean", "std")


@dataclass(frozen=True)
class LearnedMap:
    """The fitted map (module docstring); ``deltas`` and ``plans`` apply it."""

    expert: ModelInfo
    target: ModelInfo
    expert_layer: int
    target_layer: int
    up: Tensor  # [d_target, r]
    down: Tensor  # [r, d_expert]
    mean: Tensor  # [d_expert]: the train prompts' mean expert state
    std: Tensor  # [d_expert]
    scale: float
    norm: float  # ρ_j
    max_length: int | None = 512
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _TENSOR_NAMES:
            object.__setattr__(self, name, getattr(self, name).detach().float().cpu().contiguous())
        r = self.down.shape[0]
        shapes = {
            "up": (self.target.hidden_size, r),
            "down": (r, self.expert.hidden_size),
            "mean": (self.expert.hidden_size,),
            "std": (self.expert.hidden_size,),
        }
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"{name} has shape {tuple(getattr(self, name).shape)}, not {shape}"
                )
        if not 0 <= self.expert_layer < self.expert.n_layers:
            raise ValueError(
                f"expert layer {self.expert_layer} outside 0..{self.expert.n_layers - 1}"
            )
        if not 0 <= self.target_layer < self.target.n_layers:
            raise ValueError(
                f"target layer {self.target_layer} outside 0..{self.target.n_layers - 1}"
            )

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def deltas(self, states: Tensor) -> Tensor:
        """The vector added at the target block per row of expert ``states`` ``[n, d_e]``."""
        z = (states.float() - self.mean) / self.std
        return self.scale * self.norm * (z @ self.down.T) @ self.up.T

    def check_expert(self, lm: Any) -> None:
        """Refuse a missing expert, or another model than the one the map was trained on."""
        check_expert_model(
            self.expert, lm, missing="this learned map reads each prompt with the expert",
            fitted="this map was trained on the states of",
        )  # fmt: skip

    def check_target(self, lm: Any, *, strict: bool = True) -> None:
        """As :meth:`SteeringPlan.check_target`, for the target the deltas are added to."""
        self.plans_of(torch.zeros(1, self.target.hidden_size))[0].check_target(lm, strict=strict)

    def read(self, expert: LoadedModel, prompts: Sequence[str], **kw: Any) -> Tensor:
        """The expert's states at block i, last token of each prompt (cached like any read;
        ``cache=False`` for text that must not reach the disk, e.g. a served prompt)."""
        self.check_expert(expert)
        kw.setdefault("progress", False)
        return extract(
            expert, list(prompts), layers=[self.expert_layer], position="last",
            max_length=self.max_length, **kw,
        )[0]  # fmt: skip

    def plans(self, states: Tensor) -> list[SteeringPlan]:
        """One plan per row (its delta as vector × α), for any per-row plan API (scoring,
        :func:`expertsteer.steer.generate`)."""
        return self.plans_of(self.deltas(states))

    def plans_for(
        self, expert: LoadedModel, prompts: Sequence[str], **kw: Any
    ) -> list[SteeringPlan]:
        """One plan per prompt, the expert reading each (``kw``: :meth:`read`'s)."""
        return self.plans(self.read(expert, prompts, **kw))

    def plans_of(self, deltas: Tensor) -> list[SteeringPlan]:
        """Per-row plans adding ``deltas`` ``[n, d_t]`` at the map's block (nulls swap them)."""
        out = []
        for d in deltas:
            n = float(d.norm())
            out.append(
                SteeringPlan(
                    vectors={self.target_layer: d / n if n > 0 else torch.zeros_like(d)},
                    alphas={self.target_layer: n},
                    target=self.target,
                    method="expertsteer-trained",
                    expert=self.expert,
                    pairs=[(self.expert_layer, self.target_layer)],
                    layer_norms={self.target_layer: self.norm},
                )
            )
        return out

    # --- persistence ------------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Tensors first, the JSON last with their checksum (a half-written folder reads as
        damaged, never as another map)."""
        directory = Path(directory)
        tensors = {name: getattr(self, name) for name in _TENSOR_NAMES}
        config = {
            "format_version": FORMAT,
            "expert": asdict(self.expert),
            "target": asdict(self.target),
            "expert_layer": self.expert_layer,
            "target_layer": self.target_layer,
            "scale": self.scale,
            "norm": self.norm,
            "max_length": self.max_length,
            "metrics": self.metrics,
            "tensors_sha256": save_tensors(directory / TENSORS, tensors),
        }
        write_json(directory / CONFIG, config)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LearnedMap:
        directory = Path(directory)
        if not (directory / CONFIG).is_file():
            raise FileNotFoundError(f"{directory / CONFIG} is missing: not a learned map folder")
        try:
            config = json.loads((directory / CONFIG).read_text(encoding="utf-8"))
            if config.get("format_version") != FORMAT:
                raise CorruptFileError(f"format_version {config.get('format_version')}")
            tensors, meta = load_tensors(directory / TENSORS)
            if meta.get("sha256") != config.get("tensors_sha256"):
                raise CorruptFileError("the tensors and the JSON do not match")
            return cls(
                expert=ModelInfo.from_dict(config["expert"]),
                target=ModelInfo.from_dict(config["target"]),
                expert_layer=int(config["expert_layer"]),
                target_layer=int(config["target_layer"]),
                scale=float(config["scale"]),
                norm=float(config["norm"]),
                max_length=config["max_length"],
                metrics=dict(config.get("metrics") or {}),
                **{name: tensors[name] for name in _TENSOR_NAMES},
            )
        except (CorruptFileError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise CorruptFileError(
                f"{directory} holds a damaged learned map ({type(exc).__name__}: {exc}); refit it"
            ) from exc


def learned_generate(
    target: Any,
    expert: Any,
    prompts: Sequence[str],
    learned: LearnedMap,
    *,
    alpha: float = 1.0,
    **kw: Any,
) -> list[str]:
    """:func:`~expertsteer.steer.generate` with each prompt's own delta, the expert reading the
    prompt as written (before any chat template); ``alpha`` scales every delta."""
    from .steer import generate

    plans = learned.plans_for(expert, prompts, batch_size=kw.get("batch_size", 8))
    return generate(target, prompts, plan=plans, alpha=alpha, **kw)


@contextlib.contextmanager
def frozen(lm: LoadedModel) -> Iterator[None]:
    """The model's parameters out of autograd for the block (their flags restored after)."""
    params = list(lm.model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class LearnedMapFit(HyperParams):
    """Train a :class:`LearnedMap` through the frozen target (module docstring).

    Hyper-parameters: ``rank``; ``epochs`` over the training pairs, ``batch_size`` pairs a
    step; AdamW with ``lr`` on ``up`` / ``down`` and ``10 × lr`` on ``scale`` (it starts at 0
    and is the only parameter with a gradient there); ``weight_decay``; ``seed`` (the batch
    order). Learned: ``map_`` (the epoch ``val`` scores best; ties: the earlier one, so the
    unsteered epoch 0 stands unless training helps on validation) and ``history_`` (per epoch:
    mean train loss, validation score, scale).
    """

    def __init__(
        self,
        rank: int = 8,
        epochs: int = 4,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        self.rank, self.epochs, self.lr = rank, epochs, lr
        self.weight_decay, self.batch_size, self.seed = weight_decay, batch_size, seed

    def fit(
        self,
        target: LoadedModel,
        states: Tensor,
        contexts: Sequence[str],
        answers: Sequence[str],
        *,
        expert: ModelInfo,
        expert_layer: int,
        target_layer: int,
        init: Tensor,
        norm: float,
        val: Callable[[LearnedMap], float] | None = None,
        max_length: int | None = 512,
    ) -> LearnedMapFit:
        """``states`` ``[n, d_e]``: the expert's reading of each training prompt; ``contexts``
        / ``answers``: what the target reads and the tokens whose loss is trained (scored as
        :func:`expertsteer.steer.sequence_logprobs` scores them); ``init``: the ridge map
        ``[d_t, d_e]`` on raw expert states; ``norm``: ρ_j."""
        n = len(contexts)
        if not (n == len(answers) == states.shape[0]) or n == 0:
            raise ValueError(
                f"{states.shape[0]} states, {len(contexts)} contexts and {len(answers)} answers: "
                "pass one of each per training example"
            )
        if not 1 <= self.rank <= min(init.shape):
            raise ValueError(f"rank must be in 1..{min(init.shape)}, not {self.rank}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch_size must be ≥ 1 and lr > 0")
        x = states.float()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        z = (x - mean) / std
        up, down = _init_factors(init, z, std, self.rank)
        params = {
            "up": up.requires_grad_(),
            "down": down.requires_grad_(),
            "scale": torch.zeros((), requires_grad=True),
        }
        opt = torch.optim.AdamW(
            [
                {"params": [params["up"], params["down"]], "lr": self.lr},
                {"params": [params["scale"]], "lr": 10 * self.lr},
            ],
            weight_decay=self.weight_decay,
        )
        ids, splits = pair_tokens(target, list(contexts), list(answers), chat_template=False)

        def snapshot(metrics: dict[str, Any]) -> LearnedMap:
            return LearnedMap(
                expert, ModelInfo.of(target), expert_layer, target_layer,
                params["up"].detach().clone(), params["down"].detach().clone(), mean, std,
                float(params["scale"].detach()), float(norm), max_length, metrics,
            )  # fmt: skip

        gen = torch.Generator().manual_seed(self.seed)
        history: list[dict[str, Any]] = []
        best: tuple[float, int, LearnedMap] | None = None
        for epoch in range(self.epochs + 1):
            losses = []
            if epoch > 0:
                order = torch.randperm(n, generator=gen).tolist()
                for b in range(0, n, self.batch_size):
                    idx = order[b : b + self.batch_size]
                    delta = params["scale"] * norm * (z[idx] @ params["down"].T) @ params["up"].T
                    loss = _answer_nll(target, ids, splits, idx, target_layer, delta)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    losses.append(float(loss.detach()))
            m = snapshot({})
            score = float(val(m)) if val is not None else -float("inf")
            history.append({
                "epoch": epoch,
                "train_loss": sum(losses) / len(losses) if losses else None,
                "val_score": None if val is None else score,
                "scale": m.scale,
            })  # fmt: skip
            if best is None or score > best[0] or (val is None and epoch == self.epochs):
                best = (score, epoch, m)  # without val: the last epoch
        assert best is not None
        _, epoch, chosen = best
        self.history_ = history
        self.map_ = replace(chosen, metrics={"epoch": epoch, "rank": self.rank, "history": history})
        return self


def _init_factors(init: Tensor, z: Tensor, std: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``up`` ``[d_t, r]``, ``down`` ``[r, d_e]``: the ridge map ``init`` (on raw states) moved
    onto standardised inputs ``z`` and truncated to rank ``r``, scaled so that
    ``up @ down @ z`` has unit RMS over the rows (``scale`` is then a fraction of ρ_j)."""
    u, s, vh = torch.linalg.svd(init.float() * std, full_matrices=False)
    up, down = u[:, :rank].clone(), s[:rank, None] * vh[:rank]
    rms = float((z @ down.T @ up.T).pow(2).sum(1).mean().sqrt())
    return up, down / max(rms, 1e-12)


def _answer_nll(
    target: LoadedModel,
    ids: list[list[int]],
    splits: list[int],
    idx: list[int],
    layer: int,
    delta: Tensor,
) -> Tensor:
    """Mean over the rows ``idx`` of the answer tokens' summed NLL, ``delta[r]`` added to block
    ``layer``'s output at every token of row r; gradients reach ``delta`` only."""
    input_ids, mask = pad_ids([ids[i] for i in idx], pad_token_id(target), "right", target.device)
    start = min(splits[i] for i in idx) - 1
    kw = {"logits_to_keep": input_ids.shape[1] - start} if keeps_logits(target) else {}
    with frozen(target), SteeringHandle(target, {layer: delta}, len(idx), "all"):
        logits = target.model(input_ids=input_ids, attention_mask=mask, use_cache=False, **kw)
    logits = logits.logits
    offset = input_ids.shape[1] - logits.shape[1]
    total = logits.new_zeros(())
    for r, i in enumerate(idx):
        k, n = splits[i], len(ids[i])
        logp = torch.log_softmax(logits[r, k - 1 - offset : n - 1 - offset].float(), dim=-1)
        total = total - logp.gather(1, input_ids[r, k:n, None]).sum()
    return total / len(idx)
