"""qat: quantization-aware training for PyTorch and LibTorch.

Importing qat loads the native operator library (torch.ops.qat.*) and registers its fake
kernels, so the ops work eagerly, under torch.compile and under torch.export.
"""

import torch  # noqa: F401  (loads libtorch before the extension that links it)

from . import _C  # noqa: F401  (registers torch.ops.qat.*)
from . import ops
from . import nn, observers
from .convert import convert
from .float_spec import FloatSpec
from .formats.gguf import GGUFFakeQuantize, GGUFSpec, GGUFWeight, gguf
from .plan import Plan, Rule
from .prepare import prepare
from .quant_spec import QuantSpec
from .quantized_weight import QuantizedWeight
from .palettize import LUTFakeQuantize, LUTSpec, PalettizedWeight
from .spec import Spec, register_spec, spec_from_dict
from .summary import PrepareSummary, summarize
from .training import (
    QATScheduler,
    disable_fake_quant,
    enable_fake_quant,
    enable_observers,
    freeze_bn_stats,
    freeze_observers,
    set_learnable_ranges,
)

__all__ = [
    "ops",
    "nn",
    "observers",
    "Spec",
    "register_spec",
    "spec_from_dict",
    "QuantSpec",
    "FloatSpec",
    "gguf",
    "GGUFSpec",
    "GGUFFakeQuantize",
    "GGUFWeight",
    "Plan",
    "Rule",
    "prepare",
    "convert",
    "QuantizedWeight",
    "LUTSpec",
    "LUTFakeQuantize",
    "PalettizedWeight",
    "PrepareSummary",
    "summarize",
    "freeze_observers",
    "enable_observers",
    "freeze_bn_stats",
    "set_learnable_ranges",
    "enable_fake_quant",
    "disable_fake_quant",
    "QATScheduler",
]
__version__ = "0.1.0"
