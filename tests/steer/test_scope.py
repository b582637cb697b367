import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from expertsteer.registry import UnknownNameError
from expertsteer.steer import SCOPES, TokenScope


def test_scope_parsing():
    assert TokenScope.parse("last:3") == TokenScope("last", k=3) == TokenScope.parse(("last", 3))
    assert TokenScope.parse([[0, -1]]).positions == ((0, -1),)
    assert TokenScope.parse([[0], [1, 2]]).subset([1]).positions == ((1, 2),)


@pytest.mark.parametrize("name", ["all", "prompt", "generated"])
def test_plain_kinds(name):
    scope = TokenScope.parse(name)
    assert scope == TokenScope(name) and scope.k == 0 and scope.positions == ()
    assert scope.subset([0, 2]) is scope  # only explicit positions are per row


def test_a_token_scope_is_returned_as_it_is():
    scope = TokenScope.parse("last:2")
    assert TokenScope.parse(scope) is scope


def test_equal_scopes_share_a_batch_key():
    # frozen and hashable: "last:3" and "last: 3" are one key
    a, b = TokenScope.parse("last:3"), TokenScope.parse("last: 3")
    assert a == b and hash(a) == hash(b) and len({a, b, TokenScope.parse(("last", 3))}) == 1
    rows = TokenScope.parse([[0, 1], [-1]])
    assert rows == TokenScope.parse(((0, 1), (-1,))) and hash(rows) == hash(
        TokenScope.at(rows.positions)
    )
    with pytest.raises(AttributeError):
        a.k = 4  # frozen


@pytest.mark.parametrize(
    "bad",
    [
        "first",
        "last:0",
        ("last", -1),
        "last:x",
        "last",
        "last:K",
        "positions",
        ("last", 2.7),
        [[0.5]],
    ],
)
def test_bad_scopes(bad):
    with pytest.raises(ValueError, match="scope"):
        TokenScope.parse(bad)


def test_written_form_round_trips():
    for written in ("all", "prompt", "generated", "last:2"):
        assert str(TokenScope.parse(written)) == written
        assert TokenScope.parse(str(TokenScope.parse(written))) == TokenScope.parse(written)
    assert str(TokenScope.parse("last: 4")) == "last:4"
    assert str(TokenScope.parse([[0, -1], [2]])) == "[[0, -1], [2]]"


def test_registry_names_every_kind():
    assert SCOPES.names == ("all", "prompt", "generated", "last:K", "positions")
    assert SCOPES.choices() == "all, prompt, generated, last:K, positions"
    assert all(SCOPES.entry(n).help for n in SCOPES)
    assert "last:K: the last K prompt tokens" in SCOPES.help()
    assert SCOPES.make("prompt") == TokenScope("prompt")
    assert SCOPES.make("last:K", k=2) == TokenScope.parse("last:2")
    assert SCOPES.make("positions", positions=[[1], [0, 2]]) == TokenScope.parse([[1], [0, 2]])
    with pytest.raises(UnknownNameError, match="unknown token scope 'promt'.*'prompt'"):
        SCOPES.check("promt")
    with pytest.raises(ValueError, match="K >= 1"):
        TokenScope.last(0)


# --- fuzz (from tests/test_fuzz.py) -------------------------------------------------------------

scope_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 10),
        st.floats(-3, 3),
        st.text(max_size=8),
        st.sampled_from(["all", "prompt", "generated", "last:2", "last:0", "last:x", "last: 3"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner, inner), st.tuples(st.just("last"), inner)
    ),
    max_leaves=6,
)


@pytest.mark.fuzz
@settings(max_examples=150, deadline=None)
@given(scope=scope_values)
def test_scope_parse_gives_a_scope_or_a_value_error(scope):
    try:
        parsed = TokenScope.parse(scope)
    except ValueError as exc:
        assert "scope" in str(exc)
        return
    assert parsed.kind in ("all", "prompt", "generated", "last", "positions")
    assert TokenScope.parse(parsed) is parsed
    if parsed.kind == "last":
        assert parsed.k >= 1
