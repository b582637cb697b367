"""The Typer app, its consoles and the policy for bad input (one message, no traceback)."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Steer a target LLM with steering vectors built from an expert model.",
)
# Piped output (CI logs, files) gets a width that fits the tables instead of rich's 80.
console = Console(width=None if sys.stdout.isatty() else 130)
errors = Console(stderr=True, soft_wrap=True)  # one unbroken line: greppable, copyable


def user_errors(command):
    """Bad input (a wrong path, spec, plan, model or setting) exits 1 with its message only.

    The library's ValueErrors (DataSpecError, ModelLoadError, PlanMismatchError,
    CorruptFileError, ...) say what is wrong and what to do; a traceback would bury that.
    """
    from ..deps import MissingDependencyError

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ValueError, FloatingPointError, FileNotFoundError, MissingDependencyError) as exc:
            errors.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None

    return run


@app.callback()
def _root() -> None:
    """Steer a target LLM with steering vectors built from an expert model."""
