"""The aligner interface (step 1): an affine map from expert states (d_E) to target width (d_T).

Every aligner learns ``x -> x @ weight_.T + bias_``; steering directions found in expert space are
carried across by the linear part alone (:meth:`Aligner.map_direction`). sklearn style:
hyper-parameters in ``__init__`` (see :meth:`Aligner.get_params`), learned state with a trailing
underscore. Also here: the input checks, the seeded train / held-out split, the variance-weighted
R² and the :class:`Scaler` coordinate changes the aligners share.

Rows drawn from one text (several token positions) are near-duplicates: pass ``groups`` (the text
of each row) to :meth:`Aligner.fit` so the held-out split holds out whole texts, or the held-out
R² (and ridge's penalty, chosen on it) is optimistic.

Paired states are the same texts run through both models: ``X_e [N, d_E]`` and ``X_t [N, d_T]``.
Fitting runs on the CPU whatever device the inputs are on; ``transform`` runs on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from expertsteer.registry import HyperParams
from expertsteer.types import Tensor

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Aligner", "Scaler", "fold", "r2"]

# Fewest rows in each of the train and held-out splits: R² needs a variance, i.e. two rows.
_MIN_SPLIT_ROWS = 2


def _as_matrix(X: Tensor, name: str) -> Tensor:
    """Validate a 2-D finite state matrix and return it as a float64 CPU tensor."""
    X = torch.as_tensor(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, d], one row per text; got {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(X.shape)}); collect hidden states first")
    X = X.detach().to("cpu", torch.float64)
    # One sum is far cheaper than an elementwise isfinite; any NaN/inf makes it non-finite.
    if not torch.isfinite(X.sum()):
        bad = ~torch.isfinite(X)
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/inf values in {int(bad.any(dim=1).sum())} rows; "
            "drop those rows, or read the "
            "states in a wider dtype (fp16 activations can overflow)"
        )
    return X


def _as_groups(groups: Sequence[int] | Tensor, n: int) -> Tensor:
    """Validate one integer group label per row."""
    g = torch.as_tensor(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must give one label per row ({n}); got shape {tuple(g.shape)}")
    if g.dtype == torch.bool or g.is_floating_point() or g.is_complex():
        raise ValueError(f"groups must be integers (the text of each row), not {g.dtype}")
    return g.to("cpu", torch.int64)


def _split(
    n: int, val_fraction: float, seed: int, groups: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Seeded train / held-out row indices; with ``groups``, whole groups are held out."""
    n_val = max(_MIN_SPLIT_ROWS, math.ceil(n * val_fraction))
    if n - n_val < _MIN_SPLIT_ROWS:
        raise ValueError(
            f"too few samples: N={n} with val_fraction={val_fraction} leaves {n - n_val} training "
            f"rows; each split needs at least {_MIN_SPLIT_ROWS}, so collect hidden states for "
            "more texts"
        )
    gen = torch.Generator().manual_seed(seed)
    if groups is None:
        perm = torch.randperm(n, generator=gen)
        return perm[n_val:], perm[:n_val]
    # Groups in seeded order until the held-out rows reach n_val: val_fraction stays a fraction
    # of rows (overshooting by at most one group), whatever the group sizes.
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    order = torch.randperm(len(counts), generator=gen)
    k = int(torch.searchsorted(counts[order].cumsum(0), n_val)) + 1
    held = torch.zeros(len(counts), dtype=torch.bool)
    held[order[:k]] = True
    is_val = held[inverse]
    train, val = (~is_val).nonzero().flatten(), is_val.nonzero().flatten()
    if len(train) < _MIN_SPLIT_ROWS:
        raise ValueError(
            f"too few groups: holding out whole groups for val_fraction={val_fraction} of N={n} "
            f"rows leaves {len(train)} training rows ({len(counts) - k} of {len(counts)} groups); "
            "collect hidden states for more texts"
        )
    return train, val


def r2(pred: Tensor, Y: Tensor) -> float:
    """Variance-weighted R²: 1 - SSE / SST, SST about the column means of ``Y``."""
    pred, Y = pred.to(torch.float64), Y.to(torch.float64)
    sst = float(((Y - Y.mean(dim=0)) ** 2).sum())
    sse = float(((Y - pred) ** 2).sum())
    if sst == 0.0:
        # Constant targets: R² is undefined; report perfect only for a perfect fit.
        return 1.0 if sse == 0.0 else -math.inf
    return 1.0 - sse / sst


class Scaler:
    """Affine coordinate change ``z = (x - mean) / scale``; ``scale`` may be a scalar."""

    def __init__(self, mean: Tensor, scale: Tensor) -> None:
        self.mean, self.scale = mean, scale

    @classmethod
    def per_feature(cls, X: Tensor) -> Scaler:
        # Constant features get scale 1 so they map to 0 instead of dividing by zero.
        std = X.std(dim=0, correction=0)
        return cls(X.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std)))

    @classmethod
    def centre(cls, X: Tensor) -> Scaler:
        return cls(X.mean(dim=0), torch.ones((), dtype=X.dtype))

    @classmethod
    def frobenius(cls, X: Tensor) -> Scaler:
        """Centre, then divide by the Frobenius norm of the centred matrix."""
        mean = X.mean(dim=0)
        norm = torch.linalg.matrix_norm(X - mean)
        return cls(mean, norm if norm > 0 else torch.ones((), dtype=X.dtype))

    @classmethod
    def identity(cls, d: int) -> Scaler:
        return cls(torch.zeros(d, dtype=torch.float64), torch.ones((), dtype=torch.float64))

    def __call__(self, X: Tensor) -> Tensor:
        return (X - self.mean) / self.scale


def fold(W: Tensor, b: Tensor, s_in: Scaler, s_out: Scaler) -> tuple[Tensor, Tensor]:
    """Express ``x -> s_out⁻¹(W s_in(x) + b)`` as ``x @ weight.T + bias`` in original units."""
    out_scale = s_out.scale.reshape(-1, 1) if s_out.scale.ndim else s_out.scale
    weight = out_scale * W / s_in.scale
    bias = s_out.scale * (b - W @ (s_in.mean / s_in.scale)) + s_out.mean
    return weight, bias


class Aligner(HyperParams):
    """Affine map from expert hidden states (d_E) to target-width vectors (d_T).

    After :meth:`fit`: ``weight_`` [d_T, d_E] and ``bias_`` [d_T] (float32, original units, so
    ``transform(x) == x @ weight_.T + bias_``) and ``quality_`` (held-out metrics, the split's
    sizes and ``quality_["split"]``: ``"groups"`` or ``"rows"``).
    """

    name: ClassVar[str]
    target_aware: ClassVar[bool] = True

    val_fraction: float
    seed: int
    weight_: Tensor
    bias_: Tensor
    quality_: dict[str, float | str]

    # -- fit / transform ----------------------------------------------------------------------

    def fit(
        self,
        X_e: Tensor,
        X_t: Tensor | None = None,
        groups: Sequence[int] | Tensor | None = None,
    ) -> Self:
        """Learn the map from expert states ``X_e`` [N, d_E] (and paired target states ``X_t``).

        ``groups`` [N] (optional): the text each row came from. The held-out split then holds out
        whole groups, taken in seeded order until they hold at least ``val_fraction`` of the rows;
        without it, rows are held out at random (optimistic when rows of one text are alike).
        """
        X_e = _as_matrix(X_e, "X_e")
        if X_t is None:
            if self.target_aware:
                raise ValueError(
                    f"the {self.name!r} aligner needs paired target states X_t [N, d_T]: run the "
                    "same texts through the target model; or use 'ae' (expert states only, the "
                    "paper's baseline)"
                )
        else:
            X_t = _as_matrix(X_t, "X_t")
            if X_t.shape[0] != X_e.shape[0]:
                raise ValueError(
                    f"X_e has {X_e.shape[0]} rows but X_t has {X_t.shape[0]}; the rows must be "
                    "the same texts, in the same order, read through both models"
                )
        self._check_params()
        g = None if groups is None else _as_groups(groups, X_e.shape[0])
        train, val = _split(X_e.shape[0], self.val_fraction, self.seed, g)
        self.quality_ = {"n_train": float(len(train)), "n_val": float(len(val))}
        self.quality_["split"] = "rows" if g is None else "groups"
        if g is not None:
            self.quality_["n_val_groups"] = float(len(torch.unique(g[val])))
        weight, bias = self._fit(X_e, X_t, train, val)
        self.weight_ = weight.to(torch.float32)
        self.bias_ = bias.to(torch.float32)
        return self

    def transform(self, X_e: Tensor) -> Tensor:
        """Map expert states [..., d_E] to target-width vectors [..., d_T] (float32)."""
        W, b = self._linear_on(X_e)
        return torch.as_tensor(X_e).to(W.device, torch.float32) @ W.T + b

    def map_direction(self, v_e: Tensor) -> Tensor:
        """Carry expert direction(s) [d_E] or [k, d_E] through the linear part, unit-normed."""
        W, _ = self._linear_on(v_e)
        v_t = torch.as_tensor(v_e).to(W.device, torch.float32) @ W.T
        norm = torch.linalg.vector_norm(v_t, dim=-1, keepdim=True)
        if bool((norm <= torch.finfo(torch.float32).tiny).any()):
            raise ValueError(
                "a direction maps to the zero vector (it lies in the aligner's null space, e.g. "
                "the d_E - d_T dimensions a narrower target cannot represent); check v_e"
            )
        return v_t / norm

    def score(self, X_e: Tensor, X_t: Tensor) -> float:
        """Variance-weighted R² of ``transform(X_e)`` against target states ``X_t``."""
        self._check_fitted()
        X_e, X_t = _as_matrix(X_e, "X_e"), _as_matrix(X_t, "X_t")
        d_t, d_e = self.weight_.shape
        if X_e.shape[0] != X_t.shape[0] or X_e.shape[1] != d_e or X_t.shape[1] != d_t:
            raise ValueError(
                f"score needs X_e [N, {d_e}] and X_t [N, {d_t}]; got {tuple(X_e.shape)} and "
                f"{tuple(X_t.shape)}"
            )
        return r2(self.transform(X_e), X_t)

    # -- internals --------------------------------------------------------------------------

    def _fit(
        self, X_e: Tensor, X_t: Tensor | None, train: Tensor, val: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return (weight, bias) in original units (float64); may add to ``quality_``."""
        raise NotImplementedError

    def _check_params(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1); got {self.val_fraction}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "weight_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit() first")

    def _linear_on(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Fitted (weight_, bias_) on the device of ``X``, after checking its last dimension."""
        self._check_fitted()
        X = torch.as_tensor(X)
        d_e = self.weight_.shape[1]
        if X.ndim == 0 or X.shape[-1] != d_e:
            raise ValueError(f"expected expert vectors of width d_E={d_e}; got {tuple(X.shape)}")
        return self.weight_.to(X.device), self.bias_.to(X.device)
