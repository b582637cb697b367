"""``expertsteer generate``: greedy completions without and with a plan, side by side."""

from __future__ import annotations

import typer
from rich.table import Table

from ..steer.scope import WRITTEN_SCOPES
from . import args
from .main import app, console, user_errors


@app.command()
@user_errors
def generate(
    prompts: list[str] = typer.Argument(..., help="Prompts to complete."),
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    steer: str = typer.Option(..., help="Plan folder (from `expertsteer fit`) or hub repo."),
    alpha: float = typer.Option(1.0, help="Global scale on the plan's per-layer α."),
    scope: str = typer.Option("all", help=f"Tokens steered: {', '.join(WRITTEN_SCOPES)}."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per prompt."),
    chat_template: bool = typer.Option(
        True, "--chat-template/--no-chat-template", help="Use the model's chat template if any."
    ),
) -> None:
    """Greedy completions of PROMPTS without and with the plan, side by side."""
    token_scope = args.token_scope(scope)

    from ..models import load_model
    from ..plan import SteeringPlan
    from ..steer import generate as steered_generate

    plan = SteeringPlan.from_pretrained(steer)
    lm = load_model(target)
    n = len(prompts)
    # One batch: the first n rows unsteered, the last n steered (per-row plans).
    texts = steered_generate(
        lm,
        prompts + prompts,
        plan=[None] * n + [plan] * n,
        alpha=alpha,
        scope=token_scope,
        chat_template=None if chat_template else False,
        max_new_tokens=max_new_tokens,
    )
    layers = ", ".join(f"{j}: {plan.alphas[j] * alpha:.2f}" for j in plan.layers)
    table = Table(title=f"{plan.method} plan on {lm.name} (α per layer {layers}; scope {scope})")
    for col in ("prompt", "unsteered", f"steered (alpha ×{alpha:g})"):
        table.add_column(col, overflow="fold")
    for k, prompt in enumerate(prompts):
        table.add_row(prompt, texts[k].strip(), texts[n + k].strip())
    console.print(table)
