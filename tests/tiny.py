"""Tiny random-weight models of several architectures, with a character tokenizer (no network)."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from expertsteer.data import Dataset, Example
from expertsteer.models import LoadedModel, wrap_model
from expertsteer.plan import CONFIG_NAME, TENSORS_NAME, ModelInfo, SteeringPlan

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
VOCAB = SPECIALS + list(string.ascii_letters + string.digits + string.punctuation)
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}:{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


def char_tokenizer(add_bos: bool = True, padding_side: str = "right"):
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
        )
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side=padding_side,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


V = len(VOCAB)
D, L = 32, 3
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _common(d: int, n: int) -> dict:
    return dict(
        hidden_size=d,
        num_hidden_layers=n,
        num_attention_heads=4,
        intermediate_size=2 * d,
        vocab_size=V,
        max_position_embeddings=128,
        **IDS,
    )


ARCHS = {
    "llama": lambda d, n: tf.LlamaForCausalLM(
        tf.LlamaConfig(**_common(d, n), num_key_value_heads=2)
    ),
    "qwen2": lambda d, n: tf.Qwen2ForCausalLM(
        tf.Qwen2Config(**_common(d, n), num_key_value_heads=2)
    ),
    "mistral": lambda d, n: tf.MistralForCausalLM(
        tf.MistralConfig(**_common(d, n), num_key_value_heads=2)
    ),
    "gemma3": lambda d, n: tf.Gemma3ForCausalLM(
        tf.Gemma3TextConfig(**_common(d, n), num_key_value_heads=1, head_dim=8, sliding_window=4)
    ),
    "phi3": lambda d, n: tf.Phi3ForCausalLM(tf.Phi3Config(**_common(d, n))),
    "phi": lambda d, n: tf.PhiForCausalLM(tf.PhiConfig(**_common(d, n))),
    "gpt2": lambda d, n: tf.GPT2LMHeadModel(
        tf.GPT2Config(n_embd=d, n_layer=n, n_head=4, vocab_size=V, n_positions=128, **IDS)
    ),
    "gpt_neox": lambda d, n: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**_common(d, n))),
    "opt": lambda d, n: tf.OPTForCausalLM(
        tf.OPTConfig(
            hidden_size=d,
            num_hidden_layers=n,
            num_attention_heads=4,
            ffn_dim=2 * d,
            vocab_size=V,
            max_position_embeddings=128,
            word_embed_proj_dim=d,
            **IDS,
        )
    ),
    "bert": lambda d, n: tf.BertModel(tf.BertConfig(**_common(d, n))),
    "mpnet": lambda d, n: tf.MPNetModel(
        tf.MPNetConfig(**{**_common(d, n), "max_position_embeddings": 130})
    ),
}
ENCODERS = {"bert", "mpnet"}


def tiny_model(
    arch: str, seed: int = 0, padding_side: str = "right", d: int = D, n_layers: int = L
) -> LoadedModel:
    torch.manual_seed(seed)
    model = ARCHS[arch](d, n_layers).eval()
    tok = char_tokenizer(add_bos=True, padding_side=padding_side)
    return wrap_model(model, tok, name=f"tiny-{arch}")


# --- shared by tests/test_pipeline.py and tests/cli/: a sentiment-like toy task, the standard
# expert/target pair, unit vectors, plans with recorded norms, and plan folders compared

POS = ["good", "great", "nice", "happy", "love", "fine", "best"]
NEG = ["bad", "awful", "sad", "hate", "worst", "poor", "ugly"]
NEUTRAL = ["the", "cat", "sat", "on", "a", "mat", "then", "ran", "to", "house", "tree", "blue"]


def synthetic(n: int = 40, seed: int = 0) -> Dataset:
    """``n`` labelled texts: three neutral words and two of the label's words, shuffled."""
    rng = random.Random(seed)
    examples = []
    for k in range(n):
        words = rng.sample(NEUTRAL, 3) + rng.sample(POS if k % 2 == 0 else NEG, 2)
        rng.shuffle(words)
        examples.append(Example(text=" ".join(words) + f" {k}", label=int(k % 2 == 0), group=None))
    return Dataset(spec="synthetic", kind="labelled", examples=tuple(examples))


def align_texts(n: int = 50, seed: int = 1) -> list[str]:
    """``n`` alignment texts, disjoint from :func:`synthetic`'s."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(NEUTRAL + POS + NEG, k=8)) + f" #{k}" for k in range(n)]


def pair_models() -> tuple[LoadedModel, LoadedModel]:
    """The expert (gpt2, width 48, 5 layers) and target (llama, width 32, 4 layers) pair."""
    return tiny_model("gpt2", seed=0, d=48, n_layers=5), tiny_model("llama", seed=1, n_layers=4)


def unit(d: int, seed: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def plan_with_norms(lm, alphas=None, norms=None) -> SteeringPlan:
    """A plan on ``lm`` with random unit vectors and recorded layer norms (10 by default)."""
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


def plan_files_equal(a: Path, b: Path) -> None:
    """Bit-identical tensors, and the same JSON apart from the wall-clock timings."""
    assert (a / TENSORS_NAME).read_bytes() == (b / TENSORS_NAME).read_bytes()
    cfg_a, cfg_b = (json.loads((p / CONFIG_NAME).read_text()) for p in (a, b))
    for cfg in (cfg_a, cfg_b):
        cfg["provenance"].pop("timings_s")
    assert cfg_a == cfg_b


def n_hooks(lm) -> int:
    """Forward and pre-forward hooks on every module of the model."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]


def sentiment_items(n: int = 40) -> tuple:
    """``n`` tweet items over the toy vocabulary, ` positive` (the concept choice) vs
    ` negative`, answered by the word's side (tests/eval: concept transfer)."""
    from expertsteer.eval.tasks import Item

    words = POS + NEG
    return tuple(
        Item(f"Tweet {k}: {words[k % len(words)]}\nSentiment:", (" positive", " negative"),
             int(words[k % len(words)] in NEG), concept=0)
        for k in range(n)
    )  # fmt: skip


def write_task(path, n: int = 48, seed: int = 0) -> str:
    """A two-choice JSONL evaluation task of ``n`` items (tests/eval and tests/cli)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for k in range(n):
            a, b = rng.sample(WORDS, 2)
            rec = {"prompt": f"Q{k}: {a} or {b}?", "choices": [a, b], "answer": k % 2}
            f.write(json.dumps(rec) + "\n")
    return str(path)


def export_plan(lm, alphas=None) -> SteeringPlan:
    """A plan with pairs, norms, config and provenance: what the GGUF export must carry."""
    alphas = alphas or {1: 2.0, 3: -1.25}
    return SteeringPlan(
        vectors={j: unit(lm.hidden_size, 10 + j) for j in alphas},
        alphas=alphas,
        target=ModelInfo.of(lm),
        method="mean-diff",
        pairs=[(5, j) for j in alphas],
        layer_norms={j: 7.0 + j for j in alphas},
        config={"alpha_scale": 0.15},
        provenance={"data": "unit-test"},
    )


def planted_map(target, expert, *, layer: int = 1, rank: int = 3, scale: float = 1.0, seed=0):
    """A :class:`~expertsteer.learned.LearnedMap` with random factors (no training): block
    ``layer`` of ``expert`` to the same block of ``target``, norm 5, the identity standardiser."""
    from expertsteer.learned import LearnedMap

    g = torch.Generator().manual_seed(seed)
    return LearnedMap(
        expert=ModelInfo.of(expert),
        target=ModelInfo.of(target),
        expert_layer=layer,
        target_layer=layer,
        up=torch.randn(target.hidden_size, rank, generator=g) / target.hidden_size**0.5,
        down=torch.randn(rank, expert.hidden_size, generator=g) / expert.hidden_size**0.5,
        mean=torch.zeros(expert.hidden_size),
        std=torch.ones(expert.hidden_size),
        scale=scale,
        norm=5.0,
    )
