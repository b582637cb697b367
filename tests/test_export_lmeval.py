"""``export --format lm-eval``: the file lm-evaluation-harness's ``steered`` model loads, checked
by running lm-eval itself (its ``SteeredModel`` hooks and ``simple_evaluate``) against our hooks
and our scoring."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expertsteer.cli import app
from expertsteer.eval.scoring import continuation, option_logprobs
from expertsteer.eval.tasks import Item
from expertsteer.export import EXPORT_FORMATS
from expertsteer.export_lmeval import export_lm_eval, hookpoints
from expertsteer.models import load_model
from expertsteer.plan import ModelInfo, PlanMismatchError, SteeringPlan
from expertsteer.steer import attach
from tiny import export_plan, tiny_model, unit


def save_model(lm, folder):
    """``lm``'s weights and tokenizer as a local model folder (what lm-eval's HFLM loads)."""
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def read(path):
    """The exported file through the restricted unpickler (tensors and plain data only)."""
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    ("arch", "name"), [("llama", "layers.{}"), ("gpt2", "h.{}"), ("gemma3", "layers.{}")]
)
def test_hookpoints_are_our_blocks_in_the_base_model(arch, name):
    lm = tiny_model(arch)
    points = hookpoints(lm.model)
    assert points == {j: name.format(j) for j in range(lm.n_layers)}
    modules = dict(lm.model.base_model.named_modules())  # what lm-eval's steer() walks
    assert all(modules[points[j]] is lm.layers.blocks[j] for j in points)


def test_the_file_holds_our_additions(tmp_path):
    lm = tiny_model("llama", n_layers=4)
    plan = export_plan(lm)  # blocks 1 and 3
    out = export_lm_eval(plan, tmp_path / "plan.pt", alpha=0.5, target=lm)
    config = read(out)
    assert list(config) == ["layers.1", "layers.3"]
    added = SteeringPlan.combine([(plan, torch.tensor([0.5], dtype=torch.float64))])
    for j in plan.layers:
        entry = config[f"layers.{j}"]
        assert entry["action"] == "add" and entry["steering_coefficient"] == 1.0
        assert entry["bias"] is None and entry["head_index"] is None
        assert torch.equal(entry["steering_vector"], added[j][0])  # bit-equal to the hooks'
    unit_file = read(export_lm_eval(plan, tmp_path / "unit.pth", bake_alpha=False, target=lm))
    for j in plan.layers:
        assert torch.equal(unit_file[f"layers.{j}"]["steering_vector"], plan.vectors[j])
        assert unit_file[f"layers.{j}"]["steering_coefficient"] == plan.alphas[j]
    assert EXPORT_FORMATS["lm-eval"] is export_lm_eval


def test_refusals(tmp_path):
    lm = tiny_model("llama", n_layers=4)
    plan = export_plan(lm)
    with pytest.raises(ValueError, match=r"\.pt or \.pth"):
        export_lm_eval(plan, tmp_path / "plan.gguf", target=lm)
    with pytest.raises(ValueError, match="baked"):
        export_lm_eval(plan, tmp_path / "plan.pt", alpha=2.0, bake_alpha=False, target=lm)
    with pytest.raises(PlanMismatchError):
        export_lm_eval(plan, tmp_path / "plan.pt", target=tiny_model("llama", seed=1, n_layers=4))
    with pytest.raises(ValueError, match="6 blocks"):
        export_lm_eval(plan, tmp_path / "plan.pt", target=tiny_model("llama", n_layers=6).model)
    assert not list(tmp_path.iterdir())  # nothing written, not even a temp file


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lm_eval_steered_model_gives_our_logits(tmp_path, arch):
    """lm-eval's ``SteeredModel`` loading the exported file from a model folder (its meta-device
    skeleton names the hook points) computes the logits our hooks give."""
    from lm_eval.models.hf_steered import SteeredModel

    lm = tiny_model(arch, n_layers=4)
    folder = save_model(lm, tmp_path / "model")
    lm = load_model(folder)
    plan = export_plan(lm, {0: 1.5, 2: -2.0})
    out = export_lm_eval(plan, tmp_path / "plan.pt", alpha=3.0, target=str(folder))
    theirs = SteeredModel(
        pretrained=str(folder), steer_path=str(out), device="cpu", dtype="float32"
    )
    ids = lm.tokenizer(["hello world", "steer me"], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        got = theirs._model_call(ids)
        with attach(lm, plan, alpha=3.0):
            ours = lm.model(input_ids=ids).logits
        plain = lm.model(input_ids=ids).logits
    assert not torch.allclose(plain, ours, atol=1e-3)  # the plan changes the logits
    torch.testing.assert_close(got, ours, rtol=0, atol=1e-5)


def test_cli_writes_the_lm_eval_file(tmp_path):
    folder = save_model(tiny_model("llama", n_layers=4), tmp_path / "model")
    plan = export_plan(load_model(folder))  # its target name is the folder
    plan.save_pretrained(tmp_path / "plan")
    runner = CliRunner()
    out = tmp_path / "plan.pt"
    argv = ["export", "--steer", str(tmp_path / "plan"), "--format", "lm-eval", "--out", str(out)]
    res = runner.invoke(app, [*argv, "--alpha", "0.5"])
    assert res.exit_code == 0, res.output
    assert "layers.1, layers.3" in res.output and "--model steered" in res.output
    assert torch.equal(read(out)["layers.3"]["steering_vector"], plan.steering_vectors(0.5)[3])
    res = runner.invoke(app, [*argv, "--no-bake-alpha", "--target", str(folder)])
    assert res.exit_code == 0, res.output
    assert read(out)["layers.1"]["steering_coefficient"] == plan.alphas[1]
    res = runner.invoke(app, [*argv, "--model-hint", "x"])
    assert res.exit_code == 2 and "model-hint" in res.output
    gguf = ["export", "--steer", str(tmp_path / "plan"), "--out", str(tmp_path / "v.gguf")]
    res = runner.invoke(app, [*gguf, "--target", str(folder)])
    assert res.exit_code == 2 and "target" in res.output


# --- the real target, scored by lm-eval's simple_evaluate --------------------------------------

TASK = """\
task: expertsteer_steered
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
"""

ITEMS = [
    Item("Q: What color is the sky on a clear day?\nA:", ("blue", "green", "red"), 0),
    Item("Q: How many legs does a dog have?\nA:", ("four", "two", "six", "eight"), 0),
    Item("The opposite of hot is", ("cold", "warm", "big"), 0),
    Item("Paris is the capital of", ("France", "Spain"), 0),
    Item("Review: I loved every minute of it.\nSentiment:", ("positive", "negative"), 0),
    Item("Review: A dull, boring mess.\nSentiment:", ("positive", "negative"), 1),
    Item("2 + 2 =", ("4", "5", "22"), 0),
    Item("Q: Which animal says moo?\nA: The", ("cow", "cat", "duck"), 0),
    Item("Water freezes at zero degrees", ("Celsius", "Fahrenheit", "Kelvin"), 0),
    Item("Tweet: best day ever, so happy!\nMood:", ("happy", "sad", "angry"), 0),
    Item("The sun rises in the", ("east", "west", "north", "south"), 0),
    Item("Review: Terrible service, never again.\nSentiment:", ("positive", "negative"), 1),
]


def lm_eval_sums(model: str, model_args: dict, tmp_path) -> list[np.ndarray]:
    """Per item lm-eval's summed log-likelihood of each choice (what its ``acc`` ranks). The
    choices are written as we score them (:func:`continuation`), with no delimiter added."""
    import lm_eval  # a test dependency (pyproject)
    from lm_eval.tasks import TaskManager

    data = tmp_path / "items.jsonl"
    rows = [
        {"prompt": it.prompt, "choices": [continuation(it.prompt, c) for c in it.choices]}
        for it in ITEMS
    ]
    data.write_text(
        "".join(json.dumps({**r, "answer": it.answer}) + "\n" for r, it in zip(rows, ITEMS))
    )
    (tmp_path / "task.yaml").write_text(TASK.format(data=data, cache=tmp_path / "datasets"))
    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=["expertsteer_steered"],
        # only our task: indexing lm-eval's ~14k built-in task files takes longer than the run
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        num_fewshot=0,
        log_samples=True,
    )
    samples = sorted(out["samples"]["expertsteer_steered"], key=lambda s: s["doc_id"])
    return [np.array([ll for ll, _ in s["filtered_resps"]]) for s in samples]


@pytest.mark.real
def test_lm_eval_steered_scores_match_ours_on_smollm2(tmp_path, monkeypatch):
    """smollm2-135m steered at two blocks: lm-eval's ``--model steered`` with the exported file
    picks, item by item, the choices our scoring picks with the same plan and α (scope all)."""
    from expertsteer.export_lmeval import steered_model_args

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm = load_model("smollm2-135m")  # float32
    plan = SteeringPlan(
        vectors={j: unit(lm.hidden_size, 100 + j) for j in (8, 18)},
        alphas={8: 30.0, 18: -45.0},  # strong enough to flip some picks
        target=ModelInfo.of(lm),
    )
    alpha = 2.0
    out = export_lm_eval(plan, tmp_path / "plan.pt", alpha=alpha)  # target: the plan's name
    tok = lm.tokenizer
    common = {
        "dtype": "float32",
        "device": "cpu",
        "batch_size": 8,
        "add_bos_token": tok("a")["input_ids"][:1] == [tok.bos_token_id],
    }
    cli_args = dict(kv.split("=", 1) for kv in steered_model_args("smollm2-135m", out).split(","))
    assert cli_args["steer_path"] == str(out)
    plain = lm_eval_sums("hf", {"pretrained": cli_args["pretrained"], **common}, tmp_path)
    steered = lm_eval_sums("steered", {**cli_args, **common}, tmp_path)
    ours_plain = option_logprobs(lm, ITEMS)
    ours = option_logprobs(lm, ITEMS, plan=plan, alpha=alpha)
    for theirs, mine in ((plain, ours_plain), (steered, ours)):
        for ll, s in zip(theirs, mine):
            np.testing.assert_allclose(s[:, 0], ll, rtol=0, atol=2e-4)  # seen: 1e-5
            assert int(np.argmax(ll)) == int(np.argmax(s[:, 0]))
    # the plan changes the scores, and some picks, in both tools alike
    moved = [np.abs(a - b).max() for a, b in zip(plain, steered)]
    assert max(moved) > 0.5
    flips = [int(np.argmax(a)) != int(np.argmax(b)) for a, b in zip(plain, steered)]
    assert any(flips)
    assert flips == [
        int(np.argmax(a[:, 0])) != int(np.argmax(b[:, 0])) for a, b in zip(ours_plain, ours)
    ]
