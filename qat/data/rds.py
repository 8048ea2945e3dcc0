"""A small reader for R's serialization format (XDR, versions 2 and 3) and R's lazy-load
databases (``name.rdx`` index + ``name.rdb`` objects), enough to read the data sets R packages
ship: vectors (logical, integer, double, character, list), pairlists, attributes, symbols,
references, environments and the ALTREP compact sequences and wrappers R writes for them.

Values become plain Python: a character vector is a ``list`` of ``str`` (``None`` for NA), an
integer/double/logical vector a ``list`` of numbers (``None`` for NA), a list a ``list``; a value
with attributes (names, class, ...) comes back as :class:`RObject` (``.value`` and
``.attributes``). Closures, language objects and bytecode are out of scope and raise
``RDataError``: data sets do not hold them.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Any, Dict, List, Optional, Tuple, Union

__all__ = ["RDataError", "RObject", "read_rds", "read_rds_bytes", "read_lazyload"]


class RDataError(ValueError):
    """The bytes are not R serialization this reader understands."""


class RObject:
    """An R value that carries attributes."""

    __slots__ = ("value", "attributes")

    def __init__(self, value: Any, attributes: Dict[str, Any]):
        self.value = value
        self.attributes = attributes

    def as_dict(self) -> Dict[str, Any]:
        """A named vector or list as ``{name: element}``."""
        names = self.attributes.get("names")
        if not isinstance(names, list) or not isinstance(self.value, list) or len(names) != len(self.value):
            raise RDataError("not a named vector or list")
        return dict(zip(names, self.value))

    def __repr__(self) -> str:
        return f"RObject({self.value!r:.60}, attributes={sorted(self.attributes)})"


class _Symbol(str):
    """An R symbol (a str subclass so tags read naturally)."""


_NILVALUE, _REF, _GLOBALENV, _UNBOUND, _MISSINGARG, _BASENS = 254, 255, 253, 252, 251, 250
_NAMESPACE, _PACKAGE, _PERSIST, _EMPTYENV, _BASEENV = 249, 248, 247, 242, 241
_ATTRLANG, _ATTRLIST, _ALTREP = 240, 239, 238
_SYM, _LIST, _CLO, _ENV, _PROM, _LANG, _CHAR, _LGL, _INT, _REAL, _CPLX, _STR, _DOT, _VEC, _EXPR, _RAW, _S4 = (
    1, 2, 3, 4, 5, 6, 9, 10, 13, 14, 15, 16, 17, 19, 20, 24, 25)
_NA_INT = -(2**31)
_NA_REAL_LOW = 1954  # R's NA_real_ is a NaN whose low word is 1954


class _Reader:
    def __init__(self, data: bytes):
        self.b = data
        self.pos = 0
        self.refs: List[Any] = []

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.b):
            raise RDataError(f"truncated R serialization (need {n} bytes at offset {self.pos} of {len(self.b)})")
        out = self.b[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more ints
            hi, lo = struct.unpack(">II", self.take(8))
            n = (hi << 32) | lo
        if n < 0:
            raise RDataError(f"negative vector length {n}")
        return n

    def header(self) -> None:
        fmt = self.take(2)
        if fmt != b"X\n":
            raise RDataError(f"only XDR ('X') R serialization is supported, got {fmt!r}")
        version = self.int()
        self.int()  # writer's R version
        self.int()  # minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"R serialization version {version} is not supported (2 or 3)")

    def item(self) -> Any:
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t == _NILVALUE:
            return None
        if t in (_EMPTYENV, _BASEENV, _GLOBALENV, _UNBOUND, _MISSINGARG, _BASENS):
            return None
        if t == _REF:
            idx = flags >> 8 or self.int()
            if not 1 <= idx <= len(self.refs):
                raise RDataError(f"bad R reference index {idx}")
            return self.refs[idx - 1]
        if t in (_PERSIST, _NAMESPACE, _PACKAGE):
            if self.int() != 0:
                raise RDataError("malformed persistent/namespace name")
            names = [self.item() for _ in range(self.int())]
            self.refs.append(("env", names))
            return self.refs[-1]
        if t == _SYM:
            sym = _Symbol(self.item() or "")
            self.refs.append(sym)
            return sym
        if t == _ENV:
            self.int()  # locked
            slot = len(self.refs)
            self.refs.append({})
            self.item()  # enclosing env
            frame = self.item()
            hashtab = self.item()
            attrs = self.item()
            env: Dict[str, Any] = {}
            for part in (frame, hashtab):
                self._merge_env(env, part)
            self.refs[slot] = RObject(env, self._attrs(attrs)) if attrs else env
            return self.refs[slot]
        if t in (_LIST, _LANG, _CLO, _PROM, _DOT, _ATTRLANG, _ATTRLIST):
            return self._pairlist(t, has_attr, has_tag)
        if t == _CHAR:
            n = self.int()
            if n == -1:
                return None
            raw = self.take(n)
            latin1 = bool((flags >> 12) & (1 << 2))
            return raw.decode("latin-1" if latin1 else "utf-8", "replace")
        if t == _ALTREP:
            info = self.item()
            state = self.item()
            attrs = self.item()
            return self._with_attrs(self._altrep(info, state), attrs)
        if t in (_LGL, _INT):
            n = self.length()
            vals = list(struct.unpack(f">{n}i", self.take(4 * n)))
            vals = [None if v == _NA_INT else (bool(v) if t == _LGL else v) for v in vals]
        elif t == _REAL:
            n = self.length()
            raw = self.take(8 * n)
            vals = list(struct.unpack(f">{n}d", raw))
            for i, v in enumerate(vals):
                if v != v and struct.unpack(">II", raw[8 * i : 8 * i + 8])[1] == _NA_REAL_LOW:
                    vals[i] = None
        elif t == _CPLX:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            vals = [complex(parts[2 * i], parts[2 * i + 1]) for i in range(n)]
        elif t == _STR:
            vals = [self.item() for _ in range(self.length())]
        elif t in (_VEC, _EXPR):
            vals = [self.item() for _ in range(self.length())]
        elif t == _RAW:
            vals = self.take(self.length())
        elif t == _S4:
            vals = None
        else:
            raise RDataError(f"R object type {t} is not supported by this reader")
        return self._with_attrs(vals, self.item() if has_attr else None)

    def _pairlist(self, t: int, has_attr: bool, has_tag: bool) -> Any:
        # Pairlists are linked cells (attributes, tag, car, cdr); read iteratively along cdr.
        items: List[Tuple[Optional[str], Any]] = []
        attrs = None
        while True:
            a = self.item() if has_attr else None
            attrs = attrs if attrs is not None else a
            tag = self.item() if has_tag else None
            car = self.item()
            items.append((tag if tag is None else str(tag), car))
            flags = self.int()
            nt = flags & 0xFF
            if nt == _NILVALUE:
                break
            if nt not in (_LIST, _LANG, _ATTRLANG, _ATTRLIST, _DOT):
                self.pos -= 4
                items.append((None, self.item()))  # a dotted pair
                break
            has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t in (_LANG, _CLO, _PROM, _ATTRLANG):
            raise RDataError("R code objects (closures, calls, promises) are not supported by this reader")
        out = {} if all(k is not None for k, _ in items) else None
        value: Any = dict(items) if out is not None else [v for _, v in items]
        return self._with_attrs(value, attrs)

    def _merge_env(self, env: Dict[str, Any], part: Any) -> None:
        if isinstance(part, dict):
            env.update(part)
        elif isinstance(part, list):
            for p in part:
                if isinstance(p, dict):
                    env.update(p)

    def _altrep(self, info: Any, state: Any) -> Any:
        cls = info[0] if isinstance(info, list) and info else None
        if cls == "compact_intseq" or cls == "compact_realseq":
            n, start, step = state if not isinstance(state, RObject) else state.value
            n, kind = int(n), int if cls == "compact_intseq" else float
            return [kind(start + i * step) for i in range(n)]
        if cls is not None and str(cls).startswith("wrap_"):
            return state[0] if isinstance(state, list) else state
        if cls == "deferred_string":
            arg = state[0] if isinstance(state, list) else state
            arg = arg.value if isinstance(arg, RObject) else arg
            return [None if v is None else (str(int(v)) if float(v).is_integer() else repr(v)) for v in arg]
        raise RDataError(f"ALTREP class {cls!r} is not supported by this reader")

    @staticmethod
    def _attrs(attrs: Any) -> Dict[str, Any]:
        if isinstance(attrs, RObject):
            attrs = attrs.value
        return dict(attrs) if isinstance(attrs, dict) else {}

    def _with_attrs(self, value: Any, attrs: Any) -> Any:
        if attrs is None:
            return value
        return RObject(value, self._attrs(attrs))


def read_rds_bytes(data: bytes) -> Any:
    """Decodes one serialized R object (uncompressed XDR bytes starting with ``X\\n``)."""
    r = _Reader(data)
    r.header()
    return r.item()


def read_rds(path: Union[str, os.PathLike]) -> Any:
    """Reads an ``.rds`` file (``saveRDS``): uncompressed, gzip, bzip2 or xz."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif raw[:3] == b"BZh":
        import bz2
        raw = bz2.decompress(raw)
    elif raw[:6] == b"\xfd7zXZ\x00":
        import lzma
        raw = lzma.decompress(raw)
    return read_rds_bytes(raw)


def _decompress_rdb_entry(blob: bytes, compressed: int) -> bytes:
    if len(blob) < 4:
        raise RDataError("truncated lazy-load entry")
    if compressed in (0, None):
        return blob
    n = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    if compressed == 1:
        out = zlib.decompress(body)
    else:  # 2 = bzip2, 3 = xz; one type byte ('Z', '2', 'X', '0') follows the length
        kind, body = body[:1], body[1:]
        if kind == b"Z":
            out = zlib.decompress(body)
        elif kind == b"2":
            import bz2
            out = bz2.decompress(body)
        elif kind == b"X":
            import lzma
            out = lzma.decompress(body)
        elif kind == b"0":
            out = body
        else:
            raise RDataError(f"unknown lazy-load compression {kind!r}")
    if len(out) != n:
        raise RDataError(f"lazy-load entry decompressed to {len(out)} bytes, expected {n}")
    return out


def read_lazyload(base: Union[str, os.PathLike], names: Optional[List[str]] = None) -> Dict[str, Any]:
    """Reads objects from an R lazy-load database ``base.rdx`` / ``base.rdb`` (e.g. a package's
    ``data/Rdata``). ``names`` selects objects (all when None); unknown names raise ``KeyError``."""
    base = os.fspath(base)
    with open(base + ".rdx", "rb") as f:
        raw = f.read()
    index = read_rds_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
    index = index.as_dict() if isinstance(index, RObject) else None
    if not isinstance(index, dict) or not isinstance(index.get("variables"), RObject):
        raise RDataError(f"{base}.rdx is not a lazy-load index")
    variables = index["variables"].as_dict()
    compressed = index.get("compressed", [1])
    compressed = int(compressed[0]) if isinstance(compressed, list) else int(compressed or 0)
    wanted = list(variables) if names is None else names
    out: Dict[str, Any] = {}
    with open(base + ".rdb", "rb") as f:
        for name in wanted:
            if name not in variables:
                raise KeyError(f"{name!r} is not in {base}.rdx; it holds {sorted(variables)}")
            offset, length = (int(v) for v in variables[name])
            f.seek(offset)
            blob = f.read(length)
            out[name] = read_rds_bytes(_decompress_rdb_entry(blob, compressed))
    return out
