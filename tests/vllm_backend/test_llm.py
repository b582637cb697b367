"""The Python entry point: defaults, refusals, and expert-conditioned plans (the expert read on
the HF side, each request's α scaled by its probe) equal to the HF path's conditioned_generate;
learned maps (each request carrying its own delta) equal to the HF path with the same deltas."""

from pathlib import Path

import pytest
import torch
from vllm_helpers import PROMPTS, N, needs_vllm

from expertsteer.condition import ConditionedPlan, ExpertMissingError, ExpertProbe
from expertsteer.plan import ModelInfo
from expertsteer.vllm_backend.llm import model_folder, named_plans


def test_model_folder_and_named_plans(tmp_path):
    assert model_folder(tmp_path) == str(tmp_path)
    assert model_folder("org/not-in-catalog") == "org/not-in-catalog"
    assert (Path(model_folder("smollm2-135m")) / "config.json").is_file()  # the converted folder
    assert named_plans(None) == {}


@pytest.mark.real
@needs_vllm
def test_default_plan(lm, llm, plans, ids, hf):
    """A global plan steers requests without their own; None opts out."""
    llm.set_plans(plans, {"plan": "rand", "alpha": 40.0, "scope": "all"})
    try:
        assert llm.generate(ids, max_tokens=N) == hf(plans["rand"], 40.0)
        assert llm.generate(ids, None, max_tokens=N) == hf()
        # flat vllm_xargs, as vLLM's OpenAI server passes them
        params = llm.sampling_params(
            max_tokens=N,
            extra_args={"steering_plan": "other", "steering_alpha": 30.0, "steering_scope": "all"},
        )
        outs = llm.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        assert [o.outputs[0].text for o in outs] == hf(plans["other"], 30.0)
    finally:
        llm.set_plans(plans, None)
    assert llm.generate(ids, max_tokens=N) == hf()
    assert llm.info()[0]["steered_steps"] > 0


@pytest.mark.real
@needs_vllm
def test_bad_steering_is_refused(llm):
    with pytest.raises(ValueError, match="unknown steering plan"):
        llm.generate(["Hi"], {"plan": "nope"}, max_tokens=2)
    with pytest.raises(ValueError, match="scope"):
        llm.generate(["Hi"], {"plan": "rand", "scope": "middle"}, max_tokens=2)
    with pytest.raises(ValueError, match="2 steering settings for 1 prompts"):
        llm.generate(["Hi"], [None, None], max_tokens=2)


def _cplan(lm, plan):
    """A probe on the expert (here SmolLM2 itself) whose g(p) differs per prompt, both signs."""
    from expertsteer.extract import extract

    layer = 10
    states = extract(lm, PROMPTS, layers=[layer], position="last", cache=False)[0].double()
    g = torch.Generator().manual_seed(3)
    u = torch.randn(lm.hidden_size, generator=g, dtype=torch.float64)
    z = states @ u
    w = u / z.std()  # z/std: spread of a few units
    probe = ExpertProbe(ModelInfo.of(lm), layer, w, float(-(states @ w).mean()))
    return ConditionedPlan(plan, probe)


@pytest.mark.real
@needs_vllm
def test_conditioned_plan_equals_hf_conditioned_generate(lm, llm, plans):
    from expertsteer.condition import conditioned_generate

    cplan = _cplan(lm, plans["rand"])
    llm.set_plans({**plans, "cond": cplan})
    try:
        p, g = llm.strengths("cond", PROMPTS)
        want_g = cplan.probe.strengths_for(lm, PROMPTS, cache=False)
        assert g == pytest.approx(want_g.tolist(), abs=1e-9)
        assert min(g) < -0.1 and max(g) > 0.1 and all(0 < x < 1 for x in p)
        got = llm.generate(PROMPTS, {"plan": "cond", "alpha": 40.0}, max_tokens=N)
        want = conditioned_generate(
            lm, lm, PROMPTS, cplan, alpha=40.0, chat_template=False, max_new_tokens=N
        )
        assert got == want
        static = llm.generate(PROMPTS, {"plan": "rand", "alpha": 40.0}, max_tokens=N)
        assert got != static  # the expert's reading changed the strengths
        with pytest.raises(ValueError, match="give text prompts"):
            llm.generate([[1, 2, 3]], {"plan": "cond"}, max_tokens=2)
        # a conditioned default: applied at the front, never unscaled by the workers
        llm.set_plans({**plans, "cond": cplan}, {"plan": "cond", "alpha": 40.0})
        assert llm.generate(PROMPTS, max_tokens=N) == want
        assert llm.info()[0]["default"] is None
    finally:
        llm.set_plans(plans, None)


@pytest.mark.real
@needs_vllm
def test_conditioned_plan_needs_its_expert(lm, llm, plans):
    cplan = _cplan(lm, plans["rand"])
    expert, llm.expert = llm.expert, None
    try:
        with pytest.raises(ExpertMissingError, match="needs the expert 'smollm2-135m'"):
            llm.set_plans({"cond": cplan})
    finally:
        llm.expert = expert
    assert llm.info()[0]["plans"] == {"rand": [8, 15], "other": [5, 20]}  # nothing replaced


@pytest.mark.real
@needs_vllm
def test_learned_map_equals_hf_with_the_same_deltas(lm, llm, plans):
    """Each request's own delta (the expert, SmolLM2 itself here, reading the prompt) reaches
    the workers: token for token the HF path steered with those deltas; a static request in
    the same batch keeps its plan; a map's default is applied at the front only."""
    import dataclasses

    from expertsteer.learned import learned_generate
    from expertsteer.steer import generate
    from tiny import planted_map

    m = planted_map(lm, lm, layer=10)
    norms = m.deltas(m.read(lm, PROMPTS, cache=False)).norm(dim=1)
    m = dataclasses.replace(m, scale=20.0 / float(norms.mean()))  # deltas of norm ~20
    llm.set_plans({**plans, "map": m})
    try:
        d = llm.deltas("map", PROMPTS)
        torch.testing.assert_close(d, m.deltas(m.read(lm, PROMPTS, cache=False)))
        kw = dict(chat_template=False, max_new_tokens=N)
        got = llm.generate(PROMPTS, {"plan": "map", "alpha": 2.0}, max_tokens=N)
        assert got == generate(lm, PROMPTS, plan=m.plans_of(d), alpha=2.0, **kw)
        assert got != generate(lm, PROMPTS, **kw)  # the deltas steer
        assert got == learned_generate(lm, lm, PROMPTS, m, alpha=2.0, **kw)  # up to float reads
        mixed = llm.generate(PROMPTS[:2], [{"plan": "map"}, {"plan": "rand", "alpha": 40.0}],
                             max_tokens=N)  # fmt: skip
        assert mixed[0] == generate(lm, PROMPTS[:1], plan=m.plans_of(d[:1]), **kw)[0]
        assert mixed[1] == generate(lm, PROMPTS[1:2], plan=plans["rand"], alpha=40.0, **kw)[0]
        with pytest.raises(ValueError, match="give text prompts"):
            llm.generate([[1, 2, 3]], {"plan": "map"}, max_tokens=2)
        llm.set_plans({**plans, "map": m}, {"plan": "map", "alpha": 2.0})
        assert llm.generate(PROMPTS, max_tokens=N) == got
        assert llm.info()[0]["default"] is None
    finally:
        llm.set_plans(plans, None)
