"""Plain-PyTorch references for qat's ops, independent of the C++ kernels.

Every step is one IEEE float32 operation (torch's elementwise CPU ops round once), except the
two fused multiply-adds of the learnable backward, which are computed exactly in float64 and
rounded once to float32.
"""

import torch

SCALE_FLOOR = 2.0**-23
SCALE_CEIL = 2.0**100


def qparams_like(x, scale, zero_point, quant_min, quant_max, axis=0, group_size=None):
    """Broadcast (effective) scale, 1/scale and zero point to x's shape."""
    s = torch.nan_to_num(scale.float(), nan=SCALE_FLOOR).clamp(SCALE_FLOOR, SCALE_CEIL)
    z = torch.nan_to_num(torch.round(zero_point.float()), nan=quant_min).clamp(quant_min, quant_max)
    if group_size is not None:
        shape = x.shape[:-1] + (x.shape[-1] // group_size, 1)
        expand = lambda t: t.reshape(shape).expand(shape[:-1] + (group_size,)).reshape(x.shape)  # noqa: E731
    elif scale.numel() == 1:
        expand = lambda t: t.reshape(()).expand(x.shape)  # noqa: E731
    else:
        view = [1] * x.dim()
        view[axis] = -1
        expand = lambda t: t.reshape(view).expand(x.shape)  # noqa: E731
    return expand(s), expand(1.0 / s), expand(z)


def fma(a, b, c):
    return (a.double() * b.double() + c.double()).float()


def fake_quantize(x, scale, zero_point, quant_min, quant_max, axis=0, group_size=None):
    s, inv, z = qparams_like(x, scale, zero_point, quant_min, quant_max, axis, group_size)
    xf = x.float()
    q = (torch.round(xf * inv) + z).clamp(quant_min, quant_max)
    y = (q - z) * s
    return torch.where(torch.isnan(xf), xf, y).to(x.dtype)


def ste_grad(x, dy, scale, zero_point, quant_min, quant_max, axis=0, group_size=None):
    s, inv, z = qparams_like(x, scale, zero_point, quant_min, quant_max, axis, group_size)
    q = torch.round(x.float() * inv) + z
    keep = (q >= quant_min) & (q <= quant_max)
    return (dy.float() * keep.float()).to(x.dtype)


def lsq_grads(x, dy, scale, zero_point, quant_min, quant_max, axis=0, group_size=None, grad_factor=1.0):
    """Returns grad_x and the per-element scale / zero-point terms (not yet summed)."""
    s, inv, z = qparams_like(x, scale, zero_point, quant_min, quant_max, axis, group_size)
    xf, g = x.float(), dy.float()
    gf = torch.tensor(grad_factor, dtype=torch.float32)
    q = torch.round(fma(xf, inv, z))
    below, above = q < quant_min, q > quant_max
    outside = below | above
    nan = torch.isnan(xf)
    bound = torch.where(below, torch.tensor(float(quant_min)), torch.tensor(float(quant_max)))
    ds_out = (g * (bound - z)) * gf
    ds_in = ((g * fma(q - z, s, -xf)) * inv) * gf
    dz_out = ((g * -1.0) * s) * gf
    zero = torch.zeros_like(xf)
    dx = g * torch.where(outside | nan, zero, torch.ones_like(xf))
    ds = torch.where(nan, zero, torch.where(outside, ds_out, ds_in))
    dz = torch.where(nan | ~outside, zero, dz_out)
    return dx.to(x.dtype), ds, dz


def reduce_terms(terms, scale, axis=0, group_size=None):
    """Sum per-element terms to scale's shape in float64."""
    t = terms.double()
    if group_size is not None:
        return t.reshape(-1, group_size).sum(1).reshape(scale.shape)
    if scale.numel() == 1:
        return t.sum().reshape(scale.shape)
    dims = [d for d in range(t.dim()) if d != axis % t.dim()]
    return t.sum(dims).reshape(scale.shape)


FORMATS = {
    "fp16": (torch.float16, 65504.0, True),
    "bf16": (torch.bfloat16, torch.finfo(torch.bfloat16).max, True),
    "fp8_e4m3": (torch.float8_e4m3fn, 448.0, False),
    "fp8_e5m2": (torch.float8_e5m2, 57344.0, True),
}


def fake_cast(x, fmt):
    dtype, max_value, has_inf = FORMATS[fmt]
    xf = x.float()
    y = xf.clamp(-max_value, max_value).to(dtype).float()
    if has_inf:
        y = torch.where(torch.isinf(xf), xf, y)
    y = torch.where(torch.isnan(xf), xf, y)
    return y.to(x.dtype)
