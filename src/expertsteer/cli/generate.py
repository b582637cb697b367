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

    from ..artifacts import load_plan
    from ..learned import LearnedMap
    from ..models import load_model
    from ..steer import generate as steered_generate

    loaded = load_plan(steer)
    expert_ref = experts.expert_ref({steer: loaded}, expert)  # before any model loads
    lm = load_model(target)
    expert_lm = experts.load_expert({steer: loaded}, expert_ref, target_ref=target, target=lm)
    n = len(prompts)
    if isinstance(loaded, LearnedMap):
        steered, rows_alpha, cells, title, head = _learned(loaded, lm, expert_lm, prompts, alpha)
    else:
        steered, rows_alpha, cells, title, head = _planned(loaded, lm, expert_lm, prompts, alpha)
    title += f"; scope {scope}"
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


Rows = tuple[list[Any], Any, list[tuple[str, ...]], str, list[str]]


def _learned(loaded: Any, lm: Any, expert_lm: Any, prompts: list[str], alpha: float) -> Rows:
    """A learned map's per-prompt plans (one read, as learned_generate reads: batch 8), the
    global α, the ‖delta‖ × α column, the title and the leading columns."""
    deltas = loaded.deltas(loaded.read(expert_lm, prompts, batch_size=8))
    title = (
        f"learned map on {lm.name}, reading {expert_lm.name} (expert block "
        f"{loaded.expert_layer} → target block {loaded.target_layer}, rank {loaded.rank}): "
        f"each prompt's own delta × {alpha:g}"
    )
    cells = [(f"{float(d.norm()) * alpha:.3g}",) for d in deltas]
    return loaded.plans_of(deltas), alpha, cells, title, ["prompt", "‖delta‖"]


def _planned(loaded: Any, lm: Any, expert_lm: Any, prompts: list[str], alpha: float) -> Rows:
    """A static or conditioned plan for every prompt; a conditioned one's α per row (unsteered
    rows first: their α is unused) from one read, as conditioned_generate reads (batch 8)."""
    import torch

    from ..condition import ConditionedPlan

    plan = loaded.plan if isinstance(loaded, ConditionedPlan) else loaded
    layers = ", ".join(f"{j}: {plan.alphas[j] * alpha:.2f}" for j in plan.layers)
    if not isinstance(loaded, ConditionedPlan):
        title = f"{plan.method} plan on {lm.name} (α per layer {layers})"
        return [plan] * len(prompts), alpha, [()] * len(prompts), title, ["prompt"]
    states = loaded.probe.read(expert_lm, prompts, batch_size=8)
    p, row_alpha = loaded.probe.probability(states), alpha * loaded.probe.strengths(states)
    cells = [(f"{float(p[k]):.3f}", f"{float(row_alpha[k]):+.3f}") for k in range(len(prompts))]
    title = (
        f"{plan.method} plan on {lm.name}, conditioned on {expert_lm.name} (probe at block "
        f"{loaded.probe.layer}, g = {loaded.probe.strength}): α per layer {layers}, × g(p) per "
        "prompt"
    )
    rows_alpha = torch.cat([row_alpha, row_alpha])
    return [plan] * len(prompts), rows_alpha, cells, title, ["prompt", "p", "α·g(p)"]
