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
- :class:`SteeredLLM` — the Python entry point (vLLM's ``LLM`` plus plans);
  :func:`serve` / ``python -m expertsteer.vllm_backend serve`` — vLLM's OpenAI server with plans,
  every ``vllm serve`` flag (``--tensor-parallel-size``, ``--pipeline-parallel-size``, …)
  passed through.

Requirements: eager execution (``enforce_eager=True``: module hooks do not run inside vLLM's
compiled graphs or CUDA graphs) and no prefix caching across differently steered requests
(a cached prefix keeps the steering it was computed with): :class:`SteeredLLM` and
:func:`serve` set both. Scopes are ``all``, ``prompt``, ``generated`` and ``last:K``, on each
request's own positions (vLLM has no padding; chunked prefill is handled by position).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

EXTENSION = f"{__name__}.SteeringWorkerExtension"
MIDDLEWARE = f"{__name__}.SteeringMiddleware"
XARG = "steering"  # extra_args key of a request's steering dict (Python entry point)
XARGS_FLAT = ("steering_plan", "steering_alpha", "steering_scope")  # vllm_xargs over HTTP
PLAN_NAMES_ENV = "EXPERTSTEER_VLLM_PLANS"  # plan names the middleware accepts (JSON list)
DEFAULT_NAME = "default"
_UNSET: Any = object()
_MAX_KEYS = 64  # cached (plan, α) deltas per worker

logger = logging.getLogger(__name__)


# --- plans as plain data ---------------------------------------------------------------------


def plan_payload(plan: Any) -> dict[str, Any]:
    """A :class:`~expertsteer.plan.SteeringPlan` as lists (what ``collective_rpc`` carries)."""
    return {
        "layers": [int(j) for j in plan.layers],
        "vectors": [plan.vectors[j].float().tolist() for j in plan.layers],
        "alphas": [float(plan.alphas[j]) for j in plan.layers],
        "hidden_size": int(plan.target.hidden_size),
        "n_layers": int(plan.target.n_layers),
        "target": plan.target.name,
    }


def _load_plan(value: Any) -> Any:
    from .plan import SteeringPlan

    if isinstance(value, SteeringPlan):
        return value
    from .condition import load_plan

    plan = load_plan(value)
    if not isinstance(plan, SteeringPlan):
        raise ValueError(f"{value}: expert-conditioned plans are not supported on vLLM yet")
    return plan


def parse_scope(value: Any) -> tuple[str, int]:
    """A written scope as ``(kind, k)``: all, prompt, generated or last:K."""
    from .steer.scope import TokenScope

    scope = TokenScope.parse(value)
    if scope.kind == "positions":
        raise ValueError("explicit position scopes are not supported on vLLM")
    return scope.kind, scope.k


def steering_spec(value: Any, plans: Sequence[str]) -> dict[str, Any] | None:
    """A request's steering checked against the plan names: ``{"plan", "alpha", "scope"}``
    (``None``: unsteered). Raises ``ValueError`` with a message for the client."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError('steering must be an object like {"plan": "NAME", "alpha": 1.0}')
    unknown = sorted(set(value) - {"plan", "alpha", "scope"})
    if unknown:
        raise ValueError(f"steering has unknown fields {unknown}; use plan, alpha, scope")
    name = value.get("plan")
    if name is None:
        return None
    if not isinstance(name, str) or name not in plans:
        raise ValueError(f"unknown steering plan {name!r}; this server has: {sorted(plans)}")
    alpha = value.get("alpha", 1.0)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
        raise ValueError(f"steering.alpha must be a finite number, not {alpha!r}")
    scope = value.get("scope", "all")
    if not isinstance(scope, str):
        raise ValueError(f"steering.scope must be a string, not {scope!r}")
    parse_scope(scope)
    return {"plan": name, "alpha": float(alpha), "scope": scope}


# --- inside each vLLM worker -------------------------------------------------------------------


def _decoder_layers(model: torch.nn.Module, n_layers: int) -> torch.nn.ModuleList:
    """The model's list of decoder layers (``model.model.layers`` in vLLM's decoder models)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) == n_layers:
        return layers
    found = [
        m
        for name, m in model.named_modules()
        if name.endswith("layers") and isinstance(m, torch.nn.ModuleList) and len(m) == n_layers
    ]
    if len(found) != 1:
        raise RuntimeError(f"cannot find the {n_layers} decoder layers of {type(model).__name__}")
    return found[0]


class _Steering:
    """One worker's plans, hooks and the current step's coefficients."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        model = runner.get_model() if hasattr(runner, "get_model") else runner.model
        self.model = model
        cfg = runner.model_config.hf_config
        cfg = getattr(cfg, "get_text_config", lambda: cfg)()
        self.n_layers, self.hidden = int(cfg.num_hidden_layers), int(cfg.hidden_size)
        self.layers = _decoder_layers(model, self.n_layers)
        self.dtype, self.device = runner.model_config.dtype, runner.device
        self.plans: dict[str, tuple[dict[int, torch.Tensor], dict[int, float]]] = {}
        self.default: dict[str, Any] | None = None
        self.deltas: OrderedDict[tuple[str, float], dict[int, torch.Tensor]] = OrderedDict()
        self.specs: dict[str, tuple[str, float, str, int] | None] = {}
        self.step: list[tuple[torch.Tensor, dict[int, torch.Tensor]]] = []
        self.hooks: list[Any] = []
        self.warned: set[str] = set()
        self.steps = 0  # steered forward calls (for tests and info)

    # plans and hooks

    def set_plans(self, plans: Mapping[str, Mapping[str, Any]], default: Any) -> None:
        parsed = {}
        for name, p in plans.items():
            if p["hidden_size"] != self.hidden or p["n_layers"] != self.n_layers:
                raise ValueError(
                    f"plan {name!r} is for a model with {p['n_layers']} layers of width "
                    f"{p['hidden_size']}; this one has {self.n_layers} of {self.hidden}"
                )
            vecs = {
                int(j): torch.tensor(v, dtype=torch.float32)
                for j, v in zip(p["layers"], p["vectors"])
            }
            parsed[str(name)] = (vecs, {int(j): float(a) for j, a in zip(p["layers"], p["alphas"])})
        self.plans = parsed
        self.default = steering_spec(default, list(parsed))
        self.deltas.clear()
        self.specs.clear()
        self.install()

    def install(self) -> None:
        self.remove()
        if not self.plans:
            return
        self.hooks.append(self.model.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self.hooks.append(self.model.register_forward_hook(self._post_hook, always_call=True))
        layers = sorted({j for vecs, _ in self.plans.values() for j in vecs})
        for j in layers:
            block = self.layers[j]
            if type(block).__name__ == "PPMissingLayer":  # another pipeline stage's layer
                continue
            self.hooks.append(block.register_forward_hook(self._layer_hook(j)))

    def remove(self) -> None:
        while self.hooks:
            self.hooks.pop().remove()
        self.step = []

    # per request

    def _spec(self, req_id: str) -> tuple[str, float, str, int] | None:
        if req_id in self.specs:
            return self.specs[req_id]
        state = self.runner.requests.get(req_id)
        params = getattr(state, "sampling_params", None)
        extra = getattr(params, "extra_args", None) or {}
        if XARG in extra:
            raw = extra[XARG]
        elif "steering_plan" in extra:
            raw = (
                None
                if not extra["steering_plan"]
                else {
                    "plan": extra["steering_plan"],
                    "alpha": extra.get("steering_alpha", 1.0),
                    "scope": extra.get("steering_scope", "all"),
                }
            )
        else:
            raw = self.default
        try:
            spec = steering_spec(raw, list(self.plans))
        except ValueError as e:  # the fronts validate; never take the engine down here
            if req_id not in self.warned:
                self.warned.add(req_id)
                logger.warning("request %s left unsteered: %s", req_id, e)
            spec = None
        out = None
        if spec is not None:
            kind, k = parse_scope(spec["scope"])
            out = (spec["plan"], spec["alpha"], kind, k)
        self.specs[req_id] = out
        return out

    def _deltas(self, name: str, alpha: float) -> dict[int, torch.Tensor]:
        key = (name, alpha)
        got = self.deltas.get(key)
        if got is None:
            vecs, alphas = self.plans[name]
            got = {}
            for j, v in vecs.items():
                # as SteeringPlan.combine: the float64 α·α_j rounded once to float32, times v_j
                c = torch.tensor(alpha * alphas[j], dtype=torch.float64).float()
                got[j] = (c * v).to(device=self.device, dtype=self.dtype)
            self.deltas[key] = got
            while len(self.deltas) > _MAX_KEYS:
                self.deltas.popitem(last=False)
        else:
            self.deltas.move_to_end(key)
        return got

    # hooks

    def _pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.step = []
        # the step's (padded) token count: positions are given on every pipeline stage
        # ([T], or [3, T] under M-RoPE); input_ids/inputs_embeds as a fallback
        pos = kwargs.get("positions", args[1] if len(args) > 1 else None)
        x = kwargs.get("input_ids", args[0] if args else None)
        if x is None:
            x = kwargs.get("inputs_embeds")
        if pos is not None:
            n_tokens = int(pos.shape[-1])
        elif x is not None:
            n_tokens = int(x.shape[0])
        else:
            return
        batch = self.runner.input_batch
        n = int(batch.num_reqs)
        if n == 0:
            return
        ids = batch.req_ids[:n]
        live = set(ids)
        if len(self.specs) > 4 * n + 64:  # forget finished requests
            self.specs = {r: s for r, s in self.specs.items() if r in live}
        qsl = self.runner.query_start_loc.np[: n + 1]
        if int(qsl[n]) > n_tokens:  # not this batch (a dummy/profile run): leave it alone
            return
        computed = batch.num_computed_tokens_cpu
        prompt = batch.num_prompt_tokens
        groups: dict[tuple[str, float], np.ndarray] = {}
        for i, rid in enumerate(ids):
            spec = self._spec(rid)
            if spec is None:
                continue
            name, alpha, kind, k = spec
            start, end = int(qsl[i]), int(qsl[i + 1])
            p0, n_prompt = int(computed[i]), int(prompt[i])
            lo, hi = {
                "all": (0, 1 << 62),
                "prompt": (0, n_prompt),
                "generated": (n_prompt, 1 << 62),
                "last": (n_prompt - k, n_prompt),
            }[kind]
            a, b = start + max(lo - p0, 0), start + min(hi - p0, end - start)
            if a >= b:
                continue
            mask = groups.get((name, alpha))
            if mask is None:
                mask = groups[(name, alpha)] = np.zeros((n_tokens, 1), dtype=np.float32)
            mask[a:b] = 1.0
        for (name, alpha), mask in groups.items():
            coef = torch.from_numpy(mask).to(device=self.device, dtype=self.dtype)
            self.step.append((coef, self._deltas(name, alpha)))
        if self.step:
            self.steps += 1

    def _post_hook(self, module: Any, args: tuple, output: Any) -> None:
        self.step = []

    def _layer_hook(self, j: int):
        def hook(module: Any, args: tuple, output: Any) -> Any:
            adds = [(coef, d[j]) for coef, d in self.step if j in d]
            if not adds:
                return None
            if isinstance(output, tuple) and len(output) == 2 and output[1] is not None:
                hidden, residual = output
                stream = hidden + residual  # the block output our HF hooks steer
                for coef, delta in adds:
                    stream.addcmul_(coef, delta)
                return torch.zeros_like(hidden), stream
            h = output[0] if isinstance(output, tuple) else output
            for coef, delta in adds:
                h = torch.addcmul(h, coef, delta)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook


class SteeringWorkerExtension:
    """Mixed into vLLM's worker (``worker_extension_cls``); called with ``collective_rpc``.

    ``collective_rpc("expertsteer_set_plans", args=({name: plan_payload(plan)}, default))``
    installs the hooks (``default``: the steering of requests without their own, or ``None``);
    ``expertsteer_clear`` removes them; ``expertsteer_info`` reports what is installed.
    """

    def _expertsteer_state(self) -> _Steering:
        state = getattr(self, "_expertsteer", None)
        if state is None:
            state = self._expertsteer = _Steering(self.model_runner)
        return state

    def expertsteer_set_plans(
        self, plans: Mapping[str, Mapping[str, Any]], default: Any = None
    ) -> dict[str, Any]:
        state = self._expertsteer_state()
        state.set_plans(plans, default)
        return self.expertsteer_info()

    def expertsteer_set_default(self, default: Any) -> dict[str, Any]:
        state = self._expertsteer_state()
        state.default = steering_spec(default, list(state.plans))
        state.specs.clear()
        return self.expertsteer_info()

    def expertsteer_clear(self) -> dict[str, Any]:
        state = self._expertsteer_state()
        state.remove()
        state.plans, state.default = {}, None
        state.deltas.clear()
        state.specs.clear()
        return self.expertsteer_info()

    def expertsteer_info(self) -> dict[str, Any]:
        state = self._expertsteer_state()
        return {
            "plans": {n: sorted(v) for n, (v, _) in state.plans.items()},
            "default": state.default,
            "hooks": len(state.hooks),
            "steered_steps": state.steps,
            "layer_type": type(state.layers[0]).__name__,
        }


# --- the Python entry point ---------------------------------------------------------------------


def _named_plans(plans: Any) -> dict[str, Any]:
    if plans is None:
        return {}
    if isinstance(plans, Mapping):
        return {str(n): _load_plan(p) for n, p in plans.items()}
    return {DEFAULT_NAME: _load_plan(plans)}


def model_folder(model: str | os.PathLike) -> str:
    """A local folder or hub id as it is; a catalog name as its converted HF folder."""
    if Path(model).exists():
        return str(model)
    from .catalog import get_entry, model_path

    try:
        get_entry(str(model))
    except (KeyError, ValueError):
        return str(model)
    return str(model_path(str(model)))


class SteeredLLM:
    """vLLM's ``LLM`` with named steering plans, per request or as a global default.

    ``plans``: one plan (named ``"default"``) or ``{name: plan or folder}``; ``default``:
    ``{"plan": NAME, "alpha": α, "scope": ...}`` (or just a name) applied to requests that do
    not bring their own. Other keyword arguments go to ``vllm.LLM`` (``dtype``,
    ``tensor_parallel_size``, ``max_model_len``, …); ``enforce_eager`` and
    ``enable_prefix_caching`` are fixed to what the hooks need.

    >>> llm = SteeredLLM("smollm2-135m", {"calm": "plans/calm"}, dtype="float32")
    >>> llm.generate(["Hi"], steering={"plan": "calm", "alpha": 2.0}, max_tokens=16)
    """

    def __init__(
        self,
        model: str | os.PathLike,
        plans: Any = None,
        *,
        default: Any = None,
        **vllm_kwargs: Any,
    ) -> None:
        from vllm import LLM

        self.plans = _named_plans(plans)
        if isinstance(default, str):
            default = {"plan": default}
        if default is None and len(self.plans) == 1 and DEFAULT_NAME in self.plans:
            default = {"plan": DEFAULT_NAME}
        self.default = steering_spec(default, list(self.plans))
        for key, value in (("enforce_eager", True), ("enable_prefix_caching", False)):
            if vllm_kwargs.setdefault(key, value) != value:
                raise ValueError(f"steering on vLLM needs {key}={value}")
        vllm_kwargs["worker_extension_cls"] = EXTENSION
        self.llm = LLM(model=model_folder(model), **vllm_kwargs)
        self.set_plans(self.plans, self.default)

    def set_plans(self, plans: Any, default: Any = None) -> list[dict[str, Any]]:
        """Replace the plans (and the default) in every worker."""
        self.plans = _named_plans(plans)
        self.default = steering_spec(default, list(self.plans))
        payload = {n: plan_payload(p) for n, p in self.plans.items()}
        return self.llm.collective_rpc("expertsteer_set_plans", args=(payload, self.default))

    def info(self) -> list[dict[str, Any]]:
        return self.llm.collective_rpc("expertsteer_info")

    def sampling_params(self, steering: Any = _UNSET, **kwargs: Any) -> Any:
        """``SamplingParams`` (greedy unless told otherwise) carrying a request's steering;
        ``steering`` left out: the default; ``None``: unsteered."""
        from vllm import SamplingParams

        kwargs.setdefault("temperature", 0.0)
        extra = dict(kwargs.pop("extra_args", None) or {})
        if steering is not _UNSET:
            if isinstance(steering, str):
                steering = {"plan": steering}
            extra[XARG] = steering_spec(steering, list(self.plans))
        return SamplingParams(extra_args=extra or None, **kwargs)

    def complete(
        self,
        prompts: Sequence[str | Sequence[int]],
        steering: Any = _UNSET,
        *,
        use_tqdm: bool = False,
        **sampling: Any,
    ) -> list[Any]:
        """vLLM ``RequestOutput`` per prompt. ``steering``: one for every prompt or a list with
        one per prompt (a mixed batch); prompts are text or token ids."""
        n = len(prompts)
        per_prompt = isinstance(steering, list)
        if per_prompt and len(steering) != n:
            raise ValueError(f"{len(steering)} steering settings for {n} prompts")
        params = [
            self.sampling_params(steering[i] if per_prompt else steering, **sampling)
            for i in range(n)
        ]
        inputs = [
            p if isinstance(p, str) else {"prompt_token_ids": [int(t) for t in p]} for p in prompts
        ]
        return self.llm.generate(inputs, params, use_tqdm=use_tqdm)

    def generate(
        self, prompts: Sequence[str | Sequence[int]], steering: Any = _UNSET, **sampling: Any
    ) -> list[str]:
        """The completion text of each prompt (see :meth:`complete`)."""
        return [out.outputs[0].text for out in self.complete(prompts, steering, **sampling)]


# --- the OpenAI server ---------------------------------------------------------------------------


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
    plans = _named_plans(folders)
    default = None
    if mine.default is not None:
        default = {"plan": mine.default, "alpha": mine.default_alpha, "scope": mine.default_scope}
    default = steering_spec(default, list(plans))
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


if __name__ == "__main__":
    import sys

    if len(sys.argv) < 2 or sys.argv[1] != "serve":
        raise SystemExit(
            "usage: python -m expertsteer.vllm_backend serve MODEL --steer NAME=DIR [vllm flags]"
        )
    serve_vllm(sys.argv[2:])
