"""An OpenAI-compatible HTTP server for one target model and named steering plans.

``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` (SSE streaming or not). A
request picks its steering with an extra body field, which the stock ``openai`` client sends
through ``extra_body``::

    {"model": "smollm2-135m", "prompt": "...", "steering": {"plan": "calm", "alpha": 1.0,
     "scope": "all"}}

No ``steering`` (or ``null``) is the unsteered model. Generation runs in :mod:`.engine` (one
worker thread, per-row steering in micro-batches). Errors are 4xx JSON in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.
"""

import asyncio
import contextlib
import hmac
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .deps import require
from .engine import Engine, Event, Job, Sampling
from .models import LoadedModel
from .plan import SteeringPlan
from .steer import TokenScope

DEFAULT_MAX_TOKENS = 512
DEFAULT_MAX_BODY_BYTES = 1 << 20
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
SCOPES_HELP = "'all', 'prompt', 'generated' or 'last:K'"
# Accepted only at their no-op values: anything else would be silently ignored otherwise.
UNSUPPORTED = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "suffix": (None, ""),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
}


class ApiError(Exception):
    """A request error, sent as OpenAI's error JSON with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


# --- request parsing -----------------------------------------------------------------------


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer beyond float range
        return False


def _number(body: Mapping, key: str, default: float, lo: float, hi: float, *, lo_open=False):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise ApiError(400, f"{key} must be a finite number, not {value!r}", param=key)
    if value < lo or value > hi or (lo_open and value == lo):
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ApiError(400, f"{key} must be {low} and <= {hi:g}, not {value!r}", param=key)
    return float(value)


def _int(body: Mapping, key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"{key} must be an integer, not {value!r}", param=key)
    return value


@dataclass(frozen=True)
class Steering:
    plan: SteeringPlan | None = None
    name: str | None = None
    alpha: float = 1.0
    scope: str = "all"


def parse_steering(value: Any, plans: Mapping[str, SteeringPlan]) -> Steering:
    """The ``steering`` body field: ``{"plan": NAME, "alpha": 1.0, "scope": "all"}`` or null."""
    if value is None:
        return Steering()
    if not isinstance(value, dict):
        raise ApiError(
            400,
            'steering must be an object like {"plan": "NAME", "alpha": 1.0, "scope": "all"}',
            param="steering",
        )
    unknown = sorted(set(value) - {"plan", "alpha", "scope"})
    if unknown:
        raise ApiError(
            400, f"steering has unknown fields {unknown}; use plan, alpha, scope", param="steering"
        )
    name = value.get("plan")
    if not isinstance(name, str) or name not in plans:
        known = ", ".join(sorted(plans)) or "none"
        raise ApiError(
            400,
            f"unknown steering plan {name!r}; this server has: {known}",
            param="steering.plan",
            code="plan_not_found",
        )
    alpha = value.get("alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not _finite(alpha):
        raise ApiError(
            400, f"steering.alpha must be a finite number, not {alpha!r}", param="steering.alpha"
        )
    scope = value.get("scope", "all")
    try:
        if not isinstance(scope, str):
            raise ValueError
        TokenScope.parse(scope)
    except ValueError:
        raise ApiError(
            400, f"steering.scope must be {SCOPES_HELP}, not {scope!r}", param="steering.scope"
        ) from None
    return Steering(plans[name], name, float(alpha), scope)


def parse_stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > 4
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise ApiError(400, "stop must be a non-empty string or a list of up to 4", param="stop")
    return tuple(stops)


def _messages_text(lm: LoadedModel, messages: Any) -> str:
    """The chat-templated prompt of OpenAI ``messages`` (text content only)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    chat = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ApiError(400, f"messages[{i}] needs a string role", param=f"messages[{i}]")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(
                    400, f"messages[{i}]: only text content is supported", param="messages"
                )
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string", param="messages")
        chat.append({"role": m["role"], "content": content})
    if not getattr(lm.tokenizer, "chat_template", None):
        raise ApiError(
            400, f"{lm.name} has no chat template: use /v1/completions", param="messages"
        )
    try:
        return lm.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # the template may reject a role order
        raise ApiError(
            400, f"the chat template rejected messages: {exc}", param="messages"
        ) from exc


@dataclass
class Request:
    """A parsed completion / chat request: one prompt (token ids) per choice."""

    prompts: list[list[int]]
    max_tokens: int
    sampling: Sampling
    steering: Steering
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    chat: bool
    extra: dict[str, Any] = field(default_factory=dict)


# --- the server ----------------------------------------------------------------------------


class SteeringServer:
    """The request handling behind the FastAPI app (testable without HTTP)."""

    def __init__(
        self,
        lm: LoadedModel,
        plans: Mapping[str, SteeringPlan],
        *,
        model_id: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        max_batch: int = 8,
        batch_window_s: float = 0.01,
        strict: bool = True,
    ) -> None:
        if lm.kind != "causal":
            raise ValueError(f"{lm.name} is an encoder; serving needs a causal LM")
        for name, plan in plans.items():
            try:
                plan.check_target(lm, strict=strict)
            except ValueError as exc:
                raise ValueError(f"plan {name!r}: {exc}") from exc
        self.lm, self.plans = lm, dict(plans)
        self.model_id = model_id or lm.name
        self.max_tokens = max_tokens
        config = getattr(lm.model, "config", None)
        self.context = getattr(config, "max_position_embeddings", None)
        self.engine = Engine(lm, max_batch=max_batch, batch_window_s=batch_window_s)
        self.created = int(time.time())

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.model_id,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "expertsteer",
                    "steering_plans": sorted(self.plans),
                }
            ],
        }

    def parse(self, body: dict[str, Any], *, chat: bool) -> Request:
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "model is required (a string)", param="model")
        if model != self.model_id:
            raise ApiError(
                404,
                f"model {model!r} is not served here; this server serves {self.model_id!r} "
                "(pick a steering plan with the 'steering' field)",
                param="model",
                code="model_not_found",
            )
        for key, allowed in UNSUPPORTED.items():
            if key in body and body[key] not in allowed:
                raise ApiError(
                    400, f"{key}={body[key]!r} is not supported by this server", param=key
                )
        tok = self.lm.tokenizer
        if chat:
            text = _messages_text(self.lm, body.get("messages"))
            prompts = [tok(text, add_special_tokens=False)["input_ids"]]
        else:
            prompt = body.get("prompt")
            texts = [prompt] if isinstance(prompt, str) else prompt
            if (
                not isinstance(texts, list)
                or not texts
                or not all(isinstance(t, str) for t in texts)
            ):
                raise ApiError(
                    400, "prompt must be a string or a non-empty list of strings", param="prompt"
                )
            prompts = [tok(t)["input_ids"] for t in texts]
            if any(not p for p in prompts):
                raise ApiError(400, "prompt must not be empty", param="prompt")
        key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
        max_tokens = _int(body, key)
        longest = max(map(len, prompts))
        if max_tokens is None:  # OpenAI's defaults: 16 for completions, the rest of the context
            room = self.max_tokens if self.context is None else self.context - longest
            default = COMPLETIONS_DEFAULT_MAX_TOKENS if not chat else self.max_tokens
            max_tokens = max(1, min(default, self.max_tokens, room))
        if not 1 <= max_tokens <= self.max_tokens:
            raise ApiError(
                400,
                f"{key} must be between 1 and this server's limit {self.max_tokens}, "
                f"not {max_tokens}",
                param=key,
            )
        if self.context is not None and longest + max_tokens > self.context:
            raise ApiError(
                400,
                f"the prompt ({longest} tokens) plus {key} ({max_tokens}) exceed the model's "
                f"context of {self.context} tokens",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        sampling = Sampling(
            temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
            top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
            seed=_int(body, "seed"),
        )
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be true or false", param="stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "stream_options must be an object", param="stream_options")
        return Request(
            prompts=prompts,
            max_tokens=max_tokens,
            sampling=sampling,
            steering=parse_steering(body.get("steering"), self.plans),
            stop=parse_stop(body.get("stop")),
            stream=stream,
            include_usage=bool(options.get("include_usage")),
            chat=chat,
        )

    def submit(self, req: Request) -> tuple[asyncio.Queue, list[Job]]:
        """Queue one job per prompt; their events arrive as ``(index, Event)`` on the queue."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        jobs = []
        for i, ids in enumerate(req.prompts):

            def on_event(ev: Event, i: int = i) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: server shut down
                    loop.call_soon_threadsafe(events.put_nowait, (i, ev))

            job = Job(
                prompt_ids=ids,
                max_new_tokens=req.max_tokens,
                on_event=on_event,
                plan=req.steering.plan,
                alpha=req.steering.alpha,
                scope=req.steering.scope,
                sampling=req.sampling,
                stop=req.stop,
            )
            self.engine.submit(job)
            jobs.append(job)
        return events, jobs

    async def complete(self, req: Request) -> dict[str, Any]:
        events, jobs = self.submit(req)
        texts = [""] * len(jobs)
        finals: dict[int, Event] = {}
        try:
            while len(finals) < len(jobs):
                i, ev = await events.get()
                if ev.kind == "delta":
                    texts[i] += ev.text
                elif ev.kind == "error":
                    raise ApiError(500, ev.text, kind="server_error")
                else:
                    finals[i] = ev
        finally:
            for job in jobs:
                job.cancelled = True  # no-op for finished jobs; frees rows if the client left
        choices = []
        for i, text in enumerate(texts):
            reason = finals[i].finish_reason
            if req.chat:
                message = {"role": "assistant", "content": text}
                choices.append({"index": i, "message": message, "finish_reason": reason})
            else:
                choices.append(
                    {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
                )
        return {
            "id": _id(req),
            "object": "chat.completion" if req.chat else "text_completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": choices,
            "usage": _usage(finals.values()),
            **_steering_echo(req),
        }

    async def stream(self, req: Request) -> AsyncIterator[str]:
        events, jobs = self.submit(req)
        rid, created = _id(req), int(time.time())
        obj = "chat.completion.chunk" if req.chat else "text_completion"

        def chunk(choices: list, **extra: Any) -> str:
            data = {"id": rid, "object": obj, "created": created, "model": self.model_id}
            return f"data: {json.dumps({**data, 'choices': choices, **extra})}\n\n"

        def choice(i: int, text: str | None, reason: str | None, role: bool = False) -> dict:
            if not req.chat:
                return {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}
            delta = {} if text is None else {"content": text}
            if role:
                delta = {"role": "assistant", **delta}
            return {"index": i, "delta": delta, "finish_reason": reason}

        finals: dict[int, Event] = {}
        try:
            if req.chat:
                yield chunk([choice(i, "", None, role=True) for i in range(len(jobs))])
            while len(finals) < len(jobs):
                i, ev = await events.get()
                if ev.kind == "delta":
                    yield chunk([choice(i, ev.text, None)])
                elif ev.kind == "error":
                    err = ApiError(500, ev.text, kind="server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                else:
                    finals[i] = ev
                    yield chunk([choice(i, None if req.chat else "", ev.finish_reason)])
            if req.include_usage:
                yield chunk([], usage=_usage(finals.values()))
            yield "data: [DONE]\n\n"
        finally:
            for job in jobs:
                job.cancelled = True

    def close(self) -> None:
        self.engine.close()


def _id(req: Request) -> str:
    return ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex


def _usage(finals: Any) -> dict[str, int]:
    finals = list(finals)
    prompt = sum(f.prompt_tokens for f in finals)
    completion = sum(f.completion_tokens for f in finals)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _steering_echo(req: Request) -> dict[str, Any]:
    s = req.steering
    if s.plan is None:
        return {"steering": None}
    return {"steering": {"plan": s.name, "alpha": s.alpha, "scope": s.scope}}


# --- HTTP ----------------------------------------------------------------------------------


async def _read_json(request: Any, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refusing more than ``limit`` bytes before reading them all."""
    too_big = ApiError(
        413,
        f"request body exceeds this server's limit of {limit} bytes",
        code="request_too_large",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > limit:  # isdigit() passes '¹', int() fails
        raise too_big
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise too_big
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def create_app(
    lm: LoadedModel,
    plans: Mapping[str, SteeringPlan],
    *,
    model_id: str | None = None,
    api_key: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = 8,
    batch_window_s: float = 0.01,
    strict: bool = True,
) -> Any:
    """The FastAPI app serving ``lm`` with ``plans`` (name → plan). ``app.state.server`` holds
    the :class:`SteeringServer`; its worker stops when the app shuts down."""
    fastapi = require("fastapi", "expertsteer serve")
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    server = SteeringServer(
        lm,
        plans,
        model_id=model_id,
        max_tokens=max_tokens,
        max_batch=max_batch,
        batch_window_s=batch_window_s,
        strict=strict,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:  # the worker stops with the app
        yield
        server.close()

    app = fastapi.FastAPI(title="expertsteer", lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(ApiError)
    async def _api_error(request: Any, exc: ApiError) -> Any:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Any, exc: HTTPException) -> Any:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        err.code = code
        return JSONResponse(err.body(), status_code=exc.status_code)

    def check_key(request: Any) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: fastapi.Request) -> dict[str, Any]:
        check_key(request)
        return server.models()

    async def handle(request: Any, chat: bool) -> Any:
        check_key(request)
        req = server.parse(await _read_json(request, max_body_bytes), chat=chat)
        if req.stream:
            return StreamingResponse(server.stream(req), media_type="text/event-stream")
        return await server.complete(req)

    @app.post("/v1/completions")
    async def completions(request: fastapi.Request) -> Any:
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: fastapi.Request) -> Any:
        return await handle(request, chat=True)

    return app


class ServerThread:
    """Run an app with uvicorn in a background thread (tests, notebooks); ``stop()`` ends it.

    ``port=0`` takes a free port, bound before the thread starts (no race): see ``url``.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        uvicorn = require("uvicorn", "expertsteer serve")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    lm: LoadedModel,
    plans: Mapping[str, SteeringPlan],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    **app_kwargs: Any,
) -> None:
    """Serve until interrupted (the CLI's ``expertsteer serve``)."""
    uvicorn = require("uvicorn", "expertsteer serve")
    uvicorn.run(create_app(lm, plans, **app_kwargs), host=host, port=port, log_level=log_level)
