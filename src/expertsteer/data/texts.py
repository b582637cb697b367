"""Generic text for fitting the alignment maps: paragraphs of Python's own pydoc topics.

Unlabelled and kept apart from the contrast data (``generic`` is not a data spec): the maps
need text that reads like text in both models, not the concept.
"""

from __future__ import annotations

import functools
import random
import re
import textwrap

__all__ = ["generic_texts"]


def generic_texts(
    n: int | None = None, *, seed: int = 0, min_chars: int = 80, max_chars: int = 600
) -> list[str]:
    """Up to ``n`` generic paragraphs (all when None), shuffled by ``seed``.

    Paragraphs of Python's own documentation topics (``pydoc_data.topics``, stdlib): English
    prose with its whitespace normalised, and indented code/grammar blocks with their layout
    kept. Headings and tables are dropped; longer paragraphs are cut at a sentence (prose) or
    line (code) boundary within ``max_chars``; exact duplicates are dropped. The set depends on
    the Python version; within one version it is deterministic.
    """
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 < min_chars <= max_chars:
        raise ValueError(f"need 0 < min_chars <= max_chars, got {min_chars}, {max_chars}")
    paragraphs = list(_generic_paragraphs(min_chars, max_chars))
    random.Random(seed).shuffle(paragraphs)
    return paragraphs if n is None else paragraphs[:n]


@functools.lru_cache(maxsize=4)
def _generic_paragraphs(min_chars: int, max_chars: int) -> tuple[str, ...]:
    from pydoc_data.topics import topics

    out: dict[str, None] = {}  # an ordered set
    for key in sorted(topics):
        for block in re.split(r"\n[ \t]*\n", topics[key]):
            paragraph = _truncate(_clean_paragraph(block), max_chars)
            if len(paragraph) >= min_chars:
                out[paragraph] = None
    return tuple(out)


def _clean_paragraph(block: str) -> str:
    lines = [line.rstrip() for line in block.split("\n") if line.strip()]
    # Heading underlines and table borders: no prose worth reading.
    if not lines or any(not any(c.isalnum() for c in line) for line in lines):
        return ""
    text = textwrap.dedent("\n".join(lines))
    # Interpreter sessions, and indented blocks (code, grammar) keep their layout, except
    # indented prose: flush left once dedented and ending a sentence.
    indented = all(line[0].isspace() for line in lines)
    flush = not any(line[0].isspace() for line in text.split("\n"))
    if ">>>" in text or (indented and not (flush and text[-1] in ".!?")):
        return text
    return " ".join(text.split())


_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


def _truncate(paragraph: str, max_chars: int) -> str:
    if len(paragraph) <= max_chars:
        return paragraph
    if "\n" in paragraph:
        cut = paragraph.rfind("\n", 0, max_chars + 1)
    else:
        # endpos one past the limit lets the lookahead see the character after a final stop.
        ends = [m.end() for m in _SENTENCE_END.finditer(paragraph, 0, max_chars + 1)]
        ends = [e for e in ends if e <= max_chars]
        cut = ends[-1] if ends else -1
    return paragraph[:cut].rstrip() if cut > 0 else ""
