import pytest
import torch

from expertsteer.extract import extract
from expertsteer.layers import BlocksNotFoundError
from expertsteer.models import ModelLoadError, fingerprint, load_model
from tiny import tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_load_from_local_folder_round_trip(arch, tmp_path):
    lm = tiny_model(arch)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.kind == lm.kind
    assert loaded.fingerprint == lm.fingerprint
    assert loaded.layers.path == lm.layers.path
    a = extract(lm, ["hello there"], cache=False, progress=False)
    b = extract(loaded, ["hello there"], cache=False, progress=False)
    assert torch.equal(a, b)


def test_dtype_and_kind_pass_through(tmp_path):
    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, dtype=torch.bfloat16, kind="encoder")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.kind == "encoder" and not hasattr(loaded.model, "lm_head")


def test_layers_path_override(tmp_path):
    lm = tiny_model("llama")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    assert load_model(tmp_path, layers_path="model.layers").layers.path == "model.layers"
    with pytest.raises(BlocksNotFoundError):
        load_model(tmp_path, layers_path="model.norm")


def test_fingerprint_changes_with_weights():
    lm = tiny_model("llama")
    before = fingerprint(lm.model)
    with torch.no_grad():
        next(lm.model.parameters()).add_(1.0)
    assert fingerprint(lm.model) != before


def test_path_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "weights.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="gguf_file="):
        load_model(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a .gguf model"):
        load_model(text)
    with pytest.raises(ModelLoadError, match="existing path"):
        load_model("./no/such/folder")


def test_unknown_name_offline_names_the_catalog(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="smollm2-135m"):
        load_model("smollm2-13m")


def test_unloadable_model_names(tmp_path, monkeypatch):
    """From tests/test_reliability.py: the message names both readings of the string."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="is neither a catalog model .*an existing path"):
        load_model("./no/such/folder")
