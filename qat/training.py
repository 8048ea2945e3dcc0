"""Training controls for prepared models: freeze observers and BN statistics, turn learned
ranges and fake quantization on or off, and a step counter that freezes at given steps."""

from __future__ import annotations

from typing import Iterator, Optional

from torch import nn

from .float_spec import FakeCast
from .nn.conv_bn import QuantConvBn2d
from .observers import LearnableFakeQuantize, MovingAverageFakeQuantize
from .observers.base import ObserverBase
from .quantizers import DynamicFakeQuantize, _FlaggedQuantizer

__all__ = [
    "freeze_observers",
    "enable_observers",
    "freeze_bn_stats",
    "set_learnable_ranges",
    "enable_fake_quant",
    "disable_fake_quant",
    "QATScheduler",
]


def _observing(model: nn.Module) -> Iterator[ObserverBase]:
    # Learned ranges observe nothing: their enable flag switches fake quantization itself.
    for m in model.modules():
        if isinstance(m, ObserverBase) and not isinstance(m, LearnableFakeQuantize):
            yield m


def enable_observers(model: nn.Module, on: bool = True) -> nn.Module:
    """Let every observer of ``model`` update its range (or, ``on=False``, stop it)."""
    for m in _observing(model):
        m.enable(on)
    return model


def freeze_observers(model: nn.Module) -> nn.Module:
    """Stop every observer: ranges stay as they are now (learned ranges keep learning; see
    :func:`set_learnable_ranges`)."""
    return enable_observers(model, False)


def freeze_bn_stats(model: nn.Module, frozen: bool = True) -> nn.Module:
    """Stop updating the statistics of folded BatchNorms (:class:`qat.nn.QuantConvBn2d`): from
    then on training uses the running statistics, i.e. the folded convolution."""
    for m in model.modules():
        if isinstance(m, QuantConvBn2d):
            m.freeze_bn_stats(frozen)
    return model


def set_learnable_ranges(model: nn.Module, on: bool = True) -> nn.Module:
    """Turn gradient updates of learned ranges on or off: LSQ scales and zero points, and the
    learned parameters of other spec kinds' quantizers that offer ``set_learnable(on)``."""
    for m in model.modules():
        if isinstance(m, LearnableFakeQuantize):
            m.scale.requires_grad_(on)
            if isinstance(m.zero_point, nn.Parameter):
                m.zero_point.requires_grad_(on)
        elif hasattr(m, "set_learnable") and m is not model:
            m.set_learnable(on)
    return model


def enable_fake_quant(model: nn.Module, on: bool = True) -> nn.Module:
    """Turn fake quantization of every quantizer on or off (off: tensors pass through; the
    observers keep observing)."""
    for m in model.modules():
        if isinstance(m, LearnableFakeQuantize):
            m.enable(on)
        elif isinstance(m, (MovingAverageFakeQuantize, _FlaggedQuantizer, DynamicFakeQuantize, FakeCast)):
            m.enable_fake_quant(on)
        elif hasattr(m, "enable_fake_quant") and m is not model:
            m.enable_fake_quant(on)  # other spec kinds' quantizers that offer the switch
    return model


def disable_fake_quant(model: nn.Module) -> nn.Module:
    return enable_fake_quant(model, False)


class QATScheduler:
    """Counts training steps and applies the usual QAT schedule: call :meth:`step` once per
    optimizer step. After ``freeze_observers_at`` steps the observers freeze, after
    ``freeze_bn_at`` the folded BN statistics, after ``freeze_ranges_at`` the learned ranges."""

    def __init__(self, model: nn.Module, freeze_observers_at: Optional[int] = None,
                 freeze_bn_at: Optional[int] = None, freeze_ranges_at: Optional[int] = None):
        for name, at in (("freeze_observers_at", freeze_observers_at), ("freeze_bn_at", freeze_bn_at),
                         ("freeze_ranges_at", freeze_ranges_at)):
            if at is not None and (not isinstance(at, int) or isinstance(at, bool) or at < 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {at!r}")
        self.model = model
        self.freeze_observers_at = freeze_observers_at
        self.freeze_bn_at = freeze_bn_at
        self.freeze_ranges_at = freeze_ranges_at
        self.steps = 0
        self._apply()

    def _apply(self) -> None:
        if self.freeze_observers_at == self.steps:
            freeze_observers(self.model)
        if self.freeze_bn_at == self.steps:
            freeze_bn_stats(self.model)
        if self.freeze_ranges_at == self.steps:
            set_learnable_ranges(self.model, False)

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
