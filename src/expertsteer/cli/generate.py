"""``expertsteer generate``: greedy completions without and with a plan, side by side."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from ..steer.scope import WRITTEN_SCOPES
from . import args
from . import expert as experts
from .main import app, console, user_errors


@app.command()
@user_errors
def generate(
    prompts: list[str] = typer.Argument(..., help="Prompts to complete."),
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    steer: str = typer.Option(..., help="Plan folder (from `expertsteer fit`) or hub repo."),
    expert: str = typer.Option(
        None,
        help="Expert of an expert-conditioned plan (catalog name, path, GGUF or hub id); "
        "default: the expert its probe recorded, if that loads here.",
    ),
    alpha: float = typer.Option(1.0, help="Global scale on the plan's per-layer α."),
    scope: str = typer.Option("all", help=f"Tokens steered: {', '.join(WRITTEN_SCOPES)}."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per prompt."),
    chat_template: bool = typer.Option(
        True, "--chat-template/--no-chat-template", help="Use the model's chat template if any."
    ),
) -> None:
    """Greedy completions of PROMPTS without and with the plan, side by side.

    An expert-conditioned plan (its folder holds probe.json) steers each prompt with α·g(p):
    the expert reads the prompt as written, its probe gives p (shown per prompt). A learned map
    (learned_map.json) adds each prompt's own delta, from the expert's reading of it (its norm
    shown per prompt)."""
    token_scope = args.token_scope(scope)

    import torch

    from ..artifacts import load_plan
    from ..condition import ConditionedPlan
    from ..learned import LearnedMap
    from ..models import load_model
    from ..steer import generate as steered_generate

    loaded = load_plan(steer)
    expert_ref = experts.expert_ref({steer: loaded}, expert)  # before any model loads
    lm = load_model(target)
    expert_lm = experts.load_expert({steer: loaded}, expert_ref, target_ref=target, target=lm)
    n = len(prompts)
    rows_alpha: Any = alpha  # a float, or one α per row (a tensor) for a conditioned plan
    cells: list[tuple[str, ...]] = [()] * n  # the per-prompt columns before the completions
    if isinstance(loaded, LearnedMap):
        # as learned_generate reads them (batch_size 8): one read
        deltas = loaded.deltas(loaded.read(expert_lm, prompts, batch_size=8))
        steered: list[Any] = loaded.plans_of(deltas)
        cells = [(f"{float(d.norm()) * alpha:.3g}",) for d in deltas]
        title = (
            f"learned map on {lm.name}, reading {expert_lm.name} (expert block "
            f"{loaded.expert_layer} → target block {loaded.target_layer}, rank {loaded.rank}): "
            f"each prompt's own delta × {alpha:g}; scope {scope}"
        )
        head = ["prompt", "‖delta‖"]
    else:
        plan = loaded.plan if isinstance(loaded, ConditionedPlan) else loaded
        steered = [plan] * n
        layers = ", ".join(f"{j}: {plan.alphas[j] * alpha:.2f}" for j in plan.layers)
        title = f"{plan.method} plan on {lm.name} (α per layer {layers}; scope {scope})"
        head = ["prompt"]
        if isinstance(loaded, ConditionedPlan):
            # as ConditionedPlan.alphas / conditioned_generate read them (batch_size 8): one read
            states = loaded.probe.read(expert_lm, prompts, batch_size=8)
            p, row_alpha = loaded.probe.probability(states), alpha * loaded.probe.strengths(states)
            rows_alpha = torch.cat([row_alpha, row_alpha])
            cells = [(f"{float(p[k]):.3f}", f"{float(row_alpha[k]):+.3f}") for k in range(n)]
            title = (
                f"{plan.method} plan on {lm.name}, conditioned on {expert_lm.name} (probe at "
                f"block {loaded.probe.layer}, g = {loaded.probe.strength}): α per layer "
                f"{layers}, × g(p) per prompt; scope {scope}"
            )
            head = ["prompt", "p", "α·g(p)"]
    # One batch: the first n rows unsteered, the last n steered (per-row plans; per-row α for a
    # conditioned plan: the unsteered rows' α is unused).
    texts = steered_generate(
        lm,
        prompts + prompts,
        plan=[None] * n + steered,
        alpha=rows_alpha,
        scope=token_scope,
        chat_template=None if chat_template else False,
        max_new_tokens=max_new_tokens,
    )
    plain = len(head) == 1
    table = Table(title=title)
    for col in [*head, "unsteered", f"steered (alpha ×{alpha:g})" if plain else "steered"]:
        table.add_column(col, overflow="fold")
    for k, prompt in enumerate(prompts):
        table.add_row(prompt, *cells[k], texts[k].strip(), texts[n + k].strip())
    console.print(table)
