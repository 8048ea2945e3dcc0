"""``QuantSpec``: affine integer quantization (spec kind ``"int"``), for weights and activations.

A spec says what a tensor is quantized to; :meth:`QuantSpec.make_quantizer` builds the module
that fake-quantizes it during training (see :mod:`qat.quantizers`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

from torch import nn

from .spec import Spec, check_role, register_spec

__all__ = ["QuantSpec", "GRANULARITIES", "OBSERVERS"]

GRANULARITIES = ("tensor", "channel", "group", "token")
# Statistics that pick the range of a non-learnable spec. For weights, every observer but
# "moving_average" looks at the current weight only; for activations they accumulate over batches.
OBSERVERS = ("minmax", "moving_average", "histogram", "percentile", "entropy", "mse")
# Deployed size model: one fp32 scale per tensor / channel / group, plus one byte of zero point
# per scale when the spec is asymmetric.
SCALE_BYTES = 4
ZERO_POINT_BYTES = 1


def _check_type(name: str, value: Any, types, type_name: str) -> None:
    # bool is an int subclass: reject it where an int is meant.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise TypeError(f"QuantSpec.{name} must be {type_name}, got {value!r}")
    if not isinstance(value, types):
        raise TypeError(f"QuantSpec.{name} must be {type_name}, got {value!r}")


@register_spec
@dataclass(frozen=True)
class QuantSpec(Spec):
    """Affine integer quantization: ``q = clamp(round(x / scale) + zero_point, quant_min, quant_max)``.

    - ``bits`` (1 to 8) and ``signed`` give the integer range: ``[-2**(bits-1), 2**(bits-1) - 1]``
      or ``[0, 2**bits - 1]``; ``narrow_range`` drops the most negative code of a signed range
      (``[-127, 127]`` for int8), as symmetric weight formats often do.
    - ``symmetric``: zero point 0 (signed) or the range's midpoint (unsigned); else affine.
    - ``granularity``: ``"tensor"``, ``"channel"`` (along ``axis``; weights default to axis 0,
      the output channels), ``"group"`` (``group_size`` consecutive elements of a weight's
      input dimension) or ``"token"`` (one range per row of an activation, ``dynamic`` only).
    - ``learnable``: the range is learned (LSQ, :class:`qat.observers.LearnableFakeQuantize`),
      initialized MSE-optimally from the first tensor seen.
    - ``observer``: how a non-learnable range is chosen (``OBSERVERS``); ``None`` picks
      ``"minmax"`` of the current weight for weights and a moving average for activations.
    - ``averaging_constant``: the moving average's step.
    - ``dynamic``: activations only; the range comes from the tensor being quantized, at every
      call (per token or per tensor), nothing is stored.

    Weights are quantized in a 2-D view, rows = output channels and columns = everything else
    (a conv weight ``[out, in, kh, kw]`` is seen as ``[out, in * kh * kw]``), so ``axis=0`` and
    ``group_size`` mean the same thing for every module type.
    """

    kind = "int"

    bits: int = 8
    symmetric: bool = True
    signed: bool = True
    narrow_range: bool = False
    granularity: str = "tensor"
    group_size: Optional[int] = None
    axis: Optional[int] = None
    learnable: bool = False
    observer: Optional[str] = None
    averaging_constant: float = 0.01
    dynamic: bool = False

    def __post_init__(self):
        _check_type("bits", self.bits, int, "an int")
        if not 1 <= self.bits <= 8:
            raise ValueError(f"QuantSpec.bits must lie in [1, 8], got {self.bits}")
        for name in ("symmetric", "signed", "narrow_range", "learnable", "dynamic"):
            _check_type(name, getattr(self, name), bool, "a bool")
        if self.narrow_range and not (self.signed and self.bits >= 2):
            raise ValueError("QuantSpec.narrow_range needs a signed range of at least 2 bits")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"QuantSpec.granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.granularity == "group":
            if self.group_size is None:
                raise ValueError("QuantSpec.granularity 'group' needs a group_size")
            _check_type("group_size", self.group_size, int, "an int")
            if self.group_size < 1:
                raise ValueError(f"QuantSpec.group_size must be positive, got {self.group_size}")
        elif self.group_size is not None:
            raise ValueError(f"QuantSpec.group_size is only meaningful with granularity 'group', "
                             f"got granularity {self.granularity!r}")
        if self.axis is not None:
            _check_type("axis", self.axis, int, "an int")
            if self.granularity != "channel":
                raise ValueError(f"QuantSpec.axis is only meaningful with granularity 'channel', "
                                 f"got granularity {self.granularity!r}")
        if self.observer is not None and self.observer not in OBSERVERS:
            raise ValueError(f"QuantSpec.observer must be one of {OBSERVERS} or None, got {self.observer!r}")
        _check_type("averaging_constant", self.averaging_constant, (float, int), "a number")
        if not 0.0 < self.averaging_constant <= 1.0:
            raise ValueError(f"QuantSpec.averaging_constant must lie in (0, 1], got {self.averaging_constant}")
        if self.granularity == "token" and not self.dynamic:
            raise ValueError("QuantSpec.granularity 'token' is dynamic activation quantization: set dynamic=True")
        if self.dynamic:
            if self.granularity not in ("token", "tensor"):
                raise ValueError(f"a dynamic QuantSpec is per 'token' or per 'tensor', got {self.granularity!r}")
            if self.learnable:
                raise ValueError("a dynamic QuantSpec cannot be learnable: its range comes from each tensor")
            if self.observer is not None:
                raise ValueError("a dynamic QuantSpec takes no observer: its range is each tensor's min/max")
        if self.learnable and self.observer not in (None, "mse"):
            raise ValueError(f"a learnable QuantSpec is initialized by MSE calibration; "
                             f"observer {self.observer!r} does not apply")
        if self.observer in ("histogram", "percentile", "entropy") and self.granularity != "tensor":
            raise ValueError(f"observer {self.observer!r} is per tensor only, got granularity {self.granularity!r}")

    # ---- integer range ----

    @property
    def quant_min(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow_range else 0)

    @property
    def quant_max(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    # ---- convenience constructors ----

    @classmethod
    def int8_per_channel(cls, learnable: bool = False, **kw) -> "QuantSpec":
        """Weights: symmetric int8, one scale per output channel."""
        return cls(bits=8, granularity="channel", learnable=learnable, **kw)

    @classmethod
    def int4_per_channel(cls, learnable: bool = False, **kw) -> "QuantSpec":
        """Weights: symmetric int4, one scale per output channel."""
        return cls(bits=4, granularity="channel", learnable=learnable, **kw)

    @classmethod
    def int4_per_group(cls, group_size: int = 32, learnable: bool = False, **kw) -> "QuantSpec":
        """Weights: symmetric int4, one scale per ``group_size`` inputs of an output channel."""
        return cls(bits=4, granularity="group", group_size=group_size, learnable=learnable, **kw)

    @classmethod
    def int8_per_tensor(cls, **kw) -> "QuantSpec":
        """Activations: symmetric int8, one moving-average range per tensor."""
        return cls(bits=8, **kw)

    @classmethod
    def uint8_per_tensor(cls, **kw) -> "QuantSpec":
        """Activations: affine uint8, one moving-average range per tensor (torch.ao's default)."""
        return cls(bits=8, signed=False, symmetric=False, **kw)

    @classmethod
    def int8_per_token(cls, **kw) -> "QuantSpec":
        """Activations: dynamic symmetric int8, one range per row computed at every call."""
        return cls(bits=8, granularity="token", dynamic=True, **kw)

    # ---- Spec contract ----

    def make_quantizer(self, role: str) -> nn.Module:
        from . import quantizers

        return quantizers.make_int_quantizer(self, check_role(role))

    def weight_axis(self) -> Optional[int]:
        """Axis of the per-channel statistics of a 2-D weight view (None when not per channel)."""
        if self.granularity != "channel":
            return None
        return 0 if self.axis is None else self.axis

    def num_scales(self, shape: Sequence[int]) -> int:
        """Scales a weight of ``shape`` (rows = output channels) stores."""
        rows = shape[0] if len(shape) else 1
        cols = math.prod(shape[1:])
        if self.granularity == "group":
            return rows * (cols // self.group_size)
        if self.granularity == "channel":
            return (rows, cols)[self.weight_axis()] if len(shape) >= 2 else rows
        return 1

    def bits_per_weight(self) -> float:
        """Bits per element; for groups the scale (and zero point) overhead is included, per
        tensor / channel it depends on the shape (see :meth:`storage_bytes`)."""
        if self.granularity == "group":
            return self.bits + 8 * (SCALE_BYTES + (0 if self.symmetric else ZERO_POINT_BYTES)) / self.group_size
        return float(self.bits)

    def storage_bytes(self, shape: Sequence[int]) -> int:
        per_scale = SCALE_BYTES + (0 if self.symmetric else ZERO_POINT_BYTES)
        return math.ceil(math.prod(shape) * self.bits / 8) + self.num_scales(shape) * per_scale

    def describe(self) -> str:
        parts = [f"{'int' if self.signed else 'uint'}{self.bits}", "sym" if self.symmetric else "asym"]
        if self.narrow_range:
            parts.append("narrow")
        if self.granularity == "group":
            parts.append(f"group{self.group_size}")
        elif self.granularity == "channel":
            parts.append("channel" if self.axis is None else f"channel(axis={self.axis})")
        else:
            parts.append(self.granularity)
        if self.dynamic:
            parts.append("dynamic")
        if self.learnable:
            parts.append("lsq")
        if self.observer is not None:
            parts.append(self.observer)
        return " ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        """``kind``, ``bits``, ``granularity`` and every field that differs from its default."""
        d: Dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("bits", "granularity") or value != f.default:
                d[f.name] = value
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "QuantSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown QuantSpec key(s) {unknown}; known: {sorted(names)}")
        return cls(**d)
