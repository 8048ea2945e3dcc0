"""The fake-quantize modules a :class:`qat.QuantSpec` builds, one per role and range strategy.

- weights, learned range: :class:`LearnableWeightFakeQuantize` (LSQ; state of
  :class:`qat.observers.LearnableFakeQuantize`);
- weights, observed range: :class:`WeightFakeQuantize` (the current weight's range at every
  step, or a moving average of it);
- activations, moving average (the default): :class:`ActivationFakeQuantize` (state of
  :class:`qat.observers.MovingAverageFakeQuantize`);
- activations, another observer (running min/max, histogram, percentile, entropy, MSE):
  :class:`ObserverFakeQuantize`;
- activations, dynamic: :class:`DynamicFakeQuantize` (per token or per tensor, no state).

Activation observers only observe in training mode: an eval forward uses the stored range, so
evaluating never changes the model. Range flags live in buffers (``state_dict``) with host-side
mirrors, so a training step never reads a device flag; toggle them through ``enable()`` /
``enable_fake_quant()`` (or the helpers in :mod:`qat.training`), not by writing the buffers.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import ops
from .observers import (
    HistogramObserver,
    LearnableFakeQuantize,
    MinMaxObserver,
    MovingAverageFakeQuantize,
    MSEObserver,
)
from .observers.base import ObserverBase
from .observers.minmax import stats_shape
from .observers.mse import mse_qparams
from .quant_spec import QuantSpec
from .quantized_weight import QuantizedWeight, effective_qparams

__all__ = [
    "WeightFakeQuantize",
    "LearnableWeightFakeQuantize",
    "ActivationFakeQuantize",
    "ObserverFakeQuantize",
    "DynamicFakeQuantize",
    "make_int_quantizer",
]

_HISTOGRAM_METHODS = {"histogram": "percentile", "percentile": "percentile", "entropy": "entropy"}


def _make_observer(spec: QuantSpec, name: str, axis: Optional[int], group_size: Optional[int]) -> ObserverBase:
    qmin, qmax, sym = spec.quant_min, spec.quant_max, spec.symmetric
    if name in ("minmax", "moving_average"):
        avg = spec.averaging_constant if name == "moving_average" else None
        return MinMaxObserver(qmin, qmax, sym, averaging_constant=avg, axis=axis, group_size=group_size)
    if name == "mse":
        return MSEObserver(qmin, qmax, sym, axis=axis, group_size=group_size)
    return HistogramObserver(qmin, qmax, sym, method=_HISTOGRAM_METHODS[name])


class _FlaggedQuantizer(ObserverBase):
    """``enabled`` (observe) and ``fake_quant_enabled`` buffers with host-side mirrors, and
    ``scale`` / ``zero_point`` buffers sized by the first tensor (one element when per tensor)."""

    def __init__(self, spec: QuantSpec, axis: Optional[int], group_size: Optional[int]):
        super().__init__(spec.quant_min, spec.quant_max, spec.symmetric)
        self.spec = spec
        self.axis = axis
        self.group_size = group_size
        size = (1,) if axis is None and group_size is None else (0,)
        self.register_buffer("fake_quant_enabled", torch.ones(1, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(size))
        self.register_buffer("zero_point", torch.zeros(size))
        self._observing = True
        self._fake_quant = True

    def enable(self, on: bool = True):
        self._observing = on
        return super().enable(on)

    def enable_fake_quant(self, on: bool = True):
        self._fake_quant = on
        self.fake_quant_enabled.fill_(1 if on else 0)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._observing = bool(self.enabled)
        self._fake_quant = bool(self.fake_quant_enabled)

    @torch.no_grad()
    def _store(self, scale: Tensor, zero_point: Tensor) -> None:
        if self.scale.shape != scale.shape:
            self.scale = torch.empty_like(scale)
            self.zero_point = torch.empty_like(zero_point)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def _fake_quantize(self, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        return ops.fake_quantize(x, scale, zero_point, self.quant_min, self.quant_max,
                                 0 if self.axis is None else self.axis, self.group_size)

    def calculate_qparams(self) -> Tuple[Tensor, Tensor]:
        return self.scale.clone(), self.zero_point.clone()

    def extra_repr(self) -> str:
        return self.spec.describe()


class WeightFakeQuantize(_FlaggedQuantizer):
    """Fake-quantizes a weight with a range observed from it.

    While observing (the default), every call recomputes the range: ``"minmax"`` (the default),
    ``"mse"``, ``"histogram"`` / ``"percentile"`` / ``"entropy"`` look at the current weight
    only, in train and eval mode alike (an eval forward right after an optimizer step sees the
    new weight); ``"moving_average"`` moves a running range in training mode only. The range used
    is kept in ``scale`` / ``zero_point``; after ``enable(False)`` (see
    :func:`qat.freeze_observers`) those stay fixed. Histogram-based observers read the host on
    each observing call: use them to calibrate, then freeze.
    """

    def __init__(self, spec: QuantSpec):
        super().__init__(spec, spec.weight_axis(), spec.group_size)
        self.observer_name = spec.observer or "minmax"
        if self.observer_name != "minmax":
            self.observer = _make_observer(spec, self.observer_name, self.axis, self.group_size)

    @torch.no_grad()
    def _observe(self, w: Tensor) -> Tuple[Tensor, Tensor]:
        w = w.detach()
        name = self.observer_name
        if name == "minmax":
            shape = stats_shape(w, self.axis, self.group_size)
            lo = torch.full(shape, float("inf"), device=w.device)
            hi = torch.full(shape, float("-inf"), device=w.device)
            ops.update_minmax(w, lo, hi, self.enabled, None, 0 if self.axis is None else self.axis, self.group_size)
            return ops.choose_qparams(lo, hi, self.quant_min, self.quant_max, self.symmetric)
        if name == "moving_average":
            self.observer(w)
            # Weights are the same on every rank: no cross-rank reduction needed.
            return ops.choose_qparams(self.observer.min_val, self.observer.max_val, self.quant_min,
                                      self.quant_max, self.symmetric)
        if name == "mse":
            return mse_qparams(w, self.quant_min, self.quant_max, self.symmetric, self.axis, self.group_size)
        self.observer.reset()
        self.observer(w)
        return self.observer.calculate_qparams()

    def initialize(self, w: Tensor) -> None:
        """Compute and store the range of ``w`` (sizes the buffers; prepare calls it)."""
        self._store(*self._observe(w))

    def forward(self, w: Tensor) -> Tensor:
        if self._observing and (self.training or self.observer_name != "moving_average"):
            scale, zero_point = self._observe(w)
            self._store(scale, zero_point)
        else:
            scale, zero_point = self.scale, self.zero_point
        if not self._fake_quant:
            return w
        return self._fake_quantize(w, scale, zero_point)

    @torch.no_grad()
    def quantize_weight(self, w: Tensor) -> QuantizedWeight:
        """Codes of what an eval-mode ``forward(w)`` returns."""
        if not self._fake_quant:
            raise ValueError("fake quantization is disabled on this quantizer: its forward stores no integers")
        if self._observing and self.observer_name != "moving_average":
            scale, zero_point = self._observe(w)
        else:
            scale, zero_point = self.scale, self.zero_point
        return QuantizedWeight.quantize(w, scale, zero_point, self.quant_min, self.quant_max, self.axis,
                                        self.group_size, self.spec)


class LearnableWeightFakeQuantize(LearnableFakeQuantize):
    """:class:`qat.observers.LearnableFakeQuantize` for a weight spec (same state), plus
    :meth:`quantize_weight`."""

    def __init__(self, spec: QuantSpec):
        super().__init__(spec.quant_min, spec.quant_max, spec.symmetric, axis=spec.weight_axis(),
                         group_size=spec.group_size)
        self.spec = spec

    def enable_fake_quant(self, on: bool = True) -> "LearnableWeightFakeQuantize":
        return self.enable(on)

    @torch.no_grad()
    def quantize_weight(self, w: Tensor) -> QuantizedWeight:
        if not self._enabled:
            raise ValueError("fake quantization is disabled on this quantizer: its forward stores no integers")
        if not self._initialized:
            self.initialize(w)
        return QuantizedWeight.quantize(w, self.scale, self.zero_point, self.quant_min, self.quant_max,
                                        self.axis, self.group_size, self.spec)

    def extra_repr(self) -> str:
        return self.spec.describe()


class ActivationFakeQuantize(MovingAverageFakeQuantize):
    """:class:`qat.observers.MovingAverageFakeQuantize` (same state) that observes in training
    mode only; in eval mode it fake-quantizes with the range it holds."""

    def __init__(self, spec: QuantSpec):
        super().__init__(spec.quant_min, spec.quant_max, spec.symmetric, spec.averaging_constant, spec.axis)
        self.spec = spec
        self.register_buffer("_never", torch.zeros(1, dtype=torch.uint8), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        if x.numel() == 0 or self.min_val.numel() == 0:  # per channel, nothing observed yet
            return x
        return ops.observe_fake_quantize(
            x, self._never, self.fake_quant_enabled, self.min_val, self.max_val, self.scale,
            self.zero_point, self.averaging_constant, self.quant_min, self.quant_max,
            0 if self.axis is None else self.axis, self.axis is not None, self.symmetric)

    def extra_repr(self) -> str:
        return self.spec.describe()


class ObserverFakeQuantize(_FlaggedQuantizer):
    """Activation fake quantization with the range of an observer (``observer`` submodule):
    running min/max, histogram (percentile / entropy) or MSE. Observes in training mode while
    enabled; the range used is kept in ``scale`` / ``zero_point``."""

    def __init__(self, spec: QuantSpec):
        super().__init__(spec, spec.axis, None)
        self.observer = _make_observer(spec, spec.observer, spec.axis, None)

    def forward(self, x: Tensor) -> Tensor:
        if self._observing and self.training and x.numel() > 0:
            self.observer(x)
            self._store(*self.observer.calculate_qparams())
        if not self._fake_quant or self.scale.numel() == 0:
            return x
        return self._fake_quantize(x, self.scale, self.zero_point)


class DynamicFakeQuantize(nn.Module):
    """Dynamic activation fake quantization: the range of the tensor being quantized, per token
    (each row along the last dim) or per tensor, recomputed at every call; no state."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec
        self.quant_min, self.quant_max = spec.quant_min, spec.quant_max
        self.per_token = spec.granularity == "token"
        self._fake_quant = True
        self.register_buffer("_on", torch.ones(1, dtype=torch.uint8), persistent=False)

    def enable_fake_quant(self, on: bool = True) -> "DynamicFakeQuantize":
        self._fake_quant = on
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not self._fake_quant or x.numel() == 0:
            return x
        group_size = x.shape[-1] if self.per_token else None
        shape = [*x.shape[:-1], 1] if self.per_token else [1]
        with torch.no_grad():
            lo = torch.full(shape, float("inf"), device=x.device)
            hi = torch.full(shape, float("-inf"), device=x.device)
            ops.update_minmax(x.detach(), lo, hi, self._on, None, 0, group_size)
            scale, zero_point = ops.choose_qparams(lo, hi, self.quant_min, self.quant_max, self.spec.symmetric)
        return ops.fake_quantize(x, scale, zero_point, self.quant_min, self.quant_max, 0, group_size)

    def extra_repr(self) -> str:
        return self.spec.describe()


def make_int_quantizer(spec: QuantSpec, role: str) -> nn.Module:
    """The quantizer module of ``spec`` for ``role`` ("weight", "input" or "output")."""
    if role == "weight":
        if spec.dynamic:
            raise ValueError("a dynamic QuantSpec quantizes activations; weights need a static range")
        return LearnableWeightFakeQuantize(spec) if spec.learnable else WeightFakeQuantize(spec)
    if spec.dynamic:
        return DynamicFakeQuantize(spec)
    if spec.granularity == "group":
        raise ValueError(f"{role} activations cannot be quantized per group with a static range; "
                         "use granularity 'token' with dynamic=True")
    if spec.granularity == "channel" and spec.axis is None:
        raise ValueError(f"a per-channel {role} activation spec needs an explicit axis (e.g. 1 for NCHW, -1 for "
                         "features last)")
    if spec.learnable:
        return LearnableFakeQuantize(spec.quant_min, spec.quant_max, spec.symmetric, axis=spec.axis)
    if spec.observer in (None, "moving_average"):
        return ActivationFakeQuantize(spec)
    return ObserverFakeQuantize(spec)
