"""qat: quantization-aware training for PyTorch and LibTorch.

Importing qat loads the native operator library (torch.ops.qat.*) and registers its fake
kernels, so the ops work eagerly, under torch.compile and under torch.export.
"""

import torch  # noqa: F401  (loads libtorch before the extension that links it)

from . import _C  # noqa: F401  (registers torch.ops.qat.*)
from . import ops

__all__ = ["ops"]
__version__ = "0.1.0"
