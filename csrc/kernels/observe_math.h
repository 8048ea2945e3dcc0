// Torch-free scalar math of the observers, shared by the CPU and CUDA kernels: running min/max
// updates, the two qparam rules PyTorch uses, and the canonical histogram grid.
#pragma once

#include <cstdint>

#include "quant_math.h"

namespace qat::kernels {

QAT_HD bool is_finite(float x) { return (float_bits(x) & 0x7f800000u) != 0x7f800000u; }

// ---- running statistics ----

// Folds a batch's [cur_min, cur_max] into the running range. An empty batch (cur_min > cur_max,
// e.g. +inf / -inf when no element was finite) changes nothing. With moving_average, a running
// value that is still infinite takes the batch value, else running + c * (cur - running), in the
// order of operations of torch.ao's MovingAverage observers and fused_moving_avg_obs_fake_quant.
QAT_HD void update_running_minmax(float* run_min, float* run_max, float cur_min, float cur_max,
                                  bool moving_average, float averaging_constant) {
  if (!(cur_min <= cur_max)) return;
  float lo = *run_min, hi = *run_max;
  if (moving_average) {
    lo = (lo == INFINITY || lo == -INFINITY) ? cur_min : lo + averaging_constant * (cur_min - lo);
    hi = (hi == INFINITY || hi == -INFINITY) ? cur_max : hi + averaging_constant * (cur_max - hi);
  } else {
    lo = cur_min < lo ? cur_min : lo;
    hi = cur_max > hi ? cur_max : hi;
  }
  *run_min = lo;
  *run_max = hi;
}

// ---- qparams ----

struct AffineQParams {
  float scale;
  float zero_point;
};

// torch.ao.quantization observers' _calculate_qparams, in fp32 as they compute it. The symmetric
// zero point is 0 for signed ranges and the upper midpoint (quant_min + quant_max + 1) / 2 for
// unsigned ones (128 for [0, 255], torch.ao's quint8 default). A range that saw no data
// (min > max) gives scale 1 and zero point 0 clamped into range, as torch.ao does.
QAT_HD AffineQParams qparams_minmax(float min, float max, int32_t quant_min, int32_t quant_max,
                                    bool symmetric) {
  const float qmin = float(quant_min), qmax = float(quant_max);
  if (!(min <= max)) return {1.0f, clamp_ordered(0.0f, qmin, qmax)};
  const float min_neg = min < 0.0f ? min : 0.0f;
  const float max_pos = max > 0.0f ? max : 0.0f;
  if (symmetric) {
    const float amax = -min_neg > max_pos ? -min_neg : max_pos;
    float scale = amax / (float(quant_max - quant_min) / 2.0f);
    scale = scale > kMinScale ? scale : kMinScale;
    const float zp = quant_min < 0 ? 0.0f : float((quant_min + quant_max + 1) / 2);
    return {scale, zp};
  }
  float scale = (max_pos - min_neg) / float(quant_max - quant_min);
  scale = scale > kMinScale ? scale : kMinScale;
  const float zp = qmin - round_half_even(min_neg / scale);
  return {scale, clamp_ordered(zp, qmin, qmax)};
}

// ChooseQuantizationParams of ATen's quantized/cpu/QuantUtils.h (fbgemm's rule), which
// torch.fused_moving_avg_obs_fake_quant uses on the CPU: double intermediates, scale 0.1 for a
// zero range, scales below 6.1e-5 raised to it, the zero point nudged into range.
// preserve_sparsity is the fused op's symmetric_quant. An empty range (min > max) counts as [0, 0].
QAT_HD AffineQParams qparams_fbgemm(float min, float max, int32_t quant_min, int32_t quant_max,
                                    bool preserve_sparsity) {
  constexpr float kSmallScale = 6.1e-5f;
  if (!(min <= max)) min = max = 0.0f;
  if (min < 0 && max > 0 && preserve_sparsity) {
    const int32_t sym_min = -((quant_max - quant_min) / 2 + 1);
    const int32_t sym_max = (quant_max - quant_min) / 2;
    const double a = fabs(double(min / float(sym_min))), b = fabs(double(max / float(sym_max)));
    const double max_scale = a > b ? a : b;
    min = float(max_scale * sym_min);
    max = float(max_scale * sym_max);
  }
  min = min < 0.0f ? min : 0.0f;
  max = max > 0.0f ? max : 0.0f;
  double scale = (double(max) - min) / double(quant_max - quant_min);
  if (float(scale) == 0.0f || 1.0f / float(scale) == INFINITY) scale = 0.1;
  if (scale < kSmallScale) {
    const float original = float(scale);
    scale = kSmallScale;
    if (min == 0.0f) {
      max = kSmallScale * float(quant_max - quant_min);
    } else if (max == 0.0f) {
      min = -kSmallScale * float(quant_max - quant_min);
    } else {
      const float amplifier = kSmallScale / original;
      min *= amplifier;
      max *= amplifier;
    }
  }
  const double from_min = quant_min - min / scale, from_max = quant_max - max / scale;
  const double err_min = fabs(double(quant_min)) - fabs(min / scale);
  const double err_max = fabs(double(quant_max)) - fabs(max / scale);
  double zp = err_min < err_max ? from_min : from_max;
  if (min < 0 && max > 0 && preserve_sparsity) zp = double(quant_min + quant_max) / 2;
  float nudged = zp < quant_min ? float(quant_min) : (zp > quant_max ? float(quant_max) : float(nearbyint(zp)));
  return {float(scale), nudged};
}

// ---- histograms on a canonical grid ----

// Bin i covers [(first + i) * 2^exponent, (first + i + 1) * 2^exponent). The grid is a pure
// function of the data range [min, max]: the finest power-of-two bin width (no finer than 2^-23
// of the largest magnitude) whose aligned bins cover the range in `bins` bins. Grids of nested
// ranges nest, so re-binning to a wider range only merges whole bins: counts stay exact, and a
// histogram is the same whatever order its data arrived in, or whether it was observed by one
// process or by several whose histograms were re-binned to the global range and summed.
struct HistogramGrid {
  int32_t exponent;
  int64_t first;
  int64_t bins;
};

QAT_HD int64_t floor_to_int(double v) {
  const int64_t t = int64_t(v);
  return (double(t) > v) ? t - 1 : t;
}

// Global bin index of x (finite) on bins of width 2^exponent; exact, since scaling a float by a
// power of two in double never rounds.
QAT_HD int64_t grid_index(float x, int32_t exponent) { return floor_to_int(ldexp(double(x), -exponent)); }

QAT_HD int32_t float_exponent(float a) {  // floor(log2(a)) for finite a > 0, subnormals included
  int32_t e = int32_t((float_bits(a) >> 23) & 0xffu);
  if (e == 0) {
    uint32_t m = float_bits(a) & 0x7fffffu;
    int32_t lead = 31;
    while (!(m >> lead)) --lead;
    return lead - 149;
  }
  return e - 127;
}

QAT_HD HistogramGrid histogram_grid(float min, float max, int64_t bins) {
  const float amin = fabsf(min), amax = fabsf(max);
  const float m = amin > amax ? amin : amax;
  int32_t e = m > 0.0f ? float_exponent(m) - 23 : -149;
  e = e < -149 ? -149 : e;
  while (grid_index(max, e) - grid_index(min, e) > bins - 1) ++e;
  return {e, grid_index(min, e), bins};
}

// Index of old global bin g (on 2^from_exponent bins) on the coarser 2^to_exponent grid.
QAT_HD int64_t coarser_index(int64_t g, int32_t from_exponent, int32_t to_exponent) {
  const int32_t shift = to_exponent - from_exponent;
  if (shift >= 62) return g < 0 ? -1 : 0;
  const int64_t d = int64_t(1) << shift;
  const int64_t q = g / d;
  return (q * d > g) ? q - 1 : q;  // floor division
}

}  // namespace qat::kernels
