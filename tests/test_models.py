import pytest
import torch

from expertsteer.extract import extract
from expertsteer.layers import BlocksNotFoundError
from expertsteer.models import ModelLoadError, fingerprint, load_model, reinitialised
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


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_reinitialised_model_has_fresh_weights_and_the_same_architecture(arch):
    lm = tiny_model(arch, seed=0)
    before = torch.get_rng_state()
    fresh = reinitialised(lm, seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    assert type(fresh.model) is type(lm.model) and fresh.tokenizer is lm.tokenizer
    assert fresh.n_layers == lm.n_layers and fresh.hidden_size == lm.hidden_size
    assert fresh.fingerprint != lm.fingerprint and "random init, seed 5" in fresh.name
    old = dict(lm.model.named_parameters())
    for name, p in fresh.model.named_parameters():
        assert p.shape == old[name].shape and p.dtype == old[name].dtype
        if p.numel() > 1 and old[name].std() > 0:  # constant inits (norm weights = 1) aside
            assert not torch.equal(p, old[name]), name
    again = reinitialised(lm, seed=5)
    for (_, p), (_, q) in zip(fresh.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(p, q)  # seeded
    assert reinitialised(lm, seed=6).fingerprint != fresh.fingerprint
