"""``expertsteer serve``: an OpenAI-compatible server for the target with named plans."""

from __future__ import annotations

from pathlib import Path

import typer

from . import args
from . import expert as experts
from .main import app, console, errors, user_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
@user_errors
def serve(
    target: str = typer.Option(..., help="Target model: catalog name, path, GGUF or hub id."),
    steer: list[str] = typer.Option(
        [], help="A plan to offer, as NAME=DIR (repeatable); requests pick it by NAME."
    ),
    expert: str = typer.Option(
        None,
        help="Expert the expert-conditioned plans and learned maps read with (catalog name, "
        "path, GGUF or hub id), loaded beside the target; default: the one they recorded, if it "
        "loads here.",
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (loopback by default)."),
    port: int = typer.Option(8000, min=0, max=65535),
    api_key: str = typer.Option(
        None, envvar="EXPERTSTEER_API_KEY", help="Require 'Authorization: Bearer KEY'."
    ),
    max_tokens: int = typer.Option(512, min=1, help="Largest max_tokens a request may ask for."),
    max_body_bytes: int = typer.Option(1 << 20, min=1, help="Largest request body accepted."),
    max_batch: int = typer.Option(8, min=1, help="Requests decoded together (1: one at a time)."),
    engine: str = typer.Option(
        "hf", help="hf (this package's server) or vllm (vLLM's OpenAI server, .venv-vllm)."
    ),
    vllm_arg: list[str] = typer.Option(
        [],
        help="With --engine vllm: flags for vLLM's server (repeatable), e.g. "
        "--vllm-arg='--tensor-parallel-size 2' --vllm-arg='--default NAME'.",
    ),
) -> None:
    """An OpenAI-compatible server (/v1/models, /v1/completions, /v1/chat/completions).

    Expert-conditioned plans (folders holding probe.json) and learned maps (learned_map.json)
    need their expert: per request, the expert reads the prompt (a chat's last user message) and
    the request's α becomes α·g(p), or the map's delta for that prompt is added (times α)."""
    folders = args.named_plans(steer)
    if engine not in ("hf", "vllm"):
        raise typer.BadParameter(f"{engine!r} is not hf or vllm", param_hint="--engine")
    if engine == "vllm":
        from ..learned import CONFIG as LEARNED_MAP
        from ..vllm_backend import serve_argv, serve_vllm

        maps = sorted(n for n, d in folders.items() if (Path(d) / LEARNED_MAP).is_file())
        if maps:
            raise typer.BadParameter(
                f"{', '.join(maps)}: a learned map needs its expert to read each prompt, and "
                "vLLM's server does not read an expert; serve it with --engine hf, or on vLLM "
                "from Python (SteeredLLM(..., expert=...))",
                param_hint="--steer",
            )

        if expert is not None:
            raise typer.BadParameter(
                "vLLM's server does not read an expert; serve expert-conditioned plans and "
                "learned maps with "
                "--engine hf, or on vLLM from Python (SteeredLLM(..., expert=...))",
                param_hint="--expert",
            )

        if host not in LOOPBACK and api_key is None:
            errors.print(f"[yellow]warning:[/] listening on {host} without --api-key")
        argv = serve_argv(target, folders, host, port, api_key, max_batch, vllm_arg)
        console.print(f"serving {target} on vLLM with plans {sorted(folders) or 'none'}")
        serve_vllm(argv)
        return

    from ..artifacts import load_plan
    from ..models import load_model
    from ..serve import serve as run_server

    plans = {name: load_plan(d) for name, d in folders.items()}
    expert_ref = experts.expert_ref(plans, expert)  # before any model loads
    if host not in LOOPBACK and api_key is None:
        errors.print(f"[yellow]warning:[/] listening on {host} without --api-key")
    lm = load_model(target)
    expert_lm = experts.load_expert(plans, expert_ref, target_ref=target, target=lm)
    console.print(
        f"serving {lm.name} with plans {sorted(plans) or 'none'} on http://{host}:{port}/v1"
    )
    if expert_lm is not None:
        names = sorted(experts.conditioned(plans))
        console.print(f"expert {expert_lm.name} reads the prompts of plans {names}")
    run_server(
        lm,
        plans,
        expert=expert_lm,
        host=host,
        port=port,
        api_key=api_key,
        max_tokens=max_tokens,
        max_body_bytes=max_body_bytes,
        max_batch=max_batch,
    )
