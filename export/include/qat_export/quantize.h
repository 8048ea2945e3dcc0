// Reference quantizers and dequantizers for the GGUF block types (shared/specs/formats.md §2).
//
// Torch-free. Every quantizer is byte-identical to llama.cpp's scalar reference for the same
// input (quantize_row_<t>_ref, or quantize_iq4_nl for IQ4_NL, which is what llama-quantize runs):
// same search steps, same rounding helper per type (nearest_int = half to even via the 1.5*2^23
// trick, roundf = half away from zero, truncation of x + 0.5 = half up), same fp32 evaluation
// order, and no FMA contraction (the sources are compiled with -ffp-contract=off, as ggml-base is
// compiled without FMA on x86-64).
//
// Non-finite input: the row functions below do what llama.cpp's C code does (undefined by the C
// standard for Q* types); `quantize` rejects NaN/inf for block types before calling them.
#pragma once

#include <cstdint>
#include <cstring>

#include "qat_export/types.h"

namespace qat_export {

// ---- scalar conversions (formats.md §2.2) -----------------------------------------------------
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16, round to nearest even; overflow -> inf; NaN -> 0x7E00 with the sign kept
// (ggml_compute_fp32_to_fp16).
inline uint16_t fp32_to_fp16(float f) {
  const uint32_t x = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;          // NaN
  const uint32_t e = ax >> 23;
  if (e >= 143) return sign | 0x7c00u;                  // >= 2^16 (and inf): inf
  if (e >= 113) {                                       // fp16 normal range (before rounding)
    const uint32_t mant = ax & 0x7fffffu;
    uint32_t h = ((e - 112) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
    return static_cast<uint16_t>(sign | h);
  }
  if (e < 102) return sign;                             // < 2^-25: rounds to zero
  // fp16 subnormal: value / 2^-24 = m * 2^(e - 126) with m the 24-bit significand.
  const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;                       // 14 .. 24
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// Exact widening.
inline float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(mant) * 0x1p-24f;  // exact
    return f32_from_bits(f32_bits(v) | sign);
  }
  if (e == 31) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
  return f32_from_bits(sign | ((e + 112) << 23) | (mant << 13));
}

// ggml_compute_fp32_to_bf16: NaN is forced quiet, otherwise round to nearest even.
inline uint16_t fp32_to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 64u);
  return static_cast<uint16_t>((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}
inline float bf16_to_fp32(uint16_t b) { return f32_from_bits(static_cast<uint32_t>(b) << 16); }

// ggml's nearest_int: round half to even for |v| <= 2^22 (the caller keeps it in range).
inline int nearest_int(float v) {
  const float t = v + 12582912.f;
  int32_t i;
  std::memcpy(&i, &t, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// ---- per-type rows (k = number of elements, a multiple of the block size) ---------------------
void quantize_row_f32(const float* x, float* y, int64_t k);
void quantize_row_f16(const float* x, uint16_t* y, int64_t k);
void quantize_row_bf16(const float* x, uint16_t* y, int64_t k);
void quantize_row_q4_0_ref(const float* x, block_q4_0* y, int64_t k);
void quantize_row_q4_1_ref(const float* x, block_q4_1* y, int64_t k);
void quantize_row_q5_0_ref(const float* x, block_q5_0* y, int64_t k);
void quantize_row_q5_1_ref(const float* x, block_q5_1* y, int64_t k);
void quantize_row_q8_0_ref(const float* x, block_q8_0* y, int64_t k);
void quantize_row_q2_K_ref(const float* x, block_q2_K* y, int64_t k);
void quantize_row_q3_K_ref(const float* x, block_q3_K* y, int64_t k);
void quantize_row_q4_K_ref(const float* x, block_q4_K* y, int64_t k);
void quantize_row_q5_K_ref(const float* x, block_q5_K* y, int64_t k);
void quantize_row_q6_K_ref(const float* x, block_q6_K* y, int64_t k);
// llama.cpp's quantize_iq4_nl without an imatrix (ntry = 7, final re-index): what llama-quantize
// writes. (quantize_row_iq4_nl_ref, ntry = -1, is a different, cruder quantizer.)
void quantize_iq4_nl(const float* x, block_iq4_nl* y, int64_t k);

void dequantize_row_f32(const float* x, float* y, int64_t k);
void dequantize_row_f16(const uint16_t* x, float* y, int64_t k);
void dequantize_row_bf16(const uint16_t* x, float* y, int64_t k);
void dequantize_row_q4_0(const block_q4_0* x, float* y, int64_t k);
void dequantize_row_q4_1(const block_q4_1* x, float* y, int64_t k);
void dequantize_row_q5_0(const block_q5_0* x, float* y, int64_t k);
void dequantize_row_q5_1(const block_q5_1* x, float* y, int64_t k);
void dequantize_row_q8_0(const block_q8_0* x, float* y, int64_t k);
void dequantize_row_q2_K(const block_q2_K* x, float* y, int64_t k);
void dequantize_row_q3_K(const block_q3_K* x, float* y, int64_t k);
void dequantize_row_q4_K(const block_q4_K* x, float* y, int64_t k);
void dequantize_row_q5_K(const block_q5_K* x, float* y, int64_t k);
void dequantize_row_q6_K(const block_q6_K* x, float* y, int64_t k);
void dequantize_row_iq4_nl(const block_iq4_nl* x, float* y, int64_t k);

// The straight one-(sub-)block-at-a-time ports of the searches, kept as the ground truth
// the functions above (which run the sub-blocks of a super-block side by side, with the same
// fp32 operations in the same order) are tested against. Same bytes, slower.
namespace scalar {
void quantize_row_q2_K_ref(const float* x, block_q2_K* y, int64_t k);
void quantize_row_q4_K_ref(const float* x, block_q4_K* y, int64_t k);
void quantize_row_q5_K_ref(const float* x, block_q5_K* y, int64_t k);
void quantize_iq4_nl(const float* x, block_iq4_nl* y, int64_t k);
}  // namespace scalar

// ---- type-generic entry points ----------------------------------------------------------------
// Quantizes `nrows` rows of `n_per_row` floats into `dst` (row_size(type, n_per_row) bytes per
// row) and returns the bytes written. Throws std::invalid_argument for an unsupported type, a row
// length that is not a multiple of the block size, or NaN/inf input to a block type (F32, F16 and
// BF16 keep NaN and inf).
size_t quantize(GGMLType type, const float* src, void* dst, int64_t nrows, int64_t n_per_row);

// Dequantizes `n_elements` (a multiple of the block size) from `src` into `dst`.
void dequantize(GGMLType type, const void* src, float* dst, int64_t n_elements);

}  // namespace qat_export
