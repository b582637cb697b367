"""How steps 1-3 scale with the number of examples N, on synthetic hidden states.

    python bench/scaling.py [--quick] [--sizes 500,2000,8000] [--d-expert 896] [--d-target 576]
                            [--expert-layers 24] [--target-layers 30] [--threads 1]

Synthetic states share a rank-64 latent (so the maps and the MI have something to find), and
labels come from a planted latent direction. Timed, per N:

- ridge / procrustes: the pipeline's step 1, one map per expert layer (d_E → d_T);
- MI matrix: step 2, ``mi_matrix`` (Gaussian, 16 components) over all L_E × L_T layer pairs;
- RFM: step 3, one fit (default grid and 8 iterations) at d_T (the default ``encoded`` route)
  and at d_E (the ``expert`` route); the pipeline fits one per pair (4 by default);
- steps 1-3 (default fit): L_E ridge maps + MI matrix + 4 RFM fits at d_T.

Goal (performance issue): under 60 s at N = 2,000.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from expertsteer.align import make_aligner
from expertsteer.estimators import RFM
from expertsteer.mi import mi_matrix

RANK = 64


def synthetic(
    n: int, d_e: int, d_t: int, l_e: int, l_t: int, seed: int
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, RANK, generator=g)
    y = (z[:, 0] + 0.3 * torch.randn(n, generator=g)) > 0

    def layers(count: int, d: int) -> list[torch.Tensor]:
        out = []
        for _ in range(count):
            mix = torch.randn(RANK, d, generator=g) / RANK**0.5
            out.append(z @ mix + 0.5 * torch.randn(n, d, generator=g))
        return out

    return layers(l_e, d_e), layers(l_t, d_t), y


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def row(n: int, d_e: int, d_t: int, l_e: int, l_t: int, n_pairs: int) -> str:
    ex, tg, y = synthetic(n, d_e, d_t, l_e, l_t, seed=n)
    pair = [round(i * (l_t - 1) / max(l_e - 1, 1)) for i in range(l_e)]
    t_ridge = timed(lambda: [make_aligner("ridge").fit(ex[i], tg[pair[i]]) for i in range(l_e)])
    t_proc = timed(lambda: [make_aligner("procrustes").fit(ex[i], tg[pair[i]]) for i in range(l_e)])
    t_mi = timed(lambda: mi_matrix(ex, tg, n_components=16, progress=False))
    t_rfm_t = timed(lambda: RFM(seed=0).fit(tg[l_t // 2], y))
    t_rfm_e = timed(lambda: RFM(seed=0).fit(ex[l_e // 2], y))
    total = t_ridge + t_mi + n_pairs * t_rfm_t
    return (
        f"| {n:,} | {t_ridge:.1f} | {t_proc:.1f} | {t_mi:.1f} | {t_rfm_t:.1f} | "
        f"{t_rfm_e:.1f} | {total:.1f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="N = 300, 1000 and 4 × 5 layers")
    ap.add_argument("--sizes", default="500,2000,8000")
    ap.add_argument("--d-expert", type=int, default=896)
    ap.add_argument("--d-target", type=int, default=576)
    ap.add_argument("--expert-layers", type=int, default=24)
    ap.add_argument("--target-layers", type=int, default=30)
    ap.add_argument("--n-pairs", type=int, default=4)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared 2-core machine, 2 threads spin and run far slower)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes, args.expert_layers, args.target_layers = "300,1000", 4, 5
    sizes = [int(s) for s in args.sizes.split(",")]
    d_e, d_t, l_e, l_t = args.d_expert, args.d_target, args.expert_layers, args.target_layers
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; d_E={d_e}, d_T={d_t}, "
        f"L_E={l_e}, L_T={l_t}; load average at start {os.getloadavg()[0]:.2f}"
    )
    print(
        f"| N | ridge ×{l_e} (s) | procrustes ×{l_e} (s) | MI {l_e}×{l_t} (s) | "
        f"RFM d={d_t} (s) | RFM d={d_e} (s) | steps 1-3, default fit (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        print(row(n, d_e, d_t, l_e, l_t, args.n_pairs), flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
