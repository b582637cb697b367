"""An OpenAI-compatible HTTP server for one target model and named steering plans.

``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` (SSE streaming or not). A
request picks its steering with an extra body field, which the stock ``openai`` client sends
through ``extra_body``::

    {"model": "smollm2-135m", "prompt": "...", "steering": {"plan": "calm", "alpha": 1.0,
     "scope": "all"}}

No ``steering`` (or ``null``) is the unsteered model. A plan may be expert-conditioned
(:class:`~expertsteer.condition.ConditionedPlan`, served with ``expert=``): each prompt's α is
then the request's α times g(p), the expert's probe reading that prompt (a chat request: its
last user message), and each choice reports its own ``steering`` (``p``, ``strength``,
``alpha``). Errors are 4xx JSON in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

The layers, from the wire inward:

- :mod:`.app` — the FastAPI app (auth, body limits, routes), :class:`ServerThread`, :func:`serve`;
- :mod:`.protocol` — a request body parsed once into a typed :class:`Request` (scope →
  :class:`~expertsteer.steer.TokenScope`, α → float), or an :class:`ApiError`;
- :mod:`.responses` — completion bodies and stream chunks;
- :mod:`.server` — :class:`SteeringServer`: checked plans, one engine, requests as jobs;
- :mod:`.engine` — :class:`Engine`: one worker thread, per-row steering in micro-batches.
"""

from .app import ServerThread, create_app, read_json, serve
from .engine import Conditioning, Engine, Event, Job, Sampling
from .protocol import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_TOKENS,
    ApiError,
    Request,
    Steering,
    parse_request,
    parse_steering,
    parse_stop,
)
from .server import SteeringServer

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_TOKENS",
    "ApiError",
    "Conditioning",
    "Engine",
    "Event",
    "Job",
    "Request",
    "Sampling",
    "ServerThread",
    "Steering",
    "SteeringServer",
    "create_app",
    "parse_request",
    "parse_steering",
    "parse_stop",
    "read_json",
    "serve",
]
