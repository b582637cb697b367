"""Cost of a steering hook on stand-in decoder blocks (issue: performance), in three tables.

    python bench/hook_cost.py [--quick] [--d 576] [--calls 2000] [--repeats 7] [--n-layers 30]

The stand-in block returns its input (as a transformers 5 decoder layer returns its hidden
states), so all that is timed is the hook machinery. Three shapes: decode (1, 1, d), (8, 1, d)
and prefill (8, 50, d). Each cell is a time above a bare baseline, then the tensors/bytes
allocated per call (torch profiler).

1. Per block call: the layer hook alone, the block called directly, time above the bare block
   (no hooks at all). For ours this leaves out the per-forward pre-hook it needs (table 2).
   Variants:

   - ``no-op hook``: a forward hook returning ``None`` (what torch charges for any hook at all);
   - ``in-place add alone``: no hook, the block's output ``add_(α·v)`` (the arithmetic itself);
   - ``bare out + αv``: a forward hook returning ``out + α·v`` (the minimal out-of-place hook);
   - ``ours``: ``attach`` with scope ``all`` and one α; ``ours, generated + per-row α``: scope
     ``generated`` and one α per batch row; ``ours, attached but disabled``: ``enabled = False``;
   - ``steering-vectors``: ``SteeringVector.patch_activations`` (its default: every token);
   - ``repeng``: its ``ControlModule`` wrapper with a control set (the block called with
     ``position_ids``, as transformers calls decoder layers, so repeng builds its padding mask).

2. Per forward call, ours' pre-hook alone: our layer hook reads a per-forward coefficient (the
   scope and padding) that a pre-hook on the model computes once per forward call. Timed as the
   forward of a stand-in model whose one block is steered but not run (so no layer hook fires),
   above the same bare forward; a fresh mask and cache length on every call, as in decoding.
   The peers have no per-forward part.

3. Per steered layer, everything included: the forward of an n-block stand-in model with every
   block steered, minus the bare n-block forward, divided by n, for n = 1, 4 and all layers
   (``--n-layers``): ours = (pre-hook + n × layer hook) / n, the pre-hook paid once per forward;
   the peers = their layer hook. Fresh mask / cache length / position ids per call; each timing
   runs ``calls / n`` forwards (at least 100), about as many block calls as table 1. Ours' cells
   also give, in brackets, the same total predicted from tables 1 and 2. The bare row gives the
   bare forward per block itself.

Variants are interleaved within each repeat; the tables show the median over repeats.
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
from expertsteer.steer import SteeringHandle, attach  # noqa: E402

# Our two configurations: (label, scope, one α per batch row).
OURS = (("scope all, one α", "all", False), ("scope generated, per-row α", "generated", True))


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
    """A 'model' whose forward runs its blocks on ``inputs_embeds`` (path ``layers``); with
    ``run_blocks`` False it runs none (the model's own hooks still fire)."""

    def __init__(self, n_layers: int, d: int, run_blocks: bool = True) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))  # gives the model a device and dtype
        self.layers = nn.ModuleList(Block() for _ in range(n_layers))
        self.run_blocks = run_blocks

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None):
        h = inputs_embeds
        if self.run_blocks:
            for block in self.layers:
                h = block(h, attention_mask=attention_mask, position_ids=position_ids)
        return h


def stand_in_lm(n_layers: int, d: int, run_blocks: bool = True) -> LoadedModel:
    model = StandIn(n_layers, d, run_blocks).eval()
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


def attach_ours(lm: LoadedModel, B: int, scope: str, per_row: bool) -> SteeringHandle:
    """``attach`` steering every block of ``lm``; per-row α only when there are rows (B > 1)."""
    alpha = [1.0 + 0.1 * r for r in range(B)] if per_row and B > 1 else 1.0
    handle = attach(lm, plan_for(lm, list(range(lm.n_layers))), alpha=alpha, scope=scope)
    if scope != "all":
        handle.set_prompt_lengths([max(1, 20 - 2 * (r == 0)) for r in range(B)])
    return handle


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
        handle = attach_ours(lm, B, scope, per_row)
        with torch.no_grad():  # one model forward sets the per-call coefficient
            lm.model(x, attention_mask=step["attention_mask"], past_key_values=step["cache"])
        handle.enabled = enabled
        blk = lm.layers.blocks[0]
        return Case(name, lambda: blk(x), handle.remove)

    for label, scope, per_row in OURS:
        cases.append(ours(f"ours ({label})", scope, per_row, True))
    cases.append(ours("ours, attached but disabled", "generated", True, False))

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


def forward_call(model: nn.Module, steps: list[dict], x: torch.Tensor) -> Callable[[], object]:
    """A forward call of ``model``, cycling through ``steps`` (a fresh mask every call)."""
    it = [0]

    def call():
        s = steps[it[0] % len(steps)]
        it[0] += 1
        return model(
            x,
            attention_mask=s["attention_mask"],
            position_ids=s["position_ids"],
            past_key_values=s["cache"],
        )

    return call


def prehook_cases(B: int, T: int, d: int, n_steps: int) -> list[Case]:
    """Forward calls of a stand-in that runs no block: ours adds only its pre-hook."""
    steps = step_inputs(B, T, n_steps)
    x = torch.randn(B, T, d)
    bare = stand_in_lm(1, d, run_blocks=False)
    cases = [Case("bare forward, no block run", forward_call(bare.model, steps, x), lambda: None)]
    for label, scope, per_row in OURS:
        lm = stand_in_lm(1, d, run_blocks=False)
        handle = attach_ours(lm, B, scope, per_row)
        cases.append(
            Case(f"ours pre-hook ({label})", forward_call(lm.model, steps, x), handle.remove)
        )
    return cases


def steered_cases(B: int, T: int, d: int, n: int, n_steps: int) -> list[Case]:
    """Forward calls of an n-block stand-in with every block steered (first case: no hooks)."""
    steps = step_inputs(B, T, n_steps)
    x = torch.randn(B, T, d)
    bare = stand_in_lm(n, d)
    cases = [Case("bare forward, per block", forward_call(bare.model, steps, x), lambda: None)]
    for label, scope, per_row in OURS:
        lm = stand_in_lm(n, d)
        handle = attach_ours(lm, B, scope, per_row)
        cases.append(Case(f"ours ({label})", forward_call(lm.model, steps, x), handle.remove))
    v = 1e-3 * unit(d)
    try:
        import steering_vectors as sv

        model = StandIn(n, d).eval()
        vec = sv.SteeringVector({j: v.clone() for j in range(n)})
        patch = vec.patch_activations(model, layer_config={"decoder_block": "layers.{num}"})
        cases.append(Case("steering-vectors", forward_call(model, steps, x), patch.remove))
    except ImportError:
        pass  # said once, in layer_cases
    try:
        from repeng.control import BlockControlParams, ControlModule

        model = StandIn(n, d).eval()
        model.layers = nn.ModuleList(ControlModule(b) for b in model.layers)
        for ctrl in model.layers:
            ctrl.set_control(BlockControlParams(v.clone()))
        cases.append(Case("repeng ControlModule", forward_call(model, steps, x), lambda: None))
    except ImportError:
        pass
    return cases


def measure(cases: list[Case], calls: int, repeats: int) -> None:
    with torch.no_grad():
        for c in cases:  # warm-up
            per_call_us(c.call, max(calls // 10, 10))
        for _ in range(repeats):
            for c in cases:  # interleaved: background load hits every variant alike
                c.times.append(per_call_us(c.call, calls))


def tabulate(cases: list[Case], per: int = 1) -> dict[str, tuple[float, str]]:
    """Per case: (median above the first case, / ``per``; the cell text); closes the cases."""
    base = statistics.median(cases[0].times)
    out = {}
    with torch.no_grad():
        for c in cases:
            above = (statistics.median(c.times) - base) / per
            n, nbytes = allocations(c.call)
            head = f"{base / per:.1f} µs" if c is cases[0] else f"{above:+.1f} µs"
            out[c.name] = (above, head + f" · {n:g} alloc ({nbytes / 1024:.1f} KiB)")
            c.close()
    return out


def print_table(title: list[str], names: list[str], rows: dict[str, list[str]]) -> None:
    print("\n" + "\n".join(title) + "\n")
    print("| variant | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    ap.add_argument("--d", type=int, default=576, help="hidden size (smollm2-135m: 576)")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--n-layers", type=int, default=30, help="'all layers' in table 3 (smollm2-135m: 30)"
    )
    args = ap.parse_args()
    if args.quick:
        args.calls, args.repeats = 300, 3
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    counts = sorted({1, 4, args.n_layers})
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), d={args.d}, "
        f"{args.calls} calls × {args.repeats} repeats (median), steered stand-ins of "
        f"{', '.join(map(str, counts))} blocks; load average at start {os.getloadavg()[0]:.2f}"
    )
    shapes = [(1, 1), (8, 1), (8, 50)]
    names = [f"({B}, {T}, {args.d})" for B, T in shapes]
    headers = [f"decode {n}" if i < 2 else f"prefill {n}" for i, n in enumerate(names)]
    layer_rows: dict[str, list[str]] = {}
    pre_rows: dict[str, list[str]] = {}
    total_rows: dict[tuple[int, str], list[str]] = {}
    for B, T in shapes:
        cases = layer_cases(B, T, args.d)
        measure(cases, args.calls, args.repeats)
        layer = tabulate(cases)
        pcases = prehook_cases(B, T, args.d, n_steps=64)
        measure(pcases, args.calls, args.repeats)
        pre = tabulate(pcases)
        for name, (_, cell) in layer.items():
            layer_rows.setdefault(name, []).append(cell)
        for name, (_, cell) in pre.items():
            pre_rows.setdefault(name, []).append(cell)
        for n in counts:
            scases = steered_cases(B, T, args.d, n, n_steps=64)
            measure(scases, max(args.calls // n, min(args.calls, 100)), args.repeats)
            for name, (_, cell) in tabulate(scases, per=n).items():
                if name.startswith("ours ("):  # (pre-hook + n × layer hook) / n, tables 1-2
                    label = name.removeprefix("ours (")[:-1]
                    predicted = pre[f"ours pre-hook ({label})"][0] / n + layer[name][0]
                    cell = cell.replace(" µs ·", f" µs (tables 1–2: {predicted:+.1f}) ·", 1)
                total_rows.setdefault((n, name), []).append(cell)

    print_table(
        [
            "1. Per block call, the layer hook alone (ours: without its per-forward pre-hook,",
            "table 2): time above the bare block (first row: the bare block itself) · tensors",
            "allocated per call (bytes)",
        ],
        headers,
        layer_rows,
    )
    print_table(
        [
            "2. Per forward call, ours' pre-hook alone (once per forward, whatever the number of",
            "steered layers): time above the bare forward of a stand-in that runs no block (first",
            "row: that forward itself; fresh mask / cache length per call) · allocations per call",
        ],
        headers,
        pre_rows,
    )
    order = list(dict.fromkeys(name for _, name in total_rows))
    rows = {
        f"{name}, {n} block{'s' * (n > 1)}{' (all steered)' * (i > 0)}": total_rows[n, name]
        for i, name in enumerate(order)
        for n in counts
    }
    print_table(
        [
            "3. Per steered layer, everything included: (forward of an n-block stand-in with every",
            "block steered − the bare n-block forward) / n; ours = (pre-hook + n × layer hook) / n",
            "(in brackets: that sum from tables 1 and 2); first rows: the bare forward per block ·",
            "allocations per forward (not divided by n)",
        ],
        headers,
        rows,
    )
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
