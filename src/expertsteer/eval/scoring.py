"""Scoring: multiple choice by log-likelihood of each option, generation by alias match."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from ..io import CorruptFileError, cache_root, drop_damaged, load_tensors, save_tensors
from ..models import LoadedModel
from ..plan import SteeringPlan
from ..steer import PlanArg, choice_logprobs, generate, sequence_logprobs
from .tasks import Item

__all__ = [
    "NORMS",
    "alias_match",
    "continuation",
    "generation_correct",
    "generation_scores",
    "mc_correct",
    "option_logprobs",
    "scored_pair",
    "unsteered_logprobs",
]

Norm = Literal["sum", "mean"]
NORMS: tuple[Norm, ...] = ("sum", "mean")


def continuation(prompt: str, choice: str) -> str:
    """The text scored after ``prompt``: the choice, after a space unless one is there."""
    if not prompt or prompt[-1].isspace() or choice[:1].isspace():
        return choice
    return " " + choice


def scored_pair(prompt: str, choice: str) -> tuple[str, str]:
    """(context, scored text) for one choice, as lm-evaluation-harness forms them: the prompt's
    trailing whitespace moves to the front of the scored text (``"A:\n" + "yes"`` scores
    ``"\nyes"`` after ``"A:"``), so both score the same tokens."""
    context = prompt.rstrip()
    return context, prompt[len(context) :] + continuation(prompt, choice)


def option_logprobs(
    lm: LoadedModel,
    items: Sequence[Item],
    *,
    plan: PlanArg = None,
    alpha: float = 1.0,
    prefix: str = "",
    batch_size: int = 16,
    shared_prompt: bool = True,
    option_alphas: Sequence[np.ndarray] | None = None,
    progress: bool | str = False,
) -> list[np.ndarray]:
    """Per item a ``[n_choices, 2]`` array: the summed and the per-token mean log-likelihood
    of each choice given ``prefix + prompt``, under ``plan`` (scaled by ``alpha``) if given.

    ``option_alphas`` (per item, one multiplier of ``alpha`` per choice: an expert-conditioned
    strength) steers each prompt + choice as its own input; the prompt is then steered
    differently per choice, so every pair runs whole (the shared-prompt path is not taken).
    What is scored is :func:`scored_pair`'s text (a trailing space or newline of the prompt
    is scored with the choice, as lm-eval does).

    ``plan`` is one plan for every item or one (or ``None``) per item. ``shared_prompt`` runs
    each prompt once and its choices on its KV cache (:func:`choice_logprobs`; ``batch_size``
    counts items); off, every prompt + choice runs whole (``batch_size`` counts pairs). Both
    score the same tokens.
    """
    kw: dict = {"plan": plan, "alpha": alpha} if plan is not None else {}
    pairs = [[scored_pair(prefix + item.prompt, c) for c in item.choices] for item in items]
    if any(not ctx.strip() for ps in pairs for ctx, _ in ps):
        # An item with no prompt (BIG-bench's cause_and_effect): its choices are scored after
        # the tokenizer's BOS (else EOS) token, as lm-eval scores an empty context.
        start = _start_text(lm)
        pairs = [[(ctx if ctx.strip() else start, t) for ctx, t in ps] for ps in pairs]
    if option_alphas is not None:
        if len(option_alphas) != len(items) or any(
            len(a) != len(item.choices) for a, item in zip(option_alphas, items)
        ):
            raise ValueError("option_alphas needs one multiplier per choice of every item")
        shared_prompt = False
        if plan is not None:
            kw["alpha"] = np.concatenate([np.asarray(a, float) for a in option_alphas]) * alpha
    if shared_prompt:
        blocks = choice_logprobs(
            lm,
            [ps[0][0] for ps in pairs],
            [[text for _, text in ps] for ps in pairs],
            batch_size=batch_size,
            progress=progress,
            **kw,
        )
        return [_reduce(b) for b in blocks]
    prompts, conts, plans = [], [], []
    for k, ps in enumerate(pairs):
        for context, text in ps:
            prompts.append(context)
            conts.append(text)
            plans.append(plan if plan is None or isinstance(plan, SteeringPlan) else plan[k])
    if plan is not None and not isinstance(plan, SteeringPlan):
        kw["plan"] = plans
    per_token = sequence_logprobs(
        lm, prompts, conts, reduce="none", batch_size=batch_size, progress=progress, **kw
    )
    flat = _reduce(per_token)
    out, start = [], 0
    for item in items:
        out.append(flat[start : start + len(item.choices)])
        start += len(item.choices)
    return out


def _start_text(lm: LoadedModel) -> str:
    tok = lm.tokenizer
    text = tok.bos_token or tok.eos_token
    if not text:
        raise ValueError(
            f"an item has an empty prompt and {lm.name}'s tokenizer has no BOS or EOS token to "
            "score its choices after; give every item a prompt"
        )
    return text


SCORES_VERSION = 2  # bump when what an unsteered score means changes


def unsteered_logprobs(
    lm: LoadedModel,
    items: Sequence[Item],
    *,
    prefix: str = "",
    batch_size: int = 16,
    shared_prompt: bool = True,
    progress: bool | str = False,
) -> list[np.ndarray]:
    """:func:`option_logprobs` without steering, through an on-disk cache (keyed by the model's
    fingerprint, the items, ``prefix`` and the scoring path), so an interrupted or repeated
    evaluation does not score them again. A damaged entry is recomputed with a warning."""
    h = hashlib.sha256(json.dumps([SCORES_VERSION, lm.fingerprint, prefix, shared_prompt]).encode())
    for item in items:
        h.update(hashlib.sha256(json.dumps([item.prompt, item.choices]).encode()).digest())
    path = cache_root() / "scores" / f"{h.hexdigest()[:32]}.safetensors"
    counts = [len(item.choices) for item in items]
    if path.exists():
        try:
            flat = load_tensors(path)[0]["scores"].numpy()
            if flat.shape != (sum(counts), 2):
                raise CorruptFileError(f"{path} holds scores of another shape {flat.shape}")
            return np.split(flat, np.cumsum(counts)[:-1])
        except (CorruptFileError, KeyError) as exc:
            drop_damaged(path, exc)
    out = option_logprobs(
        lm,
        items,
        prefix=prefix,
        batch_size=batch_size,
        shared_prompt=shared_prompt,
        progress=progress,
    )
    save_tensors(path, {"scores": torch.from_numpy(np.concatenate(out))})
    return out


def _reduce(per_token: torch.Tensor) -> np.ndarray:
    """NaN-padded per-token log-likelihoods ``[n, T]`` → ``[n, 2]``: their sum and mean."""
    per_token = per_token.double()
    valid = ~torch.isnan(per_token)
    total = torch.where(valid, per_token, 0.0).sum(1)
    return torch.stack([total, total / valid.sum(1)], 1).numpy()


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
    alpha: float | torch.Tensor = 1.0,
    prefix: str = "",
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> tuple[np.ndarray, list[str]]:
    """Greedy answers (no chat template: the prompts are completion-style) and 1.0 where the
    answer is right by :func:`generation_correct`. ``alpha``: one scale, or one per item (an
    expert-conditioned strength)."""
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
