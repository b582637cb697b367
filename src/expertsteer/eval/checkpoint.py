"""Finished rows on disk, per seed and method, so that a long evaluation resumes where it stopped.

With ``EvalConfig.checkpoint`` (``expertsteer eval --checkpoint DIR``) each method's row is
written as it finishes on a seed: ``DIR/seed<k>/<method>.json`` (test correctness, tuned α and
layers, nulls, its sweep; arrays as JSON lists, nothing pickled) with its tuned plan or trained
map beside it (``<method>.plan/``, safetensors + JSON), the plan first and the row last, each
atomically, so a row on disk always has its plan. The concept-transfer spans of a seed are kept
the same way (``_concept.json``). A rerun with the same settings reads them back instead of
refitting; a row whose plan files are unreadable is read back without its plan (its numbers were
measured; only the artifact is gone) unless the run scores generation, which needs the plan. A
file written under other settings or other items is ignored and overwritten. Each file records
the commit it was written at; the report lists them (``checkpoint_commits``), since a rerun
cannot tell whether the code changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..condition import ConditionedPlan
from ..io import write_json
from ..learned import LearnedMap
from ..models import LoadedModel
from ..plan import SteeringPlan
from ..provenance import git_commit
from .tasks import Task

__all__ = ["RowStore", "finished_rows", "fingerprint"]

CONCEPT = "_concept"
_ARRAY = "__ndarray__"
# a row's saved plan, by the kind its JSON records
_LOADERS: dict[str, Any] = {
    "conditioned": ConditionedPlan,
    "learned": LearnedMap,
    "static": SteeringPlan,
}


def _name(ref: str | LoadedModel | None) -> str | None:
    return ref.name if isinstance(ref, LoadedModel) else ref


def fingerprint(config: Any, seed: int, parts: tuple[Task, ...]) -> dict[str, Any]:
    """Every setting that changes a seed's rows, and a digest of its split's items."""
    digest = hashlib.sha256()
    for part in parts:
        for item in part.items:
            digest.update(json.dumps([item.prompt, item.choices, item.answer]).encode())
        digest.update(b"|")
    return {
        "task": config.task,
        "target": _name(config.target),
        "expert": _name(config.expert),
        "train_data": config.train_data,
        "limit": config.limit,
        "balance": config.balance,
        "max_prompt_chars": config.max_prompt_chars,
        "alphas": [float(a) for a in config.alphas],
        "layer_counts": list(config.layer_counts),
        "n_pairs": config.n_pairs,
        "n_nulls": config.n_nulls,
        "align_texts": config.align_texts,
        "concept_alpha": config.concept_alpha,
        "concept_items": config.concept_items,
        "seed": seed,
        "items_sha256": digest.hexdigest(),
    }


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return {_ARRAY: value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _ARRAY in value:
            return np.array(value[_ARRAY], dtype=value["dtype"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _read(path: Path) -> dict[str, Any] | None:
    """A checkpoint file's body; None when it is missing or damaged (then it is recomputed, as
    the states cache does)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return saved if isinstance(saved, dict) and "row" in saved else None


class RowStore:
    """One seed's folder of finished rows (see the module docstring)."""

    def __init__(
        self, root: str | Path, seed: int, key: dict[str, Any], *, need_plans: bool = False
    ) -> None:
        self.folder = Path(root) / f"seed{seed}"
        self.key = key
        # A row whose plan files are unreadable (e.g. a clone without the tensors) still
        # stands, its plan left out, unless the run needs plans (generation scoring).
        self.need_plans = need_plans
        self.missing: list[str] = []  # rows restored without their plan

    def _path(self, name: str) -> Path:
        return self.folder / (name.replace(":", "_") + ".json")

    def load(
        self, name: str
    ) -> tuple[dict, Any, SteeringPlan | ConditionedPlan | LearnedMap | None] | None:
        """``(row, sweep, plan)`` kept for ``name`` under these settings, else ``None``."""
        path = self._path(name)
        saved = _read(path)
        if saved is None or saved.get("key") != self.key:
            return None
        plan = None
        if saved.get("plan"):
            folder = path.with_suffix(".plan")
            loader = _LOADERS.get(saved["plan"], SteeringPlan)
            try:
                plan = loader.from_pretrained(folder)
            except (OSError, ValueError):
                if self.need_plans:
                    return None
                self.missing.append(name)
        row = _decode(saved["row"])
        row["checkpoint_commit"] = saved.get("git_commit")
        return row, _decode(saved.get("sweep")), plan

    def save(
        self,
        name: str,
        row: dict[str, Any],
        sweep: Any = None,
        plan: SteeringPlan | ConditionedPlan | LearnedMap | None = None,
    ) -> None:
        path = self._path(name)
        self.folder.mkdir(parents=True, exist_ok=True)
        kind = None
        if plan is not None:
            plan.save_pretrained(path.with_suffix(".plan"))
            kind = next(k for k, cls in _LOADERS.items() if isinstance(plan, cls))
        row = {k: v for k, v in row.items() if k != "checkpoint_commit"}
        body = {
            "key": self.key,
            "git_commit": git_commit(),
            "row": _encode(row),
            "sweep": _encode(sweep),
            "plan": kind,
        }
        write_json(path, body)  # last and atomic: a row on disk always has its plan


def finished_rows(root: str | Path, seed: int) -> list[dict[str, Any]]:
    """Every method row kept for ``seed`` under ``root``, whatever its settings (for progress
    reports), each with ``checkpoint_commit``; damaged files are skipped."""
    rows = []
    for path in sorted((Path(root) / f"seed{seed}").glob("*.json")):
        saved = _read(path)
        if path.stem != CONCEPT and saved is not None:
            rows.append(_decode(saved["row"]) | {"checkpoint_commit": saved.get("git_commit")})
    return rows
