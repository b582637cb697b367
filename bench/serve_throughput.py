"""Throughput of ``expertsteer serve`` under concurrent requests (issue: interop and serving).

    python bench/serve_throughput.py [--target smollm2-135m] [--clients 8] [--tokens 32]

Starts the OpenAI-compatible server on loopback, then for each batching mode (``max_batch=1``:
one request at a time, i.e. a lock around generation; ``max_batch=8``: per-row steering in a
micro-batch) sends ``--clients`` chat requests at once from threads with the stock ``openai``
client: all unsteered, all steered, and half/half. Reports completion tokens per second (wall
clock, all requests) and checks every concurrent answer against the same request sent alone.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from expertsteer.extract import extract
from expertsteer.models import load_model
from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.serve import ServerThread, create_app

PROMPTS = [
    "Tell me about your day.",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for learning Python.",
    "Why is the sky blue?",
    "Describe a cat in one sentence.",
    "What should I cook tonight?",
    "Explain recursion briefly.",
]
HAPPY = ["I am so happy today!", "This is wonderful news.", "I love this, it is great."]
SAD = ["I am so sad today.", "This is terrible news.", "I hate this, it is awful."]


def mean_diff_plan(lm, layers: list[int], scale: float = 0.3) -> SteeringPlan:
    """A quick sentiment plan: mean difference of block outputs, α = scale × mean norm."""
    states = extract(lm, HAPPY + SAD, layers=layers, cache=False, progress=False)
    n = len(HAPPY)
    vectors, alphas, norms = {}, {}, {}
    for k, j in enumerate(layers):
        d = states[k, :n].mean(0) - states[k, n:].mean(0)
        vectors[j] = d / d.norm()
        norms[j] = float(states[k].norm(dim=-1).mean())
        alphas[j] = scale * norms[j]
    return SteeringPlan(
        vectors=vectors,
        alphas=alphas,
        target=ModelInfo.of(lm),
        method="mean-diff",
        layer_norms=norms,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    import openai

    lm = load_model(args.target)
    plan = mean_diff_plan(lm, [lm.n_layers // 3, lm.n_layers // 2])
    prompts = (PROMPTS * args.clients)[: args.clients]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.target}, "
        f"{args.clients} concurrent chat requests × max_tokens {args.tokens} (greedy)"
    )
    print(
        "| mode | requests | completion tokens | wall (s) | tokens/s | batches | equal to alone |"
    )
    print("|---|---|---|---|---|---|---|")
    for max_batch in (1, 8):
        app = create_app(lm, {"happy": plan}, max_tokens=args.tokens, max_batch=max_batch)
        engine = app.state.server.engine
        with ServerThread(app) as srv:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none")

            def ask(item, client=client):
                prompt, steered = item
                extra = {"steering": {"plan": "happy"}} if steered else {}
                r = client.chat.completions.create(
                    model=lm.name,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=args.tokens,
                    extra_body=extra,
                )
                return r.choices[0].message.content, r.usage.completion_tokens

            ask((prompts[0], False))  # warm-up
            for label, flags in (
                ("unsteered", [False] * len(prompts)),
                ("steered", [True] * len(prompts)),
                ("mixed", [i % 2 == 1 for i in range(len(prompts))]),
            ):
                items = list(zip(prompts, flags))
                engine.batches.clear()
                t0 = time.perf_counter()
                with ThreadPoolExecutor(len(items)) as pool:
                    results = list(pool.map(ask, items))
                wall = time.perf_counter() - t0
                batches = list(engine.batches)
                alone = [ask(item)[0] for item in items]
                same = sum(a == r[0] for a, r in zip(alone, results))
                tokens = sum(r[1] for r in results)
                mode = "lock (max_batch=1)" if max_batch == 1 else f"micro-batch ({max_batch})"
                print(
                    f"| {mode} {label} | {len(items)} | {tokens} | {wall:.1f} | "
                    f"{tokens / wall:.1f} | {batches} | {same}/{len(items)} |"
                )


if __name__ == "__main__":
    main()
