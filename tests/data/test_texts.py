"""Generic text for the alignment maps: paragraphs of Python's pydoc topics."""

from __future__ import annotations

import pytest

from expertsteer.data.texts import generic_texts


def test_generic_texts():
    everything = generic_texts()
    assert len(everything) >= 500
    assert len(set(everything)) == len(everything)
    assert all(80 <= len(t) <= 600 for t in everything)
    assert generic_texts(50, seed=1) == generic_texts(50, seed=1) == generic_texts(seed=1)[:50]
    assert generic_texts(50, seed=1) != generic_texts(50, seed=2)
    assert sorted(generic_texts(seed=7)) == sorted(everything)
    code = [t for t in everything if t.startswith(">>> ")]
    assert code and all("\n" in t for t in code)  # code keeps its line layout
    assert any("  " not in t and "\n" not in t for t in everything)  # prose is normalised
    short = generic_texts(min_chars=20, max_chars=100)
    assert all(20 <= len(t) <= 100 for t in short) and len(short) > len(everything) // 2


def test_generic_texts_argument_checks():
    assert generic_texts(0) == []
    assert len(generic_texts(3, seed=5)) == 3
    with pytest.raises(ValueError, match="n must be >= 0"):
        generic_texts(-1)
    with pytest.raises(ValueError, match="need 0 < min_chars <= max_chars"):
        generic_texts(min_chars=100, max_chars=50)
    with pytest.raises(ValueError, match="need 0 < min_chars <= max_chars"):
        generic_texts(min_chars=0)
