"""Per-call cost of a steering hook on a stand-in decoder block (issue: performance).

    python bench/hook_cost.py [--quick] [--d 576] [--calls 2000] [--repeats 7]

The stand-in block returns its input (as a transformers 5 decoder layer returns its hidden
states), so all that is timed is the hook machinery. Per variant and shape — decode (1, 1, d),
(8, 1, d) and prefill (8, 50, d) — the table gives the time per block call above the bare
block (no hooks at all), and the tensors/bytes the hook allocates per call (torch profiler).

Variants:
- ``no-op hook``: a forward hook returning ``None`` (what torch charges for any hook at all);
- ``in-place add alone``: no hook, the block's output ``add_(α·v)`` (the arithmetic itself);
- ``bare out + αv``: a forward hook returning ``out + α·v`` (the minimal out-of-place hook);
- ``ours``: ``attach`` with scope ``all`` and one α; ``ours, generated + per-row α``: scope
  ``generated`` and one α per batch row; ``ours, disabled``: attached with ``enabled = False``;
- ``steering-vectors``: ``SteeringVector.patch_activations`` (its default: every token);
- ``repeng``: its ``ControlModule`` wrapper with a control set (the block called with
  ``position_ids``, as transformers calls decoder layers, so repeng builds its padding mask).

Our layer hook reads a per-forward coefficient that a pre-hook on the model computes once per
forward call (the scope and padding); that per-forward cost is reported separately (a 1-block
stand-in model, a fresh mask and cache length on every call as in decoding).

Variants are interleaved within each repeat; the table shows the median over repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

if not hasattr(np, "float_"):  # repeng 0.4 annotates with np.float_, removed in NumPy 2
    np.float_ = np.float64  # type: ignore[attr-defined]

from expertsteer.layers import LayerStack  # noqa: E402
from expertsteer.models import LoadedModel  # noqa: E402
from expertsteer.plan import ModelInfo, SteeringPlan  # noqa: E402
from expertsteer.steer import attach  # noqa: E402


class Block(nn.Module):
    """A decoder layer that returns its input (transformers 5 layers return a tensor)."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, **kwargs):
        return hidden_states


class Cache:
    """Just enough of a KV cache for the pre-hook: its current length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_seq_length(self) -> int:
        return self.n


class StandIn(nn.Module):
    """A 'model' whose forward runs its blocks on ``inputs_embeds`` (path ``layers``)."""

    def __init__(self, n_layers: int, d: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))  # gives the model a device and dtype
        self.layers = nn.ModuleList(Block() for _ in range(n_layers))

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None):
        h = inputs_embeds
        for block in self.layers:
            h = block(h, attention_mask=attention_mask, position_ids=position_ids)
        return h


def stand_in_lm(n_layers: int, d: int) -> LoadedModel:
    model = StandIn(n_layers, d).eval()
    stack = LayerStack("layers", tuple(model.layers), d)
    return LoadedModel(model, None, "stand-in", "causal", stack, f"stand-in-{n_layers}x{d}")


def unit(d: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def plan_for(lm: LoadedModel, layers: list[int], alpha: float = 1e-3) -> SteeringPlan:
    vectors = {j: unit(lm.hidden_size, j) for j in layers}
    return SteeringPlan(
        vectors=vectors, alphas=dict.fromkeys(layers, alpha), target=ModelInfo.of(lm)
    )


def step_inputs(B: int, T: int, n: int) -> list[dict]:
    """``n`` distinct forward-call inputs of shape (B, T): decode steps when T == 1."""
    past0 = 20 if T == 1 else 0
    out = []
    for k in range(n):
        past = past0 + (k if T == 1 else 0)
        mask = torch.ones(B, past + T, dtype=torch.long)
        mask[0, :2] = 0  # row 0 is left-padded
        pos = (mask.cumsum(1) - 1).clamp(min=0)[:, past:]
        out.append({"attention_mask": mask, "position_ids": pos, "cache": Cache(past)})
    return out


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def allocations(fn: Callable[[], object], calls: int = 20) -> tuple[float, float]:
    """(tensors, bytes) allocated per call, from the profiler's memory records."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(calls):
            fn()
    allocs = [
        e.self_cpu_memory_usage
        for e in prof.events()
        if e.name != "[memory]" and e.self_cpu_memory_usage > 0
    ]
    return len(allocs) / calls, sum(allocs) / calls


class Case:
    """One variant on one shape: a zero-argument call, set up once, torn down at the end."""

    def __init__(self, name: str, call: Callable[[], object], close: Callable[[], None]):
        self.name, self.call, self.close = name, call, close
        self.times: list[float] = []


def layer_cases(B: int, T: int, d: int) -> list[Case]:
    """Block calls (one layer): the hook as each library runs it per decoder layer call."""
    cases: list[Case] = []
    x = torch.randn(B, T, d)
    step = step_inputs(B, T, 1)[0]
    pos = step["position_ids"]

    block = Block()
    cases.append(Case("bare block, no hook", lambda: block(x), lambda: None))

    b0 = Block()
    h0 = b0.register_forward_hook(lambda m, a, out: None)
    cases.append(Case("no-op hook (torch's floor for any hook)", lambda: b0(x), h0.remove))

    v = 1e-3 * unit(d).reshape(1, 1, d)
    tiny = v * 0  # adds zeros: x keeps its values however often it runs
    cases.append(
        Case("in-place add alone, no hook (arithmetic)", lambda: block(x).add_(tiny), lambda: None)
    )
    b1 = Block()
    h1 = b1.register_forward_hook(lambda m, a, out: out + v)
    cases.append(Case("bare `out + αv` hook", lambda: b1(x), h1.remove))

    def ours(name: str, scope: str, per_row: bool, enabled: bool) -> Case:
        lm = stand_in_lm(1, d)
        alpha = [1.0 + 0.1 * r for r in range(B)] if per_row else 1.0
        handle = attach(lm, plan_for(lm, [0]), alpha=alpha, scope=scope)
        if scope != "all":
            handle.set_prompt_lengths([max(1, 20 - 2 * (r == 0)) for r in range(B)])
        with torch.no_grad():  # one model forward sets the per-call coefficient
            lm.model(x, attention_mask=step["attention_mask"], past_key_values=step["cache"])
        handle.enabled = enabled
        blk = lm.layers.blocks[0]
        return Case(name, lambda: blk(x), handle.remove)

    cases.append(ours("ours (scope all, one α)", "all", False, True))
    cases.append(ours("ours (scope generated, per-row α)", "generated", B > 1, True))
    cases.append(ours("ours, attached but disabled", "generated", B > 1, False))

    try:
        import steering_vectors as sv

        wrapper = nn.Module()
        wrapper.layers = nn.ModuleList([Block()])
        vec = sv.SteeringVector({0: v.reshape(-1)})
        patch = vec.patch_activations(wrapper, layer_config={"decoder_block": "layers.{num}"})
        blk_sv = wrapper.layers[0]
        cases.append(Case("steering-vectors hook", lambda: blk_sv(x), patch.remove))
    except ImportError as exc:
        print(f"steering-vectors not measured: {exc}")

    try:
        from repeng.control import BlockControlParams, ControlModule

        ctrl = ControlModule(Block())
        ctrl.set_control(BlockControlParams(v.reshape(-1).clone()))
        cases.append(Case("repeng ControlModule", lambda: ctrl(x, position_ids=pos), lambda: None))
    except ImportError as exc:
        print(f"repeng not measured: {exc}")
    return cases


def forward_cases(B: int, T: int, d: int, n_steps: int) -> list[Case]:
    """Whole forward calls of a 1-block stand-in: ours adds its once-per-forward pre-hook."""
    steps = step_inputs(B, T, n_steps)
    x = torch.randn(B, T, d)
    cases = []

    def run(lm: LoadedModel) -> Callable[[], object]:
        it = [0]

        def call():
            s = steps[it[0] % n_steps]
            it[0] += 1
            return lm.model(x, attention_mask=s["attention_mask"], past_key_values=s["cache"])

        return call

    bare = stand_in_lm(1, d)
    cases.append(Case("bare forward, 1 block", run(bare), lambda: None))
    for name, scope, per_row in (
        ("ours forward (scope all, one α), 1 block", "all", False),
        ("ours forward (generated, per-row α), 1 block", "generated", B > 1),
    ):
        lm = stand_in_lm(1, d)
        alpha = [1.0 + 0.1 * r for r in range(B)] if per_row else 1.0
        handle = attach(lm, plan_for(lm, [0]), alpha=alpha, scope=scope)
        if scope != "all":
            handle.set_prompt_lengths([max(1, 20 - 2 * (r == 0)) for r in range(B)])
        cases.append(Case(name, run(lm), handle.remove))
    return cases


def measure(cases: list[Case], calls: int, repeats: int) -> None:
    with torch.no_grad():
        for c in cases:  # warm-up
            per_call_us(c.call, max(calls // 10, 10))
        for _ in range(repeats):
            for c in cases:  # interleaved: background load hits every variant alike
                c.times.append(per_call_us(c.call, calls))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    ap.add_argument("--d", type=int, default=576, help="hidden size (smollm2-135m: 576)")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.calls, args.repeats = 300, 3
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), d={args.d}, "
        f"{args.calls} calls × {args.repeats} repeats (median); "
        f"load average at start {os.getloadavg()[0]:.2f}"
    )
    shapes = [(1, 1), (8, 1), (8, 50)]
    names = [f"({B}, {T}, {args.d})" for B, T in shapes]
    layer_rows: dict[str, list[str]] = {}
    fwd_rows: dict[str, list[str]] = {}
    for B, T in shapes:
        cases = layer_cases(B, T, args.d)
        measure(cases, args.calls, args.repeats)
        base = statistics.median(cases[0].times)
        with torch.no_grad():
            for c in cases:
                med = statistics.median(c.times)
                n, nbytes = allocations(c.call)
                cell = (
                    f"{base:.1f} µs" if c is cases[0] else f"{med - base:+.1f} µs"
                ) + f" · {n:g} alloc ({nbytes / 1024:.0f} KiB)"
                layer_rows.setdefault(c.name, []).append(cell)
                c.close()
        fcases = forward_cases(B, T, args.d, n_steps=64)
        measure(fcases, args.calls, args.repeats)
        fbase = statistics.median(fcases[0].times)
        with torch.no_grad():
            for c in fcases:
                med = statistics.median(c.times)
                n, nbytes = allocations(c.call)
                cell = (
                    f"{fbase:.1f} µs" if c is fcases[0] else f"{med - fbase:+.1f} µs"
                ) + f" · {n:g} alloc ({nbytes / 1024:.1f} KiB)"
                fwd_rows.setdefault(c.name, []).append(cell)
                c.close()

    print("\nPer block call: time above the bare block (first row: the bare block itself) · ")
    print("tensors allocated per call (bytes)\n")
    print(
        "| variant | "
        + " | ".join(f"decode {n}" if i < 2 else f"prefill {n}" for i, n in enumerate(names))
        + " |"
    )
    print("|---" * (len(shapes) + 1) + "|")
    for name, cells in layer_rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nPer forward call of a 1-block stand-in model (fresh mask / cache length per call, as")
    print("in decoding): time above the bare forward · allocations per forward\n")
    print("| variant | " + " | ".join(names) + " |")
    print("|---" * (len(shapes) + 1) + "|")
    for name, cells in fwd_rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
