"""Steered generation and scoring: batch prompts by length, hook each batch, decode or score.

Each public function parses its steering arguments once (:class:`SteeringRequest`) and hands
every batch its slice of them.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from ..extract import encode, prepare_texts
from ..models import LoadedModel
from ..plan import SteeringPlan
from ..types import Tensor
from .attach import Alpha, attach, parse_alpha
from .hooks import SteeringHandle
from .scope import Scope, TokenScope

# one plan for every prompt, or one plan (or None: unsteered) per prompt
PlanArg = SteeringPlan | Sequence[SteeringPlan | None] | None


def check_causal(lm: LoadedModel) -> None:
    if lm.kind != "causal":
        raise ValueError(f"{lm.name} is an encoder; generation and scoring need a causal LM")


@dataclass(frozen=True)
class SteeringRequest:
    """The steering arguments of one generate / scoring call over ``n`` prompts, parsed once.

    ``alpha`` is a float64 ``[1]`` or ``[n]`` tensor, ``scope`` a :class:`TokenScope`; each
    batch gets its slice of the per-prompt plans, α and positions from :meth:`handle`.
    """

    plan: PlanArg
    alpha: Tensor
    scope: TokenScope
    layer_alphas: Mapping[int, float] | None
    strict: bool

    @classmethod
    def of(
        cls,
        n: int,
        plan: PlanArg,
        alpha: Alpha,
        scope: Scope | TokenScope,
        layer_alphas: Mapping[int, float] | None,
        strict: bool,
    ) -> SteeringRequest:
        a = parse_alpha(alpha)
        token_scope = TokenScope.parse(scope)
        per_row = {"plan": None if isinstance(plan, SteeringPlan) else plan}
        per_row["alpha"] = a if a.numel() > 1 else None
        per_row["scope"] = token_scope.positions if token_scope.kind == "positions" else None
        for what, value in per_row.items():
            if value is not None and len(value) != n:
                raise ValueError(f"{what} gives {len(value)} values for {n} prompts")
        return cls(plan, a, token_scope, layer_alphas, strict)

    def handle(self, lm: LoadedModel, idx: list[int]) -> SteeringHandle | None:
        """The hooks for the prompts ``idx`` (per-prompt plans, α and positions are sliced)."""
        if self.plan is None:
            return None
        a = self.alpha if self.alpha.numel() == 1 else self.alpha[idx]
        kw = dict(
            alpha=a,
            layer_alphas=self.layer_alphas,
            scope=self.scope.subset(idx),
            strict=self.strict,
        )
        if isinstance(self.plan, SteeringPlan):
            return attach(lm, self.plan, **kw)
        rows = [self.plan[i] for i in idx]
        return None if all(r is None for r in rows) else attach(lm, rows=rows, **kw)


def _prompt_ids(lm: LoadedModel, prompts: Sequence[str], chat_template: bool) -> list[list[int]]:
    return [
        e["input_ids"] for e in encode(lm, prompts, chat_template=chat_template, max_length=None)
    ]


def pad_ids(seqs: list[list[int]], fill: int, side: str, device) -> tuple[Tensor, Tensor]:
    """Token ids ``[B, W]`` padded with ``fill`` on ``side`` (left/right), and their 0/1 mask."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), fill, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[r, sl] = torch.tensor(s, dtype=torch.long)
        mask[r, sl] = 1
    return ids.to(device), mask.to(device)


# Tokens (rows × longest row) one forward may hold: a few long prompts (thousands of tokens,
# a 150k-word vocabulary) in one batch of 16 exhaust 24 GiB; short ones still batch fully.
MAX_TOKENS = 8192


def length_batches(
    lengths: list[int],
    batch_size: int,
    min_fill: float = 0.0,
    *,
    max_tokens: int | None = MAX_TOKENS,
    rows: Sequence[int] | None = None,
) -> list[list[int]]:
    """Indices grouped by similar length (little padding), longest first.

    A batch also ends before a row shorter than ``min_fill`` × its longest row, so padding
    never exceeds ``1 - min_fill`` of a batch (0: batches of ``batch_size`` only), and before
    its padded size (the rows of its indices, ``rows[i]`` each or 1, × its longest length)
    would pass ``max_tokens`` (``None``: no limit); an index too long alone gets a batch alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    weight = list(rows) if rows is not None else [1] * len(lengths)
    batches: list[list[int]] = []
    used = 0
    for i in order:
        longest = lengths[batches[-1][0]] if batches else 0
        if (
            not batches
            or len(batches[-1]) == batch_size
            or (lengths[i] < min_fill * longest)
            or (max_tokens is not None and (used + weight[i]) * longest > max_tokens)
        ):
            batches.append([])
            used = 0
        batches[-1].append(i)
        used += weight[i]
    return batches


def pad_token_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else 0


@torch.no_grad()
def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    plan: PlanArg = None,
    alpha: Alpha = 1.0,
    scope: Scope | TokenScope = "all",
    layer_alphas: Mapping[int, float] | None = None,
    chat_template: bool | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    strict: bool = True,
    **generate_kwargs: Any,
) -> list[str]:
    """Steered completions of ``prompts`` (only the new text), greedy unless told otherwise.

    ``plan`` is one plan for every prompt or a list with one plan (or ``None``) per prompt;
    ``alpha`` a global scale or one per prompt. ``chat_template=None`` uses the tokenizer's
    template when it has one. Extra keyword arguments go to ``model.generate``.
    """
    check_causal(lm)
    if generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("generate returns one completion per prompt (num_return_sequences=1)")
    if chat_template is None:
        chat_template = bool(getattr(lm.tokenizer, "chat_template", None))
    ids = _prompt_ids(lm, prompts, chat_template)
    request = SteeringRequest.of(len(ids), plan, alpha, scope, layer_alphas, strict)
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": pad_token_id(lm),
        **generate_kwargs,
    }
    out: list[str] = [""] * len(ids)
    for idx in length_batches([len(s) for s in ids], batch_size):
        input_ids, mask = pad_ids([ids[i] for i in idx], pad_token_id(lm), "left", lm.device)
        handle = request.handle(lm, idx)
        with handle or contextlib.nullcontext():
            seqs = lm.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        texts = lm.tokenizer.batch_decode(seqs[:, input_ids.shape[1] :], skip_special_tokens=True)
        for i, text in zip(idx, texts):
            out[i] = text
    return out


def keeps_logits(lm: LoadedModel) -> bool:
    """Whether the model's forward can skip the vocabulary projection of unneeded positions."""
    return "logits_to_keep" in inspect.signature(lm.model.forward).parameters


def split_point(offsets: Sequence[tuple[int, int]], boundary: int) -> int:
    """Index of the first token holding a character at or after ``boundary``."""
    for t, (_, end) in enumerate(offsets):
        if end > boundary:
            return t
    return len(offsets)


def pair_tokens(
    lm: LoadedModel, prompts: Sequence[str], continuations: Sequence[str], chat_template: bool
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt + continuation, tokenised together, and each one's split point.

    The split is the first token holding a character of the continuation (a token straddling
    the boundary counts as continuation); the prompt is the tokens before it.
    """
    prepared = prepare_texts(lm, prompts, chat_template)
    full = [p + c for p, c in zip(prepared, continuations)]
    enc = lm.tokenizer(full, add_special_tokens=not chat_template, return_offsets_mapping=True)
    ids, splits = enc["input_ids"], []
    for i, (p, offsets) in enumerate(zip(prepared, enc["offset_mapping"])):
        k = split_point(offsets, len(p))
        if k == 0 or k == len(offsets):
            raise ValueError(
                f"pair {i}: the prompt and the continuation {continuations[i]!r} need at least "
                "one token each"
            )
        splits.append(k)
    return ids, splits


@torch.no_grad()
def sequence_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    plan: PlanArg = None,
    alpha: Alpha = 1.0,
    scope: Scope | TokenScope = "all",
    layer_alphas: Mapping[int, float] | None = None,
    chat_template: bool = False,
    batch_size: int = 8,
    max_tokens: int | None = MAX_TOKENS,
    reduce: Literal["sum", "mean", "none"] = "sum",
    strict: bool = True,
    progress: bool | str = False,
) -> Tensor:
    """log p(continuation | prompt) of each pair, over the continuation's tokens only.

    Prompt and continuation are tokenised together (as the model would see the text); the
    continuation is every token from the first one holding one of its characters (a token
    straddling the boundary counts as continuation). The prompt, for ``scope``, is the tokens
    before it. ``reduce``: ``sum`` / ``mean`` → ``[N]``; ``none`` → ``[N, max_len]`` padded
    with NaN. ``progress``: a bar over batches (a string names it). ``max_tokens`` bounds a
    forward's rows × longest row (see :func:`length_batches`).
    """
    check_causal(lm)
    if reduce not in ("sum", "mean", "none"):
        raise ValueError(f"reduce must be 'sum', 'mean' or 'none', not {reduce!r}")
    if isinstance(continuations, str) or len(continuations) != len(prompts):
        raise ValueError("pass one continuation string per prompt")
    ids, splits = pair_tokens(lm, prompts, continuations, chat_template)
    request = SteeringRequest.of(len(ids), plan, alpha, scope, layer_alphas, strict)
    per_token: list[Tensor] = [torch.empty(0)] * len(ids)
    batches = length_batches([len(s) for s in ids], batch_size, max_tokens=max_tokens)
    desc = progress if isinstance(progress, str) else "scoring"
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        input_ids, mask = pad_ids([ids[i] for i in idx], pad_token_id(lm), "right", lm.device)
        handle = request.handle(lm, idx)
        with handle or contextlib.nullcontext():
            if handle is not None:
                handle.set_prompt_lengths([splits[i] for i in idx])
            # Only the continuation's positions need the vocabulary projection.
            start = min(splits[i] for i in idx) - 1
            kw = {"logits_to_keep": input_ids.shape[1] - start} if keeps_logits(lm) else {}
            logits = lm.model(input_ids=input_ids, attention_mask=mask, use_cache=False, **kw)
            logits = logits.logits
            offset = input_ids.shape[1] - logits.shape[1]
        for r, i in enumerate(idx):
            k, n = splits[i], len(ids[i])
            logp = torch.log_softmax(logits[r, k - 1 - offset : n - 1 - offset].float(), dim=-1)
            per_token[i] = logp.gather(1, input_ids[r, k:n, None])[:, 0].cpu()
    if reduce == "sum":
        return torch.stack([t.sum() for t in per_token])
    if reduce == "mean":
        return torch.stack([t.mean() for t in per_token])
    width = max(t.numel() for t in per_token)
    padded = torch.full((len(per_token), width), math.nan)
    for i, t in enumerate(per_token):
        padded[i, : t.numel()] = t
    return padded


@torch.no_grad()
def next_token_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    plan: PlanArg = None,
    alpha: Alpha = 1.0,
    scope: Scope | TokenScope = "all",
    layer_alphas: Mapping[int, float] | None = None,
    chat_template: bool = False,
    batch_size: int = 8,
    strict: bool = True,
) -> Tensor:
    """Log-probabilities ``[N, vocab]`` (float32) of the token following each prompt."""
    check_causal(lm)
    ids = _prompt_ids(lm, prompts, chat_template)
    request = SteeringRequest.of(len(ids), plan, alpha, scope, layer_alphas, strict)
    out: list[Tensor] = [torch.empty(0)] * len(ids)
    for idx in length_batches([len(s) for s in ids], batch_size):
        input_ids, mask = pad_ids([ids[i] for i in idx], pad_token_id(lm), "right", lm.device)
        handle = request.handle(lm, idx)
        with handle or contextlib.nullcontext():
            logits = lm.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        for r, i in enumerate(idx):
            out[i] = torch.log_softmax(logits[r, len(ids[i]) - 1].float(), dim=-1).cpu()
    return torch.stack(out)
