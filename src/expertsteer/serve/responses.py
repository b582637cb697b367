"""The OpenAI response side: completion bodies, SSE stream chunks, usage and the steering echo."""

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

from .engine import Event
from .protocol import ApiError, Request, Steering

DONE = "data: [DONE]\n\n"


def completion_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(finals: Iterable[Event]) -> dict[str, int]:
    """Token counts summed over the ``done`` events of a request's choices."""
    finals = list(finals)
    prompt = sum(f.prompt_tokens for f in finals)
    completion = sum(f.completion_tokens for f in finals)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def steering_echo(steering: Steering) -> dict[str, Any]:
    """The ``steering`` field of a response: what was applied (the scope as the client wrote it);
    for a plan the expert reads for also that expert (its per-choice strengths or deltas:
    :func:`choice_steering`)."""
    if steering.plan is None and steering.reader is None:  # a learned map's rows have no plan
        return {"steering": None}
    echo = {"plan": steering.name, "alpha": steering.alpha, "scope": steering.spec}
    if steering.reader is not None:
        echo["expert"] = steering.reader.expert.name
    return {"steering": echo}


def choice_steering(steering: Steering, final: Event | None) -> dict[str, Any]:
    """A conditioned choice's own ``steering`` field: the probe's ``p``, ``strength`` = g(p)
    and the ``alpha`` its prompt was steered with (the request's α times g(p)); a learned map's
    choice: its delta's norm (``delta_norm``, before α); else nothing."""
    if final is not None and final.delta_norm is not None:
        return {"steering": {"delta_norm": final.delta_norm, "alpha": steering.alpha}}
    if final is None or final.strength is None:
        return {}
    alpha = steering.alpha * final.strength
    return {"steering": {"p": final.p, "strength": final.strength, "alpha": alpha}}


def completion_body(
    req: Request, model_id: str, texts: list[str], finals: dict[int, Event]
) -> dict[str, Any]:
    """The whole (non-streamed) response: one choice per prompt."""
    choices = []
    for i, text in enumerate(texts):
        reason = finals[i].finish_reason
        own = choice_steering(req.steering, finals[i])
        if req.chat:
            message = {"role": "assistant", "content": text}
            choices.append({"index": i, "message": message, "finish_reason": reason, **own})
        else:
            choice = {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            choices.append({**choice, **own})
    return {
        "id": completion_id(req.chat),
        "object": "chat.completion" if req.chat else "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": choices,
        "usage": usage(finals.values()),
        **steering_echo(req.steering),
    }


def sse(data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data)}\n\n"


def error_event(message: str) -> str:
    """A failure after the stream started: OpenAI's error JSON as the last event."""
    return sse(ApiError(500, message, kind="server_error").body())


class Chunks:
    """The chunks of one streamed response (they share its id, creation time and model)."""

    def __init__(self, req: Request, model_id: str) -> None:
        self.chat, self.steering = req.chat, req.steering
        self.head = {
            "id": completion_id(req.chat),
            "object": "chat.completion.chunk" if req.chat else "text_completion",
            "created": int(time.time()),
            "model": model_id,
        }

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        return sse({**self.head, "choices": choices, **extra})

    def choice(self, i: int, text: str | None, reason: str | None, role: bool = False) -> dict:
        """Choice ``i``: new ``text`` (``None``: none, in a chat's final chunk) or its end."""
        if not self.chat:
            return {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}
        delta = {} if text is None else {"content": text}
        if role:
            delta = {"role": "assistant", **delta}
        return {"index": i, "delta": delta, "finish_reason": reason}

    def opening(self, n: int) -> str:
        """A chat stream's first chunk: every choice's assistant role."""
        return self.chunk([self.choice(i, "", None, role=True) for i in range(n)])

    def delta(self, i: int, text: str) -> str:
        return self.chunk([self.choice(i, text, None)])

    def final(self, i: int, reason: str | None, done: Event | None = None) -> str:
        """Choice ``i``'s end; a conditioned choice's strength (``done``) rides along."""
        own = choice_steering(self.steering, done)
        return self.chunk([{**self.choice(i, None if self.chat else "", reason), **own}])

    def usage(self, finals: Iterable[Event]) -> str:
        return self.chunk([], usage=usage(finals))
