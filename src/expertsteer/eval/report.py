"""The report folder: results.json, results.md and the plots, all written atomically."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_path, write_json

if TYPE_CHECKING:
    from ..plan import SteeringPlan
    from .runner import EvalResult

__all__ = [
    "COLUMNS",
    "LEGEND",
    "concept_line",
    "header_lines",
    "markdown_table",
    "write_report",
    "zero_shot_rows",
]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    return "-" if x is None else ("<0.001" if x < 0.001 else f"{x:.3f}")


def _acc(r: dict[str, Any]) -> str:
    sd = r.get("score_sd")
    return _fmt(r["score"]) + (f" ± {sd:.3f}" if sd else "")


def _controls(r: dict[str, Any]) -> str:
    scores = r.get("control_scores") or {}
    return "/".join(_fmt(v) for v in scores.values()) or "-"


# One table for the terminal and results.md: (header, cell of a method row).
COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("method", lambda r: r["name"]),
    ("acc", _acc),
    ("bal acc", lambda r: _fmt(r.get("balanced_accuracy"))),
    ("95% CI", lambda r: f"[{_fmt(r['ci95'][0])}, {_fmt(r['ci95'][1])}]"),
    ("α", lambda r: _fmt(r["alpha"], 2) if r.get("alpha") is not None else "-"),
    ("layers", lambda r: ",".join(map(str, r["layers"])) if r.get("layers") else "-"),
    ("p none", lambda r: _p(r.get("p_vs_none_adjusted"))),
    ("p best", lambda r: _p(r.get("p_adjusted"))),
    ("null p", lambda r: _p(r.get("null_rank_p"))),
    ("controls r/t", _controls),
)
LEGEND = (
    "acc: test accuracy (± its spread over seeds); bal acc: mean of per-label accuracies; p none, "
    "p best: exact McNemar tests on the test items against none and against the best "
    "target-only baseline (chosen on validation), Holm-adjusted over the methods of this report; "
    "null p: rank among the nulls, (1 + nulls at or above the method) / (1 + nulls), the larger "
    "of the shuffled-label and random-direction families, at the method's tuned α and layers; "
    "controls r/t: test accuracy of the same pipeline with a re-initialised expert / with the "
    "target as its own expert; a conditioned method's last one is self-cond (the target's own "
    "probe)."
)


def header_lines(report: dict[str, Any]) -> list[str]:
    """What the table is about: split sizes, seeds, label balance, majority rate, commit."""
    n, seeds = report["n"], report.get("seeds", [0])
    commit = report.get("git_commit")
    return [
        f"{report['task']}: {report.get('expert') or '-'} → {report['target']}; seeds "
        f"{', '.join(map(str, seeds))}; per seed train {n['train']} / val {n['val']} / test "
        f"{n['test']} items{' (label-balanced)' if report.get('balanced') else ''}; majority "
        f"answer rate {_fmt(report.get('majority_rate'))}; multiple choice by "
        f"{'per-token mean' if report['norm'] == 'mean' else 'summed'} log-likelihood (chosen "
        f"on validation); vectors from: {report['train_data']}; expertsteer "
        f"{report.get('library_version', '?')}" + (f" at {commit[:10]}" if commit else ""),
    ] + [
        f"best target-only baseline (chosen on validation): {best}"
        for best in [next((r["best_baseline"] for r in report["methods"]
                           if r.get("best_baseline")), None)] if best
    ]  # fmt: skip


def zero_shot_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(model, val accuracy, test accuracy) at each model's own normalisation, seed mean."""
    rows = []
    for role, m in report["models"].items():
        if "skipped" in m:
            rows.append((f"{role}: {m['name']}", f"cannot answer: {m['skipped']}", ""))
        else:
            norm = m["norm"]
            label = f"{role}: {m['name']} ({norm})"
            rows.append((label, _fmt(m["val"][norm]), _fmt(m["test"][norm])))
    return rows


def markdown_table(report: dict[str, Any]) -> str:
    """The report as Markdown: header, zero-shot table, methods table, legend, verdicts."""
    lines = [f"### {report['task']}: {report.get('expert') or '-'} → {report['target']}", ""]
    lines += [*header_lines(report), ""]
    lines += ["| model (zero-shot) | val acc | test acc |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in zero_shot_rows(report)]
    lines += ["", "| " + " | ".join(h for h, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for r in report["methods"]:
        lines.append("| " + " | ".join(cell(r) for _, cell in COLUMNS) + " |")
    lines += ["", LEGEND, ""]
    lines += [f"- **{r['name']}**: {r['verdict']}" for r in report["methods"] if "verdict" in r]
    if any("generation_score" in r for r in report["methods"]):
        lines += [
            "",
            "Greedy answers (32 tokens, first line) scored by alias match; p: exact McNemar vs "
            "`none`'s answers on the same items, Holm-adjusted across the methods scored.",
            "",
            "| method | generation (alias match) | 95 % CI | p none | Holm |",
            "|---|---|---|---|---|",
        ]
        for r in report["methods"]:
            if "generation_score" in r:
                lo, hi = r["generation_ci95"]
                p, adj = r.get("generation_p_vs_none"), r.get("generation_p_adjusted")
                lines.append(
                    f"| {r['name']} | {_fmt(r['generation_score'])} | [{_fmt(lo)}, {_fmt(hi)}] "
                    f"| {_p(p)} | {_p(adj)} |"
                )
    concept = report.get("concept_transfer")
    if concept:
        lines += ["", concept_line(concept), ""]
        lines += ["| vector | span | 95 % CI | fraction of target's own | 95 % CI |"]
        lines.append("|---|---|---|---|---|")
        for name, c in concept["plans"].items():
            lines.append(
                f"| {name} | {_fmt(c['span'], 2)} | [{_fmt(c['span_ci95'][0], 2)}, "
                f"{_fmt(c['span_ci95'][1], 2)}] | {_fmt(c['fraction_of_own'], 2)} | "
                f"[{_fmt(c['fraction_ci95'][0], 2)}, {_fmt(c['fraction_ci95'][1], 2)}] |"
            )
    lines.append("")
    return "\n".join(lines)


def concept_line(concept: dict[str, Any]) -> str:
    nulls = concept.get("null_spans") or {}
    n_nulls = sum(map(len, nulls.values()))
    rank = concept.get("null_rank_p")
    return (
        f"Concept transfer ({concept['concept']}): change in the concept choice's margin between "
        f"α = −{concept['alpha']:g} and +{concept['alpha']:g} × plan α, {concept['n']} test "
        f"items; the expert's vector against {n_nulls} nulls: rank p {_p(rank)}."
    )


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
    colours = {
        "baseline": "grey",
        "target-only": "tab:blue",
        "transfer": "tab:orange",
        "conditioned": "tab:red",
        "trained": "tab:brown",
        "expert-only": "tab:green",
        "control": "tab:purple",
    }
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
    """Write ``results.json``, ``results.md``, the PNG plots and the tuned plans and trained
    maps (``plans/<method>/``, usable with ``expertsteer generate --steer``) into ``out``.

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
