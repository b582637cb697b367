"""Shared helpers of the CLI tests: saved tiny models and inputs, the CLI in a subprocess that
can be SIGKILLed at a known point, and output without rich's box drawing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny import align_texts, pair_models, synthetic


def flat(result) -> str:
    """CLI output without rich's box drawing and line wrapping."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def labelled(n_pos: int, n_neg: int) -> list[dict]:
    return [{"text": f"good {i}", "label": 1} for i in range(n_pos)] + [
        {"text": f"bad {i}", "label": 0} for i in range(n_neg)
    ]


def save_model(lm, folder: Path) -> Path:
    """``lm``'s weights and tokenizer as a local model folder."""
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def save_models(tmp_path: Path) -> tuple[Path, Path]:
    """tiny.pair_models() saved as ``tmp_path/expert`` and ``tmp_path/target``."""
    expert, target = pair_models()
    return save_model(expert, tmp_path / "expert"), save_model(target, tmp_path / "target")


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """tiny.synthetic(24) as ``data.jsonl`` and tiny.align_texts(40) as ``align.txt``."""
    data = tmp_path / "data.jsonl"
    write_jsonl(data, [{"text": e.text, "label": e.label} for e in synthetic(24).examples])
    align = tmp_path / "align.txt"
    align.write_text("\n".join(align_texts(40)))
    return data, align


def fit_args(expert: Path, target: Path, data: Path, align: Path, out: Path) -> list[str]:
    return [
        "fit", "--expert", str(expert), "--target", str(target), "--data", str(data),
        "--align-data", str(align), "--pairs", "2", "--seed", "3", "--out", str(out),
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------------
# interruption: the real CLI in a subprocess, SIGKILLed once the expert's states are cached

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


def run_cli(tmp_path: Path, args: list[str], cache: Path, **env) -> subprocess.Popen:
    """``expertsteer ARGS`` in a subprocess (through HARNESS) with its own cache folder."""
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


def cache_entries(cache: Path) -> dict[str, tuple[int, int]]:
    """The cached states files: name → (inode, mtime), to tell untouched files apart."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (cache / "states").glob("*.safetensors")
    }


def kill_once_cached(proc: subprocess.Popen, cache: Path, marker: Path) -> dict:
    """SIGKILL ``proc`` once the expert's two cache entries exist; return them."""
    deadline = time.monotonic() + 300
    while not (marker.exists() and len(cache_entries(cache)) >= 2):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the expert's states never reached the cache"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return cache_entries(cache)
