"""An evaluation report as rich tables for the terminal (``results.md`` is :mod:`.report`'s)."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table

__all__ = ["concept_table", "methods_table", "render_report", "zero_shot_lines"]


def zero_shot_lines(report: dict[str, Any]) -> list[str]:
    """One line per model that answered the task itself: val / test accuracy, sum and mean."""
    lines = []
    for role, m in report["models"].items():
        if "skipped" not in m:
            lines.append(
                f"zero-shot {role} {m['name']}: val sum {m['val']['sum']:.3f} / mean "
                f"{m['val']['mean']:.3f}; test sum {m['test']['sum']:.3f} / mean "
                f"{m['test']['mean']:.3f}"
            )
    return lines


def _nulls(nulls: dict[str, list[float]] | None) -> str:
    if not nulls:
        return "-"
    return (
        " ".join(f"{x:.2f}" for x in nulls["shuffled_labels"])
        + " | "
        + " ".join(f"{x:.2f}" for x in nulls["random_direction"])
    )


def methods_table(report: dict[str, Any]) -> Table:
    """The side-by-side table: test accuracy with CI, tuned α / layers, p-values, nulls."""
    n = report["n"]
    table = Table(
        title=f"{report['task']}: {report.get('expert') or '-'} → {report['target']} (test "
        f"{n['test']} items, {report['norm']} log-likelihood; α and layers tuned on val "
        f"{n['val']})"
    )
    cols = ("method", "test acc", "95% CI", "α", "layers", "p vs none", "p vs best baseline")
    for col in (*cols, "nulls (shuffled | random)", "beats nulls"):
        table.add_column(col)
    for r in report["methods"]:
        table.add_row(
            r["name"],
            f"{r['score']:.3f}",
            f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
            "-" if r.get("alpha") is None else f"{r['alpha']:g}",
            ",".join(map(str, r.get("layers") or [])) or "-",
            "-" if "p_vs_none" not in r else f"{r['p_vs_none']:.3f}",
            "-" if "p_vs_best_baseline" not in r else f"{r['p_vs_best_baseline']:.3f}",
            _nulls(r.get("nulls")),
            {True: "[green]yes", False: "[red]no"}.get(r.get("beats_null"), "-"),
        )
    return table


def concept_table(concept: dict[str, Any]) -> Table:
    """How far each concept vector moves the target, as a fraction of the target's own."""
    t = Table(title=f"concept transfer ({concept['concept']}), ±{concept['alpha']:g} × plan α")
    for col in ("vector", "span", "fraction of target's own", "95% CI"):
        t.add_column(col)
    for name, c in concept["plans"].items():
        lo, hi = c["fraction_ci95"]
        t.add_row(name, f"{c['span']:.2f}", f"{c['fraction_of_own']:.2f}", f"[{lo:.2f}, {hi:.2f}]")
    return t


def render_report(report: dict[str, Any]) -> list[RenderableType]:
    """Everything the terminal shows of a report, in order (print each with a rich Console)."""
    out: list[RenderableType] = [*zero_shot_lines(report), methods_table(report)]
    if report.get("concept_transfer"):
        out.append(concept_table(report["concept_transfer"]))
    return out
