"""Your own data files: ``.jsonl`` / ``.json`` / ``.csv`` records → a :class:`Dataset`.

Every record of a file has one of two shapes, labelled ``{text, label[, prompt]}`` or a contrast
pair ``{prompt, positive, negative}``; other scalar fields are kept in ``Example.meta``. A file is
refused, naming the line, when a field is missing or mistyped, a text is empty, a label unknown,
shapes are mixed, or a text repeats an earlier one.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .dataset import Dataset, DataSpecError, Example, Kind

__all__ = ["FILE_SUFFIXES", "load_file"]

FILE_SUFFIXES = (".jsonl", ".json", ".csv")
_LABELLED_FIELDS = ("text", "label")
_PAIR_FIELDS = ("positive", "negative")
_KNOWN_FIELDS = {"prompt", *_LABELLED_FIELDS, *_PAIR_FIELDS}
_LABEL_WORDS = {"1": 1, "true": 1, "positive": 1, "0": 0, "false": 0, "negative": 0}
_ACCEPTED_SHAPES = (
    "a record is labelled {text, label[, prompt]} or a contrast pair {positive, negative[, prompt]}"
)
_KIND_NAMES = {"labelled": "a labelled record", "pairs": "a contrast pair"}


def load_file(path: Path, spec: str) -> Dataset:
    """The examples of a ``.jsonl`` / ``.json`` / ``.csv`` data file (see :mod:`.specs` for the
    record shapes); any problem is a :class:`DataSpecError` naming the file and line."""
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
