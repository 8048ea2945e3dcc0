"""MSE-optimal calibration: the clipping ratio per tensor / channel / group that minimizes the
squared fake-quantization error, every candidate evaluated in one pass over the data."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import ops
from .base import ObserverBase, all_reduce_, distributed_world
from .minmax import granularity_repr, stats_shape

__all__ = ["MSEObserver", "mse_qparams", "candidate_ratios"]


def candidate_ratios(num_candidates: int, device=None) -> Tensor:
    """Clipping ratios 1/n, 2/n, ..., 1 of the observed range."""
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be positive, got {num_candidates}")
    return torch.arange(1, num_candidates + 1, dtype=torch.float32, device=device) / num_candidates


def _search(x: Tensor, quant_min: int, quant_max: int, symmetric: bool, axis: Optional[int],
            group_size: Optional[int], ratios: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(min, max, errors) of x, reduced across ranks when distributed."""
    shape = stats_shape(x, axis, group_size)
    lo = torch.full(shape, float("inf"), device=x.device)
    hi = torch.full(shape, float("-inf"), device=x.device)
    on = torch.ones(1, dtype=torch.uint8, device=x.device)
    op_axis = 0 if axis is None else axis
    ops.update_minmax(x, lo, hi, on, None, op_axis, group_size)
    if distributed_world():  # every rank must search the same candidates
        all_reduce_(lo, "min")
        all_reduce_(hi, "max")
    errors = ops.mse_errors(x, lo, hi, ratios, quant_min, quant_max, symmetric, op_axis, group_size)
    if distributed_world():
        all_reduce_(errors, "sum")
    return lo, hi, errors


def _best(lo: Tensor, hi: Tensor, errors: Tensor, ratios: Tensor, quant_min: int, quant_max: int,
          symmetric: bool) -> Tuple[Tensor, Tensor]:
    ratio = ratios[errors.argmin(dim=-1)]  # the first minimum: the smallest clipping on ties
    return ops.choose_qparams(lo * ratio, hi * ratio, quant_min, quant_max, symmetric)


@torch.no_grad()
def mse_qparams(x: Tensor, quant_min: int, quant_max: int, symmetric: bool = True,
                axis: Optional[int] = None, group_size: Optional[int] = None,
                num_candidates: int = 100) -> Tuple[Tensor, Tensor]:
    """(scale, zero_point) minimizing ``sum((fake_quantize(x) - x) ** 2)`` over the clipping
    ratios ``candidate_ratios(num_candidates)`` of x's range, per tensor (``axis=None``), per
    channel along ``axis`` or per group of ``group_size``."""
    ratios = candidate_ratios(num_candidates, x.device)
    lo, hi, errors = _search(x.detach(), quant_min, quant_max, symmetric, axis, group_size, ratios)
    return _best(lo, hi, errors, ratios, quant_min, quant_max, symmetric)


class MSEObserver(ObserverBase):
    """MSE-optimal clipping of the most recently observed tensor: made for weights, which are
    observed whole at every step. (For activation ranges over many batches, use a
    HistogramObserver.)"""

    def __init__(self, quant_min: int = -8, quant_max: int = 7, symmetric: bool = True,
                 axis: Optional[int] = None, group_size: Optional[int] = None,
                 num_candidates: int = 100):
        super().__init__(quant_min, quant_max, symmetric)
        self.axis = axis
        self.group_size = group_size
        self.register_buffer("ratios", candidate_ratios(num_candidates))
        size = (1,) if axis is None and group_size is None else (0,)
        self.register_buffer("min_val", torch.full(size, float("inf")))
        self.register_buffer("max_val", torch.full(size, float("-inf")))
        self.register_buffer("errors", torch.zeros(*size, num_candidates, dtype=torch.float64))

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        if x.numel() > 0 and bool(self.enabled):  # calibration only: one host read per call is fine here
            self.min_val, self.max_val, self.errors = _search(
                x.detach(), self.quant_min, self.quant_max, self.symmetric, self.axis,
                self.group_size, self.ratios)
        return x

    @torch.no_grad()
    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        return _best(self.min_val, self.max_val, self.errors, self.ratios, self.quant_min,
                     self.quant_max, self.symmetric)

    def extra_repr(self) -> str:
        granularity = granularity_repr(self.axis, self.group_size)
        return f"{super().extra_repr()}, {granularity}, num_candidates={self.ratios.numel()}"
