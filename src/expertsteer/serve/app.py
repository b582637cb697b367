"""The HTTP layer: the FastAPI app over a :class:`SteeringServer`, and running it with uvicorn.

FastAPI and uvicorn are optional (``pip install 'expertsteer[serve]'``): they are imported when
an app is made or run, so importing this package never needs them.
"""

import contextlib
import hmac
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from ..deps import require
from ..models import LoadedModel
from ..plan import SteeringPlan
from .protocol import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_TOKENS, ApiError
from .server import SteeringServer

if TYPE_CHECKING:
    from ..condition import ConditionedPlan
    from ..learned import LearnedMap


async def read_json(request: Any, limit: int) -> dict[str, Any]:
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
    plans: "Mapping[str, SteeringPlan | ConditionedPlan | LearnedMap]",
    *,
    expert: LoadedModel | None = None,
    model_id: str | None = None,
    api_key: str | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch: int = 8,
    batch_window_s: float = 0.01,
    strict: bool = True,
) -> Any:
    """The FastAPI app serving ``lm`` with ``plans`` (name → plan; ``expert``: the model that
    expert-conditioned plans and learned maps need). ``app.state.server`` holds the
    :class:`SteeringServer`; its worker stops when the app shuts down."""
    fastapi = require("fastapi", "expertsteer serve")
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    server = SteeringServer(
        lm,
        plans,
        expert=expert,
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
        req = server.parse(await read_json(request, max_body_bytes), chat=chat)
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
    plans: "Mapping[str, SteeringPlan | ConditionedPlan | LearnedMap]",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    **app_kwargs: Any,
) -> None:
    """Serve until interrupted (the CLI's ``expertsteer serve``)."""
    uvicorn = require("uvicorn", "expertsteer serve")
    uvicorn.run(create_app(lm, plans, **app_kwargs), host=host, port=port, log_level=log_level)
