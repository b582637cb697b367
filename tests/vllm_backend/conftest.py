"""Shared by the vLLM backend's tests: one SmolLM2-135M engine for the whole session (a start
costs ~60 s here) and our HF path's continuations to compare with. The engine tests run in
.venv-vllm (``bash scripts/setup_vllm.sh``) and skip where vLLM is not installed; the spec and
middleware tests need no vLLM and run everywhere."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from vllm_helpers import PROMPTS, N, random_plan  # noqa: E402


@pytest.fixture(scope="session")
def lm():
    from expertsteer.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def plans(lm):
    return {"rand": random_plan(lm, (8, 15), 0), "other": random_plan(lm, (5, 20), 1)}


@pytest.fixture(scope="session")
def llm(plans, lm):
    from expertsteer.vllm_backend import SteeredLLM, model_folder

    # lm doubles as the expert of the conditioned tests (the expert is read on the HF side)
    engine = SteeredLLM(
        model_folder("smollm2-135m"), plans, expert=lm, dtype="float32", max_model_len=512, seed=0
    )
    yield engine
    del engine


@pytest.fixture(scope="session")
def ids(lm):
    from expertsteer.steer.infer import _prompt_ids

    return _prompt_ids(lm, PROMPTS, False)


_HF: dict = {}


@pytest.fixture(scope="session")
def hf(lm):
    """Our HF path's continuations of PROMPTS (memoised: the mixed-batch tests reuse them)."""
    from expertsteer.steer import generate

    def run(plan=None, alpha=1.0, scope="all"):
        key = (id(plan), alpha if isinstance(alpha, float) else tuple(alpha.tolist()), scope)
        if key not in _HF:
            kwargs = {} if plan is None else {"plan": plan, "alpha": alpha, "scope": scope}
            _HF[key] = generate(lm, PROMPTS, chat_template=False, max_new_tokens=N, **kwargs)
        return _HF[key]

    return run
