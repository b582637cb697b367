"""io: the cache location, atomic writes, checksummed tensors, and no pickle anywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import expertsteer
from expertsteer import io as io_mod
from expertsteer.io import (
    CorruptFileError,
    atomic_dir,
    atomic_path,
    cache_root,
    load_tensors,
    save_tensors,
    sha256_file,
    tensors_digest,
    write_json,
)

SRC = Path(expertsteer.__file__).parent


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("EXPERTSTEER_CACHE")
    assert cache_root() == Path.home() / ".cache" / "expertsteer"


def test_atomic_path_replaces_only_on_success(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    with atomic_path(path) as tmp:
        tmp.write_text("one")
        assert not path.exists()  # nothing visible until the rename
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert path.read_text() == "one"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]  # no stray temp file


def test_atomic_dir_replaces_a_finished_folder_whole(tmp_path):
    path = tmp_path / "d"
    with atomic_dir(path) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(path) as tmp:  # a second writer: its folder wins, nothing is merged
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in path.iterdir()) == ["b"]
    with pytest.raises(KeyboardInterrupt), atomic_dir(path) as tmp:
        (tmp / "c").write_text("3")
        raise KeyboardInterrupt
    assert sorted(p.name for p in path.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_tensors_digest_sees_names_shapes_dtypes_and_bytes():
    t = torch.arange(6, dtype=torch.float32)
    base = tensors_digest({"a": t})
    assert tensors_digest({"a": t.clone()}) == base
    assert tensors_digest({"b": t}) != base
    assert tensors_digest({"a": t.reshape(2, 3)}) != base
    assert tensors_digest({"a": t.double()}) != base
    assert tensors_digest({"a": t + 1}) != base
    # a non-contiguous view hashes as its values
    m = torch.arange(12.0).reshape(3, 4)
    assert tensors_digest({"a": m.T}) == tensors_digest({"a": m.T.contiguous()})


def test_save_and_load_tensors_round_trip_with_a_checksum(tmp_path):
    tensors = {"x": torch.randn(3, 4), "empty": torch.zeros(0)}
    digest = save_tensors(tmp_path / "t.safetensors", tensors, {"note": "hi"})
    loaded, meta = load_tensors(tmp_path / "t.safetensors")
    assert meta == {"note": "hi", "sha256": digest}
    assert torch.equal(loaded["x"], tensors["x"]) and loaded["empty"].numel() == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_damaged_tensor_files_are_refused(tmp_path, damage):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"x": torch.arange(64, dtype=torch.float32)})
    raw = path.read_bytes()
    raw = {
        "flip": raw[:-8] + bytes(b ^ 0xFF for b in raw[-8:]),
        "truncate": raw[: len(raw) // 2],
        "garbage": b"not a safetensors file",
    }[damage]
    path.write_bytes(raw)
    message = "checksum does not match" if damage == "flip" else "not a readable safetensors"
    with pytest.raises(CorruptFileError, match=message):
        load_tensors(path)


def test_a_failed_tensor_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"x": torch.ones(2)})

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io_mod, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_tensors(path, {"x": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(load_tensors(path)[0]["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def test_sha256_file_reads_in_chunks(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    data = bytes(range(256)) * 50
    path.write_bytes(data)
    assert sha256_file(path, chunk=7) == hashlib.sha256(data).hexdigest()


def test_no_pickle_anywhere():
    pattern = re.compile(
        r"import pickle|pickle\.load|cPickle|import dill|import joblib|allow_pickle=True"
        r"|torch\.load\((?![^)]*weights_only=True)"
    )
    hits = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
