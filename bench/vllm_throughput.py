"""Steering cost on vLLM, and vLLM against our own server (issue 18). Run in .venv-vllm::

    bash scripts/setup_vllm.sh
    .venv-vllm/bin/python bench/vllm_throughput.py --part engine   # steered / unsteered in vLLM
    .venv-vllm/bin/python bench/vllm_throughput.py --part servers  # vLLM's server vs ours

``engine``: one ``SteeredLLM`` (SmolLM2-135M, float32), ``--prompts`` requests of exactly
``--tokens`` greedy tokens each (``ignore_eos``), in rounds that interleave the variants:
``floor`` (no plans, no hooks: upstream vLLM as it is), ``installed`` (plans and hooks in place,
every request unsteered), ``steered 2`` (every request steered at 2 layers), ``steered all``
(all layers) and ``mixed`` (half steered). Tokens per second is the median over rounds; each
ratio is to the floor measured in the same rounds.

``servers``: ``expertsteer serve`` (our HF engine, micro-batches of ``--clients``) and
``expertsteer serve --engine vllm`` (vLLM's OpenAI server, ``--max-num-seqs`` the same) both up,
on loopback; ``--clients`` concurrent completion requests from the stock ``openai`` client,
steered and unsteered, the two servers alternating round by round. Tokens are the servers' own
``usage.completion_tokens`` (our server has no ``ignore_eos``: both stop at EOS or
``--tokens``). The idle server's CPU time during the other's rounds is printed, so a reader
sees it took nothing from the measured one.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The history of the printing press begins",
    "Here is a long story about a dragon who",
    "In this essay I will explain why",
    "The recipe for a good soup starts with",
    "Dear diary, today was the strangest day:",
    "The old man walked into the forest and",
    "Chapter one. The train was late, and",
]
TARGET = "smollm2-135m"


def random_plan(lm, layers, seed=0):
    from expertsteer.plan import ModelInfo, SteeringPlan

    g = torch.Generator().manual_seed(seed)
    vecs = {
        j: torch.nn.functional.normalize(torch.randn(lm.hidden_size, generator=g), dim=0)
        for j in layers
    }
    return SteeringPlan(vecs, {j: 1.0 for j in layers}, ModelInfo.of(lm))


def _info(lm) -> str:
    import transformers
    import vllm

    return (
        f"torch {torch.__version__}, transformers {transformers.__version__}, vllm "
        f"{vllm.__version__}; {lm.name} float32; {os.cpu_count()} CPU cores"
    )


def engine_part(args) -> None:
    from expertsteer.models import load_model
    from expertsteer.vllm_backend import SteeredLLM, model_folder

    lm = load_model(TARGET)
    plans = {
        "two": random_plan(lm, [lm.n_layers // 3, lm.n_layers // 2]),
        "all": random_plan(lm, list(range(lm.n_layers)), 1),
    }
    llm = SteeredLLM(model_folder(TARGET), dtype="float32", max_model_len=512, seed=0)
    prompts = (PROMPTS * args.prompts)[: args.prompts]
    n = len(prompts)
    variants = {
        "floor (no hooks)": (None, [None] * n),
        "installed, unsteered": (plans, [None] * n),
        "steered, 2 layers": (plans, [{"plan": "two", "alpha": 4.0}] * n),
        "steered, all layers": (plans, [{"plan": "all", "alpha": 1.0}] * n),
        "mixed (half steered, 2 layers)": (
            plans,
            [{"plan": "two", "alpha": 4.0} if i % 2 else None for i in range(n)],
        ),
    }
    sampling = {"max_tokens": args.tokens, "ignore_eos": True}
    llm.generate(prompts[:2], None, **sampling)  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, (installed, steering) in variants.items():
            if installed is None:
                llm.llm.collective_rpc("expertsteer_clear")
                llm.plans, llm.default = {}, None
            else:
                llm.set_plans(installed)
            t0 = time.perf_counter()
            outs = llm.complete(prompts, steering, **sampling)
            wall = time.perf_counter() - t0
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            assert tokens == n * args.tokens, tokens
            rates[name].append(tokens / wall)
    print(_info(lm))
    print(
        f"{n} requests × {args.tokens} tokens (ignore_eos, greedy), {args.rounds} interleaved "
        "rounds, median tokens/s"
    )
    print("| variant | tokens/s (median) | per round | ratio to floor |")
    print("|---|---|---|---|")
    floor = statistics.median(rates["floor (no hooks)"])
    for name, r in rates.items():
        med = statistics.median(r)
        rounds = ", ".join(f"{x:.0f}" for x in r)
        print(f"| {name} | {med:.1f} | {rounds} | {med / floor:.3f} |")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 600) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5):
                return time.perf_counter() - t0
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its descendants (vLLM runs its engine in a child)."""
    ticks = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(d.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except OSError:
            pass
        todo += children.get(p, [])
    return total


def servers_part(args) -> None:
    import openai

    from expertsteer.models import load_model

    lm = load_model(TARGET)
    tmp = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    plan_dir = tmp / "two"
    random_plan(lm, [lm.n_layers // 3, lm.n_layers // 2]).save_pretrained(plan_dir)
    cli = [sys.executable, "-c", "from expertsteer.cli import app; app()", "serve"]
    common = ["--target", TARGET, "--steer", f"two={plan_dir}", "--max-batch", str(args.clients)]
    ports = {"ours (HF)": _free_port(), "vLLM": _free_port()}
    env = {**os.environ, "EXPERTSTEER_API_KEY": ""}
    env.pop("EXPERTSTEER_API_KEY")
    procs = {
        "ours (HF)": subprocess.Popen(
            [*cli, *common, "--port", str(ports["ours (HF)"])],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        "vLLM": subprocess.Popen(
            [*cli, *common, "--port", str(ports["vLLM"]), "--engine", "vllm"]
            + ["--vllm-arg=--dtype float32 --max-model-len 512 --seed 0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    }
    try:
        starts = {}
        for name, proc in procs.items():
            starts[name] = _wait(f"http://127.0.0.1:{ports[name]}", proc)
        clients = {
            name: openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
            for name, port in ports.items()
        }
        prompts = (PROMPTS * args.clients)[: args.clients]

        def load(name: str, steered: bool) -> tuple[int, float]:
            client = clients[name]
            extra = {"steering": {"plan": "two", "alpha": 4.0}} if steered else {}

            def ask(prompt: str) -> int:
                r = client.completions.create(
                    model=TARGET, prompt=prompt, max_tokens=args.tokens, temperature=0.0,
                    extra_body=extra,
                )  # fmt: skip
                return r.usage.completion_tokens

            t0 = time.perf_counter()
            with ThreadPoolExecutor(len(prompts)) as pool:
                tokens = sum(pool.map(ask, prompts))
            return tokens, time.perf_counter() - t0

        for name in procs:
            load(name, True)  # warm-up
        rows: dict[tuple[str, bool], list[tuple[int, float]]] = {}
        idle_cpu = {name: 0.0 for name in procs}
        for _ in range(args.rounds):
            for name in procs:
                for steered in (False, True):
                    other = next(n for n in procs if n != name)
                    before = _cpu_seconds(procs[other].pid)
                    rows.setdefault((name, steered), []).append(load(name, steered))
                    idle_cpu[other] += _cpu_seconds(procs[other].pid) - before
        print(_info(lm))
        print(
            f"{len(prompts)} concurrent completion requests × max_tokens {args.tokens} (greedy), "
            f"{args.rounds} rounds alternating the servers; start-up: "
            + ", ".join(f"{n} {s:.0f} s" for n, s in starts.items())
        )
        print("| server | steering | tokens per round | tokens/s (median) | steered/unsteered |")
        print("|---|---|---|---|---|")
        med = {}
        for (name, steered), r in rows.items():
            med[name, steered] = statistics.median(t / w for t, w in r)
        for (name, steered), r in rows.items():
            ratio = f"{med[name, True] / med[name, False]:.3f}" if steered else "-"
            label = "steered (2 layers)" if steered else "unsteered"
            tokens = ", ".join(str(t) for t, _ in r)
            print(f"| {name} | {label} | {tokens} | {med[name, steered]:.1f} | {ratio} |")
        for steered in (False, True):
            label = "steered" if steered else "unsteered"
            print(f"vLLM / ours, {label}: {med['vLLM', steered] / med['ours (HF)', steered]:.2f}×")
        print(
            "idle server's CPU during the other's rounds: "
            + ", ".join(f"{n} {s:.1f} s" for n, s in idle_cpu.items())
        )
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("engine", "servers"), required=True)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    engine_part(args) if args.part == "engine" else servers_part(args)


if __name__ == "__main__":
    main()
