"""``expertsteer eval``: methods compared on a saved tiny model, bad names and task files as one
message, and an eval SIGKILLed mid-way resumes from the cached states with the same report."""

import json
import random

import pytest
from cli_helpers import cache_entries, flat, kill_once_cached, run_cli, save_model, save_models
from typer.testing import CliRunner

from expertsteer.cli import app
from expertsteer.cli import args as cli_args
from expertsteer.cli.evaluate import DEMO_METHODS
from tiny import NEG, POS, tiny_model, write_task


def test_cli_eval_on_saved_tiny_model(tmp_path):
    lm = tiny_model("llama", seed=4, n_layers=4)
    save_model(lm, tmp_path / "target")
    spec = write_task(tmp_path / "task.jsonl")
    args = ["eval", "--target", str(tmp_path / "target"), "--task", spec]
    args += ["--methods", "none,mean-diff", "--report", str(tmp_path / "r"), "--alphas", "0,2"]
    args += ["--layer-counts", "2", "--pairs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mean-diff" in result.output and "report:" in result.output
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [m["name"] for m in saved["methods"]] == ["none", "mean-diff"]

    bad = CliRunner().invoke(app, [*args[:5], "--methods", "magic", "--report", "x"])
    assert bad.exit_code != 0 and "unknown method 'magic'" in bad.output


def test_max_prompt_chars_reaches_the_eval(tmp_path):
    lm = tiny_model("llama", seed=4, n_layers=4)
    save_model(lm, tmp_path / "target")
    spec = write_task(tmp_path / "task.jsonl")
    argv = ["eval", "--target", str(tmp_path / "target"), "--task", spec, "--report", "r"]
    result = CliRunner().invoke(app, [*argv, "--max-prompt-chars", "3"])
    assert result.exit_code == 1 and "is longer than 3 characters" in flat(result)
    result = CliRunner().invoke(app, [*argv, "--max-prompt-chars", "0"])
    assert result.exit_code == 2 and "--max-prompt-chars" in flat(result)


def test_checkpoint_folder_reaches_the_eval(tmp_path):
    lm = tiny_model("llama", seed=4, n_layers=4)
    save_model(lm, tmp_path / "target")
    spec = write_task(tmp_path / "task.jsonl")
    argv = ["eval", "--target", str(tmp_path / "target"), "--task", spec]
    argv += ["--report", str(tmp_path / "r"), "--methods", "none,mean-diff", "--alphas", "0,2"]
    argv += ["--layer-counts", "2", "--pairs", "2"]
    ck = tmp_path / "ck"
    result = CliRunner().invoke(app, [*argv, "--checkpoint", str(ck)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (ck / "seed0").iterdir()) == [
        "mean-diff.json", "mean-diff.plan", "none.json"
    ]  # fmt: skip
    again = CliRunner().invoke(app, [*argv, "--checkpoint", str(ck)])
    assert again.exit_code == 0 and "(checkpoint)" in flat(again)
    (tmp_path / "file").write_text("x")
    bad = CliRunner().invoke(app, [*argv, "--checkpoint", str(tmp_path / "file")])
    assert bad.exit_code == 2 and "is a file, not a folder" in flat(bad)


def test_unknown_eval_task():
    """The CLI part of test_reliability.py::test_unknown_eval_task."""
    result = CliRunner().invoke(
        app, ["eval", "--target", "x", "--task", "nosuch.jsonl", "--report", "r"]
    )
    assert result.exit_code == 1 and "error: task file nosuch.jsonl does not exist" in result.output


def test_the_demos_methods_are_valid_method_names():
    assert cli_args.method_names(DEMO_METHODS, ["depth"]) == [
        "none",
        "majority",
        "prompt",
        "expert",
        "mean-diff",
        "self-rfm",
        "expertsteer:ridge:depth",
        "control:random-expert:ridge:depth",
        "control:target-as-expert:ridge:depth",
    ]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--alphas", "a,b", "Invalid value for --alphas: 'a,b' is not a comma list of numbers"),
        ("--layer-counts", "0", "--layer-counts: '0' is not a comma list of whole numbers >= 1"),
        ("--seeds", "0,x", "--seeds: '0,x' is not a comma list of whole numbers >= 0"),
    ],
)
def test_bad_grids_are_usage_errors_before_any_model_loads(monkeypatch, option, value, message):
    def loader(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr("expertsteer.models.load_model", loader)
    argv = ["eval", "--target", "x", "--task", "t.jsonl", "--report", "r", option, value]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in flat(result)


# --- interruption: a SIGKILLed `expertsteer eval` resumes from the cached states --------------


def _eval_args(expert, target, task, report) -> list[str]:
    return [
        "eval", "--expert", str(expert), "--target", str(target), "--task", str(task),
        "--methods", "none,expertsteer:ridge", "--pairings", "depth", "--alphas", "0,1",
        "--layer-counts", "1", "--pairs", "2", "--nulls", "1", "--seeds", "2",
        "--report", str(report),
    ]  # fmt: skip


def _without_timings(results) -> dict:
    report = json.loads(results.read_text())
    report.pop("seconds")
    for m in report["methods"]:
        m.pop("seconds", None)
        for s in m["per_seed"]:
            s.pop("seconds", None)
    return report


def test_sigkilled_eval_resumes_from_cached_states_with_the_same_result(tmp_path):
    expert, target = save_models(tmp_path)
    task = tmp_path / "task.jsonl"
    rng = random.Random(0)
    with open(task, "w") as f:
        for k in range(40):
            a, b = rng.sample(POS + NEG, 2)
            f.write(
                json.dumps({"prompt": f"Q{k}: {a} or {b}?", "choices": [a, b], "answer": k % 2})
            )
            f.write("\n")
    cache, marker = tmp_path / "cache-run", tmp_path / "paused"
    args = _eval_args(expert, target, task, tmp_path / "report")

    proc = run_cli(tmp_path, args, cache, PAUSE_AT_EXTRACT=str(target), PAUSE_MARKER=str(marker))
    cached = kill_once_cached(proc, cache, marker)
    assert len(cached) == 2 and not (tmp_path / "report" / "results.json").exists()

    proc = run_cli(tmp_path, args, cache)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert err.count(f"cache hit: {expert} states") == 2
    after = cache_entries(cache)
    assert {k: after[k] for k in cached} == cached

    ref_args = _eval_args(expert, target, task, tmp_path / "ref")
    ref = CliRunner().invoke(app, ref_args, env={"EXPERTSTEER_CACHE": str(tmp_path / "c-ref")})
    assert ref.exit_code == 0, ref.output
    resumed = _without_timings(tmp_path / "report" / "results.json")
    assert resumed == _without_timings(tmp_path / "ref" / "results.json")
    assert [m["name"] for m in resumed["methods"]] == ["none", "expertsteer:ridge:depth"]
