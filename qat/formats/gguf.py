"""GGUF weight types as QAT specs: ``qat.gguf("Q4_K")``.

The fake-quant forward is the type's exact lattice (:func:`qat.ops.gguf_fake_quantize`): block
scales used as fp16, K-quant integer sub-block scales and mins, the format's own rounding and
ggml's decode order. Its parameters (block scale ``d``, ``dmin`` / the Q4_1 minimum, sub-block
``sub_scales`` / ``sub_mins``) start from llama.cpp's reference quantizer and are learned.
``quantize_weight`` packs the codes and stored parameters into the tensor's GGUF bytes
(:class:`GGUFWeight`), which llama.cpp dequantizes to exactly the weight the forward used.

F32, F16 and BF16 are plain: identity, :func:`qat.ops.fake_cast` to fp16 / bf16.

Weights are quantized as quantizers see them (rows = output channels, blocks along the last
dim, as GGUF stores a PyTorch ``[out, in]`` weight), so the last dim must be a multiple of the
block size: 32, or 256 for the K-quants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import ops
from ..export import gguf as _gguf
from ..spec import Spec, check_role, register_spec

__all__ = ["GGUFSpec", "GGUFFakeQuantize", "GGUFWeight", "gguf", "GGUF_TYPES", "stored_params"]

_CAST_TYPES = {"F32": None, "F16": "fp16", "BF16": "bf16"}
#: The GGUF types a spec may name: the block lattices and the float types.
GGUF_TYPES: Tuple[str, ...] = ops.GGUF_LATTICE_TYPES + tuple(_CAST_TYPES)
_PARAMS = ("d", "dmin", "sub_scales", "sub_mins")


def _type_name(type: str) -> str:
    if not isinstance(type, str):
        raise TypeError(f"a GGUF type is a name like 'Q4_K', got {type!r}")
    name = type.upper()
    if name not in GGUF_TYPES:
        raise ValueError(f"unknown or unsupported GGUF type {type!r}; supported: {', '.join(GGUF_TYPES)}")
    return name


@register_spec
@dataclass(frozen=True)
class GGUFSpec(Spec):
    """A weight stored as GGUF ``type`` (``"Q4_K"``, ``"Q8_0"``, ``"IQ4_NL"``, ``"F16"``, ...).

    ``learnable``: the block / sub-block parameters train with the weight (default); otherwise
    they stay at the reference quantizer's choice for the first weight seen.
    """

    kind = "gguf"

    type: str = "Q4_K"
    learnable: bool = True

    def __post_init__(self):
        object.__setattr__(self, "type", _type_name(self.type))
        if not isinstance(self.learnable, bool):
            raise TypeError(f"GGUFSpec.learnable must be a bool, got {self.learnable!r}")

    @property
    def block_size(self) -> int:
        return _gguf.type_info(self.type).block_size

    def make_quantizer(self, role: str) -> nn.Module:
        check_role(role)
        if role != "weight":
            raise ValueError(f"GGUF types store weights; a {role} needs another spec (QuantSpec, FloatSpec)")
        return GGUFFakeQuantize(self)

    def bits_per_weight(self) -> float:
        return _gguf.type_info(self.type).bits_per_weight

    def storage_bytes(self, shape: Sequence[int]) -> int:
        t = _gguf.type_info(self.type)
        n = int(np.prod(shape)) if len(shape) else 1
        return n // t.block_size * t.type_size if n % t.block_size == 0 else super().storage_bytes(shape)

    def describe(self) -> str:
        return self.type if self.learnable else f"{self.type} (fixed scales)"

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "type": self.type, "learnable": self.learnable}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "GGUFSpec":
        unknown = sorted(set(d) - {"type", "learnable"})
        if unknown:
            raise ValueError(f"unknown GGUFSpec key(s) {unknown}; known: ['learnable', 'type']")
        return cls(**d)


def gguf(type: str, learnable: bool = True) -> GGUFSpec:
    """The spec of GGUF weight type ``type``: ``qat.gguf("Q4_K")``."""
    return GGUFSpec(type, learnable)


def stored_params(d: Tensor, dmin: Optional[Tensor], sub_scales: Optional[Tensor],
                  sub_mins: Optional[Tensor], type: str) -> _gguf.BlockParams:
    """The parameters as :func:`qat.ops.gguf_fake_quantize` uses them, i.e. as the file stores
    them: ``d`` / ``dmin`` rounded to fp16 (NaN as 0, clamped to +-65504; float32 values),
    ``sub_scales`` / ``sub_mins`` rounded half to even and clamped (int8). ``codes`` is None."""
    layout = _gguf.lattice_layout(type)

    def half(p):
        if p is None:
            return None
        return torch.nan_to_num(p.detach().float(), nan=0.0).clamp(-65504.0, 65504.0).half().float()

    def ints(p, lo, hi):
        if p is None:
            return None
        return torch.round(torch.nan_to_num(p.detach().float(), nan=0.0)).clamp(lo, hi).to(torch.int8)

    return _gguf.BlockParams(None, half(d), half(dmin), ints(sub_scales, *layout["scales"]),
                             ints(sub_mins, *layout["mins"]))


class GGUFFakeQuantize(nn.Module):
    """Fake-quantizes a weight onto a GGUF type's exact lattice, with learned block parameters.

    Parameters (float32, lattice types only; sized by the first weight seen or by
    :meth:`initialize`, so call it before building the optimizer; ``None`` where the type has no
    such field): ``d``, ``dmin``, ``sub_scales``, ``sub_mins`` (see
    :func:`qat.ops.gguf_fake_quantize`). They start at what llama.cpp's reference quantizer
    stores for that weight, so the untrained forward is (for the K-quants exactly, for the
    32-element types up to codes the reference rounded with its unrounded fp32 scale) ggml's
    dequantization of the reference bytes. Plain types (F32 / F16 / BF16) have no parameters.

    ``enable_fake_quant(False)`` passes weights through; ``set_learnable(False)`` freezes the
    parameters. :meth:`quantize_weight` returns the :class:`GGUFWeight` whose bytes decode to
    exactly this forward's output.
    """

    def __init__(self, spec: Union[GGUFSpec, str] = "Q4_K", learnable: Optional[bool] = None):
        super().__init__()
        if isinstance(spec, str):
            spec = GGUFSpec(spec, True if learnable is None else learnable)
        elif learnable is not None and learnable != spec.learnable:
            spec = GGUFSpec(spec.type, learnable)
        self.spec = spec
        self.type_name = spec.type
        self._lattice = spec.type in ops.GGUF_LATTICE_TYPES
        if self._lattice:
            layout = _gguf.lattice_layout(spec.type)
            present = (True, layout["has_dmin"], layout["n_sub"] > 0, layout["has_mins"])
        else:
            present = (False,) * 4
        for name, has in zip(_PARAMS, present):
            if has:
                self.register_parameter(name, nn.Parameter(torch.empty(0), requires_grad=spec.learnable))
            else:
                self.register_parameter(name, None)
        self.register_buffer("initialized", torch.full((1,), 0 if self._lattice else 1, dtype=torch.uint8))
        self._initialized = not self._lattice  # host-side mirror: no device read per step
        self._fake_quant = True

    # ---- switches ----

    def enable_fake_quant(self, on: bool = True) -> "GGUFFakeQuantize":
        self._fake_quant = on
        return self

    def set_learnable(self, on: bool = True) -> "GGUFFakeQuantize":
        for p in self._params():
            p.requires_grad_(on)
        return self

    def _params(self):
        return [p for p in (self.d, self.dmin, self.sub_scales, self.sub_mins) if p is not None]

    # ---- state ----

    @torch.no_grad()
    def initialize(self, w: Tensor) -> None:
        """Sets the parameters to what llama.cpp's reference quantizer stores for ``w``."""
        if not self._lattice:
            return
        self._check_weight(w)
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"{self.type_name}: cannot initialize from a weight holding NaN or inf")
        fields = _gguf.unpack_params(_gguf.quantize(w.detach(), self.type_name), self.type_name, w.shape)
        values = (fields.d, fields.dmin, fields.scales, fields.mins)
        for name, value in zip(_PARAMS, values):
            p = getattr(self, name)
            if p is not None:
                setattr(self, name, nn.Parameter(value.to(device=w.device, dtype=torch.float32),
                                                 requires_grad=p.requires_grad))
        self.initialized.fill_(1)
        self._initialized = True

    def _check_weight(self, w: Tensor) -> None:
        if not isinstance(w, Tensor) or not w.is_floating_point():
            raise TypeError(f"{self.type_name}: expected a floating-point weight tensor, got {type(w).__name__}"
                            + (f" of {w.dtype}" if isinstance(w, Tensor) else ""))
        block = self.spec.block_size
        if w.dim() == 0 or w.shape[-1] % block:
            raise ValueError(f"{self.type_name} quantizes blocks of {block} along the weight's last dim, "
                             f"which is {w.shape[-1] if w.dim() else 'absent'} (weight shape {tuple(w.shape)})")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Parameters are sized by the first weight: take the saved shapes.
        for name in _PARAMS:
            p, saved = self._parameters.get(name), state_dict.get(prefix + name)
            if p is not None and saved is not None and saved.shape != p.shape:
                self._parameters[name] = nn.Parameter(p.new_empty(saved.shape), p.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self._lattice:
            self._initialized = bool(self.initialized)

    # ---- forward / convert ----

    def forward(self, w: Tensor) -> Tensor:
        if not self._fake_quant:
            return w
        if not self._lattice:
            fmt = _CAST_TYPES[self.type_name]
            return w if fmt is None else ops.fake_cast(w, fmt)
        if not self._initialized:
            self.initialize(w)
        return ops.gguf_fake_quantize(w, self.d, self.dmin, self.sub_scales, self.sub_mins, self.type_name)

    def stored_params(self) -> _gguf.BlockParams:
        """The parameters as the forward uses them and the file stores them (see
        :func:`stored_params`)."""
        if not self._lattice:
            raise ValueError(f"{self.type_name} has no block parameters")
        return stored_params(self.d, self.dmin, self.sub_scales, self.sub_mins, self.type_name)

    @torch.no_grad()
    def quantize_weight(self, w: Tensor) -> "GGUFWeight":
        """``w`` as GGUF bytes: :class:`GGUFWeight` whose ``dequantize()`` equals this forward's
        output bit for bit (in ``w``'s dtype). ``ValueError`` for NaN / inf (no code holds them)
        or a weight whose shape does not match the parameters."""
        if not self._fake_quant:
            raise ValueError("this GGUFFakeQuantize is disabled (enable_fake_quant(False)): its forward stores no format")
        self._check_weight(w)
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"{self.type_name}: the weight holds NaN or inf, which GGUF blocks cannot store")
        if not self._lattice:
            y = self.forward(w.detach().float())  # exact in the type: the cast rounds from fp32
            storage = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[self.type_name]
            data = y.to(storage).contiguous().view(torch.uint8).reshape(-1)
            return GGUFWeight(data, self.type_name, w.shape, w.dtype)
        if not self._initialized:
            self.initialize(w)
        codes = ops.gguf_codes(w.detach(), self.d, self.dmin, self.sub_scales, self.sub_mins, self.type_name)
        p = self.stored_params()
        raw = _gguf.pack(self.type_name, codes, p.d, p.dmin, p.scales, p.mins)
        data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(w.device)
        return GGUFWeight(data, self.type_name, w.shape, w.dtype)

    def extra_repr(self) -> str:
        shape = tuple(self.d.shape) if self._lattice and self._initialized else None
        return f"{self.type_name}, learnable={self.spec.learnable}" + (f", blocks={shape}" if shape else "")


class GGUFWeight(nn.Module):
    """A converted weight as its GGUF bytes.

    Buffer ``data``: uint8, the tensor's bytes in GGUF block order (rows one after another, as a
    GGUF file stores a tensor whose dims are ``reversed(shape)``); a GGUF writer copies it as is.
    Attributes: ``type_name`` (``"Q4_K"``), ``shape`` (PyTorch order), ``dtype`` (the QAT
    weight's). ``dequantize()`` decodes the bytes with the exporter core's ggml-exact
    dequantizer into float32 and returns them in ``dtype`` (float32 for a float32 weight): equal,
    bit for bit, to the fake-quant forward the bytes came from.
    """

    def __init__(self, data: Tensor, type_name: str, shape: Sequence[int], dtype: torch.dtype = torch.float32):
        super().__init__()
        type_name = _type_name(type_name)
        shape = torch.Size(int(s) for s in shape)
        if not isinstance(data, Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
            raise TypeError("GGUFWeight.data must be a 1-D uint8 tensor")
        expected = _gguf.quantized_nbytes(tuple(shape), type_name)
        if data.numel() != expected:
            raise ValueError(f"{type_name} data for shape {tuple(shape)} is {expected} bytes, got {data.numel()}")
        self.register_buffer("data", data)
        self.type_name = type_name
        self.shape = shape
        self.dtype = dtype

    @property
    def spec(self) -> GGUFSpec:
        return GGUFSpec(self.type_name)

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def dequantize(self) -> Tensor:
        y = _gguf.dequantize(self.data.detach().cpu().numpy(), self.type_name, tuple(self.shape))
        return y.to(device=self.data.device, dtype=self.dtype)

    def forward(self) -> Tensor:
        return self.dequantize()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "data")
        if saved is not None and saved.shape != self.data.shape:
            error_msgs.append(f"{prefix}data: {self.type_name} {tuple(self.shape)} takes {self.data.numel()} bytes, "
                              f"the state dict has {tuple(saved.shape)}")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{self.type_name}, shape={tuple(self.shape)}, dtype={self.dtype}, {self.nbytes} bytes"
