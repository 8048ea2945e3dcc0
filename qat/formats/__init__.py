"""Deployment formats as QAT specs: the fake-quant forward emulates the format's exact lattice,
so the exported tensor decodes to exactly the weight the QAT model used.

``qat.formats.gguf``: GGUF weight types (``qat.gguf("Q4_K")``, :class:`GGUFSpec`).
"""

from .gguf import GGUFFakeQuantize, GGUFSpec, GGUFWeight, GGUF_TYPES

__all__ = ["GGUFSpec", "GGUFFakeQuantize", "GGUFWeight", "GGUF_TYPES"]
