"""QAT modules: the float module's subclass, with its parameters (same objects, same state_dict
keys ``weight`` / ``bias``) and up to three quantizer submodules:

- ``weight_quantizer``: fake-quantizes the weight in every forward (in a 2-D view, rows = output
  channels, see :class:`qat.QuantSpec`);
- ``input_quantizer``, ``output_quantizer``: fake-quantize the activations.

A role the plan gives no spec is ``None`` (absent from the state_dict). After
:func:`qat.convert`, ``weight`` and ``weight_quantizer`` are gone and ``quantized_weight`` (a
:class:`qat.QuantizedWeight`, or the spec's own converted module) holds the stored weight.
"""

from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spec import Spec

__all__ = [
    "QuantModule",
    "QuantLinear",
    "QuantConv1d",
    "QuantConv2d",
    "QuantEmbedding",
    "quant_hf_conv1d_class",
    "is_quant_module",
]


def _check_spec(role: str, spec) -> Optional[Spec]:
    if spec is not None and not isinstance(spec, Spec):
        raise TypeError(f"the {role} spec must be a qat Spec (QuantSpec, FloatSpec, ...), got {spec!r}")
    return spec


class QuantModule:
    """Mixin of every QAT module. Subclasses list the float class(es) they replace in
    ``_float_types`` and may override ``_rows`` / ``_unrows`` (weight <-> 2-D view)."""

    _float_types: Tuple[type, ...] = ()
    weight_spec: Optional[Spec]
    input_spec: Optional[Spec]
    output_spec: Optional[Spec]

    @classmethod
    def from_float(cls, module: nn.Module, weight_spec: Optional[Spec] = None, input_spec: Optional[Spec] = None,
                   output_spec: Optional[Spec] = None):
        """The QAT module of ``module``: the same parameter objects (ties to other modules stay
        tied) and attributes; quantizers built from the specs and, for weights, initialized from
        the current weight (so learned scales exist before the optimizer is built)."""
        if type(module) not in cls._float_types:
            names = ", ".join(t.__name__ for t in cls._float_types)
            raise TypeError(f"{cls.__name__}.from_float takes a {names}, got {type(module).__name__}")
        new = cls.__new__(cls)
        # A shallow copy of the module's state; its dicts (parameters, buffers, submodules,
        # hooks) are copied so the float module is left as it was.
        new.__dict__.update(module.__dict__)
        for key, value in module.__dict__.items():
            if isinstance(value, (dict, set)):
                new.__dict__[key] = copy.copy(value)
        new._init_quantizers(weight_spec, input_spec, output_spec)
        return new

    def _init_quantizers(self, weight_spec, input_spec, output_spec) -> None:
        self.weight_spec = _check_spec("weight", weight_spec)
        self.input_spec = _check_spec("input", input_spec)
        self.output_spec = _check_spec("output", output_spec)
        self._weight_shape = tuple(self.weight.shape)
        group_size = getattr(weight_spec, "group_size", None)
        if group_size is not None:
            rows = self._rows(torch.empty(self._weight_shape, device="meta")).shape
            if rows[1] % group_size:
                raise ValueError(f"group_size {group_size} must divide the weight's {rows[1]} input columns "
                                 f"(the weight is quantized as [{rows[0]}, {rows[1]}], rows = output channels)")
        device = self.weight.device
        for role, spec in (("weight", weight_spec), ("input", input_spec), ("output", output_spec)):
            quantizer = None if spec is None else spec.make_quantizer(role).to(device)
            self.register_module(f"{role}_quantizer", quantizer)
        self.register_module("quantized_weight", None)
        if self.weight_quantizer is not None and hasattr(self.weight_quantizer, "initialize"):
            self.weight_quantizer.initialize(self._rows(self._float_weight().detach()))

    # ---- weight views ----

    def _float_weight(self) -> Tensor:
        return self.weight

    def _rows(self, w: Tensor) -> Tensor:
        """The 2-D view quantizers see: rows = output channels."""
        return w.reshape(w.shape[0], -1)

    def _unrows(self, w: Tensor) -> Tensor:
        return w.reshape(self._weight_shape)

    def quant_weight(self) -> Tensor:
        """The weight the forward uses: fake-quantized, or dequantized after convert."""
        if self.quantized_weight is not None:
            return self._unrows(self.quantized_weight.dequantize())
        return self._fake_quant_weight(self._float_weight())

    def _fake_quant_weight(self, w: Tensor) -> Tensor:
        quantizer = self.weight_quantizer
        return w if quantizer is None else self._unrows(quantizer(self._rows(w)))

    def _quantize_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _quantize_output(self, y: Tensor) -> Tensor:
        return y if self.output_quantizer is None else self.output_quantizer(y)

    # ---- convert ----

    @property
    def is_converted(self) -> bool:
        return self.quantized_weight is not None

    @torch.no_grad()
    def to_converted(self) -> nn.Module:
        """Store the weight as its quantizer's converted module (``quantize_weight``) and drop
        the float weight and the weight quantizer; returns the module to put in place (itself)."""
        if self.is_converted or self.weight_quantizer is None:
            return self
        quantize_weight = getattr(self.weight_quantizer, "quantize_weight", None)
        if quantize_weight is None:
            raise TypeError(f"{type(self.weight_quantizer).__name__} has no quantize_weight(w): it cannot be converted")
        was_training = self.weight_quantizer.training
        self.weight_quantizer.eval()
        stored = quantize_weight(self._rows(self._float_weight().detach()))
        self.weight_quantizer.train(was_training)
        del self.weight
        self.weight_quantizer = None
        self.quantized_weight = stored
        return self

    def _quant_repr(self) -> str:
        specs = [f"{role}={spec.describe()}" for role, spec in
                 (("weight", self.weight_spec), ("input", self.input_spec), ("output", self.output_spec))
                 if spec is not None]
        return ", ".join(specs)


def is_quant_module(module: nn.Module) -> bool:
    return isinstance(module, QuantModule)


class QuantLinear(QuantModule, nn.Linear):
    _float_types = (nn.Linear,)

    def forward(self, x: Tensor) -> Tensor:
        return self._quantize_output(F.linear(self._quantize_input(x), self.quant_weight(), self.bias))


class QuantConv1d(QuantModule, nn.Conv1d):
    _float_types = (nn.Conv1d,)

    def forward(self, x: Tensor) -> Tensor:
        return self._quantize_output(self._conv_forward(self._quantize_input(x), self.quant_weight(), self.bias))


class QuantConv2d(QuantModule, nn.Conv2d):
    _float_types = (nn.Conv2d,)

    def forward(self, x: Tensor) -> Tensor:
        return self._quantize_output(self._conv_forward(self._quantize_input(x), self.quant_weight(), self.bias))


class QuantEmbedding(QuantModule, nn.Embedding):
    """Embedding lookups from the fake-quantized table (rows = embeddings, so per-channel
    granularity is one scale per embedding). Its input is indices: no input spec."""

    _float_types = (nn.Embedding,)

    def _init_quantizers(self, weight_spec, input_spec, output_spec) -> None:
        if input_spec is not None:
            raise ValueError("an Embedding's input is indices: it takes no input spec")
        super()._init_quantizers(weight_spec, input_spec, output_spec)

    def forward(self, x: Tensor) -> Tensor:
        y = F.embedding(x, self.quant_weight(), self.padding_idx, self.max_norm, self.norm_type,
                        self.scale_grad_by_freq, self.sparse)
        return self._quantize_output(y)


# Hugging Face's GPT-2-style Conv1D (a linear layer with a [in, out] weight). transformers is
# imported only when one is met; the class is built once and reachable as
# qat.nn.modules.QuantHFConv1D (so pickle finds it).
_HF_CLASS = None


def quant_hf_conv1d_class():
    """``QuantHFConv1D``: the QAT subclass of ``transformers.pytorch_utils.Conv1D``. Its weight
    is quantized as ``[out, in]`` (the transpose), like a Linear's."""
    global _HF_CLASS
    if _HF_CLASS is None:
        from transformers.pytorch_utils import Conv1D

        class QuantHFConv1D(QuantModule, Conv1D):
            _float_types = (Conv1D,)
            __repr__ = nn.Module.__repr__

            def extra_repr(self) -> str:
                return f"nf={self.nf}, nx={self.nx}"

            def _rows(self, w: Tensor) -> Tensor:
                return w.t()

            def _unrows(self, w: Tensor) -> Tensor:
                return w.t()

            def forward(self, x: Tensor) -> Tensor:
                x = self._quantize_input(x)
                size_out = x.size()[:-1] + (self.nf,)
                y = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.quant_weight())
                return self._quantize_output(y.view(size_out))

        QuantHFConv1D.__module__ = __name__
        QuantHFConv1D.__qualname__ = "QuantHFConv1D"
        _HF_CLASS = QuantHFConv1D
    return _HF_CLASS


def __getattr__(name: str):
    if name == "QuantHFConv1D":
        return quant_hf_conv1d_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
