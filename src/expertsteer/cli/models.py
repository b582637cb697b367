"""``expertsteer models``: the packaged offline catalog, and converting models ahead of use."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from .. import catalog
from .main import app, console


@app.command()
def models(
    prepare: list[str] = typer.Option(
        None, "--prepare", help="Convert these catalog models now ('all' for every installed one)."
    ),
) -> None:
    """List the packaged offline models: family, layers, width and whether they are ready."""
    names = list(catalog.CATALOG) if prepare and "all" in prepare else (prepare or [])
    unknown = [n for n in names if n not in catalog.CATALOG]
    if unknown:  # before converting anything
        raise typer.BadParameter(
            f"unknown catalog models {unknown}; use {', '.join(catalog.CATALOG)} or 'all'",
            param_hint="--prepare",
        )
    for name in names:
        entry = catalog.get_entry(name)
        if catalog.status(entry) == "missing":
            console.print(f"[yellow]skip {name}: not installed ({entry.install_command})")
            continue
        start = time.perf_counter()
        catalog.model_path(name)
        console.print(f"{name}: ready ({time.perf_counter() - start:.1f} s)")

    table = Table(title="expertsteer catalog (cache: " + str(catalog.cache_root()) + ")")
    for col in ("name", "model", "family", "kind", "layers", "hidden", "state"):
        table.add_column(col)
    missing = []
    for entry in catalog.CATALOG.values():
        state = catalog.status(entry)
        colour = {"ready": "green", "installed": "yellow", "missing": "red"}[state]
        label = {"installed": "installed (converts on first use)"}.get(state, state)
        table.add_row(
            entry.name,
            entry.description,
            entry.family,
            entry.kind,
            str(entry.n_layers),
            str(entry.hidden_size),
            f"[{colour}]{label}",
        )
        if state == "missing":
            missing.append(entry)
    console.print(table)
    for entry in missing:
        console.print(f"[red]{entry.name}[/] is not installed: {entry.install_command}")
