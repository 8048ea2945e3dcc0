"""Python wrappers and fake (meta) kernels for the qat operators.

The schemas, CPU/CUDA kernels and autograd live in C++ (csrc/ops); this module adds typed,
documented entry points and the shape functions torch.compile / torch.export need.
"""

from typing import Optional

import torch
from torch import Tensor

__all__ = ["fake_quantize", "fake_cast", "CAST_FORMATS"]

CAST_FORMATS = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")


def fake_quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    axis: int = 0,
    group_size: Optional[int] = None,
    grad_factor: float = 1.0,
) -> Tensor:
    """Affine fake quantization: ``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``.

    The shape of ``scale`` picks the granularity: one element is per tensor; ``[x.size(axis)]``
    is per channel along ``axis``; with ``group_size``, ``[..., x.size(-1) // group_size]`` is
    per group of ``group_size`` consecutive elements of the last dim.

    Numerics equal ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` bit for
    bit: fp32 math whatever ``x``'s dtype (fp32, fp16 or bf16; the result has ``x``'s dtype),
    multiplication by the reciprocal scale, round half to even. Deliberate differences: NaN in
    ``x`` stays NaN (the built-ins return ``quant_min``), and values too large for int64 saturate
    (the per-channel built-in wraps them to ``quant_min``).

    ``scale`` and ``zero_point`` are float32 tensors on ``x``'s device. The scale is clamped to
    ``[2**-23, 2**100]`` before use (NaN becomes ``2**-23``), so a learned scale that reaches 0
    or goes negative never turns finite input into inf or NaN. The zero point is rounded half to
    even and clamped to ``[quant_min, quant_max]`` (NaN becomes ``quant_min``).

    Gradients: ``x`` gets the clipped straight-through estimator. When ``scale`` or
    ``zero_point`` require grad, all three gradients follow LSQ as
    ``torch._fake_quantize_learnable_per_{tensor,channel}_affine`` computes them, scaled by
    ``grad_factor``, with the scale / zero-point sums accumulated in float64.
    """
    return torch.ops.qat.fake_quantize(
        x, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor
    )


def fake_cast(x: Tensor, fmt: str) -> Tensor:
    """Round ``x`` to a float format and back, with a straight-through gradient.

    ``fmt`` is one of ``"fp16"``, ``"bf16"``, ``"fp8_e4m3"`` (e4m3fn) or ``"fp8_e5m2"``.
    Rounding is to nearest, ties to even, saturating: finite values beyond the format's range
    become its largest finite value; inf stays inf in formats that have it (fp16, bf16, e5m2)
    and saturates in e4m3fn; NaN stays NaN. The result has ``x``'s dtype.
    """
    return torch.ops.qat.fake_cast(x, fmt)


@torch.library.register_fake("qat::fake_quantize")
def _fake_quantize_fake(x, scale, zero_point, quant_min, quant_max, axis=0, group_size=None, grad_factor=1.0):
    return x.new_empty(x.shape)


@torch.library.register_fake("qat::fake_quantize_backward")
def _fake_quantize_backward_fake(grad, x, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor, qparam_grads):
    return x.new_empty(x.shape), scale.new_empty(scale.shape), zero_point.new_empty(zero_point.shape)


@torch.library.register_fake("qat::fake_cast")
def _fake_cast_fake(x, fmt):
    return x.new_empty(x.shape)
