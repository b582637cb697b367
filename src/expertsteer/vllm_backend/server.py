"""vLLM's OpenAI server with plans: the ``steering`` body field through an ASGI middleware."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .llm import EXTENSION, model_folder, named_plans
from .spec import PLAN_NAMES_ENV, XARGS_FLAT, plan_payload, reads_with_expert, steering_spec

MIDDLEWARE = "expertsteer.vllm_backend.server.SteeringMiddleware"


class SteeringMiddleware:
    """ASGI middleware for vLLM's OpenAI server (``--middleware``): the body field
    ``"steering": {"plan", "alpha", "scope"}`` of ``expertsteer serve`` becomes vLLM's
    ``vllm_xargs`` (``steering_plan``/``steering_alpha``/``steering_scope``); a bad one is a 400
    in OpenAI's error shape. Plan names come from ``$EXPERTSTEER_VLLM_PLANS`` (a JSON list)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.names = json.loads(os.environ.get(PLAN_NAMES_ENV, "[]"))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or "completions" not in path:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if isinstance(data, dict) and "steering" in data:
            try:
                spec = steering_spec(data.pop("steering"), self.names)
            except ValueError as e:
                await _error(send, str(e))
                return
            xargs = dict(data.get("vllm_xargs") or {})
            for key in XARGS_FLAT:
                xargs.pop(key, None)
            if spec is None:  # explicitly unsteered (not the default): an empty plan name
                xargs["steering_plan"] = ""
            else:
                xargs.update(
                    steering_plan=spec["plan"],
                    steering_alpha=spec["alpha"],
                    steering_scope=spec["scope"],
                )
            data["vllm_xargs"] = xargs
            body = json.dumps(data).encode()
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(body)).encode())]}
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _error(send: Any, message: str) -> None:
    body = json.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": "steering",
                "code": None,
            }
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_argv(
    target: str,
    folders: Mapping[str, Any],
    host: str,
    port: int,
    api_key: str | None,
    max_batch: int,
    vllm_args: Sequence[str] = (),
) -> list[str]:
    """``expertsteer serve --engine vllm``'s options as :func:`serve`'s argv (``vllm_args``
    each split like a shell word list: ``"--tensor-parallel-size 2"``)."""
    import shlex

    argv = [target, "--host", host, "--port", str(port), "--max-num-seqs", str(max_batch)]
    for name, folder in folders.items():
        argv += ["--steer", f"{name}={folder}"]
    if api_key is not None:
        argv += ["--api-key", api_key]
    for item in vllm_args:
        argv += shlex.split(item)
    return argv


def serve_vllm(argv: Sequence[str]) -> None:
    """:func:`serve`, with vLLM's own start-up environment (what ``vllm serve`` sets)."""
    try:
        from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    except ImportError:
        pass
    else:
        cli_env_setup()
    serve(argv)


def serve(argv: Sequence[str]) -> None:
    """vLLM's OpenAI server with steering: ``MODEL --steer NAME=DIR ... [--default NAME]
    [--default-alpha A] [--default-scope S]`` then any ``vllm serve`` flags."""
    import argparse

    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--steer", action="append", default=[])
    ours.add_argument("--default", default=None)
    ours.add_argument("--default-alpha", type=float, default=1.0)
    ours.add_argument("--default-scope", default="all")
    mine, rest = ours.parse_known_args(list(argv))
    folders = {}
    for item in mine.steer:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--steer takes NAME=DIR, not {item!r}")
        folders[name] = folder
    plans = named_plans(folders)
    conditioned = sorted(n for n, p in plans.items() if reads_with_expert(p))
    if conditioned:
        raise SystemExit(
            f"--steer {', '.join(conditioned)}: expert-conditioned plans and learned maps run "
            "on vLLM through the Python entry point (SteeredLLM(..., expert=...)); over HTTP "
            "serve them with the default engine (expertsteer serve --expert ...)"
        )
    default = None
    if mine.default is not None:
        default = {"plan": mine.default, "alpha": mine.default_alpha, "scope": mine.default_scope}
    default = steering_spec(default, list(plans))
    # vLLM only now: what we refuse above needs none of it
    import uvloop
    from vllm.entrypoints.openai import api_server
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    try:  # vLLM 0.32
        from vllm.entrypoints.launchers.cli_args import (
            make_arg_parser,
            validate_parsed_serve_args,
        )
    except ImportError:  # older releases
        from vllm.entrypoints.openai.cli_args import make_arg_parser, validate_parsed_serve_args

    parser = make_arg_parser(FlexibleArgumentParser(description="expertsteer on vLLM"))
    args = parser.parse_args(rest)
    if getattr(args, "model_tag", None):
        args.model = args.model_tag
    if not getattr(args, "served_model_name", None) and not Path(args.model).exists():
        args.served_model_name = [args.model]  # a catalog name is served under that name
    args.model = model_folder(args.model)
    args.worker_extension_cls = EXTENSION
    args.enforce_eager = True
    args.enable_prefix_caching = False
    args.middleware = [*(args.middleware or []), MIDDLEWARE]
    os.environ[PLAN_NAMES_ENV] = json.dumps(sorted(plans))
    validate_parsed_serve_args(args)
    payload = {n: plan_payload(p) for n, p in plans.items()}

    async def run() -> None:
        listen_address, sock = api_server.setup_server(args, reuse_port=False)
        async with api_server.build_async_engine_client(args) as engine:
            await engine.collective_rpc("expertsteer_set_plans", args=(payload, default))
            shutdown = await api_server.build_and_serve(engine, listen_address, sock, args)
        try:
            await shutdown
        finally:
            sock.close()

    uvloop.run(run())
