"""Shared helpers of the steering tests: plans on tiny models, block-output capture, batches."""

from __future__ import annotations

import torch
from transformers import StoppingCriteria

from expertsteer.plan import ModelInfo, SteeringPlan
from tiny import n_hooks, plan_with_norms, unit  # noqa: F401  (re-exported to the steer tests)

PROMPTS = ["hello world", "ab", "The quick brown fox", "xyz q"]


def make_plan(lm, alphas=None, seed=0):
    alphas = alphas or {1: 3.0}
    vectors = {j: unit(lm.hidden_size, seed + j) for j in alphas}
    return SteeringPlan(vectors=vectors, alphas=alphas, target=ModelInfo.of(lm))


class Capture:
    """Every block's output (cloned) of the last forward call."""

    def __init__(self, lm):
        self.out = {}
        self.handles = [
            b.register_forward_hook(self._hook(j)) for j, b in enumerate(lm.layers.blocks)
        ]

    def _hook(self, j):
        def hook(module, args, output):
            self.out[j] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def batch(lm, texts, side):
    return lm.tokenizer(texts, return_tensors="pt", padding=True, padding_side=side)


@torch.no_grad()
def forward(lm, enc):
    if lm.kind == "causal":
        return lm.model(**enc, use_cache=False)
    return lm.model(**enc)


@torch.no_grad()
def greedy(lm, texts, n=5, **kw):
    enc = batch(lm, texts, "left")
    out = lm.model.generate(
        input_ids=enc["input_ids"],  # transformers 4 refuses unused token_type_ids
        attention_mask=enc["attention_mask"],
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        return_dict_in_generate=True,
        output_logits=True,
        **kw,
    )
    return enc, out.sequences, torch.stack(out.logits, 1)  # [B, n, V]


class Interrupt(StoppingCriteria):
    """Raises KeyboardInterrupt at the second generation step."""

    def __init__(self):
        self.calls = 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)
