"""The micro-batching engine: who shares a batch, per-row results equal to single requests,
stop strings / EOS / length, shutdown; and a target sharded with an accelerate ``device_map``."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from expertsteer.models import load_model
from expertsteer.serve.engine import Engine, Event, Job, Row, Sampling
from expertsteer.steer import TokenScope, generate
from tiny import tiny_model

PROMPTS = ["hello world", "ab", "The quick brown fox", "xyz q", "one two three four"]
N = 10


def ids_of(lm, prompt):
    return lm.tokenizer(prompt)["input_ids"]


def library(lm, prompt, plan=None, alpha=1.0, scope="all", n=N):
    """The library's own single-prompt greedy generation."""
    kw = {} if plan is None else {"plan": plan, "alpha": alpha, "scope": scope}
    return generate(lm, [prompt], chat_template=False, max_new_tokens=n, batch_size=1, **kw)[0]


class Collect:
    """An ``on_event`` callback that keeps the text and the final event."""

    def __init__(self):
        self.text, self.final, self.done = "", None, threading.Event()

    def __call__(self, ev: Event):
        if ev.kind == "delta":
            self.text += ev.text
        else:
            self.final = ev
            self.done.set()


@pytest.fixture
def engine(lm):
    """A wide batching window: jobs submitted together from this thread share a batch."""
    eng = Engine(lm, max_batch=8, batch_window_s=0.5)
    yield eng
    eng.close()


def submit_all(engine, specs):
    """Submit one job per spec (Job keyword arguments) at once; wait for all of them and for
    the model to be free again (rows are done before their batch's hooks come off)."""
    out = []
    for spec in specs:
        c = Collect()
        engine.submit(Job(on_event=c, **spec))
        out.append(c)
    for c in out:
        assert c.done.wait(60)
    assert engine.wait_idle(60)
    return out


# --- batching -----------------------------------------------------------------------------------


def test_rows_of_one_batch_equal_single_requests(lm, plans, engine):
    """Different plans, α and unsteered rows in one batch: each row gets its own steering."""
    cases = [
        ("hello world", plans["up"], 1.0),
        ("ab", None, 1.0),
        ("The quick brown fox", plans["down"], 0.5),
        ("xyz q", plans["up"], -2.0),
    ]
    got = submit_all(
        engine,
        [
            dict(prompt_ids=ids_of(lm, p), max_new_tokens=N, plan=plan, alpha=a)
            for p, plan, a in cases
        ],
    )
    assert engine.batches == [len(cases)]
    assert [c.text for c in got] == [library(lm, p, plan, a) for p, plan, a in cases]
    assert all(c.final.finish_reason == "length" for c in got)
    assert [c.final.completion_tokens for c in got] == [N] * len(cases)
    assert [c.final.prompt_tokens for c in got] == [len(ids_of(lm, p)) for p, _, _ in cases]


def test_steered_rows_share_a_batch_only_with_the_same_scope(lm, plans, engine):
    last2 = TokenScope.parse("last:2")
    specs = [
        dict(prompt_ids=ids_of(lm, "hello world"), max_new_tokens=N, plan=plans["up"]),
        dict(prompt_ids=ids_of(lm, "ab"), max_new_tokens=N, plan=plans["up"], scope=last2),
        dict(prompt_ids=ids_of(lm, "xyz q"), max_new_tokens=N, scope=last2),  # unsteered
    ]
    got = submit_all(engine, specs)
    assert engine.batches == [2, 1]  # the unsteered row joins the first batch
    assert got[0].text == library(lm, "hello world", plans["up"])
    assert got[1].text == library(lm, "ab", plans["up"], scope="last:2")
    assert got[2].text == library(lm, "xyz q")


def test_batches_by_the_parsed_scope_value(lm, plans, engine):
    """'last:3' and 'last: 3' are one scope: their rows share a batch."""
    a, b = TokenScope.parse("last:3"), TokenScope.parse("last: 3")
    assert a == b and hash(a) == hash(b)
    specs = [
        dict(prompt_ids=ids_of(lm, p), max_new_tokens=N, plan=plans["down"], scope=s)
        for p, s in [("hello world", a), ("ab", b)]
    ]
    got = submit_all(engine, specs)
    assert engine.batches == [2]
    assert [c.text for c in got] == [
        library(lm, p, plans["down"], scope="last:3") for p in ("hello world", "ab")
    ]


def test_sampling_settings_and_seeds_split_batches(lm, engine):
    hot = Sampling(temperature=1.0, top_p=0.9)
    specs = [
        dict(prompt_ids=ids_of(lm, "ab"), max_new_tokens=4),
        dict(prompt_ids=ids_of(lm, "ab"), max_new_tokens=4, sampling=hot),
        dict(prompt_ids=ids_of(lm, "ab"), max_new_tokens=4),
        dict(prompt_ids=ids_of(lm, "ab"), max_new_tokens=4, sampling=Sampling(1.0, 0.9, seed=1)),
        dict(prompt_ids=ids_of(lm, "ab"), max_new_tokens=4, sampling=Sampling(1.0, 0.9, seed=1)),
    ]
    got = submit_all(engine, specs)
    assert engine.batches == [2, 1, 1, 1]  # greedy pair; sampled; each seeded job alone
    assert got[3].text == got[4].text  # the same seed samples the same tokens


def test_max_batch_one_is_a_lock(lm, plans):
    engine = Engine(lm, max_batch=1, batch_window_s=0.5)
    try:
        specs = [dict(prompt_ids=ids_of(lm, p), max_new_tokens=4) for p in PROMPTS[:3]]
        got = submit_all(engine, specs)
    finally:
        engine.close()
    assert engine.batches == [1, 1, 1]
    assert [c.text for c in got] == [library(lm, p, n=4) for p in PROMPTS[:3]]


def test_run_and_wait_idle(lm, plans):
    engine = Engine(lm)
    try:
        job = dict(prompt_ids=ids_of(lm, "ab"), max_new_tokens=5, plan=plans["up"], alpha=0.5)
        text, final = engine.run(job)
        assert engine.wait_idle(10)
    finally:
        engine.close()
    assert text == library(lm, "ab", plans["up"], 0.5, n=5)
    assert final.kind == "done" and final.finish_reason == "length"


# --- jobs ---------------------------------------------------------------------------------------


def test_jobs_carry_a_parsed_scope(lm):
    with pytest.raises(TypeError, match="TokenScope"):
        Job(prompt_ids=[1], max_new_tokens=1, on_event=print, scope="last:2")
    with pytest.raises(ValueError, match="last:K"):
        Job(prompt_ids=[1], max_new_tokens=1, on_event=print, scope=TokenScope.parse([[0]]))
    with pytest.raises(ValueError, match="max_batch"):
        Engine(lm, max_batch=0)


def test_close_finishes_what_was_queued_then_refuses_jobs(lm):
    engine = Engine(lm, max_batch=1, batch_window_s=0.0)
    got = [Collect() for _ in range(3)]
    for c in got:
        engine.submit(Job(prompt_ids=ids_of(lm, "hello world"), max_new_tokens=8, on_event=c))
    engine.close()  # the stop marker queues behind the jobs already submitted
    assert engine.wait_idle(0)
    assert [c.final.kind for c in got] == ["done"] * 3
    assert engine.batches == [1, 1, 1]
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit(Job(prompt_ids=[1], max_new_tokens=1, on_event=print))


# --- stop strings, EOS, length --------------------------------------------------------------------


def test_stop_strings_cut_the_text(lm, engine):
    full = library(lm, "hello world", n=N)
    stop = full[5:8]
    cut = full.index(stop)
    got = submit_all(
        engine,
        [dict(prompt_ids=ids_of(lm, "hello world"), max_new_tokens=N, stop=(stop, "\x00never"))],
    )[0]
    assert got.text == full[:cut] and got.final.finish_reason == "stop"
    assert got.final.completion_tokens < N


def test_eos_stops_a_row_and_counts_the_eos_token(lm, engine):
    prompt = ids_of(lm, "hello world")
    with torch.no_grad():
        out = lm.model.generate(
            input_ids=torch.tensor([prompt]), max_new_tokens=N, do_sample=False, pad_token_id=0
        )
    new = out[0, len(prompt) :].tolist()
    k = next(i for i, t in enumerate(new) if i > 0 and t not in new[:i])  # first fresh token
    engine.eos = engine.eos | {new[k]}
    got = submit_all(engine, [dict(prompt_ids=prompt, max_new_tokens=N)])[0]
    want = lm.tokenizer.decode(new[:k], skip_special_tokens=True)
    assert got.text == want and got.final.finish_reason == "stop"
    assert got.final.completion_tokens == k + 1


def test_row_holds_back_a_possible_stop_string(lm):
    """Deltas never show text that a stop string could still claim; a stop cuts it off."""
    events = []
    tok = lm.tokenizer
    job = Job(prompt_ids=[1], max_new_tokens=20, on_event=events.append, stop=("c d",))
    row = Row(job, tok, eos={2})
    for ch in "abc":
        row.add(tok.convert_tokens_to_ids(ch))
    # decoded so far "a b c": the last 2 characters could start "c d", so they wait
    assert "".join(e.text for e in events) == "a b"
    row.add(tok.convert_tokens_to_ids("d"))
    assert "".join(e.text for e in events if e.kind == "delta") == "a b "
    assert events[-1].kind == "done" and events[-1].finish_reason == "stop"
    assert row.done


def test_row_finishes_on_eos_length_and_cancel(lm):
    tok = lm.tokenizer
    a = tok.convert_tokens_to_ids("a")
    events = []
    row = Row(Job([1, 5], 3, events.append), tok, eos={2})
    row.add(a)
    row.add(2)
    assert events[-1] == Event("done", finish_reason="stop", prompt_tokens=2, completion_tokens=2)
    events.clear()
    row = Row(Job([1], 2, events.append), tok, eos={2})
    row.add(a)
    row.add(a)
    assert [e.kind for e in events][-1] == "done" and events[-1].finish_reason == "length"
    assert "".join(e.text for e in events) == "a a"
    events.clear()
    job = Job([1], 5, events.append)
    row = Row(job, tok, eos={2})
    job.cancelled = True
    row.add(a)
    assert row.done and events == []  # a cancelled row ends silently: its client is gone


# --- a target sharded with an accelerate device_map ---------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, lm):
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model("llama", seed=3, n_layers=4).model
    model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def _disk_offload(saved):
    """Blocks 1 and 3 offloaded to disk (meta on the module, loaded per forward), rest on CPU."""
    dm = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu"}
    dm |= {"lm_head": "cpu", **{f"model.layers.{i}": "cpu" for i in (0, 2)}}
    dm |= {f"model.layers.{i}": "disk" for i in (1, 3)}
    return load_model(saved, device_map=dm, offload_folder=str(saved / "offload"))


def _cpu_offload(saved):
    """Every weight held by accelerate's cpu_offload hooks; the modules hold meta tensors."""
    from accelerate import cpu_offload

    from expertsteer.models import wrap_model

    plain = load_model(saved)
    cpu_offload(plain.model, execution_device=torch.device("cpu"))
    return wrap_model(plain.model, plain.tokenizer, name=str(saved))


@pytest.mark.parametrize("shard", [_disk_offload, _cpu_offload], ids=["disk", "cpu_offload"])
def test_device_map_steering_equals_unsharded(saved, shard, make_plan):
    ref = load_model(saved)
    sharded = shard(saved)
    assert any(p.device.type == "meta" for p in sharded.model.parameters())
    assert sharded.fingerprint == ref.fingerprint  # a plan fitted on one applies to the other
    plan = make_plan(ref, {1: 1.5, 2: -1.0, 3: 0.8})
    plans = [plan, None, -plan, plan]
    kw = dict(plan=plans, chat_template=False, max_new_tokens=10, alpha=[1.0, 1.0, 0.5, 2.0])
    want = generate(ref, PROMPTS[:4], **kw)
    assert generate(sharded, PROMPTS[:4], **kw) == want
    assert want[0] != generate(ref, PROMPTS[:1], chat_template=False, max_new_tokens=10)[0]
    engine = Engine(sharded, max_batch=4)  # the server's path: per-row plans in one batch
    try:
        ids = [sharded.tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
        jobs = [
            dict(prompt_ids=i, max_new_tokens=10, plan=p, alpha=a)
            for i, p, a in zip(ids, plans, kw["alpha"])
        ]
        with ThreadPoolExecutor(4) as pool:
            got = [text for text, _ in pool.map(engine.run, jobs)]
    finally:
        engine.close()
    assert got == want
