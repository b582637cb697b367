"""``expertsteer fit``: plans from local model folders, bad input as one message (parsed before
any model loads), resuming after a SIGKILL, and bit-identical plans for the same seed."""

import json

import pytest
from cli_helpers import (
    cache_entries,
    fit_args,
    flat,
    kill_once_cached,
    labelled,
    run_cli,
    save_model,
    save_models,
    write_inputs,
    write_jsonl,
)
from typer.testing import CliRunner

import expertsteer.cli.fit as fit_module
from expertsteer.cli import app
from expertsteer.plan import SteeringPlan
from tiny import align_texts, pair_models, plan_files_equal, synthetic


def test_cli_fit_on_local_folders(tmp_path):
    expert, target = pair_models()
    for lm, name in ((expert, "expert"), (target, "target")):
        save_model(lm, tmp_path / name)
    data = tmp_path / "data.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": e.text, "label": e.label}) for e in synthetic().examples)
    )
    align = tmp_path / "align.txt"
    align.write_text("\n".join(align_texts()))
    result = CliRunner().invoke(
        app,
        [
            "fit",
            "--expert",
            str(tmp_path / "expert"),
            "--target",
            str(tmp_path / "target"),
            "--data",
            str(data),
            "--align-data",
            str(align),
            "--pairs",
            "2",
            "--out",
            str(tmp_path / "plan"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "MI matrix (5, 4)" in result.output
    plan = SteeringPlan.from_pretrained(tmp_path / "plan")
    assert len(plan.layers) == 2 and (tmp_path / "plan" / "mi_matrix.png").stat().st_size > 1000
    bad = CliRunner().invoke(
        app,
        [
            "fit",
            "--target",
            str(tmp_path / "target"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert bad.exit_code != 0 and "--expert" in bad.output


# --- bad input: one message, before any model is loaded --------------------------------------


def test_cli_bad_input_is_one_message_not_a_traceback(tmp_path):
    """The fit part of test_reliability.py's case (its generate part: test_generate.py)."""
    runner = CliRunner()
    one_class = write_jsonl(tmp_path / "d.jsonl", labelled(8, 0))
    result = runner.invoke(
        app, ["fit", "--target", "x", "--data", one_class, "--out", str(tmp_path / "p")]
    )
    assert result.exit_code == 1
    assert "error: " in result.output and "every example is positive (1)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "p").exists()

    good = write_jsonl(tmp_path / "g.jsonl", labelled(8, 8))
    result = runner.invoke(
        app,
        [
            "fit",
            "--expert",
            "x",
            "--target",
            "x",
            "--data",
            good,
            "--out",
            str(tmp_path / "p"),
            "--pairing",
            "given",
            "--given",
            "8-10",
        ],
    )
    assert result.exit_code == 2
    assert "'8-10' is not a list of expert:target layer pairs, e.g. '8:10,12:16'" in flat(result)

    result = runner.invoke(
        app,
        [
            "fit",
            "--target",
            "/nonexistent/target",
            "--method",
            "mean-diff",
            "--data",
            good,
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert result.exit_code == 1 and "error: '/nonexistent/target' is neither" in result.output


@pytest.fixture
def no_model_loads(monkeypatch) -> list:
    """Every way the fit reaches a model or tokenizer fails the test (and is recorded)."""
    calls = []

    def loader(*args, **kwargs):
        calls.append(args)
        raise AssertionError("model loaded")

    for where in (
        "expertsteer.models.load_model",
        "expertsteer.models.load_tokenizer",
        "expertsteer.pipeline.load_model",
        "expertsteer.pipeline.load_tokenizer",
    ):
        monkeypatch.setattr(where, loader)
    return calls


@pytest.mark.parametrize("method", ["expertsteer", "mean-diff"])
def test_bad_position_is_a_usage_error_before_any_model_is_loaded(tmp_path, no_model_loads, method):
    """Regression: --position was only checked when the states were read (models loaded)."""
    data = write_jsonl(tmp_path / "d.jsonl", labelled(8, 8))
    args = ["fit", "--expert", "x", "--target", "x", "--data", data, "--method", method]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p"), "--position", "middle"])
    assert no_model_loads == []
    assert result.exit_code == 2, result.output
    assert "Invalid value for --position: must be one of last, mean, not 'middle'" in flat(result)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--method", "magic", "Invalid value for --method: must be one of expertsteer, "),
        ("--aligner", "lasso", "Invalid value for --aligner: must be one of ae, "),
        ("--route", "sideways", "Invalid value for --route: must be one of "),
        ("--align-data", "nosuch.txt", "--align-data must be 'generic' or a text file;"),
        ("--alpha-scale", "nan", "Invalid value for --alpha-scale: must be a finite number"),
    ],
)
def test_bad_options_are_usage_errors_before_any_model_is_loaded(
    tmp_path, no_model_loads, option, value, message
):
    data = write_jsonl(tmp_path / "d.jsonl", labelled(8, 8))
    args = ["fit", "--expert", "x", "--target", "x", "--data", data, "--out", str(tmp_path / "p")]
    result = CliRunner().invoke(app, [*args, option, value])
    assert no_model_loads == []
    assert result.exit_code == 2, result.output
    assert message in flat(result)


def test_the_method_choices_are_expertsteer_and_the_target_only_baselines():
    assert fit_module.FIT_METHODS == ("expertsteer", "mean-diff", "pca", "logistic", "self-rfm")


# --- interruption: a SIGKILLed `expertsteer fit` resumes from the cached states ---------------


def test_sigkilled_fit_resumes_from_cached_states_with_the_same_result(tmp_path):
    expert, target = save_models(tmp_path)
    data, align = write_inputs(tmp_path)
    cache, marker = tmp_path / "cache-run", tmp_path / "paused"
    args = fit_args(expert, target, data, align, tmp_path / "plan")

    proc = run_cli(tmp_path, args, cache, PAUSE_AT_EXTRACT=str(target), PAUSE_MARKER=str(marker))
    cached = kill_once_cached(proc, cache, marker)
    assert len(cached) == 2  # the expert's alignment and contrast states
    assert not (tmp_path / "plan").exists()

    proc = run_cli(tmp_path, args, cache)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert err.count(f"cache hit: {expert} states") == 2  # the expert is not run again
    assert err.count(f"cache hit: {target} states") == 0
    after = cache_entries(cache)
    assert {k: after[k] for k in cached} == cached  # same files, untouched
    assert len(after) == 4

    # the reference: one uninterrupted run (in-process: the same code, a fresh cache)
    ref_args = fit_args(expert, target, data, align, tmp_path / "ref")
    ref = CliRunner().invoke(app, ref_args, env={"EXPERTSTEER_CACHE": str(tmp_path / "c-ref")})
    assert ref.exit_code == 0, ref.output
    plan_files_equal(tmp_path / "plan", tmp_path / "ref")


# --- determinism: the same seed gives bit-identical plans ------------------------------------


def test_same_seed_bit_identical_plans_cli(tmp_path):
    expert, target = save_models(tmp_path)
    data, align = write_inputs(tmp_path)
    for run in ("a", "b"):
        result = CliRunner().invoke(
            app,
            fit_args(expert, target, data, align, tmp_path / f"plan-{run}"),
            env={"EXPERTSTEER_CACHE": str(tmp_path / f"cache-{run}")},
        )
        assert result.exit_code == 0, result.output
    plan_files_equal(tmp_path / "plan-a", tmp_path / "plan-b")


def test_cli_fit_condition_saves_the_experts_probe_beside_the_same_plan(tmp_path):
    """--condition: the same static plan (same seed), plus a probe on the expert fitted on 80 %
    of the examples; load_plan reads a ConditionedPlan. A target-only method conditioned on the
    expert keeps its own direction; without --expert it is a usage error before any load."""
    from expertsteer.artifacts import load_plan
    from expertsteer.condition import ConditionedPlan
    from expertsteer.models import load_model

    expert, target = save_models(tmp_path)
    small, align = write_inputs(tmp_path)  # 24 examples: too few to hold out 20 %
    res = CliRunner().invoke(
        app, [*fit_args(expert, target, small, align, tmp_path / "s"), "--condition"]
    )
    assert res.exit_code == 1 and "need >= 4 of each label" in flat(res)
    assert "give more examples" in flat(res) and not (tmp_path / "s").exists()
    data = tmp_path / "more.jsonl"
    write_jsonl(data, [{"text": e.text, "label": e.label} for e in synthetic(60).examples])
    args = fit_args(expert, target, data, align, tmp_path / "static")
    assert CliRunner().invoke(app, args).exit_code == 0
    res = CliRunner().invoke(
        app, [*fit_args(expert, target, data, align, tmp_path / "c"), "--condition"]
    )
    assert res.exit_code == 0, res.output
    assert f"conditioned on {expert}: probe at block" in flat(res)
    cplan, static = load_plan(tmp_path / "c"), SteeringPlan.from_pretrained(tmp_path / "static")
    assert isinstance(cplan, ConditionedPlan)
    assert cplan.plan.layers == static.layers
    for j in static.layers:
        assert cplan.plan.vectors[j].equal(static.vectors[j])
    assert cplan.probe.expert.fingerprint == load_model(expert).fingerprint
    assert 0.0 <= cplan.probe.metrics["val_auc"] <= 1.0
    own = ["fit", "--method", "mean-diff", "--target", str(target), "--data", str(data)]
    own += ["--out", str(tmp_path / "own"), "--pairs", "2", "--condition"]
    refused = CliRunner().invoke(app, own)
    assert refused.exit_code == 2 and "name the expert with --expert" in flat(refused)
    done = CliRunner().invoke(app, [*own, "--expert", str(expert)])
    assert done.exit_code == 0, done.output
    judged = load_plan(tmp_path / "own")
    assert isinstance(judged, ConditionedPlan) and judged.plan.method == "mean-diff"
