// Torch-free scalar math shared by the CPU and CUDA kernels and by the C++ tests.
// Everything here is IEEE fp32 with no reliance on compiler contraction: where PyTorch's
// built-ins are compiled with a fused multiply-add we call fmaf explicitly.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QAT_HD __host__ __device__ __forceinline__
#else
#define QAT_HD inline
#endif

namespace qat::kernels {

// Scales are clamped into [kMinScale, kMaxScale] before use (NaN -> kMinScale). The floor is
// torch.finfo(torch.float32).eps, the floor torch.ao observers use; the ceiling keeps
// (q - zero_point) * scale finite for any 17-bit integer range.
constexpr float kMinScale = 1.1920928955078125e-07f;  // 2^-23
constexpr float kMaxScale = 1.2676506002282294e+30f;  // 2^100

QAT_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

QAT_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// Round half to even, bit-identical to nearbyintf in the default rounding mode, written so that
// compilers vectorize it: adding 2^23 pushes the fraction out of the mantissa.
QAT_HD float round_half_even(float t) {
  const float kTwo23 = 8388608.0f;
  float a = fabsf(t);
  float r = a < kTwo23 ? (a + kTwo23) - kTwo23 : a;
  return copysignf(r, t);
}

QAT_HD float clamp_ordered(float v, float lo, float hi) {
  // NaN compares false everywhere and comes out as lo.
  return v >= lo ? (v <= hi ? v : hi) : lo;
}

QAT_HD float effective_scale(float s) { return clamp_ordered(s, kMinScale, kMaxScale); }

QAT_HD float effective_zero_point(float zp, float quant_min, float quant_max) {
  return clamp_ordered(round_half_even(zp), quant_min, quant_max);
}

// ---- fp16 / bf16 storage <-> fp32, branch-free so loops over them vectorize ----

QAT_HD float half_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t em = h & 0x7fffu;
  uint32_t normal = (em << 13) + ((127u - 15u) << 23);
  uint32_t infnan = (em << 13) | 0x7f800000u;
  // Subnormal halves are em * 2^-24; the multiplication is exact.
  uint32_t subnormal = float_bits(float(int32_t(em)) * 5.9604644775390625e-08f);
  uint32_t mag = em >= 0x7c00u ? infnan : (em < 0x0400u ? subnormal : normal);
  return bits_float(sign | mag);
}

QAT_HD uint16_t float_to_half_bits(float f) {
  uint32_t u = float_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  // Normal halves: round the mantissa to 10 bits, half to even, and rebias the exponent.
  uint32_t normal = (a + ((15u - 127u) << 23) + 0x0fffu + ((a >> 13) & 1u)) >> 13;
  // Below 2^-14 the half quantum is 2^-24, the ulp of 0.5f: the fp32 adder rounds for us.
  uint32_t subnormal = float_bits(bits_float(a) + 0.5f) - 0x3f000000u;
  uint32_t overflow = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  uint32_t mag = a >= 0x477ff000u ? overflow : (a < 0x38800000u ? subnormal : normal);
  return uint16_t(sign | mag);
}

QAT_HD float bf16_bits_to_float(uint16_t b) { return bits_float(uint32_t(b) << 16); }

QAT_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u = float_bits(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t quiet_nan = (u >> 16) | 0x0040u;
  return uint16_t((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// ---- affine fake quantization, one element ----

// Forward, as torch.fake_quantize_per_{tensor,channel}_affine computes it: multiply by the
// reciprocal scale, round half to even, add the zero point, clamp, dequantize. NaN stays NaN.
QAT_HD float fake_quant_value(float x, float scale, float inv_scale, float zero_point,
                              float quant_min, float quant_max) {
  float q = round_half_even(x * inv_scale) + zero_point;
  q = q < quant_min ? quant_min : q;
  q = q > quant_max ? quant_max : q;
  float y = (q - zero_point) * scale;
  return x != x ? x : y;
}

// Straight-through mask of the forward: 1 where the rounded value did not saturate.
QAT_HD bool fake_quant_in_range(float x, float inv_scale, float zero_point, float quant_min,
                                float quant_max) {
  float q = round_half_even(x * inv_scale) + zero_point;
  return (q >= quant_min) & (q <= quant_max);  // & not &&: no branch, so loops vectorize
}

struct LsqGrads {
  float dx, dscale, dzero_point;
};

// LSQ gradients of one element, in the order of operations of PyTorch's
// _fake_quantize_learnable_per_{tensor,channel}_affine_backward kernels as built (their
// `zp + x * inv` and `xfq - x` are fused multiply-adds). NaN inputs contribute nothing.
QAT_HD LsqGrads lsq_grads(float x, float dy, float scale, float inv_scale, float zero_point,
                          float quant_min, float quant_max, float grad_factor) {
  // Branch-free (every path computed, then selected) so loops over it vectorize.
  float q = round_half_even(fmaf(x, inv_scale, zero_point));
  bool below = q < quant_min;
  bool outside = below | (q > quant_max);
  bool is_nan = x != x;
  float bound = below ? quant_min : quant_max;
  float dscale_out = (dy * (bound - zero_point)) * grad_factor;
  float dscale_in = ((dy * fmaf(q - zero_point, scale, -x)) * inv_scale) * grad_factor;
  float dzero_point_out = ((dy * -1.0f) * scale) * grad_factor;
  LsqGrads g;
  g.dx = dy * ((outside | is_nan) ? 0.0f : 1.0f);
  g.dscale = is_nan ? 0.0f : (outside ? dscale_out : dscale_in);
  g.dzero_point = (is_nan | !outside) ? 0.0f : dzero_point_out;
  return g;
}

// ---- float formats: round to nearest even, saturating ----

struct FloatFormat {
  uint32_t dropped_bits;  // 23 - the format's explicit fraction bits
  float min_normal;       // 2^emin, the smallest normal magnitude
  float subnormal_magic;  // 2^(emin - fraction bits + 23): adding it rounds to the subnormal quantum
  float max_value;        // largest finite magnitude
  bool has_inf;           // formats without inf (e4m3fn) saturate inf to max_value
};

enum class CastFormat : int { fp16 = 0, bf16 = 1, fp8_e4m3 = 2, fp8_e5m2 = 3 };

QAT_HD FloatFormat cast_format(CastFormat f) {
  switch (f) {
    case CastFormat::fp16: return {13u, 6.103515625e-05f, 0.5f, 65504.0f, true};
    case CastFormat::bf16: return {16u, 1.1754943508222875e-38f, 7.7037197775489434e-34f, 3.3895313892515355e+38f, true};
    case CastFormat::fp8_e4m3: return {20u, 0.015625f, 16384.0f, 448.0f, false};
    default: return {21u, 6.103515625e-05f, 128.0f, 57344.0f, true};
  }
}

// Round to the format's nearest value, ties to even, saturating at max_value. NaN stays NaN.
QAT_HD float fake_cast_value(float x, FloatFormat fmt) {
  float a = fabsf(x);
  uint32_t u = float_bits(a);
  u += ((1u << (fmt.dropped_bits - 1u)) - 1u) + ((u >> fmt.dropped_bits) & 1u);
  u &= ~((1u << fmt.dropped_bits) - 1u);
  float r = a < fmt.min_normal ? (a + fmt.subnormal_magic) - fmt.subnormal_magic : bits_float(u);
  r = r > fmt.max_value ? fmt.max_value : r;  // rounded past the top, or inf
  r = ((a == INFINITY) & fmt.has_inf) ? a : r;
  r = copysignf(r, x);
  return x != x ? x : r;
}

}  // namespace qat::kernels
