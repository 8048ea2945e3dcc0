"""Palettization (look-up-table quantization): every weight becomes one of ``2**bits`` centroids
of a LUT shared by the whole tensor or by each group of ``channels_per_lut`` output channels.

Centroids start at the k-means centroids of the weight (:func:`qat.ops.kmeans_1d`, on the
first weight seen or on ``initialize(w)``); during training the forward replaces each weight by
its nearest centroid with a straight-through gradient, and the centroids themselves learn from
the gradient summed over the weights that chose them (:func:`qat.ops.lut_fake_quantize`).
``quantize_weight`` stores uint8 indices and the LUT (:class:`PalettizedWeight`), whose
``dequantize()`` is bit for bit the eval-mode forward.

The LUT is stored in ``lut_dtype`` (fp16 by default, as Core ML stores palettes): the forward
already uses the centroids rounded to it, so training sees the deployed values.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from . import ops
from .spec import Spec, register_spec

__all__ = ["LUTSpec", "LUTFakeQuantize", "PalettizedWeight", "LUT_DTYPES"]

LUT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@register_spec
@dataclass(frozen=True)
class LUTSpec(Spec):
    """Palettize weights to ``2**bits`` learned centroids (``bits`` in 1..8).

    ``channels_per_lut``: output channels (dim 0 of the weight) sharing one LUT; ``None`` for
    one LUT per tensor, 1 for one per output channel. (Not ``group_size``: for the other spec
    kinds that is a group along the input dim.) ``learnable``: train the centroids (else they stay
    at their k-means values). ``kmeans_iters``: at most this many Lloyd updates at
    initialization. ``lut_dtype``: how the LUT is stored, ``"fp32"``, ``"fp16"`` or ``"bf16"``.
    """

    kind: ClassVar[str] = "lut"

    bits: int = 4
    channels_per_lut: Optional[int] = None
    learnable: bool = True
    kmeans_iters: int = 300
    lut_dtype: str = "fp16"

    def __post_init__(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.bits) or not 1 <= self.bits <= 8:
            raise ValueError(f"LUTSpec: bits must be an int in 1..8 (at most 256 centroids), got {self.bits!r}")
        if self.channels_per_lut is not None and (not is_int(self.channels_per_lut) or self.channels_per_lut < 1):
            raise ValueError(f"LUTSpec: channels_per_lut must be a positive int (output channels per LUT) "
                             f"or None (per tensor), got {self.channels_per_lut!r}")
        if not isinstance(self.learnable, bool):
            raise ValueError(f"LUTSpec: learnable must be a bool, got {self.learnable!r}")
        if not is_int(self.kmeans_iters) or self.kmeans_iters < 0:
            raise ValueError(f"LUTSpec: kmeans_iters must be an int >= 0, got {self.kmeans_iters!r}")
        if self.lut_dtype not in LUT_DTYPES:
            raise ValueError(f"LUTSpec: lut_dtype must be one of {sorted(LUT_DTYPES)}, got {self.lut_dtype!r}")

    @property
    def num_centroids(self) -> int:
        return 1 << self.bits

    def groups(self, out_channels: int) -> int:
        """How many LUTs a weight with ``out_channels`` rows (dim 0) gets."""
        if self.channels_per_lut is None:
            return 1
        if out_channels % self.channels_per_lut != 0:
            raise ValueError(f"LUTSpec: channels_per_lut {self.channels_per_lut} must divide the weight's "
                             f"{out_channels} output channels (dim 0)")
        return out_channels // self.channels_per_lut

    def make_quantizer(self, role: str) -> nn.Module:
        if role != "weight":
            raise ValueError(f"LUTSpec palettizes weights only; it cannot quantize an {role!r} (role)")
        return LUTFakeQuantize(self)

    def bits_per_weight(self, shape: Optional[Sequence[int]] = None) -> float:
        """Index bits per weight; with the weight's ``shape``, the LUT's share is added."""
        if shape is None:
            return float(self.bits)
        return 8.0 * self.storage_bytes(shape) / max(math.prod(shape), 1)

    def storage_bytes(self, shape: Sequence[int]) -> int:
        """Indices packed at ``bits`` each, plus ``groups`` LUTs of ``2**bits`` entries."""
        numel = math.prod(shape)
        out_channels = shape[0] if len(shape) > 0 else 1
        lut_bytes = self.groups(out_channels) * self.num_centroids * LUT_DTYPES[self.lut_dtype].itemsize
        return math.ceil(numel * self.bits / 8) + lut_bytes

    def describe(self) -> str:
        where = "tensor" if self.channels_per_lut is None else f"{self.channels_per_lut}ch"
        return f"lut{self.bits} {where} {self.lut_dtype}" + ("" if self.learnable else " frozen")

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "LUTSpec":
        known = {"bits", "channels_per_lut", "learnable", "kmeans_iters", "lut_dtype"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"LUTSpec: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def _check_weight(w: Tensor) -> None:
    if not isinstance(w, Tensor) or w.dim() < 1:
        raise ValueError(f"a palettized weight needs at least one dim (output channels), got "
                         f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")


class LUTFakeQuantize(nn.Module):
    """Fake palettization of a weight (dim 0 = output channels) under a :class:`LUTSpec`.

    ``centroids`` (float32 ``[groups, 2**bits]``) is a parameter, trained when the spec is
    learnable. It is empty until :meth:`initialize` (or the first forward) runs k-means on a
    weight; the parameter object stays the same, so an optimizer built before holds it. A
    ``state_dict`` loads into an uninitialized quantizer. ``enable_fake_quant(False)`` passes
    weights through unchanged; ``set_learnable(False)`` freezes the centroids.
    """

    def __init__(self, spec: LUTSpec):
        super().__init__()
        if not isinstance(spec, LUTSpec):
            raise TypeError(f"LUTFakeQuantize needs a LUTSpec, got {type(spec).__name__}")
        self.spec = spec
        self.centroids = nn.Parameter(torch.zeros(0, spec.num_centroids), requires_grad=spec.learnable)
        self.register_buffer("initialized", torch.zeros(1, dtype=torch.uint8))
        self.register_buffer("fake_quant_enabled", torch.ones(1, dtype=torch.uint8))
        self._initialized = False  # host-side mirrors of the buffers: no device read per step
        self._fake_quant = True

    @torch.no_grad()
    def initialize(self, w: Tensor) -> None:
        """Centroids := k-means of ``w`` (per tensor or per group of output channels)."""
        _check_weight(w)
        groups = self.spec.groups(w.shape[0])
        c = ops.kmeans_1d(w.detach(), self.spec.num_centroids, groups, self.spec.kmeans_iters)
        self.centroids.data = c.to(w.device)
        self.initialized.fill_(1)
        self._initialized = True

    def enable_fake_quant(self, on: bool = True) -> "LUTFakeQuantize":
        self._fake_quant = on
        self.fake_quant_enabled.fill_(1 if on else 0)
        return self

    def set_learnable(self, on: bool = True) -> "LUTFakeQuantize":
        """Train the centroids (``on``, when the spec is learnable) or hold them."""
        self.centroids.requires_grad_(on and self.spec.learnable)
        return self

    def lut(self) -> Tensor:
        """The LUT the forward uses: the centroids rounded to ``lut_dtype`` (straight-through),
        as float32 ``[groups, 2**bits]``."""
        c = self.centroids.float()
        if self.spec.lut_dtype == "fp32":
            return c
        return ops.fake_cast(c, self.spec.lut_dtype)

    def forward(self, w: Tensor) -> Tensor:
        if not self._initialized:
            self.initialize(w)
        if not self._fake_quant:
            return w
        _check_weight(w)
        groups = self.spec.groups(w.shape[0])
        if groups != self.centroids.shape[0]:
            raise ValueError(f"LUTFakeQuantize holds {self.centroids.shape[0]} LUTs but this weight "
                             f"({tuple(w.shape)}) needs {groups}")
        return ops.lut_fake_quantize(w, self.lut())

    @torch.no_grad()
    def quantize_weight(self, w: Tensor) -> "PalettizedWeight":
        """The converted weight: uint8 indices and the stored LUT (see :class:`PalettizedWeight`).
        Always palettized, whether fake quantization is enabled or not."""
        if not self._initialized:
            self.initialize(w)
        if torch.isnan(w).any():
            raise ValueError("cannot palettize a weight containing NaN: an index cannot represent it")
        lut = self.lut().detach()
        return PalettizedWeight(ops.lut_indices(w, lut), lut.to(LUT_DTYPES[self.spec.lut_dtype]), w.dtype, self.spec)

    def bits_per_weight(self, shape: Optional[Sequence[int]] = None) -> float:
        return self.spec.bits_per_weight(shape)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Centroids are sized by the first weight; take the saved shape before loading into them.
        saved = state_dict.get(prefix + "centroids")
        if saved is not None and saved.shape != self.centroids.shape:
            self.centroids.data = self.centroids.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._initialized = bool(self.initialized)
        self._fake_quant = bool(self.fake_quant_enabled)

    def extra_repr(self) -> str:
        return f"{self.spec.describe()}, groups={self.centroids.shape[0]}, initialized={self._initialized}"


class PalettizedWeight(nn.Module):
    """A converted palettized weight: buffers ``indices`` (uint8, the weight's shape) and ``lut``
    (``[groups, 2**bits]`` in the spec's ``lut_dtype``); ``dtype`` is the weight's dtype.
    ``dequantize()`` gathers ``lut[g, indices]`` in float32 and casts to ``dtype``, which equals
    the :class:`LUTFakeQuantize` forward it was converted from, bit for bit."""

    def __init__(self, indices: Tensor, lut: Tensor, dtype: torch.dtype, spec: LUTSpec):
        super().__init__()
        if indices.dtype != torch.uint8:
            raise TypeError(f"indices must be uint8, got {indices.dtype}")
        if lut.dim() != 2 or lut.shape[1] != spec.num_centroids:
            raise ValueError(f"lut must be [groups, {spec.num_centroids}], got {tuple(lut.shape)}")
        _check_weight(indices)
        if spec.groups(indices.shape[0]) != lut.shape[0]:
            raise ValueError(f"lut has {lut.shape[0]} groups; indices of shape {tuple(indices.shape)} "
                             f"need {spec.groups(indices.shape[0])}")
        self.register_buffer("indices", indices)
        self.register_buffer("lut", lut)
        self.dtype = dtype
        self.spec = spec

    @property
    def shape(self) -> torch.Size:
        return self.indices.shape

    def dequantize(self) -> Tensor:
        groups = self.lut.shape[0]
        idx = self.indices.reshape(groups, -1).long()
        return torch.gather(self.lut.float(), 1, idx).reshape(self.indices.shape).to(self.dtype)

    def bits_per_weight(self) -> float:
        return self.spec.bits_per_weight(tuple(self.indices.shape))

    def extra_repr(self) -> str:
        return f"{self.spec.describe()}, shape={tuple(self.indices.shape)}, dtype={self.dtype}"
