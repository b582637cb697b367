"""``expertsteer export`` and ``expertsteer import-gguf``: a plan to a llama.cpp control vector
and back, with the format and the alpha options checked."""

import torch
from cli_helpers import flat, save_model
from typer.testing import CliRunner

from expertsteer.cli import app
from expertsteer.cli.export import EXPORT_FORMATS
from expertsteer.export import read_gguf
from expertsteer.models import load_model
from expertsteer.plan import SteeringPlan
from tiny import export_plan, tiny_model


def test_cli_export_and_import(tmp_path):
    folder = save_model(tiny_model("llama", n_layers=4), tmp_path / "model")
    target = load_model(folder)
    plan = export_plan(target)
    plan.save_pretrained(tmp_path / "plan")
    runner = CliRunner()
    out = tmp_path / "v.gguf"
    args = ["export", "--steer", str(tmp_path / "plan"), "--format", "gguf", "--out", str(out)]
    res = runner.invoke(app, [*args, "--alpha", "0.5"])
    assert res.exit_code == 0, res.output
    assert torch.equal(read_gguf(out)[0][3], plan.steering_vectors(0.5)[3])
    res = runner.invoke(app, [*args, "--no-bake-alpha"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*args, "--no-bake-alpha", "--alpha", "2"])
    assert res.exit_code == 1 and "baked" in res.output
    res = runner.invoke(app, [*args[:-2], "--format", "safetensors", "--out", str(out)])
    assert res.exit_code != 0 and "gguf" in res.output
    res = runner.invoke(
        app, ["import-gguf", str(out), "--target", str(folder), "--out", str(tmp_path / "back")]
    )
    assert res.exit_code == 0, res.output
    back = SteeringPlan.from_pretrained(tmp_path / "back")
    assert back.alphas == plan.alphas
    assert all(torch.equal(back.vectors[j], plan.vectors[j]) for j in plan.layers)


def test_an_unknown_format_is_a_usage_error_listing_the_formats(tmp_path):
    argv = ["export", "--steer", str(tmp_path / "nowhere"), "--out", str(tmp_path / "v.x")]
    result = CliRunner().invoke(app, [*argv, "--format", "onnx"])
    assert result.exit_code == 2, result.output
    formats = ", ".join(EXPORT_FORMATS.names)
    assert f"Invalid value for --format: must be one of {formats}, not 'onnx'" in flat(result)
    assert not (tmp_path / "v.x").exists()


def test_a_conditioned_plan_needs_direction_only_and_a_learned_map_is_refused(tmp_path):
    """Fixed-vector files cannot carry a per-input strength or delta: a conditioned plan is
    refused unless --direction-only (then exactly its direction is written), a map always."""
    from expertsteer.condition import ConditionedPlan, ExpertProbe
    from expertsteer.plan import ModelInfo
    from tiny import planted_map, unit

    target, expert = tiny_model("llama", n_layers=4), tiny_model("gpt2", seed=1)
    plan = export_plan(target)
    probe = ExpertProbe(ModelInfo.of(expert), 1, unit(expert.hidden_size, 2), 0.0)
    ConditionedPlan(plan, probe).save_pretrained(tmp_path / "cond")
    planted_map(target, expert).save_pretrained(tmp_path / "map")
    out = tmp_path / "v.gguf"
    args = ["export", "--format", "gguf", "--out", str(out), "--steer"]
    res = CliRunner().invoke(app, [*args, str(tmp_path / "cond")])
    assert res.exit_code == 2 and "is expert-conditioned" in flat(res)
    assert "--direction-only" in flat(res) and not out.exists()
    res = CliRunner().invoke(app, [*args, str(tmp_path / "cond"), "--direction-only"])
    assert res.exit_code == 0, res.output
    assert torch.equal(read_gguf(out)[0][3], plan.steering_vectors()[3])
    res = CliRunner().invoke(app, [*args, str(tmp_path / "map")])
    assert res.exit_code == 2 and "holds a learned map" in flat(res)
