"""Tiny random-weight models of several architectures, with a character tokenizer (no network)."""

from __future__ import annotations

import string

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from expertsteer.models import LoadedModel, wrap_model

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
