"""``PrepareSummary``: per quantized module its specs, size and bits per weight; model totals."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from .nn.modules import QuantModule

__all__ = ["PrepareSummary", "ModuleSummary", "summarize"]


@dataclass
class ModuleSummary:
    name: str
    type: str
    weight: str
    input: str
    output: str
    params: int  # weight and bias elements
    bits_per_weight: float  # deployed bits per weight element, scales included
    float_bytes: int  # weight and bias as trained
    bytes: int  # weight as deployed (its spec's storage_bytes), bias as trained


@dataclass
class PrepareSummary:
    """What :func:`qat.prepare` did. ``print(summary)`` shows a table; ``total_float_bytes``
    is every parameter of the model as trained, ``total_bytes`` the same with each quantized
    weight at its deployed size (integer codes at their bit width plus scales and zero points;
    see each spec's ``storage_bytes``)."""

    modules: List[ModuleSummary] = field(default_factory=list)
    total_params: int = 0
    total_float_bytes: int = 0
    total_bytes: int = 0

    @property
    def compression(self) -> float:
        return self.total_float_bytes / self.total_bytes if self.total_bytes else 1.0

    def __str__(self) -> str:
        header = ("module", "type", "weight", "input", "output", "params", "bits/w", "bytes")
        rows = [(m.name or "(root)", m.type, m.weight, m.input, m.output, f"{m.params:,}",
                 f"{m.bits_per_weight:.2f}", f"{m.bytes:,}") for m in self.modules]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        right = {5, 6, 7}

        def line(r):
            return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip()

        out = [line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]
        out.append(f"{len(self.modules)} quantized modules; {self.total_params:,} parameters; "
                   f"float {_mb(self.total_float_bytes)} -> quantized {_mb(self.total_bytes)} "
                   f"({self.compression:.2f}x smaller)")
        return "\n".join(out)


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _label(spec) -> str:
    return "-" if spec is None else spec.describe()


def _weight_info(m: QuantModule):
    """(weight numel, float bytes, deployed bytes, parameter or None)."""
    shape = m._weight_shape
    numel = math.prod(shape)
    param: Optional[torch.Tensor] = m._parameters.get("weight")
    dtype = param.dtype if param is not None else getattr(m.quantized_weight, "dtype", torch.float32)
    float_bytes = numel * torch.empty((), dtype=dtype).element_size()
    if m.weight_spec is None:
        return numel, float_bytes, float_bytes, param
    rows = m._rows(torch.empty(shape, device="meta")).shape
    return numel, float_bytes, m.weight_spec.storage_bytes(tuple(rows)), param


def summarize(model: nn.Module) -> PrepareSummary:
    """The :class:`PrepareSummary` of a prepared (or converted) model as it is now."""
    summary = PrepareSummary()
    quantized_params = {}
    for name, m in model.named_modules():
        if not isinstance(m, QuantModule):
            continue
        numel, w_float, w_bytes, param = _weight_info(m)
        bias = m._parameters.get("bias")
        b_bytes = 0 if bias is None else bias.numel() * bias.element_size()
        b_numel = 0 if bias is None else bias.numel()
        summary.modules.append(ModuleSummary(
            name=name, type=type(m).__name__, weight=_label(m.weight_spec), input=_label(m.input_spec),
            output=_label(m.output_spec), params=numel + b_numel,
            bits_per_weight=8.0 * w_bytes / max(numel, 1), float_bytes=w_float + b_bytes, bytes=w_bytes + b_bytes))
        if param is not None:
            quantized_params.setdefault(id(param), (w_float, w_bytes))
        else:
            summary.total_params += numel
            summary.total_float_bytes += w_float
            summary.total_bytes += w_bytes
    for name, p in model.named_parameters():
        if "_quantizer." in f".{name}" or ".quantized_weight." in f".{name}":
            continue  # quantizer state (learned scales) is metadata, counted in storage_bytes
        summary.total_params += p.numel()
        float_bytes = p.numel() * p.element_size()
        summary.total_float_bytes += float_bytes
        summary.total_bytes += quantized_params.get(id(p), (float_bytes, float_bytes))[1]
    return summary
