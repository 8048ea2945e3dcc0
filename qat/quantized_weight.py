"""``QuantizedWeight``: a converted integer weight, stored as codes with their scales."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .spec import Spec

__all__ = ["QuantizedWeight", "effective_qparams", "SCALE_FLOOR", "SCALE_CEIL"]

# The range qat.ops.fake_quantize clamps every scale to (NaN becomes the floor).
SCALE_FLOOR = 2.0 ** -23
SCALE_CEIL = 2.0 ** 100


def effective_qparams(scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int) -> Tuple[Tensor, Tensor]:
    """The scale and zero point :func:`qat.ops.fake_quantize` actually applies: the scale clamped
    to ``[2**-23, 2**100]`` (NaN to the floor), the zero point rounded half to even and clamped
    to ``[quant_min, quant_max]`` (NaN to ``quant_min``). float32."""
    s = torch.nan_to_num(scale.detach().float(), nan=SCALE_FLOOR).clamp(SCALE_FLOOR, SCALE_CEIL)
    z = torch.nan_to_num(torch.round(zero_point.detach().float()), nan=float(quant_min))
    return s, z.clamp(quant_min, quant_max)


def _broadcast(t: Tensor, x_shape: torch.Size, axis: Optional[int], group_size: Optional[int]) -> Tensor:
    """``t`` (a scale or zero point of fake_quantize's shape convention) viewed to broadcast
    against ``x`` (grouped: against ``x`` viewed as ``[..., groups, group_size]``)."""
    if group_size is not None:
        return t.unsqueeze(-1)
    if t.numel() == 1:
        return t.reshape(())
    view = [1] * len(x_shape)
    view[axis] = -1
    return t.reshape(view)


class QuantizedWeight(nn.Module):
    """Integer codes of a weight and the affine parameters that dequantize them.

    Buffers: ``codes`` (int8 for signed ranges, uint8 for unsigned ones), ``scale`` and
    ``zero_point`` (float32, shaped as :func:`qat.ops.fake_quantize` takes them: one element,
    ``[codes.size(axis)]``, or ``[..., cols // group_size]``). Attributes: ``spec``, ``axis``,
    ``group_size``, ``quant_min``, ``quant_max`` and ``dtype`` (the weight's dtype, which
    ``dequantize()`` returns).

    ``dequantize()`` computes ``(codes - zero_point) * scale`` in float32, the last step of
    fake_quantize's forward from the same integers, so it equals, bit for bit, the fake-quantized
    weight the codes were taken from.
    """

    def __init__(self, codes: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                 axis: Optional[int] = None, group_size: Optional[int] = None, spec: Optional[Spec] = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if codes.dtype not in (torch.int8, torch.uint8):
            raise TypeError(f"codes must be int8 or uint8, got {codes.dtype}")
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", zero_point.float())
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.axis = axis
        self.group_size = group_size
        self.spec = spec
        self.dtype = dtype

    @classmethod
    @torch.no_grad()
    def quantize(cls, w: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int,
                 axis: Optional[int] = None, group_size: Optional[int] = None,
                 spec: Optional[Spec] = None) -> "QuantizedWeight":
        """Codes of ``w`` with fake_quantize's arithmetic: ``clamp(round(w * (1 / s)) + zp)``
        in float32, round half to even, with the effective scale and zero point."""
        if not -128 <= quant_min < quant_max <= 255 or (quant_min < 0 and quant_max > 127):
            raise ValueError(f"[{quant_min}, {quant_max}] does not fit int8 or uint8 codes")
        if bool(torch.isnan(w).any()):
            raise ValueError("the weight holds NaN, which no integer code represents")
        s, z = effective_qparams(scale, zero_point, quant_min, quant_max)
        x = w.detach().float()
        if group_size is not None:
            if x.dim() == 0 or x.shape[-1] % group_size:
                raise ValueError(f"group_size {group_size} must divide the last dim of the weight {tuple(x.shape)}")
            x = x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
        sb, zb = _broadcast(s, x.shape, axis, group_size), _broadcast(z, x.shape, axis, group_size)
        q = (torch.round(x * (1.0 / sb)) + zb).clamp(quant_min, quant_max)
        codes = q.reshape(w.shape).to(torch.int8 if quant_min < 0 else torch.uint8)
        return cls(codes, s, z, quant_min, quant_max, axis, group_size, spec, w.dtype)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def dequantize(self) -> Tensor:
        q = self.codes.float()
        if self.group_size is not None:
            q = q.reshape(*q.shape[:-1], q.shape[-1] // self.group_size, self.group_size)
        s = _broadcast(self.scale.float(), q.shape, self.axis, self.group_size)
        z = _broadcast(self.zero_point.float(), q.shape, self.axis, self.group_size)
        return ((q - z) * s).reshape(self.codes.shape).to(self.dtype)

    def extra_repr(self) -> str:
        spec = self.spec.describe() if self.spec is not None else f"[{self.quant_min}, {self.quant_max}]"
        return f"{spec}, shape={tuple(self.codes.shape)}, dtype={self.dtype}"
