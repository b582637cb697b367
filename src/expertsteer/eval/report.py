"""The report folder: results.json, results.md and the plots, all written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_path, write_json

if TYPE_CHECKING:
    from ..plan import SteeringPlan
    from .runner import EvalResult

__all__ = ["markdown_table", "write_report"]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    return "-" if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def markdown_table(report: dict[str, Any]) -> str:
    """The side-by-side table (test accuracy, 95 % CI, tuned α / layers, p-values, nulls)."""
    n = report["n"]
    lines = [
        f"### {report['task']}: {report.get('expert') or '-'} → {report['target']}",
        "",
        f"train {n['train']} / val {n['val']} / test {n['test']} items; multiple choice by "
        f"{'per-token mean' if report['norm'] == 'mean' else 'summed'} log-likelihood "
        "(chosen on validation); vectors from: " + report["train_data"] + ".",
        "",
        "| model (zero-shot) | val sum | val mean | test sum | test mean |",
        "|---|---|---|---|---|",
    ]
    for role, m in report["models"].items():
        if "skipped" in m:
            lines.append(f"| {role}: {m['name']} | skipped: {m['skipped']} | | | |")
            continue
        v, t = m["val"], m["test"]
        lines.append(
            f"| {role}: {m['name']} | {_fmt(v['sum'])} | {_fmt(v['mean'])} | "
            f"{_fmt(t['sum'])} | {_fmt(t['mean'])} |"
        )
    lines += [
        "",
        "| method | test acc | 95 % CI | α | layers | p vs none | p vs best baseline | "
        "shuffled-label nulls | random dirs | beats nulls |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["methods"]:
        nulls = r.get("nulls") or {}
        sh = nulls.get("shuffled_labels")
        rd = nulls.get("random_direction")
        lines.append(
            "| "
            + " | ".join(
                [
                    r["name"],
                    _fmt(r["score"]),
                    f"[{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]",
                    _fmt(r["alpha"], 2) if r.get("alpha") is not None else "-",
                    ",".join(map(str, r["layers"])) if r.get("layers") else "-",
                    _p(r.get("p_vs_none")),
                    _p(r.get("p_vs_best_baseline"))
                    + (f" ({r['best_baseline']})" if r.get("best_baseline") else ""),
                    " ".join(_fmt(x) for x in sh) if sh else "-",
                    " ".join(_fmt(x) for x in rd) if rd else "-",
                    {True: "yes", False: "no"}.get(r.get("beats_null"), "-"),
                ]
            )
            + " |"
        )
    if any("generation_score" in r for r in report["methods"]):
        lines += ["", "| method | generation (alias match) | 95 % CI |", "|---|---|---|"]
        for r in report["methods"]:
            if "generation_score" in r:
                lo, hi = r["generation_ci95"]
                lines.append(
                    f"| {r['name']} | {_fmt(r['generation_score'])} | [{_fmt(lo)}, {_fmt(hi)}] |"
                )
    concept = report.get("concept_transfer")
    if concept:
        lines += [
            "",
            f"Concept transfer ({concept['concept']}): change in the concept choice's margin "
            f"between α = −{concept['alpha']:g} and +{concept['alpha']:g} × plan α, "
            f"{concept['n']} test items.",
            "",
            "| vector | span | 95 % CI | fraction of target's own | 95 % CI |",
            "|---|---|---|---|---|",
        ]
        for name, c in concept["plans"].items():
            lines.append(
                f"| {name} | {_fmt(c['span'], 2)} | [{_fmt(c['span_ci95'][0], 2)}, "
                f"{_fmt(c['span_ci95'][1], 2)}] | {_fmt(c['fraction_of_own'], 2)} | "
                f"[{_fmt(c['fraction_ci95'][0], 2)}, {_fmt(c['fraction_ci95'][1], 2)}] |"
            )
    lines.append("")
    return "\n".join(lines)


def _plots(report: dict[str, Any], out: Path, plan: SteeringPlan | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if report.get("sweeps"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, grid in report["sweeps"].items():
            by_alpha: dict[float, float] = {}
            for g in grid:  # the best layer count at each α
                by_alpha[g["alpha"]] = max(by_alpha.get(g["alpha"], -1.0), g["score"])
            xs = sorted(by_alpha)
            ax.plot(xs, [by_alpha[x] for x in xs], marker="o", label=name)
        ax.set_xlabel("global α (× plan α)")
        ax.set_ylabel("validation accuracy (best layer count)")
        ax.set_title(f"α sweep: {report['task']}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        with atomic_path(out / "alpha_sweep.png") as tmp:
            fig.savefig(tmp, format="png", dpi=120)
        plt.close(fig)
        made.append("alpha_sweep.png")

    rows = report["methods"]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(rows) + 2), 4.5))
    scores = [r["score"] for r in rows]
    err = [[r["score"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["score"] for r in rows]]
    colours = {"baseline": "grey", "target-only": "tab:blue", "transfer": "tab:orange"}
    ax.bar(
        range(len(rows)),
        scores,
        yerr=err,
        capsize=3,
        color=[colours.get(r["kind"], "grey") for r in rows],
    )
    for k, r in enumerate(rows):
        if r.get("nulls"):
            ax.plot([k - 0.4, k + 0.4], [max(sum(r["nulls"].values(), []))] * 2, "k--", lw=1)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("test accuracy (95 % CI; dashed: best null)")
    ax.set_title(f"{report['task']}: {report.get('expert') or '-'} → {report['target']}")
    fig.tight_layout()
    with atomic_path(out / "accuracy.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    made.append("accuracy.png")

    if plan is not None and plan.mi_matrix is not None:
        from ..mi import plot_mi_matrix

        plot_mi_matrix(
            plan.mi_matrix,
            out / "mi_matrix.png",
            expert_name=plan.expert.name,
            target_name=plan.target.name,
            pairs=plan.pairs,
        )
        made.append("mi_matrix.png")
    return made


def write_report(result: EvalResult | dict[str, Any], out: str | Path) -> Path:
    """Write ``results.json``, ``results.md``, the PNG plots and the tuned plans
    (``plans/<method>/``, usable with ``expertsteer generate --steer``) into ``out``.

    ``result`` is what :func:`run_eval` returns, or a bare report dict (then no plans and
    no MI heat-map are written)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(result, dict):
        report, plans, mi_plan = dict(result), {}, None
    else:
        report, plans, mi_plan = dict(result.report), result.plans, result.mi_plan
    report["plots"] = _plots(report, out, mi_plan)
    report["plans"] = {}
    for name, plan in plans.items():
        folder = "plans/" + name.replace(":", "_")
        plan.save_pretrained(out / folder)
        report["plans"][name] = folder
    write_json(out / "results.json", report)
    md = markdown_table(report)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    return out
