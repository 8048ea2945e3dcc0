"""QAT modules: float module subclasses with weight / input / output quantizers."""

from .conv_bn import QuantConvBn2d
from .modules import (
    QuantConv1d,
    QuantConv2d,
    QuantEmbedding,
    QuantLinear,
    QuantModule,
    is_quant_module,
    quant_hf_conv1d_class,
)

__all__ = [
    "QuantModule",
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantConvBn2d",
    "QuantEmbedding",
    "QuantHFConv1D",
    "quant_hf_conv1d_class",
    "is_quant_module",
]


def __getattr__(name: str):
    # transformers is imported only when the Hugging Face Conv1D wrapper is asked for.
    if name == "QuantHFConv1D":
        return quant_hf_conv1d_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
