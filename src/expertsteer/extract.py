"""Hidden states of many texts, every wanted layer from one forward pass per batch.

Faster than the naive padded batch: texts are sorted by length (little padding), the LM head is
never run (we call the base model) and the forward stops after the last layer needed.

Encoders (BERT-type, ``lm.kind == "encoder"``) are read on the text's own tokens: the special
tokens the tokenizer wraps the text in (``[CLS] ... [SEP]``) are never a named read. ``"last"``
is the last real token (the one before ``[SEP]``), ``"mean"`` the mean over the real tokens.
Why not ``[SEP]`` or ``[CLS]``: the alignment maps are fitted on real-token states (special
tokens have no characters, so :func:`expertsteer.tokens.shared_token_ends` never pairs them) and
a ``[SEP]``/``[CLS]`` state is outside the maps' domain; the last real token ends at the same
character as a causal target's last token, the very position an alignment pair would match; in
a bidirectional encoder it has seen the whole text, as a causal model's last token has; and in
BERT-type encoders ``[SEP]`` is an attention sink with little content (Clark et al., 2019),
while ``[CLS]`` of a mean-pooled sentence encoder (all-MiniLM) was never trained as a summary.
Encoders are always right-padded and get their own position ids (MPNet and RoBERTa count them
from the padding index, not from 0), at most ``tokenizer.model_max_length`` tokens (512 for
BERT): what the model computes for each text alone.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .io import (
    CorruptFileError,
    atomic_path,
    cache_root,
    digest_entry,
    drop_damaged,
    load_tensors,
    save_tensors,
)
from .models import LoadedModel
from .types import ReadPosition, Tensor

EXTRACT_VERSION = "1"
# Cache-key tag of the encoder read rule above (causal keys unchanged): states of encoders read
# before it (at [SEP]; MPNet with 0-based positions) are never reused.
ENCODER_READ = "encoder-real-tokens-1"
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


def max_tokens(lm: LoadedModel, max_length: int | None) -> int | None:
    """The truncation length: ``max_length``, capped for an encoder at the tokenizer's
    ``model_max_length`` (its position table is fixed: 512 for BERT)."""
    limit = getattr(lm.tokenizer, "model_max_length", None)
    if lm.kind != "encoder" or not isinstance(limit, int) or limit <= 0 or limit > 1_000_000:
        return max_length
    return limit if max_length is None else min(max_length, limit)


def encode(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    chat_template: bool = False,
    max_length: int | None = 512,
    offsets: bool = False,
    specials: bool = False,
) -> list[dict]:
    """Token ids (and character offsets, or the special-token mask, if asked) per text, exactly
    as ``extract`` sees them."""
    prepared = prepare_texts(lm, texts, chat_template)
    max_length = max_tokens(lm, max_length)
    enc = lm.tokenizer(
        prepared,
        add_special_tokens=not chat_template,  # the template already holds its special tokens
        truncation=max_length is not None,
        max_length=max_length,
        return_offsets_mapping=offsets,
        return_special_tokens_mask=specials,
    )
    out = []
    for i in range(len(prepared)):
        item = {"input_ids": enc["input_ids"][i]}
        if offsets:
            item["offsets"] = enc["offset_mapping"][i]
        if specials:
            item["special"] = enc["special_tokens_mask"][i]
        out.append(item)
    return out


def read_span(lm: LoadedModel, item: dict) -> tuple[int, int]:
    """The tokens ``[lo, hi]`` a named read uses in one encoded text (``encode(specials=True)``):
    ``"last"`` reads ``hi``, ``"mean"`` averages ``lo..hi``.

    Causal: the last token, and the mean without the first token (an attention sink, or BOS).
    Encoder: the real tokens only, the special tokens around them dropped (module docstring);
    a text of special tokens only (e.g. one combining accent, normalised away) reads them all.
    """
    n = len(item["input_ids"])
    if lm.kind != "encoder":
        return (1 if n > 1 else 0), n - 1
    real = [k for k, s in enumerate(item["special"]) if not s]
    return (real[0], real[-1]) if real else (0, n - 1)


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
            + ([ENCODER_READ] if lm.kind == "encoder" else [])
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


def _resolve(
    lm: LoadedModel,
    texts: Sequence[str],
    layers: Sequence[int] | None,
    position: ReadPosition,
    chat_template: bool,
    max_length: int | None,
    cache: bool | str | Path,
) -> tuple[list[str], list[int], Path | None]:
    """Validated texts (templated when asked), wanted layers and the cache file (None: off)."""
    prepared = prepare_texts(lm, texts, chat_template)
    _check_position(position, len(prepared))
    wanted = _wanted_layers(lm, layers)
    if not cache:
        return prepared, wanted, None
    folder = cache_root() / "states" if cache is True else Path(cache)
    key = _cache_key(lm, prepared, position, wanted, chat_template, max_length)
    return prepared, wanted, folder / f"{key}.safetensors"


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
    the end of each text, special tokens included). An encoder's ``"last"`` and ``"mean"`` read
    its real tokens only: the last one before ``[SEP]``, the mean without ``[CLS]``/``[SEP]``
    (see the module docstring). ``cache`` (True: the default cache folder, or a folder) stores
    results keyed by model fingerprint, texts, layers and read rule.
    """
    prepared, wanted, path = _resolve(lm, texts, layers, position, chat_template, max_length, cache)
    if path is not None and path.exists():
        try:
            states = load_tensors(path)[0]["states"]
            log.info("cache hit: %s states of %d texts from %s", lm.name, len(prepared), path)
            return states
        except (CorruptFileError, KeyError) as exc:
            drop_damaged(path, exc)
    sink = _MemorySink()
    _run(lm, texts, wanted, position, batch_size, chat_template, max_length, padding_side,
         progress, sink)  # fmt: skip
    assert sink.out is not None
    if path is not None:
        save_tensors(path, {"states": sink.out}, _metadata(lm, wanted))
        log.info("cached %s states of %d texts in %s", lm.name, len(prepared), path)
    return sink.out


def extract_to_cache(
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
) -> Path:
    """As :func:`extract`, but the states go to the cache file batch by batch and never all sit
    in memory; returns the file (read it with :func:`expertsteer.io.load_tensors`).

    For large reads while a big model is loaded: load the states once the model is freed, and
    the peak memory is the model's or the states', not both.
    """
    if not cache:
        raise ValueError("extract_to_cache writes to the cache: pass cache=True or a folder")
    prepared, wanted, path = _resolve(lm, texts, layers, position, chat_template, max_length, cache)
    assert path is not None
    if path.exists():
        try:
            _verify_states_file(path)
            log.info("cache hit: %s states of %d texts in %s", lm.name, len(prepared), path)
            return path
        except CorruptFileError as exc:
            drop_damaged(path, exc)
    with atomic_path(path) as tmp:
        sink = _FileSink(tmp, _metadata(lm, wanted))
        try:
            _run(lm, texts, wanted, position, batch_size, chat_template, max_length,
                 padding_side, progress, sink)  # fmt: skip
            sink.finish()
        finally:
            sink.close()
    log.info("cached %s states of %d texts in %s", lm.name, len(prepared), path)
    return path


def _metadata(lm: LoadedModel, wanted: list[int]) -> dict[str, str]:
    return {"model": lm.name, "layers": json.dumps(wanted)}


class _MemorySink:
    """Collects the states in one [L, rows, d] float32 tensor."""

    out: Tensor | None = None

    def start(self, shape: tuple[int, int, int]) -> None:
        self.out = torch.empty(shape, dtype=torch.float32)

    def put(self, layer: int, row: int, values: Tensor) -> None:
        assert self.out is not None
        self.out[layer, row : row + len(values)] = values


class _FileSink:
    """Writes the states straight into a safetensors file (one F32 tensor ``states``), rows at
    their final offsets; the checksum save_tensors would store is filled in at the end."""

    _CHUNK = 1 << 22

    def __init__(self, path: Path, metadata: dict[str, str]) -> None:
        self.path, self.metadata = path, metadata
        self.file = None

    def _header(self, digest: str) -> bytes:
        header = {
            "__metadata__": {**self.metadata, "sha256": digest},
            "states": {"dtype": "F32", "shape": list(self.shape), "data_offsets": [0, self.nbytes]},
        }
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # aligned data, as safetensors' own writer pads
        return len(raw).to_bytes(8, "little") + raw

    def start(self, shape: tuple[int, int, int]) -> None:
        self.shape, self.d = shape, shape[2]
        self.nbytes = shape[0] * shape[1] * shape[2] * 4
        head = self._header("0" * 64)  # same length as the final sha256 hex digest
        self.data_start = len(head)
        self.file = open(self.path, "w+b")  # noqa: SIM115 - closed in close()
        self.file.write(head)
        self.file.truncate(self.data_start + self.nbytes)

    def put(self, layer: int, row: int, values: Tensor) -> None:
        assert self.file is not None
        offset = self.data_start + (layer * self.shape[1] + row) * self.d * 4
        data = values.detach().to("cpu", torch.float32).contiguous().numpy()
        buf = memoryview(data).cast("B")
        while buf:  # pwrite may write less than asked
            n = os.pwrite(self.file.fileno(), buf, offset)
            buf, offset = buf[n:], offset + n

    def finish(self) -> None:
        assert self.file is not None
        self.file.seek(self.data_start)
        h = _digest_prefix(self.shape)
        while block := self.file.read(self._CHUNK):
            h.update(block)
        self.file.seek(0)
        self.file.write(self._header(h.hexdigest()))
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _digest_prefix(shape) -> hashlib._Hash:
    """:func:`expertsteer.io.tensors_digest` of a lone float32 ``states``, before its bytes."""
    h = hashlib.sha256()
    digest_entry(h, "states", shape, torch.float32)
    return h


def _verify_states_file(path: Path) -> None:
    """Check a cached states file against its checksum by streaming it (never loading it)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
            digest = header["__metadata__"]["sha256"]
            spec = header["states"]
            h = _digest_prefix(tuple(spec["shape"]))
            size = 0
            while block := f.read(_FileSink._CHUNK):
                h.update(block)
                size += len(block)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path} is not a readable states file ({exc})") from exc
    if spec.get("dtype") != "F32" or size != spec["data_offsets"][1] or h.hexdigest() != digest:
        raise CorruptFileError(f"{path} is corrupted: its checksum does not match its content")


def _run(
    lm: LoadedModel,
    texts: Sequence[str],
    wanted: list[int],
    position: ReadPosition,
    batch_size: int,
    chat_template: bool,
    max_length: int | None,
    padding_side: str | None,
    progress: bool,
    sink: _MemorySink | _FileSink,
) -> None:
    """Forward the texts in length-sorted batches; each read goes to ``sink`` at its rows."""
    encoded = encode(lm, texts, chat_template=chat_template, max_length=max_length, specials=True)
    ids = [e["input_ids"] for e in encoded]
    spans = [read_span(lm, e) for e in encoded]
    if not isinstance(position, str):
        for k, (pos, seq) in enumerate(zip(position, ids)):
            bad = [p for p in pos if not -len(seq) <= p < len(seq)]
            if bad:
                raise ValueError(
                    f"text {k} has {len(seq)} tokens; positions {bad} are out of range"
                )

    encoder = lm.kind == "encoder"
    # An encoder is right-padded and left to number its own positions: bidirectional attention
    # makes the side moot for the read, and MPNet / RoBERTa number from the padding index.
    side = "right" if encoder else padding_side or lm.tokenizer.padding_side or "right"
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    pass_positions = not encoder and _accepts(lm.base, "position_ids")
    device = lm.device
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    # Rows of text i in the output: [first[i], first[i] + count[i]). Filled batch by batch (each
    # read is copied out, so no batch's [B, T, d] block outputs outlive it).
    count = [1] * len(ids) if isinstance(position, str) else [len(p) for p in position]
    first = [0] * len(ids)
    for i in range(1, len(ids)):
        first[i] = first[i - 1] + count[i - 1]
    started = False

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
            lo, hi = spans[i]
            if position == "last":
                sel = [s[r, off + hi] for s in states]
            elif position == "mean":
                sel = [s[r, off + lo : off + hi + 1].mean(0) for s in states]
            else:
                idx = torch.tensor(
                    [p % n + off for p in position[i]], dtype=torch.long, device=states[0].device
                )
                sel = [s[r].index_select(0, idx) for s in states]
            read.append(sel)
        # Only the states read are checked (padding may hold NaN harmlessly), once per batch:
        # fail at the first bad batch, not after all of them.
        _check_finite(lm, read, wanted)
        d = states[0].shape[-1]
        if not started:
            sink.start((len(wanted), first[-1] + count[-1], d))
            started = True
        for i, sel in zip(rows, read):
            for k, t in enumerate(sel):
                sink.put(k, first[i], t.reshape(count[i], d))
        del states, read
        bar.update(len(rows))
    bar.close()


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
