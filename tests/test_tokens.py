from expertsteer.extract import encode
from expertsteer.tokens import shared_token_ends
from tiny import tiny_model


def test_shared_ends_on_hand_made_offsets():
    text = "hello world"
    a = [(0, 0), (0, 5), (5, 11)]  # <bos> "hello" " world"
    b = [(0, 2), (2, 5), (5, 8), (8, 11)]  # "he" "llo" " wo" "rld"
    assert shared_token_ends(a, b) == [(1, 1), (2, 3)]
    assert text[: a[1][1]] == text[: b[1][1]]
    # without skipping the first token, b's first token "he" still ends nowhere in a
    assert shared_token_ends(a, b, skip_first=False) == [(1, 1), (2, 3)]
    assert shared_token_ends([(0, 2), (2, 4)], [(0, 2), (2, 4)], skip_first=False) == [
        (0, 0),
        (1, 1),
    ]
    assert shared_token_ends([(0, 2), (2, 4)], [(0, 2), (2, 4)]) == [(1, 1)]


def test_special_tokens_never_pair():
    assert shared_token_ends([(0, 0), (0, 0)], [(0, 0), (0, 0)], skip_first=False) == []


def test_real_tokenizer_offsets_pair_up():
    lm = tiny_model("llama")
    text = "abc de"
    enc = encode(lm, [text], offsets=True)[0]
    pairs = shared_token_ends(enc["offsets"], enc["offsets"])
    # paired with itself, every real token pairs except index 0 (here the BOS, a special token)
    assert enc["offsets"][0] == (0, 0)
    assert [i for i, _ in pairs] == [k for k, (s, e) in enumerate(enc["offsets"]) if e > s]
    assert all(i == j for i, j in pairs) and len(pairs) == len(text.replace(" ", ""))
