"""The forward hooks: add ``delta_j`` to the output of block ``j``, at the scope's tokens.

Forward hooks only; the model is never modified. The token scope is resolved once per forward
call (a ``[B, T, 1]`` 0/1 coefficient shared by every steered layer) and the deltas are moved
once per handle (``[R, 1, d]`` per layer on that block's device and dtype), so each layer hook
is a single fused ``addcmul_`` on the block output.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..models import LoadedModel
from ..types import Tensor
from .placement import block_placement, path_modules
from .scope import Scope, TokenScope


class SteeringHandle:
    """Hooks adding per-layer deltas to block outputs; remove with :meth:`remove` or ``with``.

    ``deltas[j]`` (``[n_rows, d]``; ``n_rows`` 1: the same addition on every row) is added to
    block ``j``'s output at the tokens of ``scope``. The handle knows nothing of plans:
    :func:`expertsteer.steer.attach` computes the deltas.

    ``enabled`` toggles steering between forward calls; a disabled handle takes its hooks off
    the model (zero cost) and puts them back when enabled again.
    """

    def __init__(
        self,
        lm: LoadedModel,
        deltas: dict[int, Tensor],
        n_rows: int,
        scope: TokenScope | Scope,
    ) -> None:
        self.lm = lm
        self.scope = TokenScope.parse(scope)  # a TokenScope is kept as it is
        self._enabled = True
        self._removed = False
        self.n_rows = n_rows  # 1: the same addition on every row
        self.deltas: dict[int, Tensor] = {}  # block -> [R, 1, d] on its device, in its dtype
        self._keys: dict[int, tuple[torch.device, torch.dtype]] = {}
        self._ones: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._coef: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        self._prompt_len: Tensor | None = None
        self._fixed_prompt = False
        self._select: Tensor | None = None
        self._seen: tuple[int, int, int] | None = None  # (B, T, past) of the last call read
        self._seen_mask: Tensor | None = None
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        fallback, outer = lm.device, path_modules(lm)
        for j, delta in deltas.items():
            key = block_placement(lm.layers.blocks[j], fallback, outer)
            self._keys[j] = key
            # Moved once here: blocks may sit on different devices under a device_map.
            self.deltas[j] = delta.reshape(n_rows, 1, -1).to(device=key[0], dtype=key[1])
            self._ones.setdefault(key, torch.ones(1, 1, 1, device=key[0], dtype=key[1]))
        try:
            self._register()
        except BaseException:
            self.remove()
            raise

    # --- hooks -------------------------------------------------------------------------------

    def _register(self) -> None:
        for module in path_modules(self.lm):
            names = list(inspect.signature(module.forward).parameters)
            hook = self._pre_hook(names, top=module is self.lm.model)
            self._hooks.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        for j in self.deltas:
            # prepend: hooks registered earlier (HF's output_hidden_states recorder, user
            # captures) then see the steered output, as the next block does.
            self._hooks.append(
                self.lm.layers.blocks[j].register_forward_hook(self._layer_hook(j), prepend=True)
            )

    def _pre_hook(self, names: list[str], top: bool):
        """Read the call's inputs at the first module on the path that has them.

        The user may enter at the model, its base model or (OPT) the inner decoder; inner modules
        of a multimodal model get a 4D/dict mask instead. A nested call with the same inputs
        (same mask object, batch, length and past) reuses the outer result. The coefficient is a
        function of these inputs (and the prompt lengths) only, so an interrupted forward
        leaves nothing stale.
        """

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            given = {**dict(zip(names, args)), **kwargs}
            x = given.get("input_ids")
            if x is None:
                x = given.get("inputs_embeds")
            mask = given.get("attention_mask")
            if x is None or not (mask is None or (isinstance(mask, Tensor) and mask.ndim == 2)):
                if top:
                    what = "input_ids or inputs_embeds" if x is None else "a 2D attention mask"
                    raise ValueError(
                        f"steering reads {what} from the call to {type(module).__name__} "
                        "(static/compiled caches pass 4D masks: use the default dynamic cache)"
                    )
                return
            # transformers >= 5.2x passes the KV cache as ``cache``; older ones ``past_key_values``
            cache = given.get("past_key_values", given.get("cache"))
            past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
            key = (x.shape[0], x.shape[1], past)
            if key != self._seen or mask is not self._seen_mask:
                self._prepare(*key, mask, x.device)
                self._seen, self._seen_mask = key, mask

        return hook

    def _layer_hook(self, j: int):
        key, delta = self._keys[j], self.deltas[j]

        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            coef = self._coef.get(key)
            if coef is None:  # the block was called outside a model forward
                return None
            h = output[0] if isinstance(output, tuple) else output
            if torch.is_grad_enabled() and (h.requires_grad or delta.requires_grad):
                # autograd may have saved h; a new tensor keeps backward correct (and a trained
                # delta reaches the graph through it: expertsteer.learned)
                new = torch.addcmul(h, coef, delta)
                return (new, *output[1:]) if isinstance(output, tuple) else new
            # In place: no [B, T, d] allocation per layer. The tuple HF returns and its
            # hidden_states hold this same tensor, so they show the steered residual.
            h.addcmul_(coef, delta)
            return None

        return hook

    # --- scope -------------------------------------------------------------------------------

    def _prepare(
        self, B: int, T: int, past: int, mask: Tensor | None, device: torch.device
    ) -> None:
        """The [B, T, 1] coefficient of this forward call (1 = steer), per device/dtype."""
        if self.n_rows > 1 and B != self.n_rows:
            raise ValueError(
                f"steering was attached with {self.n_rows} per-row settings but the batch has "
                f"{B} rows"
            )
        if mask is not None and mask.shape != (B, past + T):
            raise ValueError(
                f"steering reads padding from a 2D attention mask over past + current tokens "
                f"({B}, {past + T}); got {tuple(mask.shape)}"
            )
        real = None if mask is None else mask[:, past:].bool()
        if self.scope.kind == "all":
            keep = real
        else:
            if mask is None:
                pos = torch.arange(past, past + T, device=device).expand(B, T)
            else:  # absolute position = number of real tokens before this one
                pos = mask.long().cumsum(1)[:, past:] - 1
            if past == 0 and not self._fixed_prompt:  # a new sequence: its input is the prompt
                n = real.sum(1) if real is not None else torch.full((B,), T, device=device)
                self._set_prompt(n)
            keep = self._in_scope(pos, B)
            if real is not None:
                keep &= real
        self._coef = {
            key: ones if keep is None else keep.unsqueeze(-1).to(device=key[0], dtype=key[1])
            for key, ones in self._ones.items()
        }

    def _in_scope(self, pos: Tensor, B: int) -> Tensor:
        plen = self._prompt_len
        if plen is None or plen.shape[0] != B:
            raise ValueError(
                f"scope {self.scope.kind!r} needs each row's prompt length: the first forward "
                "call of a sequence (no past) sets it, or call set_prompt_lengths()"
            )
        if plen.device != pos.device:  # once per sequence
            self._prompt_len = plen = plen.to(pos.device)
            if self._select is not None:
                self._select = self._select.to(pos.device)
        return self.scope.mask(pos, plen[:, None], self._select)

    def _set_prompt(self, lengths: Tensor) -> None:
        self._prompt_len = lengths.long()
        if self.scope.kind != "positions":
            return
        rows = self.scope.positions
        if len(rows) != len(lengths):
            raise ValueError(
                f"scope gives position lists for {len(rows)} rows; the batch has {len(lengths)}"
            )
        ns = lengths.tolist()
        select = torch.zeros(len(ns), max(max(ns), 1), dtype=torch.bool)
        for b, (idx, n) in enumerate(zip(rows, ns)):
            bad = [p for p in idx if not -n <= p < n]
            if bad:
                raise ValueError(f"row {b} has {n} prompt tokens; positions {bad} are out of range")
            select[b, [p % n for p in idx]] = True
        self._select = select.to(lengths.device)

    def set_prompt_lengths(self, lengths: Sequence[int] | Tensor | None) -> None:
        """Fix each row's prompt length (real tokens) instead of reading it from the first call.

        Needed when the prompt is not the first forward call's input: scoring prompt +
        continuation in one pass, generating without a KV cache, or continuing from a cache
        (a first call with a past). ``None`` restores the default.
        """
        self._seen = None  # the next call recomputes its coefficient
        if lengths is None:
            self._fixed_prompt, self._prompt_len, self._select = False, None, None
            return
        self._set_prompt(torch.as_tensor(lengths, dtype=torch.long))
        self._fixed_prompt = True

    # --- lifetime ----------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        on = bool(on)
        if on == self._enabled:
            return
        self._enabled = on
        if self._removed:
            return
        if not on:
            self._unhook()
            return
        try:
            self._register()
        except BaseException:
            self.remove()
            raise

    @property
    def attached(self) -> bool:
        """True until :meth:`remove` (also while disabled)."""
        return not self._removed

    def _unhook(self) -> None:
        while self._hooks:
            self._hooks.pop().remove()
        self._coef, self._seen, self._seen_mask = {}, None, None

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        self._removed = True
        self._unhook()

    def __enter__(self) -> SteeringHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()  # also on exceptions, KeyboardInterrupt included
