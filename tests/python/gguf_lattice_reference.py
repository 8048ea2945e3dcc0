"""Pure-torch references of the GGUF lattice fake quantization (qat.ops.gguf_fake_quantize):
the forward and its LSQ gradients written from shared/specs/formats.md with torch's own float32
element-wise ops (each one IEEE-rounded, so the results are bitwise comparable), independently
of the C++ kernels' code structure: a different IQ4_NL search (nearest by distance, ties up),
roundf built from trunc, and the reduction tree spelled as slice halving."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

KVALUES = torch.tensor([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=torch.float32)


class Lattice(NamedTuple):
    kind: str        # "sym", "affine", "codebook", "mink", "signedk"
    block: int
    sub: int
    code_lo: int
    code_hi: int
    offset: int      # value = code - offset
    scale_lo: int = 0
    scale_hi: int = 0
    min_hi: int = 0


LATTICES = {
    "Q8_0": Lattice("sym", 32, 32, -127, 127, 0),
    "Q4_0": Lattice("sym", 32, 32, 0, 15, 8),
    "Q5_0": Lattice("sym", 32, 32, 0, 31, 16),
    "Q4_1": Lattice("affine", 32, 32, 0, 15, 0),
    "Q5_1": Lattice("affine", 32, 32, 0, 31, 0),
    "IQ4_NL": Lattice("codebook", 32, 32, 0, 15, 0),
    "Q2_K": Lattice("mink", 256, 16, 0, 3, 0, 0, 15, 15),
    "Q4_K": Lattice("mink", 256, 32, 0, 15, 0, 0, 63, 63),
    "Q5_K": Lattice("mink", 256, 32, 0, 31, 0, 0, 63, 63),
    "Q3_K": Lattice("signedk", 256, 16, 0, 7, 4, -32, 31),
    "Q6_K": Lattice("signedk", 256, 16, 0, 63, 32, -128, 127),
}
TYPES = tuple(LATTICES)


def has_dmin(t: str) -> bool:
    return LATTICES[t].kind in ("affine", "mink")


def has_scales(t: str) -> bool:
    return LATTICES[t].kind in ("mink", "signedk")


def has_mins(t: str) -> bool:
    return LATTICES[t].kind == "mink"


def n_sub(t: str) -> int:
    L = LATTICES[t]
    return L.block // L.sub


def stored_half(p: Tensor) -> Tensor:
    p = torch.where(torch.isnan(p), torch.zeros_like(p), p)
    return p.clamp(-65504.0, 65504.0).to(torch.float16).to(torch.float32)


def stored_int(p: Tensor, lo: int, hi: int) -> Tensor:
    p = torch.where(torch.isnan(p), torch.zeros_like(p), p)
    return torch.round(p).clamp(lo, hi) + 0.0  # an integer: -0 becomes +0


def roundf(t: Tensor) -> Tensor:
    """C roundf: half away from zero (t - trunc(t) is exact)."""
    tr = torch.trunc(t)
    return tr + torch.where((t - tr).abs() >= 0.5, torch.sign(t), torch.zeros_like(t))


def iq4nl_index(v: Tensor) -> Tensor:
    """Nearest codebook entry; equal distances go to the upper index (ggml's best_index_int8)."""
    v = v.clamp(-127.0, 113.0)  # beyond the ends: the end (also for +-inf)
    dist = (v.unsqueeze(-1) - KVALUES).abs()
    # argmin over the reversed codebook returns the last (upper) of equal minima.
    return 15 - torch.argmin(dist.flip(-1), dim=-1)


class Sub(NamedTuple):
    s: Tensor    # effective scale, broadcast to [..., blocks, n_sub, 1]
    inv: Tensor
    b: Tensor    # offset


def sub_params(t: str, d, dmin, sc, mn) -> tuple:
    L = LATTICES[t]
    dh = stored_half(d)[..., None, None]
    dmh = stored_half(dmin)[..., None, None] if dmin is not None else torch.zeros_like(dh)
    scs = stored_int(sc, L.scale_lo, L.scale_hi)[..., None] if sc is not None else None
    mns = stored_int(mn, 0, L.min_hi)[..., None] if mn is not None else None
    if L.kind in ("mink", "signedk"):
        s = dh * scs
    else:
        s = dh
    b = torch.zeros_like(s)
    if L.kind == "affine":
        b = dmh.expand_as(s)
    if L.kind == "mink":
        b = dmh * mns
    inv = torch.where(s != 0, 1.0 / s, torch.zeros_like(s))
    return Sub(s, inv, b), dh, dmh, scs, mns


def scaled(t: str, x: Tensor, p: Sub) -> Tensor:
    kind = LATTICES[t].kind
    if kind == "affine":
        v = (x - p.b) * p.inv
    elif kind == "mink":
        v = (x + p.b) / p.s
    elif kind == "signedk":
        v = x / p.s
    else:
        v = x * p.inv
    return torch.where(p.s != 0, v, torch.zeros_like(v))


def raw_code(t: str, v: Tensor) -> Tensor:
    L = LATTICES[t]
    if t == "Q8_0":
        return roundf(v)
    if L.kind == "sym":
        return torch.trunc(v + (L.offset + 0.5))
    if L.kind == "affine":
        return torch.trunc(v + 0.5)
    if L.kind == "codebook":
        return iq4nl_index(v).float()
    return torch.round(v) + L.offset


def value(t: str, u: Tensor) -> Tensor:
    L = LATTICES[t]
    if L.kind == "codebook":
        return KVALUES[u.long()]
    return u - L.offset


def dequant(t: str, u: Tensor, p: Sub) -> Tensor:
    kind = LATTICES[t].kind
    if kind == "sym":
        return value(t, u) * p.s
    if kind == "affine":
        return u * p.s + p.b
    if kind == "codebook":
        return p.s * value(t, u)
    if kind == "mink":
        return p.s * u - p.b
    return p.s * value(t, u)


def _blocks(t: str, w: Tensor) -> Tensor:
    L = LATTICES[t]
    x = w.float()
    return x.reshape(*x.shape[:-1], x.shape[-1] // L.block, L.block // L.sub, L.sub)


def forward(w: Tensor, d, dmin, sc, mn, t: str):
    """(y in w's dtype, int8 codes)."""
    L = LATTICES[t]
    x = _blocks(t, w)
    p = sub_params(t, d, dmin, sc, mn)[0]
    nan = torch.isnan(x)
    v = scaled(t, torch.where(nan, torch.zeros_like(x), x), p)
    u = raw_code(t, v).clamp(L.code_lo, L.code_hi)
    y = torch.where(nan, x, dequant(t, u, p))
    return y.reshape(w.shape).to(w.dtype), u.reshape(w.shape).to(torch.int8)


def tree(v: Tensor) -> Tensor:
    """The kernels' pairwise sum over the last dim (a power of two): halve until one is left."""
    while v.shape[-1] > 1:
        h = v.shape[-1] // 2
        v = v[..., :h] + v[..., h:]
    return v[..., 0]


class Grads(NamedTuple):
    w: Tensor
    d: Tensor
    dmin: Optional[Tensor]
    sc: Optional[Tensor]
    mn: Optional[Tensor]


def backward(grad: Tensor, w: Tensor, d, dmin, sc, mn, t: str) -> Grads:
    """LSQ with straight-through rounding: inside the range dy/dx = 1, dy/ds = value - t,
    dy/db = 0; saturated dy/dx = 0, dy/ds = value, dy/db = +1 (Q4_1/Q5_1) / -1 (K). A zero
    scale is the limit of a tiny positive one: t = +-2^24 by the sign of x's offset distance.
    A NaN x counts as x = 0 with g = 0."""
    L = LATTICES[t]
    x = _blocks(t, w)
    g = _blocks(t, grad.to(w.dtype))
    p, dh, dmh, scs, mns = sub_params(t, d, dmin, sc, mn)
    nan = torch.isnan(x)
    x0 = torch.where(nan, torch.zeros_like(x), x)
    v = scaled(t, x0, p)
    e = {"affine": x0 - p.b, "mink": x0 + p.b}.get(L.kind, x0)
    big = torch.full_like(v, 16777216.0)
    lim = torch.where(e > 0, big, torch.where(e < 0, -big, torch.zeros_like(v)))
    v = torch.where(p.s != 0, v, lim)
    raw = raw_code(t, v)
    if L.kind == "codebook":
        inside = (v >= -127) & (v <= 113)
    else:
        inside = (raw >= L.code_lo) & (raw <= L.code_hi)
    u = raw.clamp(L.code_lo, L.code_hi)
    val = value(t, u)
    zero = torch.zeros_like(x)
    g0 = torch.where(nan, zero, g)
    dw = torch.where(inside, g0, zero)
    cs = g0 * torch.where(inside, val - v, val)
    sign = 1.0 if L.kind == "affine" else -1.0
    cb = torch.where(inside, zero, g0 * sign) if L.kind in ("affine", "mink") else zero
    S, B = tree(cs), tree(cb)  # [..., blocks, n_sub]
    dw = dw.reshape(w.shape).to(w.dtype)
    if L.kind in ("sym", "codebook"):
        return Grads(dw, S[..., 0], None, None, None)
    if L.kind == "affine":
        return Grads(dw, S[..., 0], B[..., 0], None, None)
    d_h, dm_h = dh[..., 0], dmh[..., 0]  # [..., blocks, 1]
    gsc = d_h * S
    gd = tree(scs[..., 0] * S)
    if L.kind == "signedk":
        return Grads(dw, gd, None, gsc, None)
    return Grads(dw, gd, tree(mns[..., 0] * B), gsc, dm_h * B)
