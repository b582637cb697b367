"""Step 3 of ExpertSteer: fit a unit steering direction in hidden-state space from labelled states.

All estimators share one sklearn-style interface (:class:`DirectionEstimator`): hyper-parameters
in ``__init__``, learned state with a trailing ``_`` set by ``fit``. Their names are registered in
:data:`ESTIMATORS`; :func:`make_estimator` builds one from a name or clones a given instance.

* ``metrics`` -- AUC, accuracy, separation and the seeded hold-out split;
* ``base`` -- the interface, input validation and the sign convention;
* ``linear`` -- mean difference (CAA), paired-difference PCA (RepE), logistic probe (ITI);
* ``rfm`` -- the Recursive Feature Machine.
"""

from __future__ import annotations

from typing import Any

from expertsteer.estimators.base import DirectionEstimator
from expertsteer.estimators.linear import Logistic, MeanDiff, PCADiff
from expertsteer.estimators.metrics import accuracy, auc, holdout_split, separation
from expertsteer.estimators.rfm import RFM
from expertsteer.registry import Registry
from expertsteer.types import MIN_PER_CLASS

__all__ = [
    "ESTIMATORS",
    "MIN_PER_CLASS",
    "RFM",
    "DirectionEstimator",
    "Logistic",
    "MeanDiff",
    "PCADiff",
    "accuracy",
    "auc",
    "holdout_split",
    "make_estimator",
    "separation",
]

ESTIMATORS: Registry[DirectionEstimator] = Registry("estimator")
ESTIMATORS.register(
    "rfm", RFM, "Recursive Feature Machine (top eigenvector of its learned feature matrix)"
)
# Same estimator; the caller fits it on the target model's own states (the baseline that
# ExpertSteer's cross-model transfer is compared to).
ESTIMATORS.register("self-rfm", RFM, "RFM fitted on the target's own states (baseline)")
ESTIMATORS.register("mean-diff", MeanDiff, "difference of the class means (CAA)")
ESTIMATORS.register("pca", PCADiff, "first principal component of paired differences (RepE)")
ESTIMATORS.register("logistic", Logistic, "L2 logistic-regression probe (ITI-style)")


def make_estimator(spec: str | DirectionEstimator, **kwargs: Any) -> DirectionEstimator:
    """A new estimator: the one registered as ``spec`` built with ``kwargs``, or a clone of an
    instance (unfitted, same hyper-parameters; keyword arguments only go with a name)."""
    if isinstance(spec, DirectionEstimator):
        return ESTIMATORS.make(spec, **kwargs)
    if not isinstance(spec, str):
        raise TypeError(
            f"an estimator is a name ({ESTIMATORS.choices()}) or a DirectionEstimator, "
            f"not {type(spec).__name__}"
        )
    cls = ESTIMATORS[spec]
    accepted = cls.param_names()
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"estimator {spec!r} does not take {', '.join(unknown)}; its parameters are: "
            f"{', '.join(accepted) or '(none)'}."
        )
    return cls(**kwargs)
