"""GGUF export: llama.cpp's reference quantizers and the GGUF v3 container.

Quantize and dequantize one tensor::

    import qat.export
    data = qat.export.gguf.quantize(weight, "Q4_K")          # bytes, llama.cpp's bytes
    w = qat.export.gguf.dequantize(data, "Q4_K", weight.shape)  # float32 torch.Tensor

Blocks run along the **last** dimension (a PyTorch ``Linear.weight`` ``[out, in]`` is quantized
along ``in``, exactly as GGUF stores it), so the last dimension must be a multiple of the type's
block size (32 for Q4_0..Q8_0 and IQ4_NL, 256 for the K-quants, 1 for F32/F16/BF16).

The quantizers are the C++ core's ports of llama.cpp's ``quantize_row_<type>_ref`` (for IQ4_NL:
``quantize_iq4_nl``, what llama-quantize writes), with each type's own rounding and search, and
produce the same bytes as llama.cpp's ggml-base for the same float32 input. Input is converted to
float32 first (float64 input is rounded to float32; fp16/bf16 widen exactly).

NaN and inf: F32, F16 and BF16 store them (F16/BF16 NaN becomes a quiet NaN with the sign kept).
Block types cannot encode them, and llama.cpp's C code has no defined result for them, so
``quantize`` raises ``ValueError`` naming the first non-finite element. Finite values whose block
scale overflows fp16 (|x| beyond about 65504 * 127 for Q8_0, less for the others) are encoded as
llama.cpp encodes them: the stored scale becomes inf and dequantizes to inf/NaN.

Files: ``GGUFWriter`` writes GGUF v3 (metadata with explicit or inferred value types, tensors
in insertion order, data contiguous and padded to ``general.alignment``), atomically: a temporary
file next to the destination, fsync, rename. ``GGUFReader`` validates a file the way ggml does
(bad magic or version, unknown types, truncation, duplicate keys or names, rows that are not a
multiple of the block size, misplaced data) and raises ``GGUFError`` (a ``ValueError``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core

GGUFError = _core.GGUFError

__all__ = [
    "GGUFError",
    "GGUFReader",
    "GGUFWriter",
    "TYPES",
    "QUANT_TYPES",
    "VALUE_TYPES",
    "TensorInfo",
    "TypeInfo",
    "MetadataField",
    "dequantize",
    "quantize",
    "quantized_nbytes",
    "type_info",
]


class TypeInfo(NamedTuple):
    name: str
    id: int
    block_size: int
    type_size: int
    supported: bool  # quantize/dequantize implemented here (others can still be read and copied)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size


#: Every ggml tensor type a GGUF file may carry, by name, in id order (append-only ids).
TYPES: Dict[str, TypeInfo] = {row[0]: TypeInfo(*row) for row in _core.type_table()}
#: The types this module quantizes and dequantizes.
QUANT_TYPES: Tuple[str, ...] = tuple(name for name, t in TYPES.items() if t.supported)
_TYPES_BY_ID = {t.id: t for t in TYPES.values()}

#: GGUF metadata value types, by name.
VALUE_TYPES: Tuple[str, ...] = (
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
)


def type_info(type: Union[str, int]) -> TypeInfo:
    """The ggml type by name (``"Q4_K"``) or id (12); ``ValueError`` when unknown."""
    if isinstance(type, str):
        t = TYPES.get(type)
        if t is None:
            t = TYPES.get(type.upper())
    elif isinstance(type, (int, np.integer)) and not isinstance(type, bool):
        t = _TYPES_BY_ID.get(int(type))
    else:
        raise TypeError(f"a GGUF type is a name like 'Q4_K' or an id, not {type!r}")
    if t is None:
        raise ValueError(f"unknown GGUF tensor type {type!r}; supported: {', '.join(QUANT_TYPES)}")
    return t


def _supported(type: Union[str, int]) -> TypeInfo:
    t = type_info(type)
    if not t.supported:
        raise ValueError(f"GGUF type {t.name} is not supported for (de)quantization; supported: {', '.join(QUANT_TYPES)}")
    return t


def _as_float32(x: Any, what: str) -> np.ndarray:
    """A C-contiguous float32 numpy view/copy of a float torch tensor, numpy array or array-like."""
    if type(x).__module__.startswith("torch"):
        import torch

        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{what}: expected a tensor or array, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{what}: expected a floating-point tensor, got {x.dtype}")
        return x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        raise TypeError(f"{what}: expected floating-point values, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(arr.shape)  # (keeps 0-d as 0-d)


def _check_rows(shape: Sequence[int], t: TypeInfo, what: str) -> None:
    if len(shape) == 0:
        raise ValueError(f"{what}: expected at least one dimension, got a scalar")
    if any(int(d) < 0 for d in shape):
        raise ValueError(f"{what}: negative dimension in shape {tuple(shape)}")
    if int(shape[-1]) % t.block_size != 0:
        raise ValueError(
            f"{what}: {t.name} quantizes blocks of {t.block_size} along the last dimension, "
            f"which is {shape[-1]} (not a multiple of {t.block_size})"
        )


def quantized_nbytes(shape: Union[int, Sequence[int]], type: Union[str, int]) -> int:
    """Bytes of a tensor of this (PyTorch-order) shape stored as ``type``."""
    t = type_info(type)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    _check_rows(shape, t, "quantized_nbytes")
    n = math.prod(shape)
    return n // t.block_size * t.type_size


def quantize(x: Any, type: Union[str, int]) -> bytes:
    """Quantizes ``x`` (float torch tensor, numpy array or array-like) to GGUF ``type`` bytes.

    Blocks run along the last dimension; rows are laid out one after another (row-major), which
    is the GGUF data layout of a tensor whose dims are ``reversed(x.shape)``. Raises ``TypeError``
    for non-float input and ``ValueError`` for an unknown type, a last dimension that is not a
    multiple of the block size, or NaN/inf input to a block type.
    """
    t = _supported(type)
    arr = _as_float32(x, "quantize")
    _check_rows(arr.shape, t, "quantize")
    n_per_row = int(arr.shape[-1])
    if arr.size == 0 or n_per_row == 0:
        return b""
    return _core.quantize(t.name, arr.reshape(-1), n_per_row)


def _dequantize_np(data: Any, type: Union[str, int], shape: Sequence[int]) -> np.ndarray:
    t = _supported(type)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    _check_rows(shape, t, "dequantize")
    n = math.prod(shape)
    buf = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    expected = n // t.block_size * t.type_size
    if len(buf) != expected:
        raise ValueError(f"dequantize: {t.name} data for shape {shape} is {expected} bytes, got {len(buf)}")
    if n == 0:
        return np.zeros(shape, dtype=np.float32)
    return _core.dequantize(t.name, buf, n).reshape(shape)


def dequantize(data: Any, type: Union[str, int], shape: Union[int, Sequence[int]]):
    """Decodes GGUF ``type`` bytes into a float32 ``torch.Tensor`` of ``shape`` (PyTorch order),
    exactly as llama.cpp's ``dequantize_row_<type>`` does."""
    import torch

    return torch.from_numpy(_dequantize_np(data, type, shape))


# ---- metadata values ---------------------------------------------------------------------------

class MetadataField(NamedTuple):
    key: str
    type: str                  # one of VALUE_TYPES
    value: Any                 # int, float, bool, str (bytes if not UTF-8), or a list for ARRAY
    elem_type: Optional[str]   # ARRAY only


_NUMPY_VALUE_TYPES = {
    np.dtype(np.uint8): "UINT8", np.dtype(np.int8): "INT8",
    np.dtype(np.uint16): "UINT16", np.dtype(np.int16): "INT16",
    np.dtype(np.uint32): "UINT32", np.dtype(np.int32): "INT32",
    np.dtype(np.uint64): "UINT64", np.dtype(np.int64): "INT64",
    np.dtype(np.float32): "FLOAT32", np.dtype(np.float64): "FLOAT64",
    np.dtype(np.bool_): "BOOL",
}


def _infer_scalar_type(v: Any, key: str) -> str:
    # Same defaults as gguf-py's GGUFValueType.get_type: str -> STRING, bool -> BOOL,
    # int -> INT32, float -> FLOAT32; numpy scalars keep their own type.
    if isinstance(v, np.generic):
        t = _NUMPY_VALUE_TYPES.get(v.dtype)
        if t is None:
            raise TypeError(f"key '{key}': no GGUF value type for numpy {v.dtype}")
        return t
    if isinstance(v, (str, bytes, bytearray)):
        return "STRING"
    if isinstance(v, bool):
        return "BOOL"
    if isinstance(v, int):
        if not -(2**31) <= v < 2**31:
            raise ValueError(f"key '{key}': {v} does not fit INT32 (the default for int); pass type='INT64' or 'UINT64'")
        return "INT32"
    if isinstance(v, float):
        return "FLOAT32"
    raise TypeError(f"key '{key}': cannot infer a GGUF value type for {type(v).__name__}; pass type=")


def _infer_type(value: Any, key: str) -> Tuple[str, Optional[str]]:
    if isinstance(value, np.ndarray):
        t = _NUMPY_VALUE_TYPES.get(value.dtype)
        if t is None or value.ndim != 1:
            raise TypeError(f"key '{key}': arrays must be 1-D with a numeric or bool dtype, got {value.dtype} {value.shape}")
        return "ARRAY", t
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"key '{key}': cannot infer the element type of an empty array; pass elem_type=")
        kinds = {_infer_scalar_type(v, key) for v in value}
        if len(kinds) == 1:
            return "ARRAY", kinds.pop()
        if kinds <= {"INT32", "FLOAT32"}:
            return "ARRAY", "FLOAT32"
        raise TypeError(f"key '{key}': mixed element types {sorted(kinds)}; pass elem_type=")
    return _infer_scalar_type(value, key), None


def _value_for_core(value: Any, vtype: str) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if vtype == "STRING" and isinstance(value, bytearray):
        return bytes(value)
    return value


# ---- writer ------------------------------------------------------------------------------------

class GGUFWriter:
    """Builds a GGUF v3 file in memory and writes it atomically.

    >>> w = GGUFWriter()
    >>> w.add("general.architecture", "llama")
    >>> w.add("llama.block_count", 30, "UINT32")
    >>> w.add_tensor("blk.0.attn_q.weight", linear.weight, "Q4_K")
    >>> w.write("model.gguf")

    Keys and tensors keep insertion order. Value types are explicit (``type=``) or inferred as
    gguf-py infers them (str STRING, bool BOOL, int INT32, float FLOAT32, list ARRAY; numpy scalars
    and 1-D arrays keep their dtype). llama.cpp checks key types strictly (UINT32 for counts,
    FLOAT32 for epsilons), so pass ``type=`` for those.
    """

    def __init__(self, alignment: Optional[int] = None):
        self._w = _core.Writer()
        if alignment is not None:
            self.add("general.alignment", int(alignment), "UINT32")

    @property
    def alignment(self) -> int:
        return self._w.alignment

    def add(self, key: str, value: Any, type: Optional[str] = None, elem_type: Optional[str] = None) -> None:
        """Adds a metadata key. ``type`` is one of ``VALUE_TYPES``; for ``"ARRAY"``, ``elem_type``
        gives the element type (inferred from the elements when omitted)."""
        if type is None:
            type, inferred_elem = _infer_type(value, key)
            elem_type = elem_type or inferred_elem
        else:
            type = type.upper()
            if type not in VALUE_TYPES:
                raise ValueError(f"key '{key}': unknown GGUF value type {type!r}; one of {', '.join(VALUE_TYPES)}")
            if type == "ARRAY" and elem_type is None:
                _, elem_type = _infer_type(value, key)
        if elem_type is not None:
            elem_type = elem_type.upper()
        self._w.set(key, type, _value_for_core(value, type), elem_type or "")

    def add_tensor(self, name: str, tensor: Any, type: Union[str, int] = "F32") -> None:
        """Quantizes a float tensor (PyTorch order, blocks along the last dimension) into ``type``
        and adds it. GGUF stores the dims reversed: ``[out, in]`` becomes ``ne = [in, out]``."""
        t = _supported(type)
        arr = _as_float32(tensor, f"tensor '{name}'")
        _check_rows(arr.shape, t, f"tensor '{name}'")
        self._w.add_tensor_f32(name, list(reversed(arr.shape)), t.name, arr.reshape(-1))

    def add_quantized(self, name: str, data: Any, shape: Sequence[int], type: Union[str, int]) -> None:
        """Adds already encoded bytes of ``type`` for a tensor of ``shape`` (PyTorch order)."""
        t = type_info(type)
        shape = tuple(int(d) for d in shape)
        _check_rows(shape, t, f"tensor '{name}'")
        buf = data if not isinstance(data, np.ndarray) else np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        self._w.add_tensor(name, list(reversed(shape)), t.name, buf)

    def write(self, path: Union[str, os.PathLike]) -> None:
        """Writes the file: temp file in the same directory, fsync, rename. On failure the
        destination is untouched and the temp file removed."""
        self._w.write(os.fspath(path))


# ---- reader ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    ne: Tuple[int, ...]      # ggml order: ne[0] is the row length
    offset: int              # relative to the data section
    nbytes: int

    @property
    def shape(self) -> Tuple[int, ...]:
        """PyTorch order (reversed ne)."""
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / self.n_elements if self.n_elements else 0.0


class GGUFReader:
    """Reads and validates a GGUF file (v2 or v3). Tensor data is read on demand.

    ``fields`` maps each key to a ``MetadataField`` (file order), ``metadata`` maps keys to plain
    values, ``tensors`` lists ``TensorInfo`` in file order.
    """

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = os.fspath(path)
        self._r = _core.Reader(self.path)
        self.version: int = self._r.version
        self.alignment: int = self._r.alignment
        self.data_offset: int = self._r.data_offset
        self.file_size: int = self._r.file_size
        self.fields: Dict[str, MetadataField] = {
            key: MetadataField(key, vtype, value, elem) for key, vtype, value, elem in self._r.metadata()
        }
        self.tensors: List[TensorInfo] = [
            TensorInfo(d["name"], d["type"], tuple(d["ne"]), d["offset"], d["nbytes"]) for d in self._r.tensors()
        ]
        self._index = {t.name: i for i, t in enumerate(self.tensors)}

    @property
    def metadata(self) -> Dict[str, Any]:
        return {k: f.value for k, f in self.fields.items()}

    def close(self) -> None:
        self._r = None

    def __enter__(self) -> "GGUFReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tensor_index(self, key: Union[str, int]) -> int:
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"no tensor named {key!r} in {self.path}")
            return self._index[key]
        if not 0 <= key < len(self.tensors):
            raise IndexError(f"tensor index {key} out of range ({len(self.tensors)} tensors)")
        return int(key)

    def tensor_info(self, key: Union[str, int]) -> TensorInfo:
        return self.tensors[self._tensor_index(key)]

    def tensor_bytes(self, key: Union[str, int]) -> bytes:
        """The tensor's stored bytes (name or index)."""
        if self._r is None:
            raise ValueError("reader is closed")
        return self._r.tensor_data(self._tensor_index(key))

    def tensor(self, key: Union[str, int]):
        """The tensor dequantized to a float32 ``torch.Tensor`` in PyTorch order."""
        info = self.tensor_info(key)
        return dequantize(self.tensor_bytes(key), info.type, info.shape)


# ---- lattice fields: pack / unpack ------------------------------------------------------------

__all__ += ["BlockParams", "LATTICE_TYPES", "lattice_layout", "pack", "unpack_params"]

#: The block types whose bytes are codes plus block (and sub-block) scales.
LATTICE_TYPES: Tuple[str, ...] = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL")


class BlockParams(NamedTuple):
    """The stored fields of a tensor of a lattice type (``shape`` in PyTorch order, blocks along
    the last dim; ``blocks = shape[-1] // block``):

    - ``codes``: int8, ``shape``: each element's stored code (Q8_0 the signed value; Q4_0 /
      Q5_0 value + 8 / + 16; Q3_K value + 4; Q6_K value + 32; IQ4_NL the codebook index).
    - ``d``: float32 ``[*shape[:-1], blocks]``, the fp16 block (super-block) scale.
    - ``dmin``: like ``d``; Q4_1/Q5_1 the block minimum, Q2_K/Q4_K/Q5_K the min scale; else None.
    - ``scales``: int8 ``[*shape[:-1], blocks, n_sub]`` K-quant sub-block scales (Q3_K signed,
      unbiased), else None.
    - ``mins``: like ``scales``, Q2_K/Q4_K/Q5_K only, else None.
    """

    codes: Any
    d: Any
    dmin: Any
    scales: Any
    mins: Any


def lattice_layout(type: Union[str, int]) -> Dict[str, Any]:
    """``{"block", "n_sub", "has_dmin", "has_mins", "codes": (lo, hi), "scales": (lo, hi),
    "mins": (0, hi)}`` of a lattice type; ``ValueError`` for any other type."""
    return _core.lattice_layout(type_info(type).name)


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _fp16_bits(x: Any, shape: Tuple[int, ...], name: str, what: str) -> np.ndarray:
    a = _to_numpy(x, what)
    if a.shape != shape:
        raise ValueError(f"{what}: {name} must have shape {shape}, got {a.shape}")
    if a.dtype == np.float16:
        return np.ascontiguousarray(a).view(np.uint16).reshape(-1)
    if a.dtype.kind != "f":
        raise TypeError(f"{what}: {name} must hold floats (fp16 values), got dtype {a.dtype}")
    h = a.astype(np.float16)
    with np.errstate(invalid="ignore"):
        exact = np.array_equal(h.astype(a.dtype), a)
    if not exact:
        raise ValueError(f"{what}: {name} holds values fp16 cannot store exactly; round them first "
                         "(the QAT forward uses d and dmin as fp16)")
    return np.ascontiguousarray(h).view(np.uint16).reshape(-1)


def _int8_field(x: Any, shape: Tuple[int, ...], name: str, what: str) -> np.ndarray:
    a = _to_numpy(x, what)
    if a.shape != shape:
        raise ValueError(f"{what}: {name} must have shape {shape}, got {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(np.round(a), a):
            raise ValueError(f"{what}: {name} must hold integers")
    elif a.dtype.kind not in "iub":
        raise TypeError(f"{what}: {name} must hold integers, got dtype {a.dtype}")
    if a.size and (a.min() < -128 or a.max() > 127):
        raise ValueError(f"{what}: {name} holds values outside int8 ({a.min()}..{a.max()})")
    return np.ascontiguousarray(a.astype(np.int8)).reshape(-1)


def pack(type: Union[str, int], codes: Any, d: Any, dmin: Any = None, scales: Any = None, mins: Any = None) -> bytes:
    """Lays out codes and stored parameters as GGUF ``type`` blocks: the bytes whose
    dequantization is ``value(codes)`` on the lattice of (``d``, ``dmin``, ``scales``, ``mins``).
    Fields as :class:`BlockParams` describes them (torch tensors or numpy arrays); ``d`` and
    ``dmin`` must hold values fp16 stores exactly, the integer fields integers in range. Pure
    bit layout: nothing is rounded. ``ValueError`` / ``TypeError`` name what is wrong."""
    t = type_info(type)
    layout = lattice_layout(t.name)
    what = f"pack {t.name}"
    c = _to_numpy(codes, what)
    if c.dtype.kind not in "iu":
        raise TypeError(f"{what}: codes must be an integer tensor, got dtype {c.dtype}")
    _check_rows(c.shape, t, what)
    lo, hi = layout["codes"]
    if c.size and (c.min() < lo or c.max() > hi):
        raise ValueError(f"{what}: codes must lie in [{lo}, {hi}], got {c.min()}..{c.max()}")
    if c.size == 0:
        return b""
    pshape = (*c.shape[:-1], c.shape[-1] // t.block_size)
    sshape = (*pshape, layout["n_sub"])
    fields = {"dmin": (dmin, layout["has_dmin"]), "scales": (scales, layout["n_sub"] > 0),
              "mins": (mins, layout["has_mins"])}
    for name, (value, wanted) in fields.items():
        if wanted and value is None:
            raise ValueError(f"{what}: {name} is required")
        if not wanted and value is not None:
            raise ValueError(f"{what}: {t.name} has no {name}")
    return _core.pack(
        t.name,
        np.ascontiguousarray(c.astype(np.int8)).reshape(-1),
        _fp16_bits(d, pshape, "d", what),
        None if dmin is None else _fp16_bits(dmin, pshape, "dmin", what),
        None if scales is None else _int8_field(scales, sshape, "scales", what),
        None if mins is None else _int8_field(mins, sshape, "mins", what),
    )


def unpack_params(data: Any, type: Union[str, int], shape: Union[int, Sequence[int]]) -> BlockParams:
    """The stored fields of GGUF ``type`` bytes of a tensor of ``shape`` (PyTorch order), as
    torch tensors (:class:`BlockParams`); ``pack`` of them gives the same bytes back."""
    import torch

    t = type_info(type)
    layout = lattice_layout(t.name)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    _check_rows(shape, t, f"unpack_params {t.name}")
    buf = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    n = math.prod(shape)
    codes, d, dmin, scales, mins = _core.unpack(t.name, buf, n)
    pshape = (*shape[:-1], shape[-1] // t.block_size)
    sshape = (*pshape, layout["n_sub"])

    def half(a):
        return None if a is None else torch.from_numpy(a.view(np.float16).astype(np.float32).reshape(pshape))

    def ints(a):
        return None if a is None else torch.from_numpy(a.reshape(sshape))

    return BlockParams(torch.from_numpy(codes.reshape(shape)), half(d), half(dmin), ints(scales), ints(mins))
