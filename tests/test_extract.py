import warnings

import pytest
import torch

from expertsteer import extract as extract_mod
from expertsteer.extract import encode, extract, extract_to_cache
from expertsteer.io import cache_root, load_tensors, save_tensors
from tiny import ARCHS, ENCODERS, n_hooks, tiny_model

TEXTS = ["hello world", "a b c d e f g h", "x", "The quick brown fox jumps", "no"]
PARITY_ARCHS = ["llama", "qwen2", "gemma3", "gpt2", "gpt_neox", "opt", "phi3", "bert"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))


def one_by_one(lm, texts, **kw):
    return torch.cat([extract(lm, [t], cache=False, progress=False, **kw) for t in texts], dim=1)


@pytest.mark.parametrize("arch", PARITY_ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("position", ["last", "mean"])
def test_batched_equals_one_by_one(arch, side, position):
    lm = tiny_model(arch)
    batched = extract(
        lm, TEXTS, position=position, padding_side=side, batch_size=3, cache=False, progress=False
    )
    alone = one_by_one(lm, TEXTS, position=position)
    assert batched.shape == (lm.n_layers, len(TEXTS), lm.hidden_size)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_explicit_positions_match_full_sequence(arch, side):
    lm = tiny_model(arch)
    positions = [[1, -1], [0, 3, 5], [0], [2], []]
    got = extract(
        lm, TEXTS, position=positions, padding_side=side, batch_size=5, cache=False, progress=False
    )
    expected = []
    for text, pos in zip(TEXTS, positions):
        n = len(encode(lm, [text])[0]["input_ids"])
        full = extract(lm, [text], position=[list(range(n))], cache=False, progress=False)
        expected.append(full[:, [p % n for p in pos]])
    torch.testing.assert_close(got, torch.cat(expected, dim=1), rtol=1e-4, atol=1e-5)
    assert got.shape[1] == sum(len(p) for p in positions)


def test_last_position_reads_the_last_token_block_output():
    lm = tiny_model("llama")
    enc = lm.tokenizer(TEXTS[1], return_tensors="pt")
    with torch.no_grad():
        hs = lm.model(**enc, output_hidden_states=True).hidden_states
    got = extract(lm, [TEXTS[1]], cache=False, progress=False)
    # hidden_states[i + 1] is block i's output, except the last one (final norm applied in HF).
    for i in range(lm.n_layers - 1):
        torch.testing.assert_close(got[i, 0], hs[i + 1][0, -1])


def test_mean_excludes_the_first_token():
    lm = tiny_model("llama")
    n = len(encode(lm, [TEXTS[3]])[0]["input_ids"])
    full = extract(lm, [TEXTS[3]], position=[list(range(n))], cache=False, progress=False)
    mean = extract(lm, [TEXTS[3]], position="mean", cache=False, progress=False)
    torch.testing.assert_close(mean[:, 0], full[:, 1:].mean(1))


def test_layer_subset_and_negative_indices():
    lm = tiny_model("qwen2")
    full = extract(lm, TEXTS, cache=False, progress=False)
    sub = extract(lm, TEXTS, layers=[-1, 0], cache=False, progress=False)
    torch.testing.assert_close(sub, full[[0, lm.n_layers - 1]])


def test_chat_template_wraps_texts():
    lm = tiny_model("llama")
    ids = encode(lm, ["hi"], chat_template=True)[0]["input_ids"]
    assert lm.tokenizer.convert_ids_to_tokens(ids)[0] == "<s>"
    assert lm.tokenizer.decode(ids).replace(" ", "").endswith("assistant:")
    states = extract(lm, ["hi"], chat_template=True, cache=False, progress=False)
    assert not torch.equal(states, extract(lm, ["hi"], cache=False, progress=False))


def test_cache_is_reused_and_keyed(monkeypatch):
    lm = tiny_model("llama")
    first = extract(lm, TEXTS, progress=False)
    files = list((cache_root() / "states").glob("*.safetensors"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("forward ran although the cache holds the states")

    with monkeypatch.context() as m:
        m.setattr("expertsteer.extract._forward_states", boom)
        assert torch.equal(extract(lm, TEXTS, progress=False), first)
    extract(lm, TEXTS, position="mean", progress=False)
    assert len(list((cache_root() / "states").glob("*.safetensors"))) == 2


def test_corrupted_cache_entry_is_recomputed():
    lm = tiny_model("llama")
    first = extract(lm, TEXTS, progress=False)
    (path,) = (cache_root() / "states").glob("*.safetensors")
    data = bytearray(path.read_bytes())
    data[-8:] = b"\xff" * 8  # flip bytes inside the tensor payload
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged cache entry, recomputing it"):
        assert torch.equal(extract(lm, TEXTS, progress=False), first)
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("position", ["last", "explicit"])
def test_streamed_states_file_equals_extract_and_save(position):
    # Written row by row at their offsets, the file must hold exactly what extract returns, with
    # the very checksum save_tensors computes for it.
    lm = tiny_model("qwen2")
    pos = "last" if position == "last" else [[0, -1], [1], [-2, 0, 1], [0], [-1]]
    path = extract_to_cache(lm, TEXTS, position=pos, batch_size=2, progress=False)
    states, meta = load_tensors(path)
    want = extract(lm, TEXTS, position=pos, batch_size=2, cache=False, progress=False)
    assert torch.equal(states["states"], want)
    ref = path.with_name("ref.safetensors")
    assert save_tensors(ref, {"states": want}, {k: v for k, v in meta.items() if k != "sha256"})
    assert load_tensors(ref)[1] == meta
    # extract reads the same cache entry (no forward)
    assert torch.equal(extract(lm, TEXTS, position=pos, batch_size=2, progress=False), want)


def test_streamed_states_reuse_the_cache_and_replace_a_damaged_entry(monkeypatch):
    lm = tiny_model("llama")
    first = extract(lm, TEXTS, progress=False)
    (path,) = (cache_root() / "states").glob("*.safetensors")
    with monkeypatch.context() as m:
        m.setattr("expertsteer.extract._forward_states", lambda *a, **k: 1 / 0)
        assert extract_to_cache(lm, TEXTS, progress=False) == path
    data = bytearray(path.read_bytes())
    data[-4:] = b"\xff" * 4
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="damaged cache entry, recomputing it"):
        assert extract_to_cache(lm, TEXTS, progress=False) == path
    assert torch.equal(load_tensors(path)[0]["states"], first)
    with pytest.raises(ValueError, match="writes to the cache"):
        extract_to_cache(lm, TEXTS, cache=False)


def test_interrupted_streamed_extraction_leaves_no_file(monkeypatch):
    lm = tiny_model("llama")
    calls = []
    real = __import__("expertsteer.extract", fromlist=["_forward_states"])._forward_states

    def second_batch_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr("expertsteer.extract._forward_states", second_batch_fails)
    with pytest.raises(KeyboardInterrupt):
        extract_to_cache(lm, TEXTS, batch_size=2, progress=False)
    assert not list((cache_root() / "states").iterdir())


def test_other_model_does_not_hit_the_cache():
    a, b = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    assert a.fingerprint != b.fingerprint
    assert not torch.equal(extract(a, TEXTS, progress=False), extract(b, TEXTS, progress=False))


@pytest.mark.parametrize(
    "texts, message",
    [
        ([], "empty"),
        (["ok", ""], "empty"),
        (["ok", "   "], "empty"),
    ],
)
def test_bad_texts(texts, message):
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match=message):
        extract(lm, texts, cache=False, progress=False)


def test_bad_arguments():
    lm = tiny_model("llama")
    with pytest.raises(TypeError, match="list of strings"):
        extract(lm, "one string", cache=False)
    with pytest.raises(ValueError, match="out of range"):
        extract(lm, TEXTS, layers=[7], cache=False)
    with pytest.raises(ValueError, match="position"):
        extract(lm, TEXTS, position="first", cache=False)
    with pytest.raises(ValueError, match="index lists"):
        extract(lm, TEXTS, position=[[0]], cache=False)
    with pytest.raises(ValueError, match="out of range"):
        extract(lm, ["ab"], position=[[9]], cache=False)


def test_encoders_are_encoders():
    for arch in ENCODERS:
        assert tiny_model(arch).kind == "encoder"
    assert all(tiny_model(a).kind == "causal" for a in set(ARCHS) - ENCODERS)


# --- reliability (from tests/test_reliability.py) ---------------------------------------------


def test_nan_hidden_states_from_float16():
    lm = tiny_model("gpt2")
    lm.model.half()
    with torch.no_grad():
        for p in lm.model.parameters():
            p.mul_(300)  # overflows float16 on the way through the blocks
    with pytest.raises(FloatingPointError) as info:
        extract(lm, ["hello world", "abc"], progress=False)
    msg = str(info.value)
    assert "tiny-gpt2 produced NaN/inf hidden states (first at layer" in msg
    assert "dtype float16); float16 overflows in many models: load it with dtype=" in msg
    assert "torch.float32 or torch.bfloat16 (expertsteer's default is float32)" in msg
    assert not list((cache_root() / "states").glob("*.safetensors"))  # nothing bad is cached
    assert n_hooks(lm) == 0


def test_unknown_layer_indices():
    """The extract part of test_reliability.py::test_unknown_layer_indices (its pipeline, plan
    and attach parts are in tests/test_pipeline.py, tests/test_plan.py, tests/steer/)."""
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match=r"out of range: tiny-llama has 3 layers \(0\.\.2\)"):
        extract(lm, ["ab"], layers=[7], progress=False)


def _cached_states(lm, texts, monkeypatch) -> tuple[torch.Tensor, int]:
    """extract() through the cache, counting the forward passes it ran."""
    calls = []
    real = extract_mod._forward_states

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(extract_mod, "_forward_states", counting)
    out = extract(lm, texts, progress=False)
    monkeypatch.setattr(extract_mod, "_forward_states", real)
    return out, len(calls)


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated", "other content", "empty"])
def test_damaged_cache_entry_is_recomputed_with_a_warning(damage, monkeypatch):
    lm = tiny_model("llama")
    texts = ["hello world", "abc def", "x y z"]
    first, n = _cached_states(lm, texts, monkeypatch)
    assert n > 0
    (path,) = (cache_root() / "states").glob("*.safetensors")
    raw = path.read_bytes()
    if damage == "flipped bytes":
        raw = raw[:-8] + b"\xff" * 8
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "empty":
        raw = b""
    else:  # a valid file without the states tensor
        save_tensors(path, {"other": torch.zeros(2)})
        raw = path.read_bytes()
    path.write_bytes(raw)
    with pytest.warns(UserWarning, match="damaged cache entry, recomputing it: "):
        again, n = _cached_states(lm, texts, monkeypatch)
    assert n > 0 and torch.equal(again, first)
    with warnings.catch_warnings():  # the entry was rewritten whole: a clean cache hit
        warnings.simplefilter("error")
        cached, n = _cached_states(lm, texts, monkeypatch)
    assert n == 0 and torch.equal(cached, first)
    assert not list(path.parent.glob("*.tmp"))
