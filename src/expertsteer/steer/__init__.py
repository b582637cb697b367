"""Step 4: add ``α_j · v_j`` to the output of target block ``j`` at inference time.

``scope`` (which tokens) → ``placement`` (which device/dtype per block) → ``hooks`` (the
handle adding per-layer deltas) → ``attach`` (plans × α → deltas → handle) → ``infer``
(generation and scoring, batch by batch) → ``choices`` (multiple choice, each prompt run once).
"""

from ..plan import combine
from .attach import ALPHA_WARN_RATIO, Alpha, SteeringStrengthWarning, attach, parse_alpha
from .choices import choice_logprobs
from .hooks import SteeringHandle
from .infer import (
    PlanArg,
    SteeringRequest,
    generate,
    next_token_logprobs,
    sequence_logprobs,
    split_point,
)
from .scope import SCOPES, Scope, TokenScope

__all__ = [
    "ALPHA_WARN_RATIO",
    "SCOPES",
    "Alpha",
    "PlanArg",
    "Scope",
    "SteeringHandle",
    "SteeringRequest",
    "SteeringStrengthWarning",
    "TokenScope",
    "attach",
    "choice_logprobs",
    "combine",
    "generate",
    "next_token_logprobs",
    "parse_alpha",
    "sequence_logprobs",
    "split_point",
]
