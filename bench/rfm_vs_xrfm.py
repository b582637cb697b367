"""Compare expertsteer's RFM with the reference `xrfm` package on planted-direction data.

For each dataset a hidden unit vector u defines the concept, y = 1[u·x + 0.1·ε > 0], and every
method's direction is scored by its cosine with u (sign fixed so positives project higher) and by
its fit time. Datasets: isotropic Gaussian states, and states with a strong nuisance variance
along (u + v)/√2, where the mean difference is tilted away from u (Σu ∝̸ u) but the gradient of
the true predictor is not.

xrfm's leaf-level ``RFM`` is run on the same train/validation split (80/20) with the Laplace
kernel, bandwidth = median pairwise distance of the training states (its bandwidth is absolute),
ridge 1e-3, our iteration count, early stopping off and ``return_best_params=False``, so that, as
ours, its direction is the top eigenvector of ``M`` after all ``n_iter`` AGOP updates.

Usage: python bench/rfm_vs_xrfm.py [--sizes 1000x128,2000x896] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from expertsteer.estimators import RFM, MeanDiff


def planted(
    n: int, d: int, nuisance: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u /= u.norm()
    v = torch.randn(d, generator=g, dtype=torch.float64)
    v -= (v @ u) * u
    v /= v.norm()
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X += nuisance * torch.randn(n, 1, generator=g, dtype=torch.float64) * (u + v) / 2**0.5
    y = (X @ u + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)) > 0
    return X.float(), y, u.float()


def signed_cos(direction: torch.Tensor, X: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> float:
    direction = direction.float() / direction.norm()
    proj = X @ direction
    if proj[y].mean() < proj[~y].mean():
        direction = -direction
    return float(direction @ u)


def fit_xrfm(X: torch.Tensor, y: torch.Tensor, n_iter: int, seed: int) -> torch.Tensor:
    from xrfm.rfm_src import RFM as XRFM
    from xrfm.rfm_src.class_conversion import ClassificationConverter

    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(X), generator=g)
    n_val = len(X) // 5
    va, tr = perm[:n_val], perm[n_val:]
    Xtr = X[tr] - X[tr].mean(0)
    Xva = X[va] - X[tr].mean(0)
    bandwidth = float(torch.pdist(Xtr).median())
    model = XRFM(
        kernel="laplace",
        bandwidth=bandwidth,
        iters=n_iter,
        device="cpu",
        verbose=False,
        tuning_metric="auc",
        class_converter=ClassificationConverter("zero_one", 2),
    )
    model.fit(
        (Xtr, y[tr].float()),
        (Xva, y[va].float()),
        reg=1e-3,
        method="lstsq",
        early_stop_rfm=False,
        return_best_params=False,
    )
    return torch.linalg.eigh(model.M.double())[1][:, -1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000x128,2000x896", help="comma-separated NxD")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = f"{'data':<10} {'N':>5} {'d':>5}  {'method':<10} {'cos(u)':>7} {'fit s':>7}"
    print(header)
    print("-" * len(header))
    ours = RFM(seed=args.seed)
    methods = {
        "rfm": lambda X, y: ours.fit(X, y).direction_,
        "xrfm": lambda X, y: fit_xrfm(X, y, ours.n_iter, args.seed),
        "mean-diff": lambda X, y: MeanDiff().fit(X, y).direction_,
    }
    for size in args.sizes.split(","):
        n, d = (int(s) for s in size.lower().split("x"))
        for data, nuisance in (("isotropic", 0.0), ("nuisance", 3.0)):
            X, y, u = planted(n, d, nuisance, args.seed)
            rows = []
            for name, fit in methods.items():
                start = time.perf_counter()
                direction = fit(X, y)
                rows.append((name, signed_cos(direction, X, y, u), time.perf_counter() - start))
            for name, cos, seconds in rows:
                print(f"{data:<10} {n:>5} {d:>5}  {name:<10} {cos:>7.3f} {seconds:>7.2f}")


if __name__ == "__main__":
    main()
