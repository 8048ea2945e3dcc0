"""What a model's weight becomes in a GGUF file, and where that decision comes from.

In order of precedence, for the weight of module ``m``:

1. ``m`` was trained with a weight quantizer (``qat.prepare``), or holds its converted weight
   (``qat.convert``): the quantizer's ``quantize_weight`` result is written as it is. For a GGUF
   spec (``qat.gguf("Q4_K")``) that is the tensor's GGUF bytes (``GGUFWeight.data``), so the file
   dequantizes to exactly the weight the QAT forward used ("qat"). Other spec kinds (integer,
   LUT, ...) have no GGUF type: a llama file then holds their dequantized weight in F32 (exact,
   with a warning: it is not the compact format), a generic container their own tensors (codes,
   scales) as they are ("raw").
2. A ``types=`` rule matching the tensor name ("types").
3. The plan's rule for ``m``: a GGUF weight spec goes through the reference quantizer; another
   spec kind through its own quantizer, initialized from the weight; ``skip`` or no weight spec
   keeps the weight float ("plan").
4. The default policy (:mod:`qat.export.type_policy`): ``"mixed"`` unless given, or F32 for what
   a plan (or a prepared model) leaves float ("default", "fallback", "float").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import type_policy
from .gguf import quantize as reference_quantize
from .gguf import type_info

__all__ = ["Encoded", "WeightChoice", "is_gguf_weight", "module_weight_rows", "trained_weight",
           "plan_weight_spec", "spec_gguf_type", "quantize_with_spec", "encode_float"]


@dataclass
class Encoded:
    """A tensor ready for the writer: ``data`` (bytes or array) of ``type`` for ``shape`` (PyTorch order)."""

    type: str
    shape: Tuple[int, ...]
    data: Any


@dataclass
class WeightChoice:
    """How one tensor is produced: ``encode()`` returns its :class:`Encoded` form (run later,
    possibly in a worker thread); ``origin`` says which rule decided."""

    origin: str
    type: str
    shape: Tuple[int, ...]
    encode: Callable[[], Encoded]
    extra: Dict[str, Any] = field(default_factory=dict)


def is_gguf_weight(obj: Any) -> bool:
    """Duck-typed ``GGUFWeight``: a converted weight carrying GGUF bytes (``data``, ``type_name``)."""
    return hasattr(obj, "type_name") and hasattr(obj, "data") and hasattr(obj, "shape")


def module_weight_rows(module: Any):
    """The 2-D view a QAT module's quantizer sees (rows = output channels), detached."""
    w = module._float_weight() if hasattr(module, "_float_weight") else module.weight
    w = w.detach()
    return module._rows(w) if hasattr(module, "_rows") else w.reshape(w.shape[0], -1)


def trained_weight(module: Any) -> Optional[Any]:
    """The stored form of a QAT module's weight: its converted module (``quantized_weight``), or
    its weight quantizer's ``quantize_weight`` of the current weight in eval mode (exactly what
    ``qat.convert`` would store). None for a module without a weight quantizer."""
    import torch

    stored = getattr(module, "quantized_weight", None)
    if stored is not None:
        return stored
    q = getattr(module, "weight_quantizer", None)
    if q is None:
        return None
    if not hasattr(q, "quantize_weight"):
        raise TypeError(f"{type(q).__name__} has no quantize_weight(w); its weights cannot be exported")
    was = q.training
    q.eval()
    try:
        with torch.no_grad():
            return q.quantize_weight(module_weight_rows(module))
    finally:
        q.train(was)


def gguf_bytes(stored: Any) -> Encoded:
    """A ``GGUFWeight``'s bytes, type and shape, checked for consistency."""
    t = type_info(stored.type_name)
    shape = tuple(int(d) for d in stored.shape)
    data = stored.data
    data = data.detach().cpu().contiguous().numpy() if hasattr(data, "detach") else np.asarray(data)
    data = data.view(np.uint8).reshape(-1)
    type_policy.check_fits(t.name, shape, "GGUF weight")
    n = int(np.prod(shape)) if shape else 1
    expected = n // t.block_size * t.type_size
    if data.size != expected:
        raise ValueError(f"GGUF weight of type {t.name} and shape {shape} holds {data.size} bytes, expected {expected}")
    return Encoded(t.name, shape, data)


def spec_gguf_type(spec: Any) -> Optional[str]:
    """The GGUF type name of a GGUF format spec (kind ``"gguf"``), else None."""
    if getattr(spec, "kind", None) != "gguf":
        return None
    t = getattr(spec, "type", None) or getattr(spec, "type_name", None)
    return type_info(t).name if t is not None else None


def plan_weight_spec(plan: Any, name: str, module: Any, first: Optional[str] = None,
                     last: Optional[str] = None) -> Tuple[bool, Optional[Any]]:
    """``(matched, weight spec or None)`` for module ``name`` under ``plan`` (a ``qat.Plan``);
    ``matched`` is False when no rule matches."""
    if plan is None:
        return False, None
    rule = plan.match(name, module, first, last)
    if rule is None:
        return False, None
    return True, None if getattr(rule, "skip", False) else getattr(rule, "weight", None)


def quantize_with_spec(spec: Any, rows: Any) -> Any:
    """A non-GGUF spec's converted weight for ``rows``: its quantizer initialized from the
    weight (as prepare does), then ``quantize_weight`` in eval mode (as convert does)."""
    import torch

    q = spec.make_quantizer("weight")
    with torch.no_grad():
        if hasattr(q, "initialize"):
            q.initialize(rows)
        q.eval()
        return q.quantize_weight(rows)


def encode_float(tensor: Any, type_name: str, shape: Tuple[int, ...]) -> Encoded:
    """``tensor`` (float, viewed as ``shape``) through the reference quantizer."""
    arr = tensor.detach().to("cpu").float().reshape(shape).contiguous().numpy() if hasattr(tensor, "detach") \
        else np.ascontiguousarray(tensor, dtype=np.float32).reshape(shape)
    if type_name == "F32":
        return Encoded("F32", shape, arr)
    return Encoded(type_name, shape, np.frombuffer(reference_quantize(arr, type_name), dtype=np.uint8))


def warn_dequantized(names: List[str], why: str) -> None:
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        warnings.warn(f"{shown}: {why}; written as F32 (exact, not compact)", stacklevel=3)
