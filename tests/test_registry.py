"""registry: one vocabulary's names, what each builds, help lines, and the unknown-name message."""

from __future__ import annotations

import pytest

from expertsteer.registry import Entry, Registry, UnknownNameError


class Thing:
    def __init__(self, size: int = 1) -> None:
        self.size = size

    def clone(self) -> Thing:
        return Thing(self.size)


class Plain:
    def __init__(self) -> None:
        self.items = [1, 2]


@pytest.fixture
def things() -> Registry[Thing]:
    reg: Registry[Thing] = Registry("thing")
    reg.register("small", Thing, "a small thing")
    reg.register("large", lambda **kw: Thing(size=10, **kw), "a large thing")
    reg.register("bare", Thing)
    return reg


def test_names_in_registration_order(things):
    assert things.names == ("small", "large", "bare")
    assert list(things) == ["small", "large", "bare"] and len(things) == 3
    assert "small" in things and "tiny" not in things and 3 not in things
    assert things.choices() == "small, large, bare"
    assert things.choices(sep="|") == "small|large|bare"


def test_entries_and_help(things):
    assert things.entry("small") == Entry("small", Thing, "a small thing")
    assert things["small"] is Thing
    assert things.help() == "small: a small thing; large: a large thing; bare"


def test_register_returns_the_factory_and_refuses_duplicates(things):
    assert things.register("other", Plain) is Plain
    with pytest.raises(ValueError, match="thing 'small' is registered twice"):
        things.register("small", Thing)


def test_unknown_names_list_the_valid_ones_with_a_hint(things):
    with pytest.raises(UnknownNameError) as info:
        things.check("smal")
    assert str(info.value) == "unknown thing 'smal': use small, large, bare. Did you mean 'small'?"
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownNameError, match=r"^unknown thing 'zzz': use small, large, bare\.$"):
        things["zzz"]
    with pytest.raises(UnknownNameError):
        things.entry("zzz")
    with pytest.raises(UnknownNameError):
        things.make("zzz")
    assert things.check("large") == "large"


def test_make_builds_from_a_name_with_keyword_arguments(things):
    made = things.make("small", size=3)
    assert isinstance(made, Thing) and made.size == 3
    assert things.make("large").size == 10


def test_make_clones_an_instance(things):
    given = Thing(size=7)
    made = things.make(given)
    assert made is not given and made.size == 7
    with pytest.raises(TypeError, match=r"keyword arguments \['size'\] only go with"):
        things.make(given, size=1)


def test_make_deep_copies_an_instance_without_clone():
    reg: Registry[Plain] = Registry("plain")
    given = Plain()
    made = reg.make(given)
    assert made is not given and made.items == [1, 2] and made.items is not given.items
