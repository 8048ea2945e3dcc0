"""Shared machinery of the observers: quantization range, enable flag, lazily sized statistics
buffers that still round-trip through ``state_dict``, and cross-rank reduction."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["ObserverBase", "distributed_world"]


def distributed_world() -> bool:
    """True when torch.distributed runs with more than one rank: statistics must be reduced."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_(t: Tensor, op: str) -> Tensor:
    import torch.distributed as dist

    dist.all_reduce(t, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op])
    return t


class ObserverBase(nn.Module):
    """An observer records statistics of the tensors it sees and turns them into quantization
    parameters with ``calculate_qparams() -> (scale, zero_point)`` (float32 tensors, ready for
    :func:`qat.ops.fake_quantize`). Calling it returns its input unchanged.

    ``quant_min`` / ``quant_max`` give the integer range (signed or unsigned, 1 to 16 bits);
    ``symmetric`` picks a zero point of 0 (signed) or the range's midpoint (unsigned).
    Observation stops while ``enable(False)``; the flag is a buffer, read on the device, so
    toggling it never syncs with the host. Non-finite elements are never observed.

    Under torch.distributed with more than one rank, statistics are reduced across ranks (min
    with MIN, max with MAX, histograms with SUM) before qparams are computed, so every rank gets
    identical qparams, equal to those of one process observing all ranks' data.
    """

    def __init__(self, quant_min: int = -128, quant_max: int = 127, symmetric: bool = False):
        super().__init__()
        if not (isinstance(quant_min, int) and isinstance(quant_max, int)):
            raise TypeError(f"quant_min and quant_max must be ints, got {quant_min!r} and {quant_max!r}")
        if quant_min >= quant_max:
            raise ValueError(f"quant_min ({quant_min}) must be less than quant_max ({quant_max})")
        if quant_max - quant_min > 65535:
            raise ValueError(f"[{quant_min}, {quant_max}] is wider than 16 bits")
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.symmetric = symmetric
        self.register_buffer("enabled", torch.ones(1, dtype=torch.uint8))

    def enable(self, on: bool = True) -> "ObserverBase":
        self.enabled.fill_(1 if on else 0)
        return self

    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"quant_min={self.quant_min}, quant_max={self.quant_max}, symmetric={self.symmetric}"

    # Statistics buffers (and learned per-channel parameters) are sized by the first tensor
    # observed, since channels / groups are unknown before; loading a state_dict resizes them to
    # the saved shapes first.
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        for name, buf in self._buffers.items():
            saved: Optional[Tensor] = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = buf.new_empty(saved.shape)
        for name, param in self._parameters.items():
            saved = state_dict.get(prefix + name)
            if param is not None and saved is not None and saved.shape != param.shape:
                self._parameters[name] = nn.Parameter(param.new_empty(saved.shape), param.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
