"""Tokenizers in GGUF: a Hugging Face (fast) tokenizer <-> llama.cpp's ``tokenizer.ggml.*`` keys.

Two llama.cpp tokenizer models are covered:

- ``"gpt2"``: byte-level BPE (GPT-2, SmolLM, Llama 3, ...). Tokens are written in their
  byte-to-unicode form with the merges; llama.cpp re-implements the pre-tokenizer (the regex
  that splits text before BPE) from the name in ``tokenizer.ggml.pre``. llama.cpp's converter
  picks that name by hashing the tokens of a probe string against a table of known models; here
  it is read from the pre-tokenizer's structure instead, for the splits llama.cpp implements and
  this module recognizes (:data:`PRE_TOKENIZERS`); anything else needs an explicit ``pre=``.
- ``"llama"``: SentencePiece-style BPE with byte fallback (Llama 1/2, Mistral, TinyLlama, ...):
  pieces with ``▁`` for spaces, ``<0xXX>`` byte tokens, and per-token scores. llama.cpp merges
  the adjacent pair whose merged piece has the highest score, so a merge of rank r gives its
  result the score -r: the same merge order as the Hugging Face merges list.

Token types follow llama.cpp: 1 normal, 2 unknown, 3 control (special added tokens),
4 user-defined (other added tokens), 5 unused (ids the tokenizer lacks, written as ``[PADn]``,
up to the embedding's row count), 6 byte.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "PRE_TOKENIZERS",
    "TokenizerExportError",
    "tokenizer_metadata",
    "tokenizer_from_metadata",
    "detect_pre_tokenizer",
]

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The regex Llama 3's tokenizer.json splits with before its byte-level BPE.
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

#: llama.cpp pre-tokenizer names this module maps to and from Hugging Face pre-tokenizers:
#: name -> (structure, clean_up_tokenization_spaces). "bytelevel": the GPT-2 regex inside
#: ByteLevel; "digits+bytelevel": single digits split off first (StarCoder, SmolLM); "llama3":
#: the Llama 3 regex, then ByteLevel without its own regex. smollm and starcoder differ only in
#: whether decoding cleans up spaces.
PRE_TOKENIZERS: Dict[str, Tuple[str, bool]] = {
    "gpt-2": ("bytelevel", True),
    "smollm": ("digits+bytelevel", False),
    "starcoder": ("digits+bytelevel", True),
    "llama-bpe": ("llama3", True),
}
_PRE_ALIASES = {"gpt2": "gpt-2", "llama3": "llama-bpe", "llama-v3": "llama-bpe", "refact": "starcoder", "codeshell": "starcoder"}


class TokenizerExportError(ValueError):
    """The tokenizer cannot be written as llama.cpp would read it."""


def _backend_json(tokenizer: Any) -> Dict[str, Any]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None and type(tokenizer).__module__.startswith("tokenizers"):
        backend = tokenizer
    if backend is None:
        raise TokenizerExportError(
            f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer; load it with "
            "AutoTokenizer.from_pretrained(..., use_fast=True)")
    return json.loads(backend.to_str())


def _flatten(node: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        key = "pretokenizers" if "pretokenizers" in node else "normalizers" if "normalizers" in node else "decoders"
        return [x for child in node.get(key, []) for x in _flatten(child)]
    return [node]


def _regex_of(node: Dict[str, Any]) -> Optional[str]:
    pattern = node.get("pattern") or {}
    return pattern.get("Regex") if isinstance(pattern, dict) else None


def detect_pre_tokenizer(tokenizer: Any, _json: Optional[Dict[str, Any]] = None) -> Optional[str]:
    """The llama.cpp ``tokenizer.ggml.pre`` name for a byte-level BPE tokenizer, or None when
    its pre-tokenizer is not one this module recognizes."""
    j = _json if _json is not None else _backend_json(tokenizer)
    parts = _flatten(j.get("pre_tokenizer"))
    kinds = [p.get("type") for p in parts]
    clean = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False))
    structure = None
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True) and not parts[0].get("add_prefix_space"):
        structure = "bytelevel"
    elif (kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits")
          and parts[1].get("use_regex", True) and not parts[1].get("add_prefix_space")):
        structure = "digits+bytelevel"
    elif (kinds == ["Split", "ByteLevel"] and _regex_of(parts[0]) == _LLAMA3_RE
          and str(parts[0].get("behavior", "")).lower() == "isolated" and not parts[0].get("invert")
          and not parts[1].get("use_regex", True)):
        structure = "llama3"
    if structure is None:
        return None
    matches = [name for name, (s, c) in PRE_TOKENIZERS.items() if s == structure]
    exact = [name for name in matches if PRE_TOKENIZERS[name][1] == clean]
    return (exact or matches)[0]


def _vocab_size(j: Dict[str, Any], n_vocab: Optional[int]) -> int:
    ids = list(j["model"]["vocab"].values()) + [t["id"] for t in j.get("added_tokens", [])]
    n = max(ids) + 1 if ids else 0
    if n_vocab is not None:
        if n > n_vocab:
            raise TokenizerExportError(f"the tokenizer has token id {n - 1} but the model's vocabulary is {n_vocab}")
        n = n_vocab
    return n


def _special_ids(tokenizer: Any) -> Dict[str, int]:
    out = {}
    for key, attr in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unknown", "unk_token_id"),
                      ("padding", "pad_token_id"), ("seperator", "sep_token_id")):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int) and v >= 0:
            out[key] = v
    return out


def _adds_special(tokenizer: Any, token_id: Optional[int], first: bool) -> bool:
    """Whether encoding with special tokens puts ``token_id`` first (bos) / last (eos); read
    from the tokenizer's behavior rather than its flags, which differ between versions."""
    if token_id is None or not hasattr(tokenizer, "encode"):
        return False
    plain = tokenizer.encode("a", add_special_tokens=False)
    ids = tokenizer.encode("a", add_special_tokens=True)
    if len(ids) <= len(plain):
        return False
    return (ids[0] == token_id and ids[1:1 + len(plain)] == plain) if first else (
        ids[-1] == token_id and ids[-1 - len(plain):-1] == plain)


def _merges(model: Dict[str, Any]) -> List[str]:
    out = []
    for m in model.get("merges", []):
        if isinstance(m, str):
            out.append(m)
        else:
            a, b = m
            out.append(f"{a} {b}")
    return out


def tokenizer_metadata(tokenizer: Any, n_vocab: Optional[int] = None,
                       pre: Optional[str] = None) -> List[Tuple[str, Any, str, Optional[str]]]:
    """``(key, value, value type, array element type)`` for every ``tokenizer.*`` key llama.cpp
    reads, from a Hugging Face fast tokenizer. ``n_vocab``: the embedding's row count (token
    ids the tokenizer lacks become unused ``[PADn]`` tokens). ``pre``: the llama.cpp
    pre-tokenizer name for byte-level BPE, when detection does not know the tokenizer."""
    j = _backend_json(tokenizer)
    model = j.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerExportError(
            f"only BPE tokenizers are exported to GGUF (byte-level 'gpt2' or SentencePiece-style "
            f"'llama'); this one is {model.get('type')!r}")
    n = _vocab_size(j, n_vocab)
    added = {t["id"]: t for t in j.get("added_tokens", [])}
    vocab = model["vocab"]
    by_id: Dict[int, str] = {i: t for t, i in vocab.items()}
    for i, t in added.items():
        by_id[i] = t["content"]
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
    types = [NORMAL if i in by_id else UNUSED for i in range(n)]
    for i, t in added.items():
        types[i] = CONTROL if t.get("special") else USER_DEFINED

    spm = bool(model.get("byte_fallback"))
    keys: List[Tuple[str, Any, str, Optional[str]]] = []
    merges = _merges(model)
    if spm:
        unk = model.get("unk_token")
        score = {t: 0.0 for t in tokens}
        produced = set()
        for rank, m in enumerate(merges):
            a, b = m.split(" ", 1)
            if a + b not in produced:
                produced.add(a + b)
                score[a + b] = -float(rank)
        floor = -float(len(merges) + 1)
        scores = []
        for i, t in enumerate(tokens):
            if re.fullmatch(r"<0x[0-9A-F]{2}>", t):  # llama.cpp finds byte fallback tokens by this text
                types[i] = BYTE
            elif t == unk and types[i] in (NORMAL, CONTROL):
                types[i] = UNKNOWN
            # Multi-character pieces no merge produces: llama.cpp would still merge into them; rank them last.
            s = score[t] if (t in produced or len(t) <= 1 or types[i] != NORMAL) else floor
            scores.append(s)
        norm = _flatten(j.get("normalizer"))
        pret = _flatten(j.get("pre_tokenizer"))
        prefix = any(p.get("type") == "Prepend" and p.get("prepend") == "\u2581" for p in norm) or any(
            p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") in ("first", "always")
            and p.get("add_prefix_space", True) for p in pret)
        keys += [("tokenizer.ggml.model", "llama", "STRING", None),
                 ("tokenizer.ggml.pre", pre or "default", "STRING", None),
                 ("tokenizer.ggml.tokens", tokens, "ARRAY", "STRING"),
                 ("tokenizer.ggml.scores", scores, "ARRAY", "FLOAT32"),
                 ("tokenizer.ggml.token_type", types, "ARRAY", "INT32"),
                 ("tokenizer.ggml.add_space_prefix", bool(prefix), "BOOL", None)]
    else:
        if not any(p.get("type") == "ByteLevel" for p in _flatten(j.get("pre_tokenizer")) + _flatten(j.get("decoder"))):
            raise TokenizerExportError("a BPE tokenizer without byte fallback must be byte-level (GPT-2 style) "
                                       "to be written as llama.cpp's 'gpt2' tokenizer")
        if pre is None:
            pre = detect_pre_tokenizer(tokenizer, j)
            if pre is None:
                raise TokenizerExportError(
                    "cannot tell which llama.cpp pre-tokenizer matches this tokenizer's pre_tokenizer "
                    f"{json.dumps(j.get('pre_tokenizer'))[:200]}; pass tokenizer_pre= with llama.cpp's name "
                    f"(for example one of {', '.join(PRE_TOKENIZERS)}, or what convert_hf_to_gguf.py writes for it)")
        keys += [("tokenizer.ggml.model", "gpt2", "STRING", None),
                 ("tokenizer.ggml.pre", pre, "STRING", None),
                 ("tokenizer.ggml.tokens", tokens, "ARRAY", "STRING"),
                 ("tokenizer.ggml.token_type", types, "ARRAY", "INT32"),
                 ("tokenizer.ggml.merges", merges, "ARRAY", "STRING"),
                 ("tokenizer.ggml.add_space_prefix", False, "BOOL", None)]
    ids = _special_ids(tokenizer)
    for key, v in ids.items():
        if v >= n:
            raise TokenizerExportError(f"{key} token id {v} is outside the vocabulary ({n})")
        keys.append((f"tokenizer.ggml.{key}_token_id", v, "UINT32", None))
    keys.append(("tokenizer.ggml.add_bos_token", _adds_special(tokenizer, ids.get("bos"), True), "BOOL", None))
    keys.append(("tokenizer.ggml.add_eos_token", _adds_special(tokenizer, ids.get("eos"), False), "BOOL", None))
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        keys.append(("tokenizer.chat_template", template, "STRING", None))
    return keys


def _pre_tokenizer(name: str):
    from tokenizers import Regex, pre_tokenizers

    canonical = _PRE_ALIASES.get(name, name)
    structure = PRE_TOKENIZERS.get(canonical, (None, True))[0]
    if structure is None:
        warnings.warn(f"llama.cpp pre-tokenizer {name!r} is not mapped here; splitting with GPT-2's regex", stacklevel=3)
        structure = "bytelevel"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=structure != "llama3")
    if structure == "digits+bytelevel":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if structure == "llama3":
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_RE), behavior="isolated"), byte_level])
    return byte_level


def tokenizer_from_metadata(metadata: Dict[str, Any]):
    """A ``transformers.PreTrainedTokenizerFast`` rebuilt from a GGUF file's ``tokenizer.ggml.*``
    keys (byte-level ``"gpt2"`` tokenizers), tokenizing as llama.cpp does for the pre-tokenizers
    in :data:`PRE_TOKENIZERS`."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerExportError(f"rebuilding a {kind!r} GGUF tokenizer is not supported (only 'gpt2')")
    tokens: Sequence[str] = metadata["tokenizer.ggml.tokens"]
    types: Sequence[int] = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    merges = []
    for m in metadata.get("tokenizer.ggml.merges", []):
        pos = m.find(" ", 1)  # as llama.cpp splits: the first space after the first character
        merges.append((m[:pos], m[pos + 1:]))
    vocab = {t: i for i, t in enumerate(tokens) if types[i] != UNUSED}
    tk = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    pre = metadata.get("tokenizer.ggml.pre", "gpt-2")
    tk.pre_tokenizer = _pre_tokenizer(pre)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i in range(len(tokens)) if types[i] == CONTROL])
    tk.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                   for i in range(len(tokens)) if types[i] == USER_DEFINED])

    def tok(key: str) -> Optional[str]:
        i = metadata.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    bos, eos = tok("bos"), tok("eos")
    single, pair = "$A", "$A $B"
    if metadata.get("tokenizer.ggml.add_bos_token") and bos is not None:
        single, pair = f"{bos} {single}", f"{bos} $A {bos} $B"
    if metadata.get("tokenizer.ggml.add_eos_token") and eos is not None:
        single, pair = f"{single} {eos}", f"{pair} {eos}"
    specials = [(t, tokens.index(t)) for t in {bos, eos} if t is not None and t in single + pair]
    tk.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    # transformers ignores (and warns about) cleanup=True for BPE, so only False is passed on.
    clean = PRE_TOKENIZERS.get(_PRE_ALIASES.get(pre, pre), (None, True))[1]
    out = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, unk_token=tok("unknown"),
                                  pad_token=tok("padding"), **({} if clean else {"clean_up_tokenization_spaces": False}))
    template = metadata.get("tokenizer.chat_template")
    if template:
        out.chat_template = template
    return out
