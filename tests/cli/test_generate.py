"""``expertsteer generate``: unsteered and steered completions side by side; bad input (a bad
scope, a damaged plan) is one message; an expert-conditioned plan steers each prompt with its
own α·g(p) (exactly conditioned_generate), and without its expert is one message; a learned map
adds each prompt's own delta (exactly learned_generate)."""

import dataclasses
from types import SimpleNamespace

from cli_helpers import flat, save_model
from typer.testing import CliRunner

from expertsteer.cli import app
from expertsteer.cli import generate as generate_module
from expertsteer.condition import ConditionedPlan, ExpertProbe, conditioned_generate
from expertsteer.learned import learned_generate
from expertsteer.models import load_model
from expertsteer.plan import TENSORS_NAME, ModelInfo, SteeringPlan
from expertsteer.steer import generate as steered_generate
from expertsteer.steer.scope import WRITTEN_SCOPES
from tiny import plan_with_norms, planted_map, tiny_model, unit


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


# --- expert-conditioned plans -------------------------------------------------------------------

COND_PROMPTS = ["hi there", "The quick brown fox"]


def conditioned_setup(tmp_path, recorded_name=None):
    """Saved tiny target and expert, and a conditioned plan folder on them (the probe recording
    the expert under its folder's path, or under ``recorded_name``)."""
    target = load_model(save_model(tiny_model("llama"), tmp_path / "target"))
    expert = load_model(save_model(tiny_model("gpt2", seed=1), tmp_path / "expert"))
    info = ModelInfo.of(expert)
    if recorded_name is not None:
        info = dataclasses.replace(info, name=recorded_name)
    probe = ExpertProbe(info, 1, 30.0 * unit(expert.hidden_size, 5), 0.2)
    cplan = ConditionedPlan(SteeringPlan({1: unit(32, 1)}, {1: 0.8}, ModelInfo.of(target)), probe)
    cplan.save_pretrained(tmp_path / "cplan")
    return target, expert, cplan


def tables(monkeypatch) -> list:
    """The rich tables the generate command prints, kept instead (their cells, unwrapped)."""
    printed: list = []
    monkeypatch.setattr(generate_module, "console", SimpleNamespace(print=printed.append))
    return printed


def cells(table, title: str) -> list[str]:
    (column,) = [c for c in table.columns if c.header == title]
    return list(column._cells)


def test_cli_generate_with_a_conditioned_plan_is_conditioned_generate(tmp_path, monkeypatch):
    target, expert, cplan = conditioned_setup(tmp_path)
    printed = tables(monkeypatch)
    argv = ["generate", *COND_PROMPTS, "--target", str(tmp_path / "target")]
    argv += ["--steer", str(tmp_path / "cplan"), "--alpha", "1.5", "--max-new-tokens", "5"]
    for extra in (["--expert", str(tmp_path / "expert")], []):  # [] : the recorded expert
        result = CliRunner().invoke(app, argv + extra)
        assert result.exit_code == 0, result.output
    want = conditioned_generate(target, expert, COND_PROMPTS, cplan, alpha=1.5, max_new_tokens=5)
    alphas = cplan.alphas(expert, COND_PROMPTS, 1.5)
    plain = steered_generate(target, COND_PROMPTS, max_new_tokens=5)
    for table in printed:
        assert cells(table, "steered") == [t.strip() for t in want]
        assert cells(table, "unsteered") == [t.strip() for t in plain]
        assert cells(table, "α·g(p)") == [f"{float(a):+.3f}" for a in alphas]
        assert alphas[0] < 0 < alphas[1]  # the prompts really get their own strengths
        assert f"conditioned on {tmp_path / 'expert'} (probe at block 1" in table.title


def test_cli_generate_without_the_expert_is_one_message(tmp_path, monkeypatch):
    conditioned_setup(tmp_path, recorded_name="no-such-expert")

    def loader(*args, **kwargs):
        raise AssertionError("model loaded")

    argv = ["generate", "hi", "--target", str(tmp_path / "target")]
    argv += ["--steer", str(tmp_path / "cplan")]
    with monkeypatch.context() as m:  # refused before any model loads
        m.setattr("expertsteer.models.load_model", loader)
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    out = flat(result)
    assert "error:" in out and "this plan is expert-conditioned: it needs the expert" in out
    assert "'no-such-expert', the expert it recorded, does not load here" in out
    assert "pass --expert MODEL" in out and "Traceback" not in result.output
    other = CliRunner().invoke(app, [*argv, "--expert", str(tmp_path / "target")])
    assert other.exit_code == 1 and "is another model" in flat(other)


def test_cli_generate_refuses_an_expert_for_a_static_plan(tmp_path):
    lm = tiny_model("llama")
    save_model(lm, tmp_path / "model")
    SteeringPlan(
        {1: unit(32, 0)}, {1: 8.0}, ModelInfo.of(load_model(tmp_path / "model"))
    ).save_pretrained(tmp_path / "plan")
    argv = [
        "generate",
        "hi",
        "--target",
        str(tmp_path / "model"),
        "--steer",
        str(tmp_path / "plan"),
    ]
    result = CliRunner().invoke(app, [*argv, "--expert", str(tmp_path / "model")])
    assert result.exit_code == 2, result.output
    assert "Invalid value for --expert: is only for expert-conditioned plans" in flat(result)


# --- learned maps -------------------------------------------------------------------------------


def test_cli_generate_with_a_learned_map_is_learned_generate(tmp_path, monkeypatch):
    """A folder holding learned_map.json: each prompt gets its own delta from the expert's
    reading (exactly learned_generate), its norm × α shown per prompt; without the expert it
    is one message."""
    target = load_model(save_model(tiny_model("llama"), tmp_path / "target"))
    expert = load_model(save_model(tiny_model("gpt2", seed=1), tmp_path / "expert"))
    m = planted_map(target, expert, scale=3.0)
    m.save_pretrained(tmp_path / "map")
    printed = tables(monkeypatch)
    argv = ["generate", *COND_PROMPTS, "--target", str(tmp_path / "target")]
    argv += ["--steer", str(tmp_path / "map"), "--alpha", "1.5", "--max-new-tokens", "5"]
    for extra in (["--expert", str(tmp_path / "expert")], []):  # [] : the recorded expert
        result = CliRunner().invoke(app, argv + extra)
        assert result.exit_code == 0, result.output
    want = learned_generate(target, expert, COND_PROMPTS, m, alpha=1.5, max_new_tokens=5)
    norms = m.deltas(m.read(expert, COND_PROMPTS)).norm(dim=1)
    for table in printed:
        assert cells(table, "steered") == [t.strip() for t in want]
        assert cells(table, "‖delta‖") == [f"{float(n) * 1.5:.3g}" for n in norms]
        assert f"reading {tmp_path / 'expert'} (expert block 1 → target block 1" in table.title
    other = CliRunner().invoke(app, [*argv, "--expert", str(tmp_path / "target")])
    assert other.exit_code == 1 and "is another model" in flat(other)
