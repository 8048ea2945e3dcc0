"""qat.export: write trained weights in deployable formats.

``qat.export.gguf`` holds the GGUF exporter: reference quantizers byte-identical to llama.cpp's
(``quantize`` / ``dequantize``), and a GGUF v3 writer and reader (``GGUFWriter``,
``GGUFReader``). The math lives in the torch-free C++ core (``export/`` in the source tree),
bound as ``qat.export._core``.
"""

from . import gguf

__all__ = ["gguf"]
