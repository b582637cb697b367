"""Steering on upstream vLLM through its public extension points (no fork, no patched source).

- :class:`SteeringWorkerExtension` — passed as vLLM's ``worker_extension_cls`` engine argument,
  so its methods become callable in every worker through ``collective_rpc``. It receives plans as
  plain lists (no pickle, no files), then puts PyTorch hooks on the model: a forward pre-hook on
  the model reads the step's requests from the model runner (their order, token spans,
  computed/prompt lengths and ``SamplingParams.extra_args``) and builds one 0/1 coefficient per
  (plan, α) group over vLLM's flattened ``[num_tokens, d]`` batch; a forward hook on decoder
  layer ``j`` adds ``coef · α·α_j·v_j`` to that layer's output. vLLM's decoder layers return
  ``(hidden, residual)`` with the residual add fused into the next layer's norm, so the block
  output our HF hooks steer is ``hidden + residual``: the hook materialises that sum, adds the
  delta, and returns it as the residual (with a zero ``hidden``), which the next layer's fused
  add-norm and the final norm read unchanged.
- Per request: ``SamplingParams(extra_args={"steering": {"plan": NAME, "alpha": 1.0,
  "scope": "all"}})`` (``None``: unsteered), or over HTTP vLLM's ``vllm_xargs``
  (``steering_plan``, ``steering_alpha``, ``steering_scope``). :class:`SteeringMiddleware` turns
  the body field ``"steering"`` of ``expertsteer serve`` into those, so the same
  ``extra_body={"steering": {...}}`` works against vLLM's own OpenAI server. A request without
  steering gets the global default plan, if one was set.
- :class:`SteeredLLM` — the Python entry point (vLLM's ``LLM`` plus plans; an
  expert-conditioned plan too, its expert read here and each request's α set from it);
  :func:`serve` (``expertsteer serve --engine vllm``) — vLLM's OpenAI server with plans,
  every ``vllm serve`` flag (``--tensor-parallel-size``, ``--pipeline-parallel-size``, …)
  passed through.

Modules: :mod:`.spec` (plans and a request's steering as plain data), :mod:`.worker` (the hooks in
each worker), :mod:`.llm` (:class:`SteeredLLM`), :mod:`.server` (the OpenAI server). Nothing here
imports vLLM until it is used.

Requirements: eager execution (``enforce_eager=True``: module hooks do not run inside vLLM's
compiled graphs or CUDA graphs) and no prefix caching across differently steered requests
(a cached prefix keeps the steering it was computed with): :class:`SteeredLLM` and
:func:`serve` set both. Scopes are ``all``, ``prompt``, ``generated`` and ``last:K``, on each
request's own positions (vLLM has no padding; chunked prefill is handled by position).
"""

from .llm import SteeredLLM, model_folder
from .server import SteeringMiddleware, serve, serve_argv, serve_vllm
from .spec import (
    DEFAULT_NAME,
    PLAN_NAMES_ENV,
    XARG,
    XARGS_FLAT,
    parse_scope,
    plan_payload,
    steering_spec,
)
from .worker import SteeringWorkerExtension

__all__ = [
    "DEFAULT_NAME",
    "PLAN_NAMES_ENV",
    "XARG",
    "XARGS_FLAT",
    "SteeredLLM",
    "SteeringMiddleware",
    "SteeringWorkerExtension",
    "model_folder",
    "parse_scope",
    "plan_payload",
    "serve",
    "serve_argv",
    "serve_vllm",
    "steering_spec",
]
