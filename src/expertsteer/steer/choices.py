"""Multiple-choice scoring with each prompt run once: its options continue the prompt's KV cache.

:func:`choice_logprobs` gives the per-token log-likelihoods :func:`sequence_logprobs` gives for
every prompt + option pair (the same tokens: each pair is tokenised whole, as there), but runs
the tokens an item's options have in common once per item and then all its options, batched,
on copies of that cache.

What is shared, per item: the longest run of leading tokens every option's tokenisation has in
common, ending at least one token before the earliest split point (the last prompt token's
logits score an option's first token, so it is run with the options), and only as far as the
steering scope treats every option alike there. A tokenizer that merges the end of the prompt
into an option (``"xa" + "b"`` → ``"x", "ab"``) moves that option's split point earlier (the
first token holding one of its characters), so the shared run simply ends sooner; when nothing
can be shared the item is scored whole, as in the full-sequence path. Shared runs are left
padded (each item's run ends where its options begin, with explicit positions), as in
generation; scores then equal the full-sequence ones up to float rounding.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
from collections.abc import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..models import LoadedModel
from ..plan import SteeringPlan
from ..types import Tensor
from .attach import Alpha, parse_alpha
from .infer import (
    MAX_TOKENS,
    PlanArg,
    SteeringRequest,
    check_causal,
    keeps_logits,
    length_batches,
    pad_ids,
    pad_token_id,
    pair_tokens,
)
from .scope import Scope, TokenScope

# A batch ends before a prompt shorter than this × its longest: ≤ 20 % padding. Fewer rows
# per forward cost little on CPU; padded tokens cost as much as real ones.
MIN_FILL = 0.8


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((t for t in range(n) if a[t] != b[t]), n)


def shared_length(
    ids: Sequence[Sequence[int]], splits: Sequence[int], scope: TokenScope, row: int = 0
) -> int:
    """How many leading tokens one item's options (token ids, split points) can run as one."""
    n = min(splits) - 1
    for other in ids[1:]:
        n = min(n, _common_prefix(ids[0], other))
    if n <= 0:
        return 0
    masks = [scope.steered(k, n, row) for k in splits]
    for t in range(n):
        if any(m[t] != masks[0][t] for m in masks[1:]):
            return t
    return n


def _cache_arg(lm: LoadedModel) -> str:
    # transformers >= 5.2x names the KV cache ``cache``; older versions ``past_key_values``
    params = inspect.signature(lm.model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _per_option(value, counts: Sequence[int]):
    """A per-prompt sequence repeated for each of the prompt's options."""
    return [v for v, c in zip(value, counts) for _ in range(c)]


@torch.no_grad()
def choice_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    plan: PlanArg = None,
    alpha: Alpha = 1.0,
    scope: Scope | TokenScope = "all",
    layer_alphas: Mapping[int, float] | None = None,
    chat_template: bool = False,
    batch_size: int = 8,
    max_tokens: int | None = MAX_TOKENS,
    strict: bool = True,
    progress: bool | str = False,
) -> list[Tensor]:
    """Per prompt a ``[n_choices, max_len]`` float tensor: each choice's per-token
    log-likelihood given the prompt (NaN-padded), as ``sequence_logprobs(..., reduce="none")``.

    ``plan``, ``alpha`` and explicit ``scope`` positions are given per prompt (or once for all);
    ``choices[i]`` are prompt ``i``'s continuations, written as they follow it. ``batch_size``
    counts prompts per forward call (their options run together after them); ``max_tokens``
    bounds a forward's option rows × their longest prompt + option (a longer item runs alone).
    """
    check_causal(lm)
    if isinstance(choices, str) or len(choices) != len(prompts):
        raise ValueError("pass one list of choices per prompt")
    counts = [len(c) for c in choices]
    if any(isinstance(c, str) or n == 0 for c, n in zip(choices, counts)):
        raise ValueError("each prompt needs a non-empty list of choice strings")
    a = parse_alpha(alpha)
    token_scope = TokenScope.parse(scope)
    # Everything per prompt is checked here, then repeated per option: the rows below are options.
    SteeringRequest.of(len(prompts), plan, a, token_scope, layer_alphas, strict)
    request = SteeringRequest.of(
        sum(counts),
        plan if plan is None or isinstance(plan, SteeringPlan) else _per_option(plan, counts),
        a if a.numel() == 1 else a.repeat_interleave(torch.tensor(counts)),
        token_scope
        if token_scope.kind != "positions"
        else TokenScope.at(_per_option(token_scope.positions, counts)),
        layer_alphas,
        strict,
    )
    ids, splits = pair_tokens(
        lm, _per_option(prompts, counts), [c for cs in choices for c in cs], chat_template
    )
    first = [0, *itertools.accumulate(counts)][:-1]  # each prompt's first option row
    rows = [list(range(f, f + c)) for f, c in zip(first, counts)]
    shared = [
        shared_length([ids[r] for r in rs], [splits[r] for r in rs], request.scope, rs[0])
        for rs in rows
    ]
    per_token: list[Tensor] = [torch.empty(0)] * len(ids)
    pad = pad_token_id(lm)
    # Items with a shared run and items scored whole never meet in one batch (a row of only
    # padding in the shared pass would give NaN keys).
    groups = [[i for i in range(len(prompts)) if (shared[i] > 0) == g] for g in (True, False)]
    batches = [
        [g[k] for k in batch]
        for g in groups
        # Every option row holds a copy of its item's cache: the budget counts option rows.
        for batch in length_batches(
            [max(len(ids[r]) for r in rows[i]) for i in g],
            batch_size,
            MIN_FILL,
            max_tokens=max_tokens,
            rows=[counts[i] for i in g],
        )
    ]
    desc = progress if isinstance(progress, str) else "scoring choices"
    for items in tqdm(batches, desc=desc, disable=not progress, leave=False):
        option_rows = [r for i in items for r in rows[i]]
        starts = [shared[i] for i in items for _ in rows[i]]
        past, past_mask = _run_shared(lm, request, items, rows, ids, splits, shared, pad)
        if past is not None:
            owner = [b for b, i in enumerate(items) for _ in rows[i]]
            past.batch_select_indices(torch.tensor(owner, device=lm.device))
            past_mask = past_mask[owner]
        input_ids, mask = pad_ids(
            [ids[r][s:] for r, s in zip(option_rows, starts)], pad, "right", lm.device
        )
        positions = torch.tensor(starts, device=lm.device)[:, None] + torch.arange(
            input_ids.shape[1], device=lm.device
        )
        if past_mask is not None:
            mask = torch.cat([past_mask, mask], 1)
        handle = request.handle(lm, option_rows)
        # Only the scored positions need the vocabulary projection (an item scored whole
        # would otherwise project its whole prompt).
        first_scored = min(splits[r] - 1 - s for r, s in zip(option_rows, starts))
        kw = {"logits_to_keep": input_ids.shape[1] - first_scored} if keeps_logits(lm) else {}
        with handle or contextlib.nullcontext():
            if handle is not None:
                handle.set_prompt_lengths([splits[r] for r in option_rows])
            logits = lm.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=past is not None,
                **({_cache_arg(lm): past} if past is not None else {}),
                **kw,
            ).logits
        offset = input_ids.shape[1] - logits.shape[1]
        for b, (r, s) in enumerate(zip(option_rows, starts)):
            k, n = splits[r], len(ids[r])
            lo, hi = k - 1 - s - offset, n - 1 - s - offset
            logp = torch.log_softmax(logits[b, lo:hi].float(), dim=-1)
            per_token[r] = logp.gather(1, input_ids[b, k - s : n - s, None])[:, 0].cpu()
    out = []
    for rs in rows:
        width = max(per_token[r].numel() for r in rs)
        block = torch.full((len(rs), width), math.nan)
        for o, r in enumerate(rs):
            block[o, : per_token[r].numel()] = per_token[r]
        out.append(block)
    return out


def _run_shared(lm, request, items, rows, ids, splits, shared, pad):
    """The shared runs of ``items`` (left padded, one row each): their KV cache and mask."""
    if not shared[items[0]]:
        return None, None
    heads = [rows[i][0] for i in items]
    input_ids, mask = pad_ids(
        [ids[r][: shared[i]] for r, i in zip(heads, items)], pad, "left", lm.device
    )
    positions = (mask.cumsum(1) - 1).clamp_min(0)
    handle = request.handle(lm, heads)
    kw = {"logits_to_keep": 1} if keeps_logits(lm) else {}  # nothing here is scored
    with handle or contextlib.nullcontext():
        if handle is not None:
            handle.set_prompt_lengths([splits[r] for r in heads])
        out = lm.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **kw
        )
    return out[_cache_arg(lm)], mask
