"""Token positions two tokenizers share: where both end a token at the same character."""

from __future__ import annotations

from collections.abc import Sequence

Offsets = Sequence[tuple[int, int]]


def shared_token_ends(a: Offsets, b: Offsets, *, skip_first: bool = True) -> list[tuple[int, int]]:
    """Index pairs (i_a, i_b) of tokens that end at the same character of the same text.

    Special tokens (empty offsets) never pair. ``skip_first`` drops each side's first token:
    it is an attention sink (or BOS) whose state says little about the text.
    """
    ends_b: dict[int, int] = {}
    for k, (start, end) in enumerate(b):
        if end > start and not (skip_first and k == 0):
            ends_b[end] = k  # a later token ending at the same char (rare) wins: it saw more
    pairs = []
    for k, (start, end) in enumerate(a):
        if end > start and not (skip_first and k == 0) and end in ends_b:
            pairs.append((k, ends_b[end]))
    return pairs
