"""Min/max observers: per tensor, per channel or per group; plain running or moving average."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import ops
from .base import ObserverBase, all_reduce_, distributed_world

__all__ = [
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "PerGroupMinMaxObserver",
    "stats_shape",
]


def stats_shape(x: Tensor, axis: Optional[int], group_size: Optional[int]) -> List[int]:
    """Shape of one statistic per tensor (``axis=None``), per channel along ``axis``, or per
    group of ``group_size`` consecutive elements of the last dim."""
    if group_size is not None:
        if x.dim() == 0 or x.shape[-1] % group_size != 0:
            raise ValueError(f"group_size {group_size} must divide the last dim of x (shape {tuple(x.shape)})")
        return [*x.shape[:-1], x.shape[-1] // group_size]
    if axis is None:
        return [1]
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} is out of range for x with {x.dim()} dims")
    return [x.shape[axis]]


def granularity_repr(axis: Optional[int], group_size: Optional[int]) -> str:
    if group_size is not None:
        return f"group_size={group_size}"
    return "per_tensor" if axis is None else f"axis={axis}"


class MinMaxObserver(ObserverBase):
    """Running min / max, with qparams exactly as torch.ao.quantization's observers compute them.

    ``averaging_constant=None`` keeps the plain running min / max (torch.ao's MinMaxObserver); a
    value in (0, 1] keeps a moving average (MovingAverageMinMaxObserver). ``axis`` selects per
    channel, ``group_size`` per group along the last dim; neither is per tensor.
    """

    def __init__(self, quant_min: int = -128, quant_max: int = 127, symmetric: bool = False,
                 averaging_constant: Optional[float] = None, axis: Optional[int] = None,
                 group_size: Optional[int] = None):
        super().__init__(quant_min, quant_max, symmetric)
        if averaging_constant is not None and not 0.0 <= averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must lie in [0, 1], got {averaging_constant}")
        if group_size is not None and group_size <= 0:
            raise ValueError(f"group_size must be positive, got {group_size}")
        self.averaging_constant = averaging_constant
        self.axis = axis
        self.group_size = group_size
        per_tensor = axis is None and group_size is None
        size = (1,) if per_tensor else (0,)
        self.register_buffer("min_val", torch.full(size, float("inf")))
        self.register_buffer("max_val", torch.full(size, float("-inf")))

    def _sized(self, x: Tensor) -> None:
        shape = torch.Size(stats_shape(x, self.axis, self.group_size))
        if self.min_val.shape == shape:
            return
        if self.min_val.numel() != 0:
            raise ValueError(
                f"{type(self).__name__} holds statistics of shape {tuple(self.min_val.shape)} but x of "
                f"shape {tuple(x.shape)} needs {tuple(shape)}")
        self.min_val = torch.full(shape, float("inf"), device=x.device)
        self.max_val = torch.full(shape, float("-inf"), device=x.device)

    def reset(self) -> None:
        """Forget everything observed."""
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:  # nothing to observe; its shape may not even name the channels
            return x
        x_obs = x.detach()
        self._sized(x_obs)
        axis = 0 if self.axis is None else self.axis
        if self.averaging_constant is not None and distributed_world():
            # A moving average of per-rank statistics is not the moving average of the global
            # batch's: reduce the batch statistics first, then average (one collective pair per step).
            lo = torch.full_like(self.min_val, float("inf"))
            hi = torch.full_like(self.max_val, float("-inf"))
            ops.update_minmax(x_obs, lo, hi, self.enabled, None, axis, self.group_size)
            all_reduce_(lo, "min")
            all_reduce_(hi, "max")
            self._fold_batch(lo, hi)
        else:
            ops.update_minmax(x_obs, self.min_val, self.max_val, self.enabled, self.averaging_constant,
                              axis, self.group_size)
        return x

    def _fold_batch(self, lo: Tensor, hi: Tensor) -> None:
        # The op reduces [lo, hi] pairs to exactly lo and hi, then applies the running update.
        pairs = torch.stack([lo, hi], dim=-1)
        if self.group_size is not None:
            ops.update_minmax(pairs.flatten(-2), self.min_val, self.max_val, self.enabled,
                              self.averaging_constant, 0, 2)
        else:
            ops.update_minmax(pairs, self.min_val, self.max_val, self.enabled, self.averaging_constant, 0)

    def statistics(self) -> Tuple[Tensor, Tensor]:
        """(min, max) reduced across ranks when distributed (copies: the buffers stay local)."""
        lo, hi = self.min_val.clone(), self.max_val.clone()
        if distributed_world():
            all_reduce_(lo, "min")
            all_reduce_(hi, "max")
        return lo, hi

    @torch.no_grad()
    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        if self.min_val.numel() == 0:
            raise RuntimeError(f"{type(self).__name__} has not observed any tensor yet")
        lo, hi = self.statistics()
        return ops.choose_qparams(lo, hi, self.quant_min, self.quant_max, self.symmetric)

    def extra_repr(self) -> str:
        granularity = granularity_repr(self.axis, self.group_size)
        avg = "" if self.averaging_constant is None else f", averaging_constant={self.averaging_constant}"
        return f"{super().extra_repr()}, {granularity}{avg}"


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Per-tensor moving average of min / max (torch.ao's MovingAverageMinMaxObserver)."""

    def __init__(self, quant_min: int = -128, quant_max: int = 127, symmetric: bool = False,
                 averaging_constant: float = 0.01):
        super().__init__(quant_min, quant_max, symmetric, averaging_constant=averaging_constant)


class PerChannelMinMaxObserver(MinMaxObserver):
    """Per-channel min / max along ``axis`` (torch.ao's PerChannelMinMaxObserver; with an
    ``averaging_constant``, its MovingAveragePerChannelMinMaxObserver)."""

    def __init__(self, quant_min: int = -128, quant_max: int = 127, symmetric: bool = False,
                 axis: int = 0, averaging_constant: Optional[float] = None):
        super().__init__(quant_min, quant_max, symmetric, averaging_constant=averaging_constant, axis=axis)


class PerGroupMinMaxObserver(MinMaxObserver):
    """Min / max per group of ``group_size`` consecutive elements along the last dim."""

    def __init__(self, quant_min: int = -8, quant_max: int = 7, symmetric: bool = True,
                 group_size: int = 32, averaging_constant: Optional[float] = None):
        super().__init__(quant_min, quant_max, symmetric, averaging_constant=averaging_constant,
                         group_size=group_size)
