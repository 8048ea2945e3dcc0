"""Python wrappers and fake (meta) kernels for the qat operators.

The schemas, CPU/CUDA kernels and autograd live in C++ (csrc/ops); this module adds typed,
documented entry points and the shape functions torch.compile / torch.export need.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "fake_quantize",
    "fake_cast",
    "CAST_FORMATS",
    "update_minmax",
    "update_histogram",
    "rebin_histogram",
    "histogram_clip_range",
    "choose_qparams",
    "mse_errors",
    "observe_fake_quantize",
]

CAST_FORMATS = ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")


def fake_quantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    quant_min: int,
    quant_max: int,
    axis: int = 0,
    group_size: Optional[int] = None,
    grad_factor: float = 1.0,
) -> Tensor:
    """Affine fake quantization: ``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``.

    The shape of ``scale`` picks the granularity: one element is per tensor; ``[x.size(axis)]``
    is per channel along ``axis``; with ``group_size``, ``[..., x.size(-1) // group_size]`` is
    per group of ``group_size`` consecutive elements of the last dim.

    Numerics equal ``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` bit for
    bit: fp32 math whatever ``x``'s dtype (fp32, fp16 or bf16; the result has ``x``'s dtype),
    multiplication by the reciprocal scale, round half to even. Deliberate differences: NaN in
    ``x`` stays NaN (the built-ins return ``quant_min``), and values too large for int64 saturate
    (the per-channel built-in wraps them to ``quant_min``).

    ``scale`` and ``zero_point`` are float32 tensors on ``x``'s device. The scale is clamped to
    ``[2**-23, 2**100]`` before use (NaN becomes ``2**-23``), so a learned scale that reaches 0
    or goes negative never turns finite input into inf or NaN. The zero point is rounded half to
    even and clamped to ``[quant_min, quant_max]`` (NaN becomes ``quant_min``).

    Gradients: ``x`` gets the clipped straight-through estimator. When ``scale`` or
    ``zero_point`` require grad, all three gradients follow LSQ as
    ``torch._fake_quantize_learnable_per_{tensor,channel}_affine`` computes them, scaled by
    ``grad_factor``, with the scale / zero-point sums accumulated in float64.
    """
    return torch.ops.qat.fake_quantize(
        x, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor
    )


def fake_cast(x: Tensor, fmt: str) -> Tensor:
    """Round ``x`` to a float format and back, with a straight-through gradient.

    ``fmt`` is one of ``"fp16"``, ``"bf16"``, ``"fp8_e4m3"`` (e4m3fn) or ``"fp8_e5m2"``.
    Rounding is to nearest, ties to even, saturating: finite values beyond the format's range
    become its largest finite value; inf stays inf in formats that have it (fp16, bf16, e5m2)
    and saturates in e4m3fn; NaN stays NaN. The result has ``x``'s dtype.
    """
    return torch.ops.qat.fake_cast(x, fmt)


def update_minmax(
    x: Tensor,
    running_min: Tensor,
    running_max: Tensor,
    enabled: Tensor,
    averaging_constant: Optional[float] = None,
    axis: int = 0,
    group_size: Optional[int] = None,
) -> None:
    """Fold ``x``'s finite elements into ``running_min`` / ``running_max`` in place.

    The statistics' shape picks the granularity, as ``scale``'s does for :func:`fake_quantize`.
    Nothing happens when ``enabled`` (a one-element integer or bool tensor, read on the device)
    is zero, or when ``x`` is empty or has no finite element in a channel. Without
    ``averaging_constant`` the running values are the plain min / max; with it, a running value
    that is still infinite takes the batch's, else moves ``c * (batch - running)`` toward it
    (torch.ao's moving-average observers). NaN and +-inf are skipped.
    """
    torch.ops.qat.update_minmax(x, running_min, running_max, enabled, averaging_constant, axis, group_size)


def update_histogram(x: Tensor, histogram: Tensor, range: Tensor, enabled: Tensor) -> None:
    """Add ``x``'s finite elements to a running histogram in place.

    ``histogram`` is int64 ``[bins]``; ``range`` is float32 ``[min, max]`` of everything observed
    (``[inf, -inf]`` while empty). The bins lie on a canonical grid of the range (power-of-two bin
    width, aligned to multiples of it), so widening the range merges whole bins: counts stay
    exact, and the histogram does not depend on the order in which data arrived.
    """
    torch.ops.qat.update_histogram(x, histogram, range, enabled)


def rebin_histogram(histogram: Tensor, range: Tensor, new_range: Tensor) -> Tensor:
    """The histogram of ``range`` moved exactly onto the grid of the wider ``new_range``."""
    return torch.ops.qat.rebin_histogram(histogram, range, new_range)


def histogram_clip_range(
    histogram: Tensor, range: Tensor, method: str, param: float, quant_levels: int, symmetric: bool
) -> Tensor:
    """Clipping range ``[min, max]`` (float32) calibrated from a running histogram.

    ``method="percentile"`` keeps ``param`` percent of the mass (of ``|x|`` when symmetric, else
    cutting half the rest from each tail); ``method="entropy"`` runs TensorRT's KL-divergence
    search on the ``|x|`` histogram with ``quant_levels`` levels. Runs on the host.
    """
    return torch.ops.qat.histogram_clip_range(histogram, range, method, param, quant_levels, symmetric)


def choose_qparams(
    min: Tensor, max: Tensor, quant_min: int, quant_max: int, symmetric: bool
) -> Tuple[Tensor, Tensor]:
    """``(scale, zero_point)`` from ranges, exactly as torch.ao.quantization observers compute them.

    Symmetric: ``scale = max(|min|, |max|) / ((quant_max - quant_min) / 2)``, zero point 0 for
    signed ranges and ``(quant_min + quant_max + 1) // 2`` for unsigned ones (torch.ao's 128 for
    quint8; for a custom unsigned range torch.ao rounds the midpoint down instead). Affine:
    ``scale = (max(max, 0) - min(min, 0)) / (quant_max - quant_min)``,
    ``zero_point = quant_min - round(min(min, 0) / scale)`` clamped. Scales are at least
    ``2**-23``. A range with ``min > max`` (nothing observed) gives scale 1, zero point 0.
    Both results are float32 with ``min``'s shape.
    """
    return torch.ops.qat.choose_qparams(min, max, quant_min, quant_max, symmetric)


def mse_errors(
    x: Tensor,
    min: Tensor,
    max: Tensor,
    ratios: Tensor,
    quant_min: int,
    quant_max: int,
    symmetric: bool,
    axis: int = 0,
    group_size: Optional[int] = None,
) -> Tensor:
    """Squared fake-quantization error of ``x`` for every clipping candidate, in one pass.

    Candidate ``r`` of a tensor / channel / group clips to ``ratios[r] * [min, max]`` and uses
    ``choose_qparams`` of that range. Returns float64 of shape ``min.shape + (len(ratios),)``;
    non-finite elements of ``x`` add nothing.
    """
    return torch.ops.qat.mse_errors(x, min, max, ratios, quant_min, quant_max, symmetric, axis, group_size)


def observe_fake_quantize(
    x: Tensor,
    observer_on: Tensor,
    fake_quant_on: Tensor,
    running_min: Tensor,
    running_max: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    averaging_const: float,
    quant_min: int,
    quant_max: int,
    ch_axis: int,
    per_row_fake_quant: bool = False,
    symmetric_quant: bool = False,
) -> Tensor:
    """Moving-average observation and fake quantization in one call.

    Same arguments and semantics as ``torch.fused_moving_avg_obs_fake_quant``: when
    ``observer_on``, the batch's min / max (per tensor, or per channel along ``ch_axis`` with
    ``per_row_fake_quant``) move the running range; when ``fake_quant_on``, ``scale`` /
    ``zero_point`` are recomputed from it with ATen's ``ChooseQuantizationParams`` and ``x`` is
    fake-quantized with them, else returned unchanged. Differences: any ``ch_axis``, float32
    zero points, buffers must be pre-sized (``[channels]`` or one element), non-finite elements
    are not observed. Gradient: the clipped straight-through estimator.
    """
    return torch.ops.qat.observe_fake_quantize(
        x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
        averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant, symmetric_quant,
    )


@torch.library.register_fake("qat::fake_quantize")
def _fake_quantize_fake(x, scale, zero_point, quant_min, quant_max, axis=0, group_size=None, grad_factor=1.0):
    return x.new_empty(x.shape)


@torch.library.register_fake("qat::fake_quantize_backward")
def _fake_quantize_backward_fake(grad, x, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor, qparam_grads):
    return x.new_empty(x.shape), scale.new_empty(scale.shape), zero_point.new_empty(zero_point.shape)


@torch.library.register_fake("qat::fake_cast")
def _fake_cast_fake(x, fmt):
    return x.new_empty(x.shape)


@torch.library.register_fake("qat::update_minmax")
def _update_minmax_fake(x, running_min, running_max, enabled, averaging_constant=None, axis=0, group_size=None):
    return None


@torch.library.register_fake("qat::update_histogram")
def _update_histogram_fake(x, histogram, range, enabled):
    return None


@torch.library.register_fake("qat::rebin_histogram")
def _rebin_histogram_fake(histogram, range, new_range):
    return histogram.new_empty(histogram.shape)


@torch.library.register_fake("qat::histogram_clip_range")
def _histogram_clip_range_fake(histogram, range, method, param, quant_levels, symmetric):
    return range.new_empty((2,))


@torch.library.register_fake("qat::choose_qparams")
def _choose_qparams_fake(min, max, quant_min, quant_max, symmetric):
    return min.new_empty(min.shape), min.new_empty(min.shape)


@torch.library.register_fake("qat::mse_errors")
def _mse_errors_fake(x, min, max, ratios, quant_min, quant_max, symmetric, axis=0, group_size=None):
    return min.new_empty((*min.shape, ratios.shape[0]), dtype=torch.float64)


@torch.library.register_fake("qat::observe_fake_quantize")
def _observe_fake_quantize_fake(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                                averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant=False,
                                symmetric_quant=False):
    return x.new_empty(x.shape)


# ---- palettization ----

__all__ += ["kmeans_1d", "lut_fake_quantize", "lut_indices", "MAX_CENTROIDS"]

MAX_CENTROIDS = 256  # LUT indices are uint8


def kmeans_1d(x: Tensor, num_centroids: int, groups: int = 1, max_iters: int = 300) -> Tensor:
    """k-means centroids of ``x`` split along dim 0 into ``groups`` equal parts.

    Returns float32 ``[groups, num_centroids]``, each row ascending (``1 <= num_centroids <=
    256``; ``groups`` must divide ``x.size(0)``). Deterministic: centroids start at quantiles
    (centroid ``j`` is the ``((2j + 1) * m // (2 * num_centroids))``-th of a group's ``m`` finite
    values sorted ascending, moved to the next distinct value where two coincide), then Lloyd's
    algorithm runs in float64 until an assignment repeats or ``max_iters`` updates have run (a
    value goes to the nearer centroid, the lower one on a tie; an emptied cluster takes the value
    farthest from its own cluster's mean). Non-finite values are ignored. A group with at most
    ``num_centroids`` distinct values gets exactly those values, then copies of the largest (the
    duplicates are never chosen: ties go to the lower index); a group without finite values gets
    zeros. Always computed on the host: CUDA input is copied there and the result copied back.
    """
    return torch.ops.qat.kmeans_1d(x, num_centroids, groups, max_iters)


def lut_fake_quantize(x: Tensor, lut: Tensor) -> Tensor:
    """Palettize ``x``: every element becomes the nearest centroid of its group's LUT.

    ``lut`` is ``[groups, k]`` (float32, float16 or bfloat16, ``1 <= k <= 256``) and ``x`` is
    split along dim 0 into ``groups`` equal parts (the output channels of a weight). Nearest is
    the smallest ``j`` minimizing ``|x - lut[g, j]|`` computed in float32, ignoring NaN
    centroids; ``+inf`` / ``-inf`` take the largest / smallest centroid, NaN stays NaN. The
    result has ``x``'s dtype (fp32, fp16 or bf16; any strides).

    Gradients: straight-through for ``x`` (the incoming gradient, unchanged); for ``lut``, entry
    ``[g, j]`` is the sum (in float64) of the incoming gradient over the elements of group ``g``
    mapped to ``j``, so centroids can be learned.
    """
    return torch.ops.qat.lut_fake_quantize(x, lut)


def lut_indices(x: Tensor, lut: Tensor) -> Tensor:
    """The uint8 index of each element's nearest centroid (as :func:`lut_fake_quantize` picks
    it; 0 for NaN), with ``x``'s shape: ``lut[g, lut_indices(x, lut)]`` is the palettized ``x``."""
    return torch.ops.qat.lut_indices(x, lut)


@torch.library.register_fake("qat::kmeans_1d")
def _kmeans_1d_fake(x, num_centroids, groups=1, max_iters=300):
    return x.new_empty((groups, num_centroids), dtype=torch.float32)


@torch.library.register_fake("qat::lut_fake_quantize")
def _lut_fake_quantize_fake(x, lut):
    return x.new_empty(x.shape)


@torch.library.register_fake("qat::lut_fake_quantize_backward")
def _lut_fake_quantize_backward_fake(grad, x, lut):
    return lut.new_empty(lut.shape)


@torch.library.register_fake("qat::lut_indices")
def _lut_indices_fake(x, lut):
    return x.new_empty(x.shape, dtype=torch.uint8)


# ---- GGUF lattices ----

__all__ += ["gguf_fake_quantize", "gguf_codes", "GGUF_LATTICE_TYPES"]

#: The GGUF types with a block lattice (F32 / F16 / BF16 are plain casts: see qat.formats.gguf).
GGUF_LATTICE_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL")


def gguf_fake_quantize(
    w: Tensor,
    d: Tensor,
    dmin: Optional[Tensor],
    sub_scales: Optional[Tensor],
    sub_mins: Optional[Tensor],
    type: str,
) -> Tensor:
    """Fake-quantize ``w`` onto the exact lattice of GGUF ``type``, blocks along the last dim.

    Parameters (float32, on ``w``'s device; ``blocks = w.size(-1) // block``, block 32, or 256
    for the K-quants):

    - ``d`` ``[*w.shape[:-1], blocks]``: the block (K-quants: super-block) scale.
    - ``dmin`` (Q4_1/Q5_1: the block minimum ``m``, added; Q2_K/Q4_K/Q5_K: the super-block min
      scale, subtracted; ``None`` otherwise), ``d``'s shape.
    - ``sub_scales`` (K-quants) and ``sub_mins`` (Q2_K/Q4_K/Q5_K): ``[..., blocks, n_sub]`` with
      16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 8 of 32 (Q4_K, Q5_K).

    The forward uses the parameters as the file stores them: ``d`` / ``dmin`` rounded to fp16
    (nearest even, clamped to +-65504, NaN as 0), sub-scales / mins rounded half to even and
    clamped to the format's integers (Q2_K [0, 15], Q3_K [-32, 31], Q4_K/Q5_K [0, 63], Q6_K
    [-128, 127]; mins [0, 15] / [0, 63]). The codes follow the rule ggml's reference quantizer
    uses for its final codes (Q8_0 ``roundf(x / d)``; Q4_0/Q5_0 ``trunc(x / d + 8.5 / 16.5)``;
    Q4_1/Q5_1 ``trunc((x - m) / d + 0.5)``, each with ``1 / d`` multiplied as ggml does;
    K-quants ``nearest_int((x + dmin*m) / (d*sc))`` or ``nearest_int(x / (d*sc))``; IQ4_NL the
    nearest codebook entry of ``x / d``), clamped, and ``y`` is ggml's ``dequantize_row_<type>`` of
    them in its fp32 order: bitwise the weight llama.cpp decodes from the bytes
    :func:`qat.export.gguf.pack` writes from :func:`gguf_codes` and the stored parameters. A zero
    scale maps a block (or sub-block) to its zero code. Math in fp32 for fp32 / fp16 / bf16 ``w``;
    the result has ``w``'s dtype (rounded from the fp32 lattice value). NaN in ``w`` stays NaN.

    Gradients (C++ autograd): ``w`` gets the straight-through gradient, zero where the code
    saturated. The parameters get LSQ gradients through ``y = s * value(u) (+ offset)``, with
    ``s = d`` or ``d * sc``: inside the range ``dy/ds = value(u) - t`` (``t`` the scaled input the
    format rounds) and the offset's gradient is 0; where saturated ``dy/ds = value(u)`` and the
    offset gets ``+-1``. The fp16 and integer roundings are straight-through (identity), so
    ``d`` gets ``sum_j sc_j dL/ds_j`` and ``sub_scales[j]`` gets ``d * dL/ds_j``, likewise
    ``dmin`` / ``sub_mins``. Block sums use a fixed pairwise tree, identical on CPU and CUDA.
    """
    return torch.ops.qat.gguf_fake_quantize(w, d, dmin, sub_scales, sub_mins, type)


def gguf_codes(
    w: Tensor,
    d: Tensor,
    dmin: Optional[Tensor],
    sub_scales: Optional[Tensor],
    sub_mins: Optional[Tensor],
    type: str,
) -> Tensor:
    """The int8 codes :func:`gguf_fake_quantize` decodes, ``w``'s shape, as the blocks store them:
    Q8_0 the signed value; Q4_0 / Q5_0 ``value + 8`` / ``+ 16``; Q3_K ``value + 4``; Q6_K
    ``value + 32``; IQ4_NL the codebook index; the others the unsigned code."""
    return torch.ops.qat.gguf_codes(w, d, dmin, sub_scales, sub_mins, type)


@torch.library.register_fake("qat::gguf_fake_quantize")
def _gguf_fake_quantize_fake(w, d, dmin, sub_scales, sub_mins, type):
    return w.new_empty(w.shape)


@torch.library.register_fake("qat::gguf_fake_quantize_backward")
def _gguf_fake_quantize_backward_fake(grad, w, d, dmin, sub_scales, sub_mins, type, param_grads):
    def like(p):
        if param_grads and p is not None:
            return p.new_empty(p.shape)
        return w.new_empty((0,), dtype=torch.float32)

    return w.new_empty(w.shape), like(d), like(dmin), like(sub_scales), like(sub_mins)


@torch.library.register_fake("qat::gguf_codes")
def _gguf_codes_fake(w, d, dmin, sub_scales, sub_mins, type):
    return w.new_empty(w.shape, dtype=torch.int8)
