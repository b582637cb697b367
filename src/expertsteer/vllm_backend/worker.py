"""Inside each vLLM worker: the plans, the hooks, and the step's per-token coefficients.

:class:`SteeringWorkerExtension` is mixed into vLLM's worker (``worker_extension_cls``), so its
methods run in every worker through ``collective_rpc``."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .spec import DELTA, XARG, parse_scope, steering_spec

_MAX_KEYS = 64  # cached (plan, α) deltas per worker

logger = logging.getLogger(__name__)


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
        # a learned map's request: its own delta at the map's block, built once per request
        self.own: dict[str, dict[int, torch.Tensor]] = {}
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
        self.own.clear()
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
            spec = steering_spec(raw, list(self.plans), delta=True)
            if spec is not None and DELTA in spec:
                self.own[req_id] = self._own_delta(spec["plan"], spec["alpha"], spec[DELTA])
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

    def _own_delta(self, name: str, alpha: float, delta: dict[str, Any]) -> dict[int, torch.Tensor]:
        """A learned map's request: ``α · n · v`` at the map's one block, ``v`` the unit vector
        it brought (as SteeringPlan.combine: the float64 α·n rounded once to float32)."""
        vecs, _ = self.plans[name]
        if len(vecs) != 1 or len(delta["vector"]) != self.hidden:
            raise ValueError(
                f"a delta of {len(delta['vector'])} numbers for plan {name!r}: it needs one "
                f"block and {self.hidden} numbers"
            )
        (j,) = vecs
        c = torch.tensor(alpha * delta["norm"], dtype=torch.float64).float()
        v = torch.tensor(delta["vector"], dtype=torch.float32)
        return {j: (c * v).to(device=self.device, dtype=self.dtype)}

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
            self.own = {r: d for r, d in self.own.items() if r in live}
        qsl = self.runner.query_start_loc.np[: n + 1]
        if int(qsl[n]) > n_tokens:  # not this batch (a dummy/profile run): leave it alone
            return
        computed = batch.num_computed_tokens_cpu
        prompt = batch.num_prompt_tokens
        groups: dict[tuple[str, float, str | None], np.ndarray] = {}
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
            key = (name, alpha, rid if rid in self.own else None)  # own delta: its own group
            mask = groups.get(key)
            if mask is None:
                mask = groups[key] = np.zeros((n_tokens, 1), dtype=np.float32)
            mask[a:b] = 1.0
        for (name, alpha, rid), mask in groups.items():
            coef = torch.from_numpy(mask).to(device=self.device, dtype=self.dtype)
            self.step.append((coef, self.own[rid] if rid else self._deltas(name, alpha)))
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
        state.own.clear()
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
