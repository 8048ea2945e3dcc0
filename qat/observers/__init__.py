"""Observers and calibrators: statistics of the tensors a model sees, turned into scales and
zero points. The statistics run in the qat ops (C++/CUDA), never in Python loops.

- :class:`MinMaxObserver` (plain or moving average; per tensor, channel or group) and the
  torch.ao-style names :class:`MovingAverageMinMaxObserver`, :class:`PerChannelMinMaxObserver`,
  :class:`PerGroupMinMaxObserver`: scale and zero point equal torch.ao's.
- :class:`HistogramObserver`, :class:`PercentileObserver`, :class:`EntropyObserver`.
- :class:`MSEObserver` and :func:`mse_qparams`: MSE-optimal clipping.
- :class:`MovingAverageFakeQuantize` (fused observe + fake-quantize) and
  :class:`LearnableFakeQuantize` (LSQ range learning).
"""

from .base import ObserverBase
from .fake_quantize import MIN_SCALE, LearnableFakeQuantize, MovingAverageFakeQuantize
from .histogram import EntropyObserver, HistogramObserver, PercentileObserver
from .minmax import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    PerGroupMinMaxObserver,
)
from .mse import MSEObserver, candidate_ratios, mse_qparams

__all__ = [
    "ObserverBase",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "PerGroupMinMaxObserver",
    "HistogramObserver",
    "PercentileObserver",
    "EntropyObserver",
    "MSEObserver",
    "mse_qparams",
    "candidate_ratios",
    "MovingAverageFakeQuantize",
    "LearnableFakeQuantize",
    "MIN_SCALE",
]
