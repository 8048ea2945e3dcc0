"""The llama architecture in GGUF: Hugging Face ``LlamaForCausalLM`` <-> llama.cpp.

What llama.cpp expects (shared/specs/formats.md sections 1.3-1.5):

- hyper-parameters under ``llama.*`` with llama.cpp's value types (UINT32 counts, FLOAT32 eps
  and rope base);
- tensors under llama.cpp's names (``token_embd``, ``blk.N.attn_q``, ..., ``output``); ``output``
  is left out when the LM head is tied to the embeddings (llama.cpp then reuses token_embd);
- q_proj / k_proj rows (and biases) permuted: llama.cpp's llama graph applies RoPE to adjacent
  pairs (2i, 2i+1) of each head, Hugging Face's to halves (i, i + D/2). Within each head, GGUF
  row 2i + t is HF row t * D/2 + i. Quant blocks run along rows, so the permutation moves whole
  encoded rows and commutes with quantization: :func:`permute_rows` works on floats and on the
  encoded bytes alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = [
    "LlamaTensor",
    "is_llama",
    "llama_config_values",
    "llama_metadata",
    "llama_tensors",
    "permute_rows",
    "unpermute_rows",
    "rope_freq_factors",
]


@dataclass(frozen=True)
class LlamaTensor:
    hf_name: str          # state_dict name in LlamaForCausalLM
    gguf_name: str        # llama.cpp's name
    role: str             # "token_embd", "output", "attn_q", ..., "norm": picks default types
    permute_heads: int    # 0: no permutation; else the head count of the Q/K row permutation


def is_llama(model: Any) -> bool:
    """A Hugging Face ``LlamaForCausalLM`` (or a prepared/converted copy of one)."""
    cfg = getattr(model, "config", None)
    return (getattr(cfg, "model_type", None) == "llama" and hasattr(model, "lm_head")
            and hasattr(getattr(model, "model", None), "layers"))


def _rope(cfg: Any) -> Dict[str, Any]:
    # transformers >= 5 keeps rope settings in rope_parameters; older versions in rope_theta + rope_scaling.
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    if "rope_theta" not in params and getattr(cfg, "rope_theta", None) is not None:
        params["rope_theta"] = cfg.rope_theta
    scaling = getattr(cfg, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
        params.setdefault("rope_type", scaling.get("rope_type", scaling.get("type")))
    params.setdefault("rope_theta", 10000.0)
    params["rope_type"] = params.get("rope_type") or "default"
    return params


def llama_config_values(cfg: Any) -> Dict[str, Any]:
    """The hyper-parameters of a ``LlamaConfig`` that the export needs, checked."""
    n_head = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_head)
    hidden = int(cfg.hidden_size)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // n_head)
    if head_dim % 2:
        raise ValueError(f"llama: head_dim {head_dim} is odd; RoPE needs pairs")
    if n_head % n_kv:
        raise ValueError(f"llama: {n_head} attention heads are not a multiple of {n_kv} key/value heads")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"llama.cpp's llama graph uses SiLU; this model uses {cfg.hidden_act!r}")
    if getattr(cfg, "mlp_bias", False):
        raise ValueError("llama.cpp's llama graph has no FFN biases (config.mlp_bias=True)")
    return {
        "n_head": n_head, "n_kv": n_kv, "hidden": hidden, "head_dim": head_dim,
        "n_layer": int(cfg.num_hidden_layers), "n_ff": int(cfg.intermediate_size),
        "vocab": int(cfg.vocab_size), "eps": float(cfg.rms_norm_eps),
        "ctx": int(getattr(cfg, "max_position_embeddings", 2048) or 2048),
        "rope": _rope(cfg), "attention_bias": bool(getattr(cfg, "attention_bias", False)),
        "tied": bool(getattr(cfg, "tie_word_embeddings", False)),
    }


def rope_freq_factors(rope: Dict[str, Any], head_dim: int) -> np.ndarray:
    """Llama 3 RoPE scaling as per-frequency divisors (llama.cpp's ``rope_freqs`` tensor):
    frequencies whose wavelength exceeds the original context / low_freq_factor are divided by
    ``factor``, those shorter than original context / high_freq_factor are kept, and the band in
    between is blended smoothly (Meta's Llama 3.1 recipe, which Hugging Face's "llama3" rope
    type implements)."""
    base = float(rope["rope_theta"])
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = np.where(wavelen < old_ctx / high, 1.0,
                   np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


def llama_metadata(cfg: Any, name: Optional[str] = None) -> List[Tuple[str, Any, str]]:
    """``(key, value, GGUF value type)`` for ``general.architecture`` and the ``llama.*`` keys."""
    v = llama_config_values(cfg)
    rope = v["rope"]
    keys: List[Tuple[str, Any, str]] = [("general.architecture", "llama", "STRING")]
    if name:
        keys.append(("general.name", name, "STRING"))
    keys += [
        ("llama.context_length", v["ctx"], "UINT32"),
        ("llama.embedding_length", v["hidden"], "UINT32"),
        ("llama.block_count", v["n_layer"], "UINT32"),
        ("llama.feed_forward_length", v["n_ff"], "UINT32"),
        ("llama.attention.head_count", v["n_head"], "UINT32"),
        ("llama.attention.head_count_kv", v["n_kv"], "UINT32"),
        ("llama.rope.freq_base", float(rope["rope_theta"]), "FLOAT32"),
        ("llama.attention.layer_norm_rms_epsilon", v["eps"], "FLOAT32"),
        ("llama.vocab_size", v["vocab"], "UINT32"),
        ("llama.rope.dimension_count", v["head_dim"], "UINT32"),
    ]
    if v["head_dim"] != v["hidden"] // v["n_head"]:
        keys += [("llama.attention.key_length", v["head_dim"], "UINT32"),
                 ("llama.attention.value_length", v["head_dim"], "UINT32")]
    kind = rope["rope_type"]
    if kind == "linear":
        keys += [("llama.rope.scaling.type", "linear", "STRING"),
                 ("llama.rope.scaling.factor", float(rope["factor"]), "FLOAT32")]
    elif kind not in ("default", "llama3"):
        raise ValueError(f"llama: rope type {kind!r} is not supported by to_gguf (default, linear, llama3)")
    return keys


def llama_tensors(cfg: Any) -> List[LlamaTensor]:
    """Every tensor of the GGUF file, in llama.cpp's order, with its Hugging Face source."""
    v = llama_config_values(cfg)
    out = [LlamaTensor("model.embed_tokens.weight", "token_embd.weight", "token_embd", 0)]
    for i in range(v["n_layer"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out.append(LlamaTensor(p + "input_layernorm.weight", b + "attn_norm.weight", "norm", 0))
        for proj, gname, heads in (("q_proj", "attn_q", v["n_head"]), ("k_proj", "attn_k", v["n_kv"]),
                                   ("v_proj", "attn_v", 0), ("o_proj", "attn_output", 0)):
            out.append(LlamaTensor(f"{p}self_attn.{proj}.weight", f"{b}{gname}.weight", gname, heads))
            if v["attention_bias"]:
                out.append(LlamaTensor(f"{p}self_attn.{proj}.bias", f"{b}{gname}.bias", "bias", heads))
        out.append(LlamaTensor(p + "post_attention_layernorm.weight", b + "ffn_norm.weight", "norm", 0))
        for proj, gname in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            out.append(LlamaTensor(f"{p}mlp.{proj}.weight", f"{b}{gname}.weight", gname, 0))
    out.append(LlamaTensor("model.norm.weight", "output_norm.weight", "norm", 0))
    out.append(LlamaTensor("lm_head.weight", "output.weight", "output", 0))
    return out


def _check_heads(rows: int, n_head: int) -> int:
    if n_head <= 0 or rows % (2 * n_head):
        raise ValueError(f"cannot permute {rows} rows for {n_head} heads (need a multiple of 2 * heads)")
    return rows // n_head // 2


def permute_rows(x: Any, n_head: int) -> Any:
    """HF -> GGUF row order of q_proj/k_proj: within each head, row ``2i + t`` takes row
    ``t * D/2 + i``. ``x`` is a torch tensor or numpy array whose first dimension is the rows
    (any trailing shape: float weights, biases, or encoded rows as ``[rows, bytes_per_row]``)."""
    half = _check_heads(x.shape[0], n_head)
    # torch and numpy both have reshape/swapaxes with these meanings.
    return x.reshape(n_head, 2, half, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def unpermute_rows(x: Any, n_head: int) -> Any:
    """GGUF -> HF row order (the inverse of :func:`permute_rows`)."""
    half = _check_heads(x.shape[0], n_head)
    return x.reshape(n_head, half, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
