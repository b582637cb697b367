"""``expertsteer export`` and ``expertsteer import-gguf``: plans as llama.cpp control vectors."""

from __future__ import annotations

from pathlib import Path

import typer

from ..export import EXPORT_FORMATS
from . import args
from .main import app, console, user_errors


@app.command()
@user_errors
def export(
    steer: Path = typer.Option(..., help="Plan folder (from `expertsteer fit`)."),
    out: Path = typer.Option(..., help="File to write (e.g. plan.gguf)."),
    format: str = typer.Option("gguf", help=f"{EXPORT_FORMATS.help()}."),
    alpha: float = typer.Option(None, help="Global scale baked into the vectors (default 1)."),
    bake_alpha: bool = typer.Option(
        True,
        "--bake-alpha/--no-bake-alpha",
        help="Store alpha × α_j × v_j (ready for llama.cpp) or the unit vectors v_j.",
    ),
    model_hint: str = typer.Option(None, help="controlvector.model_hint (default: target name)."),
) -> None:
    """Write a plan as a llama.cpp control vector (`llama-cli --control-vector FILE`)."""
    from ..plan import SteeringPlan

    writer = EXPORT_FORMATS[args.choice(format, EXPORT_FORMATS, "--format")]
    plan = SteeringPlan.from_pretrained(steer)
    writer(plan, out, alpha=alpha, bake_alpha=bake_alpha, model_hint=model_hint)
    what = (
        f"alpha {alpha if alpha is not None else 1:g} × α_j baked in"
        if bake_alpha
        else "unit vectors; α_j in the expertsteer.* metadata only"
    )
    console.print(f"wrote {out}: direction.<j> for blocks {plan.layers} ({what})")


@app.command("import-gguf")
@user_errors
def import_gguf_command(
    file: Path = typer.Argument(..., help="A control-vector .gguf (ours, repeng's, llama.cpp's)."),
    out: Path = typer.Option(..., help="Plan folder to write."),
    target: str = typer.Option(
        None, help="The model the vectors are for (needed unless expertsteer wrote the file)."
    ),
) -> None:
    """Read a control-vector GGUF file as a steering plan (direction.N → target block N)."""
    from ..export import import_gguf
    from ..models import load_model

    plan = import_gguf(file, load_model(target) if target else None)
    plan.save_pretrained(out)
    alphas = ", ".join(f"{j}: {a:.3g}" for j, a in plan.alphas.items())
    console.print(f"wrote plan for {plan.target.name} to {out} (α per block {alphas})")
