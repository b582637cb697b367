"""The OpenAI request side: a JSON body becomes a typed :class:`Request`, or an :class:`ApiError`.

Everything a client typed is validated here, once: numbers, stop strings, messages, and the
``steering`` field, whose scope becomes a :class:`TokenScope` and whose α one float. Inner code
(server, engine) receives only these typed values.

An expert-conditioned plan (:class:`~expertsteer.condition.ConditionedPlan`) and a learned map
(:class:`~expertsteer.learned.LearnedMap`) also need the text their expert reads, per prompt
(:attr:`Request.reads`): a completion's prompt as written, and for
a chat request the last user message's content. Not the target's rendered chat prompt: that
carries the *target's* template markup, which the probe never saw (it was fitted on plain texts,
put through the expert's own template when ``probe.chat_template``), and it ends on the
template's generation prompt, not on the user's words. So a one-message chat request gets
exactly the strength :func:`~expertsteer.condition.conditioned_generate` gives that message.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..models import LoadedModel
from ..plan import SteeringPlan
from ..steer.scope import WRITTEN_SCOPES, TokenScope
from .engine import Sampling

if TYPE_CHECKING:  # not imported at run time: expertsteer.condition brings in scikit-learn
    from ..condition import ConditionedPlan, ExpertProbe
    from ..learned import LearnedMap

DEFAULT_MAX_TOKENS = 512
DEFAULT_MAX_BODY_BYTES = 1 << 20
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# No scope registry in expertsteer.steer yet to derive this from; positions lists are not
# offered over HTTP (they are per batch row, and a request's rows share batches).
SCOPES_HELP = ", ".join(map(repr, WRITTEN_SCOPES[:-1])) + f" or {WRITTEN_SCOPES[-1]!r}"
STEERING_FIELDS = ("plan", "alpha", "scope")
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


# --- fields --------------------------------------------------------------------------------


def is_finite(value: int | float) -> bool:
    """Whether a JSON number is finite (a JSON integer beyond float range is not)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def is_number(value: Any) -> bool:
    """A finite JSON number (``true``/``false`` are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and is_finite(value)


def parse_number(
    body: Mapping, key: str, default: float, lo: float, hi: float, *, lo_open: bool = False
) -> float:
    """``body[key]`` as a float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), or ``default``."""
    value = body.get(key)
    if value is None:
        return default
    if not is_number(value):
        raise ApiError(400, f"{key} must be a finite number, not {value!r}", param=key)
    if value < lo or value > hi or (lo_open and value == lo):
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ApiError(400, f"{key} must be {low} and <= {hi:g}, not {value!r}", param=key)
    return float(value)


def parse_int(body: Mapping, key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(400, f"{key} must be an integer, not {value!r}", param=key)
    return value


@dataclass(frozen=True)
class Steering:
    """A request's steering: no plan (unsteered), or a named plan with α and a parsed scope.

    ``spec`` is the scope as the client wrote it, echoed back in the response. ``reader`` is
    set for a plan the expert reads each prompt for: an expert-conditioned plan's probe
    (``plan`` is then its direction; each prompt's α becomes ``alpha · g(p)``, ``p`` the probe's
    reading of the expert's state of that prompt), or a learned map (``plan`` is then None:
    each prompt's delta, from the expert's state of it, is its plan, scaled by ``alpha``).
    """

    plan: SteeringPlan | None = None
    name: str | None = None
    alpha: float = 1.0
    scope: TokenScope = TokenScope("all")
    spec: str = "all"
    reader: "ExpertProbe | LearnedMap | None" = None


def parse_scope(value: Any) -> TokenScope:
    """A request's ``steering.scope``: a string, parsed once into a :class:`TokenScope`."""
    try:
        if not isinstance(value, str):
            raise ValueError
        return TokenScope.parse(value)
    except ValueError:
        raise ApiError(
            400, f"steering.scope must be {SCOPES_HELP}, not {value!r}", param="steering.scope"
        ) from None


def parse_steering(
    value: Any, plans: "Mapping[str, SteeringPlan | ConditionedPlan | LearnedMap]"
) -> Steering:
    """The ``steering`` body field: ``{"plan": NAME, "alpha": 1.0, "scope": "all"}`` or null."""
    if value is None:
        return Steering()
    if not isinstance(value, dict):
        raise ApiError(
            400,
            'steering must be an object like {"plan": "NAME", "alpha": 1.0, "scope": "all"}',
            param="steering",
        )
    unknown = sorted(set(value) - set(STEERING_FIELDS))
    if unknown:
        raise ApiError(
            400,
            f"steering has unknown fields {unknown}; use {', '.join(STEERING_FIELDS)}",
            param="steering",
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
    if not is_number(alpha):
        raise ApiError(
            400, f"steering.alpha must be a finite number, not {alpha!r}", param="steering.alpha"
        )
    spec = value.get("scope", "all")
    plan = plans[name]
    if isinstance(plan, SteeringPlan):
        return Steering(plan, name, float(alpha), parse_scope(spec), spec)
    from ..artifacts import expert_reader  # a plan the expert reads for: already loaded

    reader = expert_reader(plan)
    direction = None if reader is plan else plan.plan  # a learned map's deltas are its plan
    return Steering(direction, name, float(alpha), parse_scope(spec), spec, reader)


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


def chat_messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI ``messages`` checked, as ``{"role", "content"}`` dicts (text content only)."""
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
    return chat


def messages_text(lm: LoadedModel, messages: Any) -> str:
    """The chat-templated prompt of OpenAI ``messages`` (text content only)."""
    return render_chat(lm, chat_messages(messages))


def render_chat(lm: LoadedModel, chat: list[dict[str, str]]) -> str:
    """Checked messages (:func:`chat_messages`) through ``lm``'s chat template."""
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


# --- the request -----------------------------------------------------------------------------


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
    # What a conditioned plan's expert reads, one text per prompt (None: no user message)
    reads: list[str | None] = field(default_factory=list)


def _prompts(lm: LoadedModel, body: Mapping, chat: bool) -> tuple[list[list[int]], list]:
    """The prompts' token ids, and the text the expert reads of each (see the module doc)."""
    tok = lm.tokenizer
    if chat:
        messages = chat_messages(body.get("messages"))
        text = render_chat(lm, messages)
        user = [m["content"] for m in messages if m["role"] == "user"]
        return [tok(text, add_special_tokens=False)["input_ids"]], [user[-1] if user else None]
    prompt = body.get("prompt")
    texts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ApiError(
            400, "prompt must be a string or a non-empty list of strings", param="prompt"
        )
    prompts = [tok(t)["input_ids"] for t in texts]
    if any(not p for p in prompts):
        raise ApiError(400, "prompt must not be empty", param="prompt")
    return prompts, list(texts)


def _max_tokens(body: Mapping, chat: bool, longest: int, limit: int, context: int | None) -> int:
    key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = parse_int(body, key)
    if max_tokens is None:  # OpenAI's defaults: 16 for completions, the rest of the context
        room = limit if context is None else context - longest
        default = COMPLETIONS_DEFAULT_MAX_TOKENS if not chat else limit
        max_tokens = max(1, min(default, limit, room))
    if not 1 <= max_tokens <= limit:
        raise ApiError(
            400,
            f"{key} must be between 1 and this server's limit {limit}, not {max_tokens}",
            param=key,
        )
    if context is not None and longest + max_tokens > context:
        raise ApiError(
            400,
            f"the prompt ({longest} tokens) plus {key} ({max_tokens}) exceed the model's "
            f"context of {context} tokens",
            param="messages" if chat else "prompt",
            code="context_length_exceeded",
        )
    return max_tokens


def parse_request(
    body: dict[str, Any],
    *,
    chat: bool,
    lm: LoadedModel,
    model_id: str,
    plans: "Mapping[str, SteeringPlan | ConditionedPlan | LearnedMap]",
    max_tokens: int = DEFAULT_MAX_TOKENS,
    context: int | None = None,
) -> Request:
    """A completion (``chat=False``) or chat request body, checked against this server:
    its ``model_id``, ``plans``, token ``max_tokens`` limit and the model's ``context``."""
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "model is required (a string)", param="model")
    if model != model_id:
        raise ApiError(
            404,
            f"model {model!r} is not served here; this server serves {model_id!r} "
            "(pick a steering plan with the 'steering' field)",
            param="model",
            code="model_not_found",
        )
    for key, allowed in UNSUPPORTED.items():
        if key in body and body[key] not in allowed:
            raise ApiError(400, f"{key}={body[key]!r} is not supported by this server", param=key)
    prompts, reads = _prompts(lm, body, chat)
    n_tokens = _max_tokens(body, chat, max(map(len, prompts)), max_tokens, context)
    sampling = Sampling(
        temperature=parse_number(body, "temperature", 0.0, 0.0, 2.0),
        top_p=parse_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        seed=parse_int(body, "seed"),
    )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    steering = parse_steering(body.get("steering"), plans)
    if steering.reader is not None and None in reads:
        raise ApiError(
            400,
            f"plan {steering.name!r} reads each prompt with the expert: its expert reads the "
            "last user message, and these messages have none",
            param="messages",
        )
    return Request(
        prompts=prompts,
        max_tokens=n_tokens,
        sampling=sampling,
        steering=steering,
        stop=parse_stop(body.get("stop")),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        chat=chat,
        reads=reads,
    )
