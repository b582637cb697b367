"""``expertsteer serve``: an OpenAI-compatible server for the target with named plans."""

from __future__ import annotations

import typer

from . import args
from .main import app, console, errors, user_errors

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
@user_errors
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
    folders = args.named_plans(steer)

    from ..models import load_model
    from ..plan import SteeringPlan
    from ..serve import serve as run_server

    plans = {name: SteeringPlan.from_pretrained(d) for name, d in folders.items()}
    if host not in LOOPBACK and api_key is None:
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
