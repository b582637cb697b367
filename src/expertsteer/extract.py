"""Hidden states of many texts, every wanted layer from one forward pass per batch.

Faster than the naive padded batch: texts are sorted by length (little padding), the LM head is
never run (we call the base model) and the forward stops after the last layer needed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .io import CorruptFileError, cache_root, load_tensors, save_tensors
from .models import LoadedModel
from .types import ReadPosition, Tensor

EXTRACT_VERSION = "1"
log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised from the last wanted block to skip the rest of the network."""


def _validate_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: pass at least one text")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"texts {bad[:10]} are empty or not strings; remove or fill them")
    return texts


def prepare_texts(lm: LoadedModel, texts: Sequence[str], chat_template: bool) -> list[str]:
    """Apply the chat template (one user turn, generation prompt added) when asked."""
    texts = _validate_texts(texts)
    if not chat_template:
        return texts
    tok = lm.tokenizer
    if not getattr(tok, "chat_template", None):
        raise ValueError(f"{lm.name} has no chat template; use chat_template=False")
    return [
        tok.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]


def encode(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    chat_template: bool = False,
    max_length: int | None = 512,
    offsets: bool = False,
) -> list[dict]:
    """Token ids (and character offsets if asked) per text, exactly as ``extract`` sees them."""
    prepared = prepare_texts(lm, texts, chat_template)
    enc = lm.tokenizer(
        prepared,
        add_special_tokens=not chat_template,  # the template already holds its special tokens
        truncation=max_length is not None,
        max_length=max_length,
        return_offsets_mapping=offsets,
    )
    out = []
    for i in range(len(prepared)):
        item = {"input_ids": enc["input_ids"][i]}
        if offsets:
            item["offsets"] = enc["offset_mapping"][i]
        out.append(item)
    return out


def _cache_key(
    lm: LoadedModel,
    texts: list[str],
    position,
    layers: list[int],
    chat_template: bool,
    max_length: int | None,
) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [EXTRACT_VERSION, lm.fingerprint, position, layers, chat_template, max_length]
        ).encode()
    )
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()[:32]


def _check_position(position: ReadPosition, n_texts: int) -> None:
    if isinstance(position, str):
        if position not in ("last", "mean"):
            raise ValueError(
                f"position must be 'last', 'mean' or a list of index lists, not {position!r}"
            )
        return
    if len(position) != n_texts:
        raise ValueError(f"position gives {len(position)} index lists for {n_texts} texts")


def _wanted_layers(lm: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    n = lm.n_layers
    if layers is None:
        return list(range(n))
    wanted = sorted({int(i) + n if int(i) < 0 else int(i) for i in layers})
    bad = [i for i in wanted if not 0 <= i < n]
    if bad or not wanted:
        raise ValueError(
            f"layer indices {list(layers)} out of range: {lm.name} has {n} layers (0..{n - 1})"
        )
    return wanted


@torch.no_grad()
def _forward_states(lm: LoadedModel, batch: dict, layers: list[int]) -> list[Tensor]:
    """[B, T, d] output of each wanted block for one padded batch."""
    captured: dict[int, Tensor] = {}
    last = layers[-1]

    def hook_for(idx: int):
        def hook(_module, _inputs, output):
            captured[idx] = output[0] if isinstance(output, tuple) else output
            if idx == last:
                raise _StopForward

        return hook

    handles = [lm.layers.blocks[i].register_forward_hook(hook_for(i)) for i in layers]
    try:
        lm.base(**batch)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return [captured[i] for i in layers]


def _accepts(module: torch.nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def extract(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    position: ReadPosition = "last",
    batch_size: int = 16,
    chat_template: bool = False,
    max_length: int | None = 512,
    padding_side: str | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
) -> Tensor:
    """Hidden states (block outputs, the residual stream) of ``texts``.

    Returns float32 ``[len(layers), N, d]`` where N is ``len(texts)`` for ``"last"`` (last token)
    and ``"mean"`` (mean over tokens, the first - attention-sink / BOS - token excluded), or the
    total number of indices for explicit per-text token positions (negative indices count from
    the end of each text). ``cache`` (True: the default cache folder, or a folder) stores results
    keyed by model fingerprint, texts, layers and read rule.
    """
    prepared = prepare_texts(lm, texts, chat_template)
    _check_position(position, len(prepared))
    wanted = _wanted_layers(lm, layers)
    path = None
    if cache:
        folder = cache_root() / "states" if cache is True else Path(cache)
        key = _cache_key(lm, prepared, position, wanted, chat_template, max_length)
        path = folder / f"{key}.safetensors"
        if path.exists():
            try:
                states = load_tensors(path)[0]["states"]
                log.info("cache hit: %s states of %d texts from %s", lm.name, len(prepared), path)
                return states
            except (CorruptFileError, KeyError) as exc:
                # A damaged entry (a crash mid-copy, a full disk, bit rot) is never trusted.
                what = str(exc) if isinstance(exc, CorruptFileError) else f"{path} lacks {exc}"
                warnings.warn(f"damaged cache entry, recomputing it: {what}", stacklevel=2)
                path.unlink(missing_ok=True)

    encoded = encode(lm, texts, chat_template=chat_template, max_length=max_length)
    ids = [e["input_ids"] for e in encoded]
    if not isinstance(position, str):
        for k, (pos, seq) in enumerate(zip(position, ids)):
            bad = [p for p in pos if not -len(seq) <= p < len(seq)]
            if bad:
                raise ValueError(
                    f"text {k} has {len(seq)} tokens; positions {bad} are out of range"
                )

    side = padding_side or lm.tokenizer.padding_side or "right"
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    pass_positions = _accepts(lm.base, "position_ids")
    device = lm.device
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    # Rows of text i in the output: [first[i], first[i] + count[i]). Filled batch by batch (each
    # read is copied out, so no batch's [B, T, d] block outputs outlive it).
    count = [1] * len(ids) if isinstance(position, str) else [len(p) for p in position]
    first = [0] * len(ids)
    for i in range(1, len(ids)):
        first[i] = first[i - 1] + count[i - 1]
    out: Tensor | None = None

    bar = tqdm(total=len(ids), desc=f"states {lm.name}", disable=not progress, unit="text")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        offsets = []
        for r, i in enumerate(rows):
            n = len(ids[i])
            off = width - n if side == "left" else 0
            input_ids[r, off : off + n] = torch.tensor(ids[i])
            mask[r, off : off + n] = 1
            offsets.append(off)
        batch = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        if pass_positions:
            # Left padding must not shift positions: each text starts at 0 as when run alone.
            batch["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        if _accepts(lm.base, "use_cache"):
            batch["use_cache"] = False
        states = _forward_states(lm, batch, wanted)
        read: list[list[Tensor]] = []
        for r, i in enumerate(rows):
            n, off = len(ids[i]), offsets[r]
            if position == "last":
                sel = [s[r, off + n - 1] for s in states]
            elif position == "mean":
                lo = off + 1 if n > 1 else off  # the first token is an attention sink
                sel = [s[r, lo : off + n].mean(0) for s in states]
            else:
                idx = torch.tensor(
                    [p % n + off for p in position[i]], dtype=torch.long, device=states[0].device
                )
                sel = [s[r].index_select(0, idx) for s in states]
            read.append(sel)
        # Only the states read are checked (padding may hold NaN harmlessly), once per batch:
        # fail at the first bad batch, not after all of them.
        _check_finite(lm, read, wanted)
        if out is None:
            total = first[-1] + count[-1]
            out = torch.empty(len(wanted), total, states[0].shape[-1], dtype=torch.float32)
        for i, sel in zip(rows, read):
            for k, t in enumerate(sel):
                out[k, first[i] : first[i] + count[i]] = t.reshape(count[i], out.shape[-1])
        del states, read
        bar.update(len(rows))
    bar.close()

    assert out is not None
    if path is not None:
        save_tensors(path, {"states": out}, {"model": lm.name, "layers": json.dumps(wanted)})
        log.info("cached %s states of %d texts in %s", lm.name, len(prepared), path)
    return out


def _check_finite(lm: LoadedModel, read: list[list[Tensor]], layers: list[int]) -> None:
    """Refuse NaN/inf states (typically float16 overflow) before they poison every later step."""
    per_layer = [torch.cat([sel[k].reshape(-1) for sel in read]) for k in range(len(layers))]
    finite = torch.stack([torch.isfinite(t).all() for t in per_layer])
    if bool(finite.all()):  # one device sync per batch
        return
    k = int((~finite).nonzero()[0])
    dtype = per_layer[k].dtype
    if dtype == torch.float16:
        advice = (
            "float16 overflows in many models: load it with dtype=torch.float32 or "
            "torch.bfloat16 (expertsteer's default is float32)"
        )
    elif dtype in (torch.float32, torch.float64):
        advice = "its weights may be damaged: re-download or re-convert the checkpoint"
    else:
        advice = "load it with dtype=torch.float32 (expertsteer's default)"
    raise FloatingPointError(
        f"{lm.name} produced NaN/inf hidden states (first at layer {layers[k]}, dtype "
        f"{str(dtype).removeprefix('torch.')}); {advice}"
    )
