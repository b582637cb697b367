"""Scoring: multiple choice by log-likelihood of each option, generation by alias match."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..models import LoadedModel
from ..steer import generate, sequence_logprobs
from .tasks import Item

__all__ = [
    "NORMS",
    "alias_match",
    "continuation",
    "generation_correct",
    "generation_scores",
    "mc_correct",
    "option_logprobs",
]

Norm = Literal["sum", "mean"]
NORMS: tuple[Norm, ...] = ("sum", "mean")


def continuation(prompt: str, choice: str) -> str:
    """The text scored after ``prompt``: the choice, after a space unless one is there."""
    if not prompt or prompt[-1].isspace() or choice[:1].isspace():
        return choice
    return " " + choice


def option_logprobs(
    lm: LoadedModel,
    items: Sequence[Item],
    *,
    plan=None,
    alpha: float = 1.0,
    prefix: str = "",
    batch_size: int = 16,
    progress: bool | str = False,
) -> list[np.ndarray]:
    """Per item a ``[n_choices, 2]`` array: the summed and the per-token mean log-likelihood
    of each choice given ``prefix + prompt``, under ``plan`` (scaled by ``alpha``) if given."""
    prompts, conts = [], []
    for item in items:
        for choice in item.choices:
            prompts.append(prefix + item.prompt)
            conts.append(continuation(item.prompt, choice))
    kw = {"plan": plan, "alpha": alpha} if plan is not None else {}
    per_token = sequence_logprobs(
        lm, prompts, conts, reduce="none", batch_size=batch_size, progress=progress, **kw
    ).double()
    valid = ~torch.isnan(per_token)
    total = torch.where(valid, per_token, 0.0).sum(1)
    mean = total / valid.sum(1)
    flat = torch.stack([total, mean], 1).numpy()
    out, start = [], 0
    for item in items:
        out.append(flat[start : start + len(item.choices)])
        start += len(item.choices)
    return out


def mc_correct(scores: Sequence[np.ndarray], items: Sequence[Item], norm: Norm) -> np.ndarray:
    """1.0 where the highest-scoring choice (first on ties) is the answer, else 0.0."""
    col = NORMS.index(norm)
    return np.array(
        [float(int(np.argmax(s[:, col])) == item.answer) for s, item in zip(scores, items)]
    )


def concept_margin(scores: Sequence[np.ndarray], indices: Sequence[int], norm: Norm) -> np.ndarray:
    """log-likelihood of the concept's choice minus the mean of the other choices', per item."""
    col = NORMS.index(norm)
    out = []
    for s, k in zip(scores, indices):
        others = np.delete(s[:, col], k)
        out.append(s[k, col] - others.mean())
    return np.array(out)


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def alias_match(text: str, aliases: Sequence[str]) -> bool:
    """Whether any alias occurs in ``text`` as whole words (case, punctuation ignored)."""
    norm = f" {_normalise(text)} "
    return any(a.strip() and f" {_normalise(a)} " in norm for a in aliases)


def generation_correct(text: str, item: Item) -> bool:
    """Exact match with the answer, or an alias of it named and no trap named."""
    answer = item.choices[item.answer]
    if _normalise(text) == _normalise(answer):
        return True
    return alias_match(text, (answer, *item.aliases)) and not alias_match(text, item.traps)


def generation_scores(
    lm: LoadedModel,
    items: Sequence[Item],
    *,
    plan=None,
    alpha: float = 1.0,
    prefix: str = "",
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> tuple[np.ndarray, list[str]]:
    """Greedy answers (no chat template: the prompts are completion-style) and 1.0 where the
    answer is right by :func:`generation_correct`."""
    kw = {"plan": plan, "alpha": alpha} if plan is not None else {}
    texts = generate(
        lm,
        [prefix + item.prompt for item in items],
        chat_template=False,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        **kw,
    )
    # The first line is the answer; a model rambling on must not get credit from later lines.
    first = [t.strip().split("\n")[0] for t in texts]
    return np.array([float(generation_correct(t, it)) for t, it in zip(first, items)]), texts
