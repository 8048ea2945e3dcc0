"""Fake-quantize modules that carry their own range: the fused moving-average observer and the
learned (LSQ) range."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from .base import ObserverBase, all_reduce_, distributed_world
from .mse import mse_qparams
from .minmax import stats_shape

__all__ = ["MovingAverageFakeQuantize", "LearnableFakeQuantize", "MIN_SCALE"]

MIN_SCALE = 2.0 ** -23  # torch.finfo(torch.float32).eps: the floor every qat scale is held at


class MovingAverageFakeQuantize(ObserverBase):
    """Observe a moving-average min / max and fake-quantize with it, in one op per call
    (:func:`qat.ops.observe_fake_quantize`, torch.ao's FusedMovingAvgObsFakeQuantize semantics).

    ``axis=None`` is per tensor, an int per channel. ``enable(False)`` freezes the range;
    ``enable_fake_quant(False)`` passes input through. Under torch.distributed the batch
    statistics are reduced across ranks before the average moves (one more pass over x).
    """

    def __init__(self, quant_min: int = 0, quant_max: int = 255, symmetric: bool = False,
                 averaging_constant: float = 0.01, axis: Optional[int] = None):
        super().__init__(quant_min, quant_max, symmetric)
        if not 0.0 <= averaging_constant <= 1.0:
            raise ValueError(f"averaging_constant must lie in [0, 1], got {averaging_constant}")
        self.averaging_constant = averaging_constant
        self.axis = axis
        size = (1,) if axis is None else (0,)
        self.register_buffer("fake_quant_enabled", torch.ones(1, dtype=torch.uint8))
        self.register_buffer("min_val", torch.full(size, float("inf")))
        self.register_buffer("max_val", torch.full(size, float("-inf")))
        self.register_buffer("scale", torch.ones(size))
        self.register_buffer("zero_point", torch.zeros(size))

    def enable_fake_quant(self, on: bool = True) -> "MovingAverageFakeQuantize":
        self.fake_quant_enabled.fill_(1 if on else 0)
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() == 0:
            return x
        shape = torch.Size(stats_shape(x, self.axis, None))
        if self.min_val.shape != shape:
            if self.min_val.numel() != 0:
                raise ValueError(f"observed {tuple(self.min_val.shape)} channels, x needs {tuple(shape)}")
            for name, value in (("min_val", float("inf")), ("max_val", float("-inf")),
                                ("scale", 1.0), ("zero_point", 0.0)):
                setattr(self, name, torch.full(shape, value, device=x.device))
        observe = self.enabled
        if distributed_world():
            lo = torch.full_like(self.min_val, float("inf"))
            hi = torch.full_like(self.max_val, float("-inf"))
            with torch.no_grad():
                ops.update_minmax(x.detach(), lo, hi, self.enabled, None, self.axis or 0)
                all_reduce_(lo, "min")
                all_reduce_(hi, "max")
                ops.update_minmax(torch.stack([lo, hi], dim=-1), self.min_val, self.max_val,
                                  self.enabled, self.averaging_constant, 0)
            observe = torch.zeros_like(self.enabled)
        return ops.observe_fake_quantize(
            x, observe, self.fake_quant_enabled, self.min_val, self.max_val, self.scale,
            self.zero_point, self.averaging_constant, self.quant_min, self.quant_max,
            0 if self.axis is None else self.axis, self.axis is not None, self.symmetric)

    def calculate_qparams(self):
        return self.scale.clone(), self.zero_point.clone()


class LearnableFakeQuantize(ObserverBase):
    """Fake quantization with a learned range (LSQ; LSQ+ when asymmetric).

    ``scale`` (and, unless ``symmetric``, ``zero_point``) are parameters, initialized from the
    MSE-optimal calibration of the first tensor seen (or of ``initialize(x)``; per-channel and
    per-group shapes are only known then, so run one of them before building the optimizer).
    The scale is held at ``MIN_SCALE`` or above before every use, whatever the optimizer did.
    Gradients scale by ``grad_factor``, by default ``1 / sqrt(x.numel() * quant_max)`` (LSQ).
    ``enable(False)`` passes input through unchanged.
    """

    def __init__(self, quant_min: int = -8, quant_max: int = 7, symmetric: bool = True,
                 axis: Optional[int] = None, group_size: Optional[int] = None,
                 grad_factor: Optional[float] = None, num_candidates: int = 100):
        super().__init__(quant_min, quant_max, symmetric)
        self.axis = axis
        self.group_size = group_size
        self.grad_factor = grad_factor
        self.num_candidates = num_candidates
        size = (1,) if axis is None and group_size is None else (0,)
        self.scale = nn.Parameter(torch.ones(size))
        zero_point = torch.zeros(size)
        if symmetric:
            self.register_buffer("zero_point", zero_point)
        else:
            self.zero_point = nn.Parameter(zero_point)
        self.register_buffer("initialized", torch.zeros(1, dtype=torch.uint8))
        self._initialized = False  # host-side mirrors of the buffers: no device read per step
        self._enabled = True

    def enable(self, on: bool = True) -> "LearnableFakeQuantize":
        self._enabled = on
        return super().enable(on)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        scale, zero_point = mse_qparams(x, self.quant_min, self.quant_max, self.symmetric,
                                        self.axis, self.group_size, self.num_candidates)
        self.scale = nn.Parameter(scale, requires_grad=self.scale.requires_grad)
        if isinstance(self.zero_point, nn.Parameter):
            self.zero_point = nn.Parameter(zero_point, requires_grad=self.zero_point.requires_grad)
        else:
            self.zero_point = zero_point
        self.initialized.fill_(1)
        self._initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)
        self._enabled = bool(self.enabled)

    def forward(self, x: Tensor) -> Tensor:
        if not self._initialized:
            self.initialize(x)
        if not self._enabled:
            return x
        with torch.no_grad():
            self.scale.clamp_(min=MIN_SCALE)
        grad_factor = self.grad_factor
        if grad_factor is None:
            grad_factor = 1.0 / math.sqrt(max(x.numel(), 1) * max(self.quant_max, 1))
        axis = 0 if self.axis is None else self.axis
        return ops.fake_quantize(x, self.scale, self.zero_point, self.quant_min, self.quant_max,
                                 axis, self.group_size, grad_factor)

    def calculate_qparams(self):
        return self.scale.detach().clone(), self.zero_point.detach().clone()
