"""Histogram observers: a running histogram on a canonical grid (exact when its range grows,
identical whatever the order or the number of ranks the data came from), calibrated by
percentile, entropy (KL divergence) or plain min/max."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import ops
from .base import ObserverBase, all_reduce_, distributed_world

__all__ = ["HistogramObserver", "PercentileObserver", "EntropyObserver"]

METHODS = ("percentile", "entropy", "minmax")


class HistogramObserver(ObserverBase):
    """Per-tensor running histogram of ``bins`` bins; ``method`` turns it into a clipping range:
    ``"percentile"`` keeps ``percentile`` percent of the values, ``"entropy"`` minimizes the KL
    divergence to the quantized distribution (TensorRT's calibrator), ``"minmax"`` keeps all.
    """

    def __init__(self, quant_min: int = -128, quant_max: int = 127, symmetric: bool = False,
                 bins: int = 2048, method: str = "percentile", percentile: float = 99.99):
        super().__init__(quant_min, quant_max, symmetric)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
        if bins < 1:
            raise ValueError(f"bins must be positive, got {bins}")
        self.method = method
        self.percentile = percentile
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.int64))
        self.register_buffer("range", torch.tensor([float("inf"), float("-inf")]))

    def reset(self) -> None:
        self.histogram.zero_()
        self.range.copy_(torch.tensor([float("inf"), float("-inf")]))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        ops.update_histogram(x.detach(), self.histogram, self.range, self.enabled)
        return x

    def statistics(self) -> Tuple[Tensor, Tensor]:
        """(histogram, range), summed across ranks on the global range's grid when distributed."""
        if not distributed_world():
            return self.histogram.clone(), self.range.clone()
        lo, hi = self.range[:1].clone(), self.range[1:].clone()
        all_reduce_(lo, "min")
        all_reduce_(hi, "max")
        global_range = torch.cat([lo, hi])
        histogram = ops.rebin_histogram(self.histogram, self.range, global_range)
        return all_reduce_(histogram, "sum"), global_range

    @torch.no_grad()
    def clip_range(self) -> Tensor:
        """The calibrated ``[min, max]`` (float32)."""
        histogram, range_ = self.statistics()
        if self.method == "minmax":
            return range_
        levels = self.quant_max - self.quant_min + 1
        if self.method == "entropy" and not bool(range_[0] >= 0):
            levels //= 2  # |x| of signed data maps onto half the levels
        return ops.histogram_clip_range(histogram.cpu(), range_.cpu(), self.method, self.percentile,
                                        levels, self.symmetric).to(self.range.device)

    @torch.no_grad()
    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        clip = self.clip_range()
        return ops.choose_qparams(clip[:1], clip[1:], self.quant_min, self.quant_max, self.symmetric)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, bins={self.histogram.numel()}, method={self.method}"
                + (f", percentile={self.percentile}" if self.method == "percentile" else ""))


class PercentileObserver(HistogramObserver):
    def __init__(self, quant_min: int = -128, quant_max: int = 127, symmetric: bool = False,
                 percentile: float = 99.99, bins: int = 2048):
        super().__init__(quant_min, quant_max, symmetric, bins, "percentile", percentile)


class EntropyObserver(HistogramObserver):
    def __init__(self, quant_min: int = -128, quant_max: int = 127, symmetric: bool = True,
                 bins: int = 2048):
        super().__init__(quant_min, quant_max, symmetric, bins, "entropy")
