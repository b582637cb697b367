"""An evaluation report as rich tables for the terminal: the same cells as ``results.md``
(:mod:`.report`), with full method names (wrapped, never cut)."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table

from .report import COLUMNS, LEGEND, concept_line, header_lines, zero_shot_rows

__all__ = ["concept_table", "methods_table", "render_report", "zero_shot_table"]

_VERDICT_STYLE = {"the expert helps": "green", "not shown": "red"}


def zero_shot_table(report: dict[str, Any]) -> Table:
    table = Table(title="zero-shot (mean over seeds)")
    for col in ("model", "val acc", "test acc"):
        table.add_column(col, overflow="fold")
    for row in zero_shot_rows(report):
        table.add_row(*row)
    return table


def methods_table(report: dict[str, Any]) -> Table:
    """The side-by-side table (see :data:`expertsteer.eval.report.COLUMNS`)."""
    # no box: 10 columns fit 130 characters, header in bold
    table = Table(title=". ".join(header_lines(report)), title_justify="left", box=None,
                  pad_edge=False, header_style="bold")  # fmt: skip
    for header, cell in COLUMNS:
        # cells are never cut; on a terminal too narrow for the table they fold
        widest = max(len(cell(r)) for r in report["methods"])
        table.add_column(header, min_width=max(widest, len(header)), overflow="fold")
    for r in report["methods"]:
        table.add_row(*(cell(r) for _, cell in COLUMNS))
    return table


def verdict_lines(report: dict[str, Any]) -> list[str]:
    out = []
    for r in report["methods"]:
        if "verdict" not in r:
            continue
        style = next((s for k, s in _VERDICT_STYLE.items() if r["verdict"].startswith(k)), "")
        text = f"[{style}]{r['verdict']}[/]" if style else r["verdict"]
        out.append(f"[bold]{r['name']}[/]: {text}")
    return out


def concept_table(concept: dict[str, Any]) -> Table:
    """How far each concept vector moves the target, as a fraction of the target's own."""
    t = Table(title=concept_line(concept), title_justify="left")
    for col in ("vector", "span", "fraction of target's own", "95% CI"):
        t.add_column(col, overflow="fold")
    for name, c in concept["plans"].items():
        lo, hi = c["fraction_ci95"]
        t.add_row(name, f"{c['span']:.2f}", f"{c['fraction_of_own']:.2f}", f"[{lo:.2f}, {hi:.2f}]")
    return t


def render_report(report: dict[str, Any]) -> list[RenderableType]:
    """Everything the terminal shows of a report, in order (print each with a rich Console)."""
    out: list[RenderableType] = [zero_shot_table(report), methods_table(report), LEGEND]
    out += verdict_lines(report)
    if report.get("concept_transfer"):
        out.append(concept_table(report["concept_transfer"]))
    return out
