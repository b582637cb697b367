"""Cache location and atomic file writes: nothing is ever left half-written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CACHE_ENV = "EXPERTSTEER_CACHE"


def cache_root() -> Path:
    """``$EXPERTSTEER_CACHE`` or ``~/.cache/expertsteer``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "expertsteer"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it becomes ``path``.

    If another process finished the same folder first, ours is discarded (both are equivalent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(path)


def digest_entry(h, name: str, shape, dtype: torch.dtype) -> None:
    """Feed one tensor's name, shape and dtype to ``h``; its bytes follow (see tensors_digest)."""
    h.update(f"{name}|{tuple(shape)}|{dtype}|".encode())


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes: detects corrupted or truncated files."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest_entry(h, name, t.shape, t.dtype)
        if t.numel():  # hashed through the buffer protocol: no copy of a large tensor
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_tensors(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> str:
    """Atomic safetensors write with a content checksum in the header metadata; returns it."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = dict(metadata or {})
    meta["sha256"] = tensors_digest(tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return meta["sha256"]


class CorruptFileError(ValueError):
    """A file failed to parse or its checksum does not match its content."""


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a file written by :func:`save_tensors`, verifying its checksum (never pickle)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for truncation/garbage
        raise CorruptFileError(f"{path} is not a readable safetensors file ({exc})") from exc
    expected = meta.get("sha256")
    if expected is not None and tensors_digest(tensors) != expected:
        raise CorruptFileError(f"{path} is corrupted: its checksum does not match its content")
    return tensors, meta


def drop_damaged(path: Path, exc: Exception) -> None:
    """Warn about and delete a damaged cache entry: a crash mid-copy, a full disk or bit rot
    leaves a file that is never trusted; the caller recomputes it."""
    what = str(exc) if isinstance(exc, CorruptFileError) else f"{path} lacks {exc}"
    # stacklevel 3: the warning names the code that asked for the entry
    warnings.warn(f"damaged cache entry, recomputing it: {what}", stacklevel=3)
    path.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
