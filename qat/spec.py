"""Quantization specs: what a tensor is quantized to. Plans map modules to specs; every spec
kind (affine integer, float cast, palettized LUT, deployment formats such as GGUF types) is a
:class:`Spec` subclass registered under its ``kind`` name, so plans round-trip through YAML.

The contract every spec kind keeps:

- ``make_quantizer(role)`` builds the nn.Module that fake-quantizes a tensor for ``role``
  (``"weight"``, ``"input"`` or ``"output"``); ``forward(t)`` returns the fake-quantized tensor.
- A weight quantizer also has ``quantize_weight(w)``, returning a converted-weight module whose
  ``dequantize()`` equals, bit for bit, what ``forward(w)`` returns in eval mode (that is what
  ``qat.convert`` stores; see :mod:`qat.convert`).
- ``bits_per_weight()``: stored bits per element, scales and other metadata included.
- ``storage_bytes(shape)``: deployed bytes of a weight of ``shape`` (rows = output channels,
  as quantizers see weights); by default ``ceil(numel * bits_per_weight() / 8)``.
- ``describe()``: a short label for tables (``"int4 sym group32"``); by default the repr.
- ``to_dict()`` / :func:`spec_from_dict`: a plain dict with a ``"kind"`` key (YAML-safe).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Dict, Sequence, Type

from torch import nn

__all__ = ["Spec", "register_spec", "spec_from_dict", "SPEC_KINDS", "ROLES", "check_role"]

ROLES = ("weight", "input", "output")


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return role

SPEC_KINDS: Dict[str, Type["Spec"]] = {}


class Spec:
    """Base of every spec kind. Subclasses are frozen dataclasses registered with
    :func:`register_spec`."""

    kind: ClassVar[str] = ""

    def make_quantizer(self, role: str) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} cannot quantize a {role}")

    def bits_per_weight(self) -> float:
        raise NotImplementedError

    def storage_bytes(self, shape: Sequence[int]) -> int:
        return math.ceil(math.prod(shape) * self.bits_per_weight() / 8)

    def describe(self) -> str:
        return repr(self)

    def to_dict(self) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Spec":
        raise NotImplementedError


def register_spec(cls: Type[Spec]) -> Type[Spec]:
    """Class decorator: makes ``cls`` loadable from a dict whose ``"kind"`` is ``cls.kind``."""
    if not cls.kind:
        raise TypeError(f"{cls.__name__} needs a non-empty `kind`")
    if SPEC_KINDS.get(cls.kind, cls) is not cls:
        raise TypeError(f"spec kind {cls.kind!r} is already registered by {SPEC_KINDS[cls.kind].__name__}")
    SPEC_KINDS[cls.kind] = cls
    return cls


def spec_from_dict(d: Dict[str, Any]) -> Spec:
    """The spec a :meth:`Spec.to_dict` dict describes."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"a spec is a mapping with a 'kind' key, got {d!r}")
    kind = d["kind"]
    if kind not in SPEC_KINDS:
        raise ValueError(f"unknown spec kind {kind!r}; known: {sorted(SPEC_KINDS)}")
    return SPEC_KINDS[kind].from_dict({k: v for k, v in d.items() if k != "kind"})
