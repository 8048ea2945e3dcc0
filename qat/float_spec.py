"""``FloatSpec``: rounding to a narrower float format (spec kind ``"float"``) through
:func:`qat.ops.fake_cast`, for weights and activations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
from torch import Tensor, nn

from . import ops
from .spec import Spec, check_role, register_spec

__all__ = ["FloatSpec", "FakeCast", "FloatWeight", "FORMAT_DTYPES"]

# Storage dtype of each format: converted weights keep their values in it (every value
# fake_cast produces is representable there, so the conversion is exact).
FORMAT_DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
_BITS = {"fp16": 16, "bf16": 16, "fp8_e4m3": 8, "fp8_e5m2": 8}


@register_spec
@dataclass(frozen=True)
class FloatSpec(Spec):
    """Round to ``format`` (``"fp16"``, ``"bf16"``, ``"fp8_e4m3"``, ``"fp8_e5m2"``) and back:
    nearest even, saturating; a straight-through gradient."""

    kind = "float"

    format: str = "fp16"

    def __post_init__(self):
        if self.format not in ops.CAST_FORMATS:
            raise ValueError(f"FloatSpec.format must be one of {ops.CAST_FORMATS}, got {self.format!r}")

    def make_quantizer(self, role: str) -> nn.Module:
        check_role(role)
        return FakeCast(self)

    def bits_per_weight(self) -> float:
        return float(_BITS[self.format])

    def describe(self) -> str:
        return self.format

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "format": self.format}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "FloatSpec":
        unknown = sorted(set(d) - {"format"})
        if unknown:
            raise ValueError(f"unknown FloatSpec key(s) {unknown}; known: ['format']")
        return cls(**d)


class FakeCast(nn.Module):
    """Fake-casts every tensor it sees to ``spec.format``; no state. ``enable_fake_quant(False)``
    passes tensors through unchanged."""

    def __init__(self, spec: FloatSpec):
        super().__init__()
        self.spec = spec
        self._fake_quant = True

    def enable_fake_quant(self, on: bool = True) -> "FakeCast":
        self._fake_quant = on
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not self._fake_quant:
            return x
        return ops.fake_cast(x, self.spec.format)

    @torch.no_grad()
    def quantize_weight(self, w: Tensor) -> "FloatWeight":
        if not self._fake_quant:
            raise ValueError("this FakeCast is disabled (enable_fake_quant(False)): its forward stores no format")
        # Cast from float32: every result is then representable in the format (a bf16 weight's
        # fake_cast result is rounded to bf16 again, which may leave the format's range).
        data = ops.fake_cast(w.detach().float(), self.spec.format).to(FORMAT_DTYPES[self.spec.format])
        return FloatWeight(data, self.spec, w.dtype)

    def extra_repr(self) -> str:
        return self.spec.format


class FloatWeight(nn.Module):
    """A converted weight stored in its float format: buffer ``data``; ``dequantize()`` widens
    it back to the weight's dtype, equal bit for bit to ``FakeCast``'s forward."""

    def __init__(self, data: Tensor, spec: FloatSpec, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.register_buffer("data", data)
        self.spec = spec
        self.dtype = dtype

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self) -> Tensor:
        return self.data.to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.spec.format}, shape={tuple(self.data.shape)}, dtype={self.dtype}"
