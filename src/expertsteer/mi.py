"""Mutual information between hidden-state matrices.

Two estimators, registered in :data:`MI_ESTIMATORS` (Gaussian via canonical correlations, and
KSG), the expert x target layer MI matrix of step 2, and its heat-map. All values are in nats.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.special import digamma
from sklearn.neighbors import KDTree, NearestNeighbors
from tqdm.auto import tqdm

from expertsteer.registry import Registry, UnknownNameError
from expertsteer.types import LayerPair, Tensor

_SHRINKAGE = 1e-3
_KSG_K = 3
_EXACT_PCA_MAX = 256
_OVERSAMPLE = 10
_POWER_ITERATIONS = 7
# Far below the spread of standardised data: only breaks exact ties between distances.
_JITTER = 1e-10


def _as_matrix(a: Tensor, name: str) -> Tensor:
    """Validate a [N, d] matrix and return it as a float64 CPU tensor."""
    a = torch.as_tensor(a)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(
            f"{name} must be a 2-D [N, d] matrix with d >= 1, got shape {tuple(a.shape)}; "
            "stack one hidden-state vector per text"
        )
    if not torch.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values; drop or fix those samples first")
    return a.detach().to(device="cpu", dtype=torch.float64)


def _check_pair(x: Tensor, y: Tensor, min_samples: int) -> tuple[Tensor, Tensor]:
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same samples, got N={x.shape[0]} and N={y.shape[0]}"
        )
    if x.shape[0] < min_samples:
        raise ValueError(f"need at least {min_samples} samples, got N={x.shape[0]}")
    return x, y


def _n_kept(n: int, d: int, n_components: int | None) -> int:
    if n_components is not None and n_components < 1:
        raise ValueError(f"n_components must be >= 1 or None, got {n_components}")
    # A centred N-sample matrix has rank <= N-1: further components would have zero variance.
    return min(d, n - 1) if n_components is None else min(n_components, d, n - 1)


def _reduce(a: Tensor, n_components: int | None) -> Tensor:
    """Centre `a` and project it onto its top principal components ([N, k] scores)."""
    n, d = a.shape
    a = a - a.mean(dim=0)
    k = _n_kept(n, d, n_components)
    if k == d:
        # Keeping every direction is a rotation, which changes neither the MI nor the ridge.
        return a
    small = min(n, d)
    if small <= _EXACT_PCA_MAX:
        # Exact: eigendecompose the smaller of the two Gram matrices (one LAPACK call).
        if d <= n:
            return a @ torch.linalg.eigh(a.T @ a)[1][:, -k:]
        vals, vecs = torch.linalg.eigh(a @ a.T)
        return vecs[:, -k:] * vals[-k:].clamp_min(0).sqrt()
    # Randomised range finder (Halko et al. 2011, with sklearn's 10 extra directions and 7 power
    # iterations): a dense eigendecomposition of a 1000 x 1000 Gram matrix costs about a second
    # per layer on a CPU, this a fraction of that. Its own seeded generator keeps results
    # deterministic without touching torch's global RNG.
    width = min(k + _OVERSAMPLE, small)
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(a @ torch.randn(d, width, generator=gen, dtype=a.dtype)).Q
    for _ in range(_POWER_ITERATIONS):
        q = torch.linalg.qr(a @ torch.linalg.qr(a.T @ q).Q).Q
    u, sv, _ = torch.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ u[:, :k]) * sv[:k]


def _ridged_eigh(s: Tensor, shrinkage: float) -> tuple[Tensor, Tensor, Tensor]:
    """Covariance eigenpairs of centred scores, plus the ridge shrinkage * mean eigenvalue."""
    cov = s.T @ s / (s.shape[0] - 1)
    vals, vecs = torch.linalg.eigh(cov)
    vals = vals.clamp_min(0)
    return vals, vecs, shrinkage * vals.mean()


def _whiten(s: Tensor, shrinkage: float) -> Tensor:
    """Whiten centred scores with the ridged covariance, so cross-products are correlations."""
    vals, vecs, ridge = _ridged_eigh(s, shrinkage)
    scale = vals + ridge
    # A constant input has zero variance and carries no information: map it to zeros.
    inv_sd = torch.where(scale > 0, scale.clamp_min(1e-300).rsqrt(), torch.zeros_like(scale))
    return (s @ vecs) * inv_sd


def _cca_mi(cross: Tensor) -> Tensor:
    """MI from cross-covariance(s) of whitened data: -1/2 sum log(1 - rho_k^2)."""
    rho = torch.linalg.svdvals(cross).clamp(max=1.0)
    return -0.5 * torch.log1p(-(rho**2)).sum(dim=-1)


def _check_shrinkage(shrinkage: float) -> None:
    if not shrinkage >= 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")


def gaussian_mi(
    x: Tensor, y: Tensor, *, n_components: int | None = 16, shrinkage: float = _SHRINKAGE
) -> float:
    """Gaussian MI (nats) between paired rows of x [N, dx] and y [N, dy].

    Each side is centred and PCA-reduced to `n_components` (None: all, at most N-1), its
    covariance ridged by shrinkage x mean eigenvalue, and the MI computed from the canonical
    correlations; equal to 1/2 (log det Sx + log det Sy - log det Sxy) of the ridged covariances.
    """
    _check_shrinkage(shrinkage)
    x, y = _check_pair(x, y, min_samples=3)
    zx = _whiten(_reduce(x, n_components), shrinkage)
    zy = _whiten(_reduce(y, n_components), shrinkage)
    return float(_cca_mi(zx.T @ zy / (x.shape[0] - 1)))


def _gaussian_mi_logdet(
    x: Tensor, y: Tensor, *, n_components: int | None = 16, shrinkage: float = _SHRINKAGE
) -> float:
    """Reference form of `gaussian_mi` via log-determinants (slower; used to test the fast one)."""
    x, y = _check_pair(x, y, min_samples=3)
    sx, sy = _reduce(x, n_components), _reduce(y, n_components)
    kx = sx.shape[1]
    joint = torch.cat([sx, sy], dim=1)
    cov = joint.T @ joint / (x.shape[0] - 1)
    ridge_x = _ridged_eigh(sx, shrinkage)[2]
    ridge_y = _ridged_eigh(sy, shrinkage)[2]
    cov += torch.diag(torch.cat([ridge_x.expand(kx), ridge_y.expand(sy.shape[1])]))
    logdet = torch.linalg.slogdet
    mi = logdet(cov[:kx, :kx])[1] + logdet(cov[kx:, kx:])[1] - logdet(cov)[1]
    return float(0.5 * mi)


def _standardise(s: Tensor, seed: int, side: int) -> np.ndarray:
    """Scale each reduced dimension to unit variance and add seeded tie-breaking jitter."""
    a = s.numpy()
    sd = a.std(axis=0)
    a = (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    # Seeding by (seed, side) makes a layer's jitter identical in ksg_mi and mi_matrix.
    rng = np.random.default_rng([seed, side])
    return a + _JITTER * rng.standard_normal(a.shape)


def _ksg(a: np.ndarray, b: np.ndarray, tree_a: KDTree, tree_b: KDTree, k: int) -> float:
    """KSG estimator 1 with the max-norm, given chebyshev KD-trees of each marginal."""
    n = a.shape[0]
    joint = np.hstack([a, b])
    # kneighbors() without a query excludes each point itself.
    dist = (
        NearestNeighbors(n_neighbors=k, metric="chebyshev", algorithm="kd_tree")
        .fit(joint)
        .kneighbors()[0]
    )
    # Marginal counts use a strict inequality (< eps); the count includes the point itself,
    # which turns KSG's psi(n_x + 1) into psi(count).
    radius = np.nextafter(dist[:, -1], 0)
    n_a = tree_a.query_radius(a, radius, count_only=True)
    n_b = tree_b.query_radius(b, radius, count_only=True)
    return float(digamma(k) + digamma(n) - np.mean(digamma(n_a) + digamma(n_b)))


def ksg_mi(
    x: Tensor, y: Tensor, *, k: int = _KSG_K, n_components: int | None = 16, seed: int = 0
) -> float:
    """Kraskov-Stögbauer-Grassberger MI (estimator 1, max-norm) in nats.

    Each side is centred, PCA-reduced to `n_components`, standardised per dimension and
    jittered (seeded) to break ties. The estimate can be slightly negative for independent data.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x, y = _check_pair(x, y, min_samples=k + 2)
    a = _standardise(_reduce(x, n_components), seed, 0)
    b = _standardise(_reduce(y, n_components), seed, 1)
    return _ksg(a, b, KDTree(a, metric="chebyshev"), KDTree(b, metric="chebyshev"), k)


# Each entry is the pairwise estimator itself: MI_ESTIMATORS[name](x, y) -> nats.
MI_ESTIMATORS: Registry[float] = Registry("MI estimator")
MI_ESTIMATORS.register(
    "gaussian", gaussian_mi, "Gaussian MI from canonical correlations (fast, the default)"
)
MI_ESTIMATORS.register("ksg", ksg_mi, "Kraskov-Stögbauer-Grassberger k-nearest-neighbour MI")


def _check_layers(
    expert_layers: Sequence[Tensor], target_layers: Sequence[Tensor], n_components: int
) -> int:
    """Validate every layer cheaply (shape, N, finiteness) before any heavy work; return N."""
    if len(expert_layers) == 0 or len(target_layers) == 0:
        raise ValueError("need at least one expert layer and one target layer")
    n = None
    for side, layers in (("expert", expert_layers), ("target", target_layers)):
        for i, layer in enumerate(layers):
            layer = torch.as_tensor(layer)
            name = f"{side} layer {i}"
            if layer.ndim != 2 or layer.shape[1] == 0:
                raise ValueError(
                    f"{name} must be a 2-D [N, d] matrix, got shape {tuple(layer.shape)}; "
                    "stack one hidden-state vector per text"
                )
            if n is None:
                n = layer.shape[0]
            elif layer.shape[0] != n:
                raise ValueError(
                    f"{name} has N={layer.shape[0]} samples but expert layer 0 has N={n}; "
                    "every layer of both models must come from the same texts in the same order"
                )
            if not torch.isfinite(layer).all():
                raise ValueError(
                    f"{name} contains NaN or inf values; check the model's dtype (fp16 overflow) "
                    "or drop the offending texts"
                )
    assert n is not None
    if n < n_components + 2:
        raise ValueError(
            f"need at least n_components + 2 = {n_components + 2} samples per layer, got N={n}; "
            "run more texts or lower n_components"
        )
    return n


def _prepare_layer(
    layer: Tensor, estimator: str, n_components: int, side: int
) -> Tensor | tuple[np.ndarray, KDTree]:
    """Reduce one layer once: whitened scores (Gaussian) or standardised scores + tree (KSG)."""
    s = _reduce(torch.as_tensor(layer).detach().to(device="cpu", dtype=torch.float64), n_components)
    if estimator == "gaussian":
        return _whiten(s, _SHRINKAGE)
    a = _standardise(s, 0, side)
    return a, KDTree(a, metric="chebyshev")


def mi_matrix(
    expert_layers: Sequence[Tensor],
    target_layers: Sequence[Tensor],
    *,
    estimator: str = "gaussian",
    n_components: int = 16,
    progress: bool = True,
) -> Tensor:
    """MI between every expert layer i and target layer j: a float64 tensor [L_E, L_T].

    Each layer is a [N, d] matrix (one row per text, same texts in every layer). Layers are
    reduced once; cell (i, j) equals `gaussian_mi` (or `ksg_mi` with k=3, seed=0) of that pair
    with the same `n_components`.
    """
    if estimator not in MI_ESTIMATORS:
        raise UnknownNameError(
            f"unknown estimator {estimator!r}; choose one of {MI_ESTIMATORS.choices()}"
        )
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    n = _check_layers(expert_layers, target_layers, n_components)
    if estimator == "ksg" and n < _KSG_K + 2:
        raise ValueError(f"KSG with k={_KSG_K} needs at least {_KSG_K + 2} samples, got N={n}")
    n_e, n_t = len(expert_layers), len(target_layers)
    out = torch.empty(n_e, n_t, dtype=torch.float64)
    with tqdm(total=n_e + n_t + n_e, desc=f"MI matrix ({estimator})", disable=not progress) as bar:
        prepared: list[list] = [[], []]
        for side, layers in enumerate((expert_layers, target_layers)):
            for layer in layers:
                prepared[side].append(_prepare_layer(layer, estimator, n_components, side))
                bar.update()
        expert, target = prepared
        if estimator == "gaussian":
            # Every target layer at once: a batch of small [k_E, k_T] cross-correlations.
            zt = torch.stack(target)
            for i, ze in enumerate(expert):
                out[i] = _cca_mi(torch.einsum("np,bnq->bpq", ze, zt) / (n - 1))
                bar.update()
        else:
            for i, (a, tree_a) in enumerate(expert):
                for j, (b, tree_b) in enumerate(target):
                    out[i, j] = _ksg(a, b, tree_a, tree_b, _KSG_K)
                bar.update()
    return out


def plot_mi_matrix(
    mi: Tensor,
    path: str | os.PathLike[str],
    *,
    expert_name: str = "expert",
    target_name: str = "target",
    pairs: Sequence[LayerPair] | None = None,
    title: str | None = None,
) -> Path:
    """Write a heat-map PNG of an [L_E, L_T] MI matrix (expert on y, target on x); return path.

    Chosen `pairs` are outlined. The file is written to a temporary name and renamed, so a
    reader never sees a half-written image.
    """
    # Imported here so `import expertsteer.mi` stays light; Figure avoids pyplot's global state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    m = torch.as_tensor(mi).detach().to(device="cpu", dtype=torch.float64).numpy()
    if m.ndim != 2 or 0 in m.shape:
        raise ValueError(f"mi must be a non-empty 2-D [L_E, L_T] matrix, got shape {m.shape}")
    n_e, n_t = m.shape
    for i, j in pairs or ():
        if not (0 <= i < n_e and 0 <= j < n_t):
            raise ValueError(f"pair {(i, j)} is outside the {n_e} x {n_t} MI matrix")

    fig = Figure(
        figsize=(min(max(4 + 0.2 * n_t, 6), 16), min(max(3 + 0.2 * n_e, 5), 14)),
        layout="constrained",
    )
    ax = fig.add_subplot()
    image = ax.imshow(m, origin="lower", aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label="MI (nats)")
    if pairs:
        ax.scatter(
            [j for _, j in pairs],
            [i for i, _ in pairs],
            marker="s",
            s=120,
            facecolors="none",
            edgecolors="red",
            linewidths=2,
            label="chosen pairs",
        )
        ax.legend(loc="upper left", fontsize="small")
    ax.set_xlabel(f"{target_name} layer")
    ax.set_ylabel(f"{expert_name} layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title if title is not None else f"I({expert_name} layer; {target_name} layer)")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
