"""Step 4: add ``α_j · v_j`` to the output of target block ``j`` at inference time.

Forward hooks only; the model is never modified. The token scope is resolved once per forward
call (a ``[B, T, 1]`` 0/1 coefficient shared by every steered layer) and the per-row additions
once per :func:`attach` (a ``[R, 1, d]`` delta per layer on that block's device and dtype), so
each layer hook is a single fused ``addcmul_`` on the block output.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from .extract import encode, prepare_texts
from .models import LoadedModel
from .plan import SteeringPlan
from .types import Tensor

# "all" | "prompt" | "generated" | "last:K" | ("last", K) | per-row prompt positions
Scope = str | tuple[str, int] | Sequence[Sequence[int]]
PlanArg = SteeringPlan | Sequence[SteeringPlan | None] | None
Alpha = float | Sequence[float] | Tensor

# Adding more than this multiple of a layer's mean hidden-state norm swamps the model's own
# signal (the default α is 0.15×): such settings are almost always a mistake.
ALPHA_WARN_RATIO = 4.0


class SteeringStrengthWarning(UserWarning):
    """The steering added to a layer is far larger than the layer's own hidden states."""


@dataclass(frozen=True)
class TokenScope:
    """Which tokens are steered. Positions count real (non-padding) tokens of each row."""

    kind: Literal["all", "prompt", "generated", "last", "positions"]
    k: int = 0
    positions: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def parse(cls, scope: Scope | TokenScope) -> TokenScope:
        if isinstance(scope, TokenScope):
            return scope
        if isinstance(scope, str):
            if scope in ("all", "prompt", "generated"):
                return cls(scope)
            if scope.startswith("last:") and scope[5:].strip().isdecimal():
                return cls._last(int(scope[5:]))
        elif isinstance(scope, tuple) and len(scope) == 2 and scope[0] == "last":
            return cls._last(_scope_int(scope[1], scope))
        elif isinstance(scope, Sequence) and all(
            isinstance(p, Sequence) and not isinstance(p, str) for p in scope
        ):
            rows = tuple(tuple(_scope_int(i, scope) for i in p) for p in scope)
            return cls("positions", positions=rows)
        raise ValueError(
            f"scope must be 'all', 'prompt', 'generated', 'last:K', ('last', K) or a list of "
            f"per-row prompt position lists, not {scope!r}"
        )

    @classmethod
    def _last(cls, k: int) -> TokenScope:
        if k < 1:
            raise ValueError(f"scope last:K needs K >= 1, not {k}")
        return cls("last", k=k)

    def subset(self, rows: Sequence[int]) -> TokenScope:
        """The scope of a sub-batch (explicit positions are per row)."""
        if self.kind != "positions":
            return self
        return TokenScope("positions", positions=tuple(self.positions[i] for i in rows))


def _scope_int(value: Any, scope: Any) -> int:
    try:
        return operator.index(value)  # ints only: 2.7 is not silently read as token 2
    except TypeError:
        raise ValueError(
            f"scope {scope!r}: {value!r} is not an integer token count/position"
        ) from None


def _execution_device(module: nn.Module) -> Any:
    return getattr(getattr(module, "_hf_hook", None), "execution_device", None)


def _block_key(
    block: nn.Module, fallback: torch.device, outer: Sequence[nn.Module] = ()
) -> tuple[torch.device, torch.dtype]:
    """The device and dtype a block computes in (accelerate's execution device when offloaded).

    accelerate hooks the block itself (device_map), its leaf modules (disk offload) or only an
    ancestor (``cpu_offload``: every weight on ``meta``); ``outer`` are the block's ancestors,
    consulted last, when the block holds no real weight to tell.
    """
    floats = [p for p in block.parameters() if p.is_floating_point()]
    dtype = floats[0].dtype if floats else torch.float32
    device = next((d for m in block.modules() if (d := _execution_device(m)) is not None), None)
    if device is None:
        device = next((p.device for p in floats if p.device.type != "meta"), None)
    if device is None:
        device = next((d for m in reversed(outer) if (d := _execution_device(m)) is not None), None)
    return torch.device(device if device is not None else fallback), dtype


def _path_modules(lm: LoadedModel) -> list[nn.Module]:
    """The model and each module on the way down to the block list's parent."""
    modules, module = [lm.model], lm.model
    for part in lm.layers.path.split(".")[:-1]:
        module = getattr(module, part)
        modules.append(module)
    return modules


class SteeringHandle:
    """Hooks adding a plan's vectors to block outputs; remove with :meth:`remove` or ``with``.

    ``enabled`` toggles steering between forward calls; a disabled handle takes its hooks off
    the model (zero cost) and puts them back when enabled again.
    """

    def __init__(
        self,
        lm: LoadedModel,
        deltas: dict[int, Tensor],
        n_rows: int,
        scope: TokenScope,
    ) -> None:
        self.lm = lm
        self.scope = scope
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
        fallback, outer = lm.device, _path_modules(lm)
        for j, delta in deltas.items():
            key = _block_key(lm.layers.blocks[j], fallback, outer)
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
        for module in _path_modules(self.lm):
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
            if h.requires_grad and torch.is_grad_enabled():
                # autograd may have saved h; a new tensor keeps backward correct
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
        plen = plen[:, None]
        kind = self.scope.kind
        if kind == "prompt":
            return pos < plen
        if kind == "generated":
            return pos >= plen
        if kind == "last":
            return (pos >= plen - self.scope.k) & (pos < plen)
        sel = self._select
        return sel.gather(1, pos.clamp(0, sel.shape[1] - 1)) & (pos < plen)

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


def _alpha_vector(alpha: Alpha) -> Tensor:
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if a.numel() == 0 or not torch.isfinite(a).all():
        raise ValueError(f"alpha must be finite numbers, not {alpha!r}")
    return a


def combine(
    terms: Sequence[tuple[SteeringPlan, Tensor]],
    layer_alphas: Mapping[int, float] | None = None,
) -> dict[int, Tensor]:
    """Per layer ``j`` the additions ``[R, d] = C_j [R, P] @ V_j [P, d]``.

    Each term is a plan and its per-row weight (``[R]`` or ``[1]``); ``V_j`` stacks the unit
    vectors of the ``P`` plans that steer layer ``j`` and ``C_j[r, p] = weight_p[r] · α_j^p``
    (``layer_alphas[j]`` replacing every plan's ``α_j``). So plans on one row sum their
    additions, as :meth:`SteeringPlan.__add__` does.
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
        # float64 product then one rounding: the same float32 α_j·w as plan.steering_vectors(w)
        C = torch.stack(
            [w.expand(R) * layer_alphas.get(j, plan.alphas[j]) for plan, w in on_j], dim=1
        ).float()
        deltas[j] = C @ V
    return deltas


def attach(
    lm: LoadedModel,
    plan: SteeringPlan | Sequence[SteeringPlan] | None = None,
    *,
    alpha: Alpha = 1.0,
    layer_alphas: Mapping[int, float] | None = None,
    scope: Scope | TokenScope = "all",
    rows: Sequence[SteeringPlan | None] | None = None,
    strict: bool = True,
) -> SteeringHandle:
    """Steer ``lm`` with ``plan`` (one plan or several, summed) on every row, and/or ``rows``.

    ``alpha`` scales every plan's α_j: a number, or one per batch row. ``rows[b]`` is the plan
    of batch row ``b`` (``None``: not steered); ``layer_alphas`` overrides α_j per layer.
    Returns a handle (also a context manager) whose removal restores the model exactly.
    """
    if plan is None and rows is None:
        raise ValueError("attach needs a plan or per-row plans (rows=)")
    plans = [] if plan is None else [plan] if isinstance(plan, SteeringPlan) else list(plan)
    row_plans = [] if rows is None else [p for p in rows if p is not None]
    for p in (*plans, *row_plans):
        if not isinstance(p, SteeringPlan):
            raise TypeError(f"expected SteeringPlan objects, got {type(p).__name__}")
        p.check_target(lm, strict=strict)
    token_scope = TokenScope.parse(scope)
    weights = _alpha_vector(alpha)
    n_rows = weights.numel() if rows is None else len(rows)
    if weights.numel() not in (1, n_rows):
        raise ValueError(f"alpha gives {weights.numel()} values for {n_rows} rows")
    terms = [(p, weights) for p in plans]
    seen: list[SteeringPlan] = []
    for p in row_plans:
        if not any(p is q for q in seen):  # one term per distinct plan object
            seen.append(p)
            on = torch.tensor([float(r is p) for r in rows], dtype=torch.float64)
            terms.append((p, on * weights))
    if not terms:
        raise ValueError("rows holds no plan: every row is None")
    deltas = combine(terms, layer_alphas)
    _warn_if_too_strong(deltas, [p for p, _ in terms])
    return SteeringHandle(lm, deltas, n_rows, token_scope)


def _warn_if_too_strong(deltas: Mapping[int, Tensor], plans: Sequence[SteeringPlan]) -> None:
    """Warn when an addition exceeds ALPHA_WARN_RATIO × the layer's recorded mean norm."""
    loud = []
    for j, delta in deltas.items():
        norms = [p.layer_norms[j] for p in plans if p.layer_norms.get(j, 0) > 0]
        if norms:
            added, ref = float(delta.norm(dim=-1).max()), max(norms)
            if added > ALPHA_WARN_RATIO * ref:
                loud.append(f"layer {j}: {added:.3g} vs mean norm {ref:.3g} ({added / ref:.0f}x)")
    if loud:
        warnings.warn(
            SteeringStrengthWarning(
                f"steering adds more than {ALPHA_WARN_RATIO:g}x the hidden states' own size "
                f"({'; '.join(loud)}); the model's signal is swamped and outputs degrade to "
                "noise. Lower alpha (or layer_alphas); the plan's default is alpha=1"
            ),
            stacklevel=3,
        )


# --- convenience: generation and scoring ---------------------------------------------------


def _check_causal(lm: LoadedModel) -> None:
    if lm.kind != "causal":
        raise ValueError(f"{lm.name} is an encoder; generation and scoring need a causal LM")


@dataclass(frozen=True)
class _Request:
    """The steering arguments of one generate / scoring call over ``n`` prompts."""

    plan: PlanArg
    alpha: float | list[float]
    scope: TokenScope
    layer_alphas: Mapping[int, float] | None
    strict: bool

    @classmethod
    def of(
        cls,
        n: int,
        plan: PlanArg,
        alpha: Alpha,
        scope: Scope,
        layer_alphas: Mapping[int, float] | None,
        strict: bool,
    ) -> _Request:
        a = _alpha_vector(alpha)
        token_scope = TokenScope.parse(scope)
        per_row = {"plan": None if isinstance(plan, SteeringPlan) else plan}
        per_row["alpha"] = a if a.numel() > 1 else None
        per_row["scope"] = token_scope.positions if token_scope.kind == "positions" else None
        for what, value in per_row.items():
            if value is not None and len(value) != n:
                raise ValueError(f"{what} gives {len(value)} values for {n} prompts")
        alpha_arg = a.tolist() if a.numel() > 1 else float(a[0])
        return cls(plan, alpha_arg, token_scope, layer_alphas, strict)

    def handle(self, lm: LoadedModel, idx: list[int]) -> SteeringHandle | None:
        """The hooks for the prompts ``idx`` (per-prompt plans, α and positions are sliced)."""
        if self.plan is None:
            return None
        a = self.alpha if isinstance(self.alpha, float) else [self.alpha[i] for i in idx]
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


def _pad(seqs: list[list[int]], pad_id: int, side: str, device) -> tuple[Tensor, Tensor]:
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[r, sl] = torch.tensor(s, dtype=torch.long)
        mask[r, sl] = 1
    return ids.to(device), mask.to(device)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by similar length (little padding), longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def _pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else 0


@torch.no_grad()
def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    plan: PlanArg = None,
    alpha: Alpha = 1.0,
    scope: Scope = "all",
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
    _check_causal(lm)
    if generate_kwargs.get("num_return_sequences", 1) != 1:
        raise ValueError("generate returns one completion per prompt (num_return_sequences=1)")
    if chat_template is None:
        chat_template = bool(getattr(lm.tokenizer, "chat_template", None))
    ids = _prompt_ids(lm, prompts, chat_template)
    request = _Request.of(len(ids), plan, alpha, scope, layer_alphas, strict)
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "pad_token_id": _pad_id(lm),
        **generate_kwargs,
    }
    out: list[str] = [""] * len(ids)
    for idx in _batches([len(s) for s in ids], batch_size):
        input_ids, mask = _pad([ids[i] for i in idx], _pad_id(lm), "left", lm.device)
        handle = request.handle(lm, idx)
        with handle or contextlib.nullcontext():
            seqs = lm.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        texts = lm.tokenizer.batch_decode(seqs[:, input_ids.shape[1] :], skip_special_tokens=True)
        for i, text in zip(idx, texts):
            out[i] = text
    return out


def _keeps_logits(lm: LoadedModel) -> bool:
    """Whether the model's forward can skip the vocabulary projection of unneeded positions."""
    return "logits_to_keep" in inspect.signature(lm.model.forward).parameters


def _split_point(offsets: Sequence[tuple[int, int]], boundary: int) -> int:
    """Index of the first token holding a character at or after ``boundary``."""
    for t, (_, end) in enumerate(offsets):
        if end > boundary:
            return t
    return len(offsets)


@torch.no_grad()
def sequence_logprobs(
    lm: LoadedModel,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    plan: PlanArg = None,
    alpha: Alpha = 1.0,
    scope: Scope = "all",
    layer_alphas: Mapping[int, float] | None = None,
    chat_template: bool = False,
    batch_size: int = 8,
    reduce: Literal["sum", "mean", "none"] = "sum",
    strict: bool = True,
    progress: bool | str = False,
) -> Tensor:
    """log p(continuation | prompt) of each pair, over the continuation's tokens only.

    Prompt and continuation are tokenised together (as the model would see the text); the
    continuation is every token from the first one holding one of its characters (a token
    straddling the boundary counts as continuation). The prompt, for ``scope``, is the tokens
    before it. ``reduce``: ``sum`` / ``mean`` → ``[N]``; ``none`` → ``[N, max_len]`` padded
    with NaN. ``progress``: a bar over batches (a string names it).
    """
    _check_causal(lm)
    if reduce not in ("sum", "mean", "none"):
        raise ValueError(f"reduce must be 'sum', 'mean' or 'none', not {reduce!r}")
    if isinstance(continuations, str) or len(continuations) != len(prompts):
        raise ValueError("pass one continuation string per prompt")
    prepared = prepare_texts(lm, prompts, chat_template)
    full = [p + c for p, c in zip(prepared, continuations)]
    enc = lm.tokenizer(full, add_special_tokens=not chat_template, return_offsets_mapping=True)
    ids, splits = enc["input_ids"], []
    for i, (p, offsets) in enumerate(zip(prepared, enc["offset_mapping"])):
        k = _split_point(offsets, len(p))
        if k == 0 or k == len(offsets):
            raise ValueError(
                f"pair {i}: the prompt and the continuation {continuations[i]!r} need at least "
                "one token each"
            )
        splits.append(k)
    request = _Request.of(len(ids), plan, alpha, scope, layer_alphas, strict)
    per_token: list[Tensor] = [torch.empty(0)] * len(ids)
    batches = _batches([len(s) for s in ids], batch_size)
    desc = progress if isinstance(progress, str) else "scoring"
    for idx in tqdm(batches, desc=desc, disable=not progress, leave=False):
        input_ids, mask = _pad([ids[i] for i in idx], _pad_id(lm), "right", lm.device)
        handle = request.handle(lm, idx)
        with handle or contextlib.nullcontext():
            if handle is not None:
                handle.set_prompt_lengths([splits[i] for i in idx])
            # Only the continuation's positions need the vocabulary projection.
            start = min(splits[i] for i in idx) - 1
            kw = {"logits_to_keep": input_ids.shape[1] - start} if _keeps_logits(lm) else {}
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
    scope: Scope = "all",
    layer_alphas: Mapping[int, float] | None = None,
    chat_template: bool = False,
    batch_size: int = 8,
    strict: bool = True,
) -> Tensor:
    """Log-probabilities ``[N, vocab]`` (float32) of the token following each prompt."""
    _check_causal(lm)
    ids = _prompt_ids(lm, prompts, chat_template)
    request = _Request.of(len(ids), plan, alpha, scope, layer_alphas, strict)
    out: list[Tensor] = [torch.empty(0)] * len(ids)
    for idx in _batches([len(s) for s in ids], batch_size):
        input_ids, mask = _pad([ids[i] for i in idx], _pad_id(lm), "right", lm.device)
        handle = request.handle(lm, idx)
        with handle or contextlib.nullcontext():
            logits = lm.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        for r, i in enumerate(idx):
            out[i] = torch.log_softmax(logits[r, len(ids[i]) - 1].float(), dim=-1).cpu()
    return torch.stack(out)
