"""Auto-encoder aligners: the paper's affine auto-encoder and its paired variant.

Reconstruction fixes the plain auto-encoder's code space only up to an invertible linear map, so
its output is *not* in the target's basis (kept as the paper's baseline); the paired variant adds
a loss pulling the code onto paired target states.
"""

from __future__ import annotations

import math

import torch

from expertsteer.align.base import Aligner, Scaler, fold, r2
from expertsteer.types import Tensor

__all__ = ["AutoEncoder", "PairedAutoEncoder"]


class AutoEncoder(Aligner):
    """The paper's affine auto-encoder: encoder d_E→d_T, decoder d_T→d_E, reconstruction MSE only.

    Inputs are standardised per feature (training-split statistics, folded into ``weight_``).
    Trained with Adam on minibatches, early-stopped on a seeded held-out split (stop after
    ``patience`` epochs without a relative improvement of ``tol``; best weights restored).
    Bit-identical across fits with the same ``seed`` on the same machine and thread count.

    The code space is only determined up to an invertible linear map, so ``transform`` does *not*
    land in the target's basis; ``X_t``, if given, is used only to report ``r2_val``.
    ``quality_["recon_r2_val"]`` is the held-out reconstruction R² of expert states (variance
    weighted, original units, like ``score``). Also learned: ``decoder_weight_`` [d_E, d_T],
    ``decoder_bias_`` (see :meth:`inverse_transform`) and ``n_epochs_`` (epochs run).
    """

    name = "ae"
    target_aware = False
    # Weight of the alignment term; the plain auto-encoder has none (PairedAutoEncoder sets it).
    lam: float = 0.0

    def __init__(
        self,
        out_dim: int | None = None,
        epochs: int = 200,
        lr: float = 1e-3,
        batch_size: int = 256,
        weight_decay: float = 0.0,
        val_fraction: float = 0.1,
        patience: int = 10,
        tol: float = 1e-4,
        seed: int = 0,
    ) -> None:
        self.out_dim = out_dim
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.val_fraction = val_fraction
        self.patience = patience
        self.tol = tol
        self.seed = seed

    decoder_weight_: Tensor
    decoder_bias_: Tensor
    n_epochs_: int

    def inverse_transform(self, Y: Tensor) -> Tensor:
        """Decode code vectors [..., d_T] back to expert states [..., d_E] (float32)."""
        self._check_fitted()
        Y = torch.as_tensor(Y)
        W, b = self.decoder_weight_.to(Y.device), self.decoder_bias_.to(Y.device)
        return Y.to(torch.float32) @ W.T + b

    def _check_params(self) -> None:
        super()._check_params()
        for key in ("epochs", "batch_size", "patience"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1; got {getattr(self, key)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.tol < 0:
            raise ValueError("lr must be > 0, and weight_decay and tol >= 0")

    def _code_dim(self, X_t: Tensor | None) -> int:
        if X_t is None:
            if self.out_dim is None:
                raise ValueError(
                    "the code width d_T is unknown: pass out_dim=<target hidden size> or give X_t"
                )
            return self.out_dim
        if self.out_dim is not None and self.out_dim != X_t.shape[1]:
            raise ValueError(f"out_dim={self.out_dim} but X_t has width {X_t.shape[1]}")
        return X_t.shape[1]

    def _target_scaler(self, X_t: Tensor | None, train: Tensor) -> Scaler | None:
        """Coordinates the code is trained to match, or None for reconstruction only."""
        return None

    def _fit(
        self, X_e: Tensor, X_t: Tensor | None, train: Tensor, val: Tensor
    ) -> tuple[Tensor, Tensor]:
        d_t = self._code_dim(X_t)
        s_e = Scaler.per_feature(X_e[train])
        s_t = self._target_scaler(X_t, train)
        Z = s_e(X_e).to(torch.float32)
        T = None if s_t is None else s_t(X_t).to(torch.float32)
        We, be, Wd, bd = self._train(Z, T, train, val, d_t)

        s_code = s_t if s_t is not None else Scaler.identity(d_t)
        We, be, Wd, bd = (p.to(torch.float64) for p in (We, be, Wd, bd))
        dec_w, dec_b = fold(Wd, bd, s_code, s_e)
        self.decoder_weight_, self.decoder_bias_ = dec_w.float(), dec_b.float()
        weight, bias = fold(We, be, s_e, s_code)

        X_val = X_e[val]
        code_val = X_val @ weight.T + bias
        self.quality_["recon_r2_val"] = r2(code_val @ dec_w.T + dec_b, X_val)
        if X_t is not None:
            self.quality_["r2_val"] = r2(code_val, X_t[val])
        return weight, bias

    def _train(
        self, Z: Tensor, T: Tensor | None, train: Tensor, val: Tensor, d_t: int
    ) -> tuple[Tensor, ...]:
        """Adam on (standardised) rows; returns the best (We, be, Wd, bd) by held-out loss."""
        gen = torch.Generator().manual_seed(self.seed)
        d_e = Z.shape[1]

        def init(d_out: int, d_in: int) -> list[Tensor]:
            # nn.Linear's default U(±1/√fan_in), drawn from our generator for reproducibility.
            bound = 1.0 / math.sqrt(d_in)
            return [
                ((torch.rand(shape, generator=gen) * 2 - 1) * bound).requires_grad_()
                for shape in ((d_out, d_in), (d_out,))
            ]

        params = init(d_t, d_e) + init(d_e, d_t)
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

        def loss(rows: Tensor) -> Tensor:
            We, be, Wd, bd = params
            z = Z[rows]
            code = torch.addmm(be, z, We.T)
            out = torch.nn.functional.mse_loss(torch.addmm(bd, code, Wd.T), z)
            if T is not None:
                out = out + self.lam * torch.nn.functional.mse_loss(code, T[rows])
            return out

        best, best_params, bad = math.inf, [p.detach().clone() for p in params], 0
        for epoch in range(1, self.epochs + 1):
            self.n_epochs_ = epoch
            perm = train[torch.randperm(len(train), generator=gen)]
            for rows in perm.split(self.batch_size):
                opt.zero_grad(set_to_none=True)
                loss(rows).backward()
                opt.step()
            with torch.no_grad():
                val_loss = float(loss(val))
            if val_loss < best * (1 - self.tol):
                best, best_params, bad = val_loss, [p.detach().clone() for p in params], 0
            else:
                bad += 1
                if bad >= self.patience:
                    break
        return tuple(best_params)


class PairedAutoEncoder(AutoEncoder):
    """Auto-encoder whose code is also pulled onto paired target states.

    Loss: reconstruction MSE + ``lam`` · MSE(f(h_e), h_t), both in per-feature standardised units
    (target statistics folded back, so ``transform`` outputs target coordinates). Initialised at
    random exactly like ``ae`` (not from ridge), so the comparison with ``ae`` isolates the
    alignment term.
    """

    name = "paired-ae"
    target_aware = True

    def __init__(
        self,
        lam: float = 1.0,
        out_dim: int | None = None,
        epochs: int = 200,
        lr: float = 1e-3,
        batch_size: int = 256,
        weight_decay: float = 0.0,
        val_fraction: float = 0.1,
        patience: int = 10,
        tol: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__(
            out_dim=out_dim,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            val_fraction=val_fraction,
            patience=patience,
            tol=tol,
            seed=seed,
        )
        self.lam = lam

    def _check_params(self) -> None:
        super()._check_params()
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0; got {self.lam}")

    def _target_scaler(self, X_t: Tensor | None, train: Tensor) -> Scaler | None:
        assert X_t is not None  # guaranteed by target_aware
        return Scaler.per_feature(X_t[train])
