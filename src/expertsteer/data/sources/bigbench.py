"""BIG-bench 1.0.0: download, one-time extraction of the ``task.json`` files, task reading and
multiple-choice tasks as contrast pairs.

The sdist ``bigbench-1.0.0.tar.gz`` sits in ``<cache>/downloads`` (``<cache>`` is
``$EXPERTSTEER_CACHE`` or ``~/.cache/expertsteer``); its task files are extracted once into
``<cache>/bigbench-1.0.0``. Prompts follow BIG-bench's zero-shot format (``json_task.py``).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...io import atomic_dir, atomic_path, cache_root
from ..dataset import Dataset, DataSpecError, Example
from . import did_you_mean

__all__ = [
    "BIGBENCH",
    "append_answer",
    "bigbench_flag",
    "bigbench_leaves",
    "bigbench_mc_tasks",
    "bigbench_prompt",
    "bigbench_task",
    "bigbench_tasks",
    "download_bigbench",
    "load_bigbench",
]

BIGBENCH = "bigbench-1.0.0"
_MEMBERS = f"{BIGBENCH}/bigbench/benchmark_tasks/"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


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
        listed = ", ".join(f["filename"] for f in files) or "nothing"
        raise DataSpecError(
            f"{index} lists no {out.name} (it lists {listed}); put a copy of that sdist at "
            f"{out} and retry"
        )
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
                if not (member.isfile() and member.name.startswith(_MEMBERS)):
                    continue
                parts = member.name[len(_MEMBERS) :].split("/")
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
        raise DataSpecError(f"{tarball} holds no {_MEMBERS}*/task.json files")


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


def bigbench_leaves(name: str) -> list[tuple[str, dict]]:
    """(name, parsed task.json) of the task, or of each subtask of a container task.

    Raises :class:`DataSpecError`, suggesting near misses, for an unknown name.
    """
    tasks = bigbench_tasks()
    if name not in tasks:
        hint = did_you_mean(name, tasks)
        raise DataSpecError(
            f"unknown BIG-bench task {name!r}.{hint} List the {len(tasks)} task names with "
            "expertsteer.data.bigbench_tasks()"
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


def bigbench_mc_tasks() -> list[str]:
    """Top-level BIG-bench tasks (a container with its subtasks) with at least one
    multiple-choice example, sorted: what ``bigbench:*`` names. Parses every task file."""
    rng = random.Random(0)  # _bigbench_pair draws a wrong answer; only its None matters here
    return [
        name
        for name in bigbench_tasks()
        if "/" not in name
        and any(
            _bigbench_pair(task, ex, rng) is not None
            for _, task in bigbench_leaves(name)
            for ex in task.get("examples", [])
        )
    ]


def bigbench_task(name: str) -> dict:
    """The parsed ``task.json`` of a BIG-bench task; a container task gets ``subtasks``."""
    leaves = bigbench_leaves(name)
    if len(leaves) == 1 and leaves[0][0] == name:
        return leaves[0][1]
    main = _bigbench_root() / name / "task.json"
    data = json.loads(main.read_text(encoding="utf-8")) if main.is_file() else {"name": name}
    return {**data, "subtasks": [d for _, d in leaves]}


def bigbench_flag(value: Any) -> bool:
    """A task.json flag (e.g. ``append_choices_to_input``) as a bool; some tasks write
    ``"false"`` as a string."""
    return value.strip().lower() == "true" if isinstance(value, str) else bool(value)


def bigbench_prompt(task: dict, text: str, choices: Iterable[str]) -> str:
    """BIG-bench's zero-shot prompt (json_task.py defaults), choices in sorted order."""
    if bigbench_flag(task.get("append_choices_to_input", True)):
        choice_prefix = str(task.get("choice_prefix", "\n  choice: "))
        text += choice_prefix + choice_prefix.join(sorted(choices))
    prompt = (
        str(task.get("task_prefix", ""))
        + str(task.get("example_input_prefix", "\nQ: "))
        + text
        + str(task.get("example_output_prefix", "\nA: "))
    )
    return prompt.lstrip()


def append_answer(prompt: str, answer: str) -> str:
    """Prompt + answer, with a space unless one side already has the whitespace (an eval
    task's choices carry their own leading space: ``"Sentiment:" + " positive"``)."""
    if not prompt or prompt[-1].isspace() or answer[:1].isspace():
        return prompt + answer
    return f"{prompt} {answer}"


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
    return bigbench_prompt(task, example["input"], scores), correct, wrong


def load_bigbench(spec: str, name: str, seed: int) -> Dataset:
    """Contrast pairs of a multiple-choice task (``name`` = ``task`` or ``task/subtask``), the
    wrong answers drawn with ``seed``."""
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
    for leaf, task in bigbench_leaves(name):
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
            pos, neg = append_answer(prompt, correct), append_answer(prompt, wrong)
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
