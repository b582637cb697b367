"""``expertsteer export`` and ``expertsteer import-gguf``: plans as llama.cpp control vectors
and lm-evaluation-harness steering files."""

from __future__ import annotations

from pathlib import Path

import typer

from ..export import EXPORT_FORMATS
from . import args
from .main import app, console, user_errors

# options that only some formats take: given to another format, they are a usage error
FORMAT_OPTIONS = {"model_hint": "--model-hint", "target": "--target"}


@app.command()
@user_errors
def export(
    steer: Path = typer.Option(..., help="Plan folder (from `expertsteer fit`)."),
    out: Path = typer.Option(..., help="File to write (plan.gguf; plan.pt for lm-eval)."),
    format: str = typer.Option("gguf", help=f"{EXPORT_FORMATS.help()}."),
    alpha: float = typer.Option(None, help="Global scale baked into the vectors (default 1)."),
    bake_alpha: bool = typer.Option(
        True,
        "--bake-alpha/--no-bake-alpha",
        help="Store alpha × α_j × v_j (ready to use) or the unit vectors v_j.",
    ),
    model_hint: str = typer.Option(
        None, help="gguf: controlvector.model_hint (default: target name)."
    ),
    target: str = typer.Option(
        None,
        help="lm-eval: the model whose module names the file uses (catalog name or folder; "
        "default: the plan's target). Only its config is read.",
    ),
    direction_only: bool = typer.Option(
        False,
        "--direction-only",
        help="For an expert-conditioned plan: export its static direction alone (the files "
        "hold fixed vectors; the probe's per-input α is dropped).",
    ),
) -> None:
    """Write a plan for another tool: a llama.cpp control vector (`llama-cli --control-vector
    FILE`) or an lm-evaluation-harness steering file (`lm_eval --model steered`).

    Both hold fixed vectors, so an expert-conditioned plan is refused unless --direction-only
    (then its direction is written, without the expert's per-input strength), and a learned map
    (one delta per input) is refused."""
    import inspect

    from ..artifacts import load_plan
    from ..condition import ConditionedPlan
    from ..learned import LearnedMap

    name = args.choice(format, EXPORT_FORMATS, "--format")
    writer = EXPORT_FORMATS[name]
    accepted = inspect.signature(writer).parameters
    given = {"model_hint": model_hint, "target": target}
    for key, value in given.items():
        if value is not None and key not in accepted:
            raise typer.BadParameter(
                f"--format {name} takes no {FORMAT_OPTIONS[key]}", param_hint=FORMAT_OPTIONS[key]
            )
    plan = load_plan(steer)
    if isinstance(plan, LearnedMap):
        raise typer.BadParameter(
            f"{steer} holds a learned map: it adds its own delta per input, which a {name} file "
            "of fixed vectors cannot carry; use it with expertsteer generate / serve",
            param_hint="--steer",
        )
    if isinstance(plan, ConditionedPlan):
        if not direction_only:
            raise typer.BadParameter(
                f"{steer} is expert-conditioned: its α is set per input by the expert's probe, "
                f"which a {name} file of fixed vectors cannot carry. Pass --direction-only to "
                "export its direction alone (unconditioned), or use it with expertsteer "
                "generate / serve",
                param_hint="--steer",
            )
        plan = plan.plan
    options = {k: v for k, v in given.items() if k in accepted}
    if name == "lm-eval":
        from ..export_lmeval import hookpoints, model_skeleton, steered_model_args

        model_name = target or plan.target.name
        options["target"] = skeleton = model_skeleton(model_name)
    writer(plan, out, alpha=alpha, bake_alpha=bake_alpha, **options)
    what = (
        f"alpha {alpha if alpha is not None else 1:g} × α_j baked in"
        if bake_alpha
        else "unit vectors; α_j in the expertsteer.* metadata only"
    )
    if name == "lm-eval":
        if not bake_alpha:
            what = "unit vectors; steering_coefficient = α_j"
        points = ", ".join(hookpoints(skeleton, plan.layers).values())
        console.print(f"wrote {out}: hook points {points} ({what}, action add, every position)")
        console.print(
            f"use: lm_eval --model steered --model_args {steered_model_args(model_name, out)}"
        )
        return
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
