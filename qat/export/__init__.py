"""qat.export: write trained weights in deployable formats.

``qat.export.gguf`` holds the GGUF exporter: reference quantizers byte-identical to llama.cpp's
(``quantize`` / ``dequantize``), and a GGUF v3 writer and reader (``GGUFWriter``,
``GGUFReader``). The math lives in the torch-free C++ core (``export/`` in the source tree),
bound as ``qat.export._core``.

``qat.export.to_gguf(model, path, ...)`` writes a whole model (a Hugging Face llama as a
llama.cpp model, anything else as a generic container); see :mod:`qat.export.gguf_model`.
"""

from . import gguf
from .gguf_model import ExportSummary, to_gguf

__all__ = ["gguf", "to_gguf", "ExportSummary"]
