"""One Markdown table over many `expertsteer eval` reports (the summary at the top of RESULTS.md).

    python scripts/results_summary.py [reports/results]

Per report (a folder with results.json): the target alone, the best target-only baseline and
the best ExpertSteer variant, each *chosen on validation* (never on test), with test accuracy,
95 % CI and the paired-bootstrap p-values the report computed; then, per ExpertSteer variant,
how often it beat its nulls and the target alone.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def _acc(row: dict) -> str:
    lo, hi = row["ci95"]
    return f"{row['score']:.3f} [{lo:.2f}, {hi:.2f}]"


def _p(value: float | None) -> str:
    return "-" if value is None else ("<0.001" if value < 0.001 else f"{value:.3f}")


def main(root: Path) -> None:
    reports = sorted(root.glob("*/*/results.json"))
    if not reports:
        raise SystemExit(f"no results.json under {root}/<expert>/<task>/: run scripts/results.sh")
    print(
        "| task | expert | n test | target alone | expert alone | best target-only (val) | "
        "best ExpertSteer (val) | p vs none | p vs best baseline | beats nulls |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    per_variant: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for path in reports:
        r = json.loads(path.read_text())
        rows = {m["name"]: m for m in r["methods"]}
        none = rows.get("none")
        expert = rows.get("expert")
        baselines = [m for m in r["methods"] if m["kind"] == "target-only"]
        transfers = [m for m in r["methods"] if m["kind"] == "transfer"]
        for m in transfers:
            better = none is not None and m["score"] > none["score"]
            per_variant[m["name"]].append((bool(m.get("beats_null")), better))
        base = max(baselines, key=lambda m: m["val_score"], default=None)
        best = max(transfers, key=lambda m: m["val_score"], default=None)
        cells = [
            r["task"],
            r["expert"],
            str(r["n"]["test"]),
            _acc(none) if none else "-",
            _acc(expert) if expert else "-",
            f"{base['name']} {_acc(base)}" if base else "-",
            f"{best['name'].removeprefix('expertsteer:')} {_acc(best)}" if best else "-",
            _p(best.get("p_vs_none")) if best else "-",
            _p(best.get("p_vs_best_baseline")) if best else "-",
            ("yes" if best.get("beats_null") else "no") if best else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    print("\n| ExpertSteer variant | runs | beats its nulls | above the target alone |")
    print("|---|---|---|---|")
    for name, marks in sorted(per_variant.items()):
        beats = sum(b for b, _ in marks)
        above = sum(a for _, a in marks)
        print(f"| {name} | {len(marks)} | {beats} | {above} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "reports/results"))
