"""What the user typed, parsed into typed values, or a usage error naming the option."""

from pathlib import Path

import pytest
import typer

from expertsteer.align import ALIGNERS
from expertsteer.cli import args
from expertsteer.data import DataSpecError
from expertsteer.pipeline import READ_POSITIONS
from expertsteer.steer.scope import TokenScope


def refused(call, *values) -> typer.BadParameter:
    with pytest.raises(typer.BadParameter) as info:
        call(*values)
    return info.value


def test_names_split_on_commas_and_drop_blanks():
    assert args.names(" a, b,,c ,") == ["a", "b", "c"]
    assert args.names("") == [] and args.names(" , ") == []


def test_choice_from_a_registry_or_a_tuple():
    assert args.choice("ridge", ALIGNERS, "--aligner") == "ridge"
    assert args.choice("b", ("a", "b"), "--x") == "b"
    bad = refused(args.choice, "lasso", ALIGNERS, "--aligner")
    assert bad.message == "must be one of ae, paired-ae, procrustes, ridge, not 'lasso'"
    assert bad.param_hint == "--aligner"
    assert bad.format_message() == (
        "Invalid value for --aligner: must be one of ae, paired-ae, procrustes, ridge, not 'lasso'"
    )
    assert refused(args.choice, "x", ["a", "b"], "--m").message == "must be one of a, b, not 'x'"


def test_floats():
    assert args.floats("0,0.5,1", "--alphas") == [0.0, 0.5, 1.0]
    assert args.floats(" -2 , 1e-1", "--alphas") == [-2.0, 0.1]
    for bad in ("", "a,b", "1,,x", "nan", "1,inf", "-inf", " , "):
        err = refused(args.floats, bad, "--alphas")
        assert err.message == f"{bad!r} is not a comma list of numbers"
        assert err.param_hint == "--alphas"


def test_ints():
    assert args.ints("1,4", "--layer-counts") == [1, 4]
    assert args.ints("0, 3", "--n", minimum=0) == [0, 3]
    for bad in ("", "0", "1,0", "1.5", "x", "-1"):
        err = refused(args.ints, bad, "--layer-counts")
        assert err.message == f"{bad!r} is not a comma list of whole numbers >= 1"
        assert err.param_hint == "--layer-counts"
    assert refused(args.ints, "-1", "--n", 0).message == (
        "'-1' is not a comma list of whole numbers >= 0"
    )


def test_given_pairs():
    assert args.given_pairs(None) is None and args.given_pairs("") is None
    assert args.given_pairs("8:10,12:16") == [(8, 10), (12, 16)]
    assert args.given_pairs("0:0") == [(0, 0)]
    for bad in ("8-10", "8:10:12", "8", "a:b", "8:10,", "-1:2", "2:-1", ":"):
        err = refused(args.given_pairs, bad)
        assert err.message == (
            f"{bad!r} is not a list of expert:target layer pairs, e.g. '8:10,12:16'"
        )
        assert err.param_hint == "--given"


def test_token_scope():
    assert args.token_scope("last: 3") == args.token_scope("last:3") == TokenScope.parse("last:3")
    assert args.token_scope("all") == TokenScope.parse("all")
    err = refused(args.token_scope, "middle")
    assert err.param_hint == "--scope"
    assert err.message == (
        "scope must be 'all', 'prompt', 'generated', 'last:K', ('last', K) or a list of per-row "
        "prompt position lists, not 'middle'"
    )
    assert refused(args.token_scope, "last:0", "--x").param_hint == "--x"


def test_read_position():
    assert READ_POSITIONS == ("last", "mean")
    assert [args.read_position(p) for p in READ_POSITIONS] == ["last", "mean"]
    for bad in ("middle", "first", "Last", ""):
        err = refused(args.read_position, bad)
        assert err.message == f"must be one of last, mean, not {bad!r}"
        assert err.param_hint == "--position"


def test_method_names():
    assert args.method_names("none,expertsteer:ridge", ["depth", "lowest"]) == [
        "none",
        "expertsteer:ridge:depth",
        "expertsteer:ridge:lowest",
    ]
    # a bad name is the method registry's error (a ValueError: exit 1), not a usage error
    expected = "unknown method 'magic': use none, majority, prompt, expert"
    with pytest.raises(DataSpecError, match=expected):
        args.method_names("magic", ["depth"])


def test_align_texts(tmp_path):
    assert args.align_texts("generic") is None
    good = tmp_path / "align.txt"
    good.write_text("  one text \n\n two\n   \nthree")
    assert args.align_texts(str(good)) == ["one text", "two", "three"]
    missing = tmp_path / "nosuch.txt"
    err = refused(args.align_texts, str(missing))
    assert err.message == f"--align-data must be 'generic' or a text file; {missing} is neither"
    assert err.param_hint == "--align-data"
    assert refused(args.align_texts, str(tmp_path)).message.endswith(f"{tmp_path} is neither")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    assert refused(args.align_texts, str(blank)).message == f"{blank} holds no text lines"


def test_named_plans():
    assert args.named_plans([]) == {}
    assert args.named_plans(["up=plans/up", "down=/abs/d"]) == {
        "up": Path("plans/up"),
        "down": Path("/abs/d"),
    }
    assert args.named_plans(["a=b=c"]) == {"a": Path("b=c")}  # the first '=' splits
    for bad in ("noeq", "=dir", "name=", "="):
        err = refused(args.named_plans, [bad])
        assert err.message == f"{bad!r} is not NAME=DIR" and err.param_hint == "--steer"
    err = refused(args.named_plans, ["a=x", "a=y"])
    assert err.message == "plan name 'a' given twice" and err.param_hint == "--steer"
    assert refused(args.named_plans, ["x"], "--plan").param_hint == "--plan"
