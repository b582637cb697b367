import pytest
import torch

from expertsteer.plan import ModelInfo, SteeringPlan
from expertsteer.steer import sequence_logprobs
from expertsteer.tune import layer_order, tune
from tiny import tiny_model

TARGET = ModelInfo("tiny", "abc", n_layers=6, hidden_size=4)


def plan(**kw):
    eye = torch.eye(4)
    args = dict(
        vectors={1: eye[0], 2: eye[1], 4: eye[2]},
        alphas={1: 1.0, 2: 1.0, 4: 1.0},
        target=TARGET,
        pairs=[(0, 1), (3, 2), (5, 4)],
        mi_matrix=torch.tensor([[0.0] * 6] * 6, dtype=torch.float64),
    )
    args.update(kw)
    return SteeringPlan(**args)


def total_alpha(p: SteeringPlan) -> float:
    return sum(p.alphas.values())


def test_finds_the_known_optimum_and_records_the_grid():
    # score peaks where the summed α over the steered layers is 2: α=1 on 2 layers, or α=2 on 1
    res = tune(
        plan(),
        lambda p: -((total_alpha(p) - 2.0) ** 2),
        alphas=(0.0, 0.5, 1.0, 2.0),
        progress=False,
    )
    assert res.score == 0.0
    assert (res.alpha, len(res.layers)) == (1.0, 2)  # tie with (2.0, 1 layer): smaller |α| wins
    assert len(res.grid) == 1 + 3 * 3
    assert res.grid[0] == {"alpha": 0.0, "n_layers": 0, "layers": [1], "score": -4.0}
    best = res.apply_to(plan())
    assert best.layers == list(res.layers) and total_alpha(best) == 2.0


def test_layer_order_follows_mi():
    mi = torch.zeros(6, 6, dtype=torch.float64)
    mi[0, 1], mi[3, 2], mi[5, 4] = 1.0, 3.0, 2.0
    assert layer_order(plan(mi_matrix=mi)) == [2, 4, 1]
    assert layer_order(plan(mi_matrix=None)) == [1, 2, 4]
    res = tune(
        plan(mi_matrix=mi),
        lambda p: float(2 in p.layers and len(p.layers) == 1),
        alphas=(1.0,),
        progress=False,
    )
    assert res.layers == (2,)


def test_select_and_errors():
    sub = plan().select([4, 1])
    assert sub.layers == [1, 4] and sub.pairs == [(0, 1), (5, 4)]
    with pytest.raises(ValueError, match="not among"):
        plan().select([3])
    with pytest.raises(ValueError, match="order"):
        tune(plan(), total_alpha, order=[1, 2], progress=False)
    with pytest.raises(ValueError, match="layer counts"):
        tune(plan(), total_alpha, n_layers=[5], progress=False)


def test_tunes_a_real_steering_metric_on_a_tiny_model():
    lm = tiny_model("llama")
    v = torch.nn.functional.normalize(
        torch.randn(32, generator=torch.Generator().manual_seed(0)), dim=0
    )
    p = SteeringPlan(vectors={1: v}, alphas={1: 4.0}, target=ModelInfo.of(lm))

    def metric(candidate: SteeringPlan) -> float:  # log p("b") − log p("a") after "x y"
        kw = {"plan": candidate} if candidate.alphas[1] != 0 else {}
        b = sequence_logprobs(lm, ["x y"], [" b"], **kw)
        a = sequence_logprobs(lm, ["x y"], [" a"], **kw)
        return float(b - a)

    res = tune(p, metric, alphas=(-1.0, 0.0, 1.0), progress=False)
    scores = {g["alpha"]: g["score"] for g in res.grid}
    assert res.score == max(scores.values()) and len(scores) == 3
    assert scores[-1.0] != scores[0.0] != scores[1.0]  # steering changes the metric


def test_a_batched_metric_sees_every_candidate_once_and_gives_the_same_result():
    score = lambda p: -((total_alpha(p) - 2.0) ** 2)  # noqa: E731
    calls = []

    def metrics(plans):
        calls.append(len(plans))
        return [score(p) for p in plans]

    kw = dict(alphas=(0.0, 0.5, 1.0, 2.0), n_layers=(1, 3), progress=False)
    one = tune(plan(), score, **kw)
    batched = tune(plan(), metrics=metrics, **kw)
    assert calls == [1 + 3 * 2] and batched == one
    with pytest.raises(ValueError, match="pass either metric .* or metrics"):
        tune(plan(), score, metrics=metrics)
    with pytest.raises(ValueError, match="pass either metric"):
        tune(plan())
    with pytest.raises(ValueError, match="metrics gave 1 scores for 7 candidates"):
        tune(plan(), metrics=lambda ps: [0.0], **kw)
