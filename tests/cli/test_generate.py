"""``expertsteer generate``: unsteered and steered completions side by side; bad input (a bad
scope, a damaged plan) is one message."""

from cli_helpers import flat, save_model
from typer.testing import CliRunner

from expertsteer.cli import app
from expertsteer.cli import generate as generate_module
from expertsteer.models import load_model
from expertsteer.plan import TENSORS_NAME, ModelInfo, SteeringPlan
from expertsteer.steer.scope import WRITTEN_SCOPES
from tiny import plan_with_norms, tiny_model, unit


def test_cli_generate_side_by_side(tmp_path):
    lm = tiny_model("llama")
    save_model(lm, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    plan = SteeringPlan({1: unit(32, 0)}, {1: 8.0}, ModelInfo.of(loaded))
    plan.save_pretrained(tmp_path / "plan")
    args = ["generate", "--target", str(tmp_path / "model"), "--steer", str(tmp_path / "plan")]
    result = CliRunner().invoke(
        app, [*args, "--alpha", "2", "--scope", "last:2", "--max-new-tokens", "3", "hi", "ab"]
    )
    assert result.exit_code == 0, result.output
    assert "unsteered" in result.output and "scope last:2" in result.output
    bad = CliRunner().invoke(app, [*args, "--scope", "middle", "hi"])
    assert bad.exit_code != 0


def test_a_failed_plan_load_is_one_message(tmp_path):
    """The CLI part of test_reliability.py::test_no_hooks_left_after_a_failed_plan_load (its
    attach part is in tests/steer/test_attach.py)."""
    lm = tiny_model("llama")
    plan_with_norms(lm).save_pretrained(tmp_path)
    (tmp_path / TENSORS_NAME).write_bytes((tmp_path / TENSORS_NAME).read_bytes()[:40])
    result = CliRunner().invoke(app, ["generate", "hi", "--target", "x", "--steer", str(tmp_path)])
    assert result.exit_code == 1 and "error:" in result.output


def test_cli_bad_input_is_one_message_not_a_traceback(tmp_path):
    """The generate part of test_reliability.py's case (its fit parts: test_fit.py)."""
    runner = CliRunner()
    lm = tiny_model("llama")
    plan_with_norms(lm).save_pretrained(tmp_path / "plan")
    (tmp_path / "plan" / TENSORS_NAME).write_bytes(b"\x00" * 10)
    result = runner.invoke(
        app, ["generate", "hi", "--target", "x", "--steer", str(tmp_path / "plan")]
    )
    assert result.exit_code == 1 and "is not a readable safetensors file" in result.output


def test_a_bad_scope_is_a_usage_error_naming_the_option_before_any_model_loads(monkeypatch):
    def loader(*args, **kwargs):
        raise AssertionError("model loaded")

    monkeypatch.setattr("expertsteer.models.load_model", loader)
    monkeypatch.setattr("expertsteer.plan.SteeringPlan.from_pretrained", loader)
    args = ["generate", "hi", "--target", "x", "--steer", "nowhere", "--scope", "middle"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for --scope: scope must be 'all', 'prompt', 'generated', 'last:K'" in (
        flat(result)
    )
    assert "not 'middle'" in flat(result)


def test_help_lists_the_written_scopes():
    result = CliRunner().invoke(app, ["generate", "--help"])
    assert result.exit_code == 0
    assert f"Tokens steered: {', '.join(WRITTEN_SCOPES)}." in flat(result)
    assert generate_module.generate.__doc__.split("\n")[0] in flat(result)
