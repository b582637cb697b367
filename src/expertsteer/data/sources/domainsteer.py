"""domainsteer: expert vs everyday answers per domain, and the polysemy-trap benchmark.

Needs ``pip install domainsteer``. The pairs are the package's Llama-3.2-3B set, 30 per domain:
prompt = the question, positive = question + " " + expert answer, negative = question + " " +
everyday answer.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..dataset import Dataset, DataSpecError, Example
from . import did_you_mean, package_path

__all__ = ["DOMAINSTEER_PIP", "domainsteer_benchmark", "domainsteer_domains", "load_domainsteer"]

DOMAINSTEER_PIP = "pip install domainsteer"
_DATA = "domainsteer/data"
_MODEL = "meta-llama-llama-3-2-3b-instruct"


def domainsteer_domains() -> list[tuple[str, str, str]]:
    """The domainsteer domains with a bundled pair set: ``(id, slug, name)``, by id."""
    root = package_path("domainsteer", _DATA, DOMAINSTEER_PIP)
    return list(_read_domains(str(root)))


@functools.lru_cache(maxsize=2)
def _read_domains(root: str) -> tuple[tuple[str, str, str], ...]:
    registry = json.loads((Path(root) / "domain_clusters.json").read_text(encoding="utf-8"))
    names = {c["cluster_id"]: c["cluster"] for c in registry["clusters"]}
    domains = []
    for path in sorted((Path(root) / "pairs" / _MODEL).glob("*.jsonl")):
        domain_id, _, slug = path.stem.partition("-")
        domains.append((domain_id, slug, names.get(domain_id, slug.replace("-", " "))))
    return tuple(domains)


def _resolve_domain(query: str) -> tuple[str, str, str]:
    domains = domainsteer_domains()
    key = " ".join(query.split()).lower()
    for d in domains:
        if key in (d[0], d[1], d[2].lower(), f"{d[0]}-{d[1]}"):
            return d
    hint = did_you_mean(key, [d[1] for d in domains] + [d[2] for d in domains])
    raise DataSpecError(
        f"unknown domainsteer domain {query!r}.{hint} Give an id ('3001'), a slug or a name; "
        f"list all {len(domains)} with expertsteer.data.domainsteer_domains()"
    )


def load_domainsteer(spec: str, arg: str) -> Dataset:
    """The contrast pairs of one domain (``arg`` an id, slug or name) or of ``all``."""
    if not arg:
        raise DataSpecError(
            "domainsteer needs a domain: 'domainsteer:<id|slug|name>' or 'domainsteer:all'; "
            "list them with expertsteer.data.domainsteer_domains()"
        )
    domains = domainsteer_domains() if arg.lower() == "all" else [_resolve_domain(arg)]
    root = package_path("domainsteer", _DATA, DOMAINSTEER_PIP)
    examples: list[Example] = []
    seen: set[str] = set()
    for domain_id, slug, name in domains:
        meta = {"source": "domainsteer", "domain": name, "domain_id": domain_id}
        path = root / "pairs" / _MODEL / f"{domain_id}-{slug}.jsonl"
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
    root = package_path("domainsteer", _DATA, DOMAINSTEER_PIP)
    items = []
    for domain_id, slug, name in domains:
        path = root / "benchmark" / f"{domain_id}-{slug}.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        items += [{**item, "domain": name, "domain_id": domain_id} for item in data["items"]]
    return items
