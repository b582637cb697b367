"""Step 1 of ExpertSteer: align an expert layer's hidden space (d_E) with the target's (d_T).

Every aligner learns an affine map ``x -> x @ weight_.T + bias_`` from expert states to
target-width vectors (:class:`Aligner`). Four are registered in :data:`ALIGNERS`;
:func:`make_aligner` builds one from a name or clones a given instance.

* ``base`` -- the interface, input checks, split, R² and scalers;
* ``linear`` -- ``"ridge"`` (closed-form ridge regression, the default) and ``"procrustes"``;
* ``autoencoder`` -- ``"ae"`` (the paper's baseline, expert states only) and ``"paired-ae"``.
"""

from __future__ import annotations

from typing import Any

from expertsteer.align.autoencoder import AutoEncoder, PairedAutoEncoder
from expertsteer.align.base import Aligner
from expertsteer.align.linear import DEFAULT_PENALTIES, Procrustes, Ridge
from expertsteer.registry import Registry

__all__ = [
    "ALIGNERS",
    "DEFAULT_PENALTIES",
    "Aligner",
    "AutoEncoder",
    "PairedAutoEncoder",
    "Procrustes",
    "Ridge",
    "make_aligner",
]

# Alphabetical: the order of CLI choices and of error messages.
ALIGNERS: Registry[Aligner] = Registry("aligner")
ALIGNERS.register(
    AutoEncoder.name, AutoEncoder, "the paper's affine auto-encoder (expert states only)"
)
ALIGNERS.register(
    PairedAutoEncoder.name,
    PairedAutoEncoder,
    "auto-encoder whose code is pulled onto target states",
)
ALIGNERS.register(Procrustes.name, Procrustes, "scaled orthogonal map on paired states")
ALIGNERS.register(Ridge.name, Ridge, "ridge regression on paired states (the default)")


def make_aligner(spec: str | Aligner, **kwargs: Any) -> Aligner:
    """A new aligner: the one registered as ``spec`` built with ``kwargs``, or a clone of an
    instance (unfitted, same hyper-parameters; keyword arguments only go with a name)."""
    if isinstance(spec, Aligner):
        return ALIGNERS.make(spec, **kwargs)
    if not isinstance(spec, str):
        raise TypeError(
            f"an aligner is a name ({ALIGNERS.choices()}) or an Aligner, not {type(spec).__name__}"
        )
    cls = ALIGNERS[spec]
    accepted = cls.param_names()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"aligner {spec!r} does not take {', '.join(unknown)}; its parameters are: "
            f"{', '.join(accepted) or '(none)'}."
        )
    return cls(**kwargs)
