"""Which GGUF type a float tensor is written in when nothing trained decides it.

Explicit choices (a ``types=`` mapping entry, a plan's GGUF spec) must fit the tensor: a type
whose block size does not divide the row length is an error. The default policy behaves like
llama-quantize instead: a K-quant that does not fit falls back to a 32-element type of similar
size (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> IQ4_NL), and a 32-element type
that does not fit falls back to F16.

The ``"mixed"`` default (close to llama.cpp's Q4_K_M without its per-layer bumps): token
embeddings Q8_0, the output projection Q6_K, every other matrix Q4_K, 1-D tensors (norms,
biases) F32.
"""

from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .gguf import type_info

__all__ = ["MIXED", "FALLBACK", "fits", "check_fits", "default_type_for", "match_types", "normalize_types"]

#: Role -> type of the "mixed" default.
MIXED: Dict[str, str] = {"token_embd": "Q8_0", "output": "Q6_K", "matrix": "Q4_K", "vector": "F32"}

#: llama-quantize's fallback for a type whose block does not divide the row.
FALLBACK: Dict[str, str] = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def fits(type_name: str, shape: Sequence[int]) -> bool:
    return len(shape) > 0 and int(shape[-1]) % type_info(type_name).block_size == 0


def check_fits(type_name: str, shape: Sequence[int], what: str) -> None:
    """``ValueError`` naming the tensor when ``type_name`` cannot encode rows of this length."""
    t = type_info(type_name)
    if not t.supported:
        raise ValueError(f"{what}: GGUF type {t.name} cannot be written by qat's quantizers")
    if not fits(t.name, shape):
        raise ValueError(
            f"{what}: {t.name} quantizes blocks of {t.block_size} along the last dimension, but the rows of "
            f"shape {tuple(shape)} have {shape[-1] if shape else 0} elements (not a multiple of {t.block_size}); "
            "pick a type whose block divides the row")


def default_type_for(role: str, shape: Sequence[int], default: str) -> Tuple[str, str]:
    """``(type, origin)`` under the default policy: ``default`` is ``"mixed"`` or one type name
    used for every matrix. ``role``: ``"token_embd"``, ``"output"``, ``"matrix"`` or ``"vector"``.
    ``origin`` is ``"default"`` or ``"fallback"`` (the type was replaced because it did not fit)."""
    if len(shape) < 2 or role == "vector":
        return "F32", "default"
    want = MIXED.get(role, MIXED["matrix"]) if default == "mixed" else type_info(default).name
    t = want
    while not fits(t, shape):
        t = FALLBACK.get(t, "F16")
    return t, "default" if t == want else "fallback"


def normalize_types(types: Optional[Union[str, Mapping[str, str], Iterable[Tuple[str, str]]]]) -> List[Tuple[str, str]]:
    """A ``types=`` argument as ordered ``(glob pattern, type name)`` rules, types validated."""
    if types is None:
        return []
    if isinstance(types, str):
        raise TypeError("types= maps tensor-name patterns to GGUF types, e.g. {'*.mlp.*': 'Q4_K'}; "
                        "for one type everywhere use default_type=")
    items = types.items() if isinstance(types, Mapping) else types
    out = []
    for pattern, t in items:
        out.append((str(pattern), type_info(t).name))
    return out


def match_types(rules: Sequence[Tuple[str, str]], *names: str) -> Optional[Tuple[str, str]]:
    """The first ``(pattern, type)`` rule matching any of ``names`` (fnmatch, case-sensitive)."""
    for pattern, t in rules:
        if any(fnmatch.fnmatchcase(n, pattern) for n in names if n):
            return pattern, t
    return None
