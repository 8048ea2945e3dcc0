// F32/F16/BF16 and the 32-element types (formats.md §2.2, §2.3). Compiled with -ffp-contract=off.
#include <cmath>
#include <cstring>

#include "qat_export/quantize.h"

namespace qat_export {
namespace {

constexpr int QK = QK_LEGACY;

// The signed value with the largest magnitude; the first one wins (strict >, from 0).
inline float signed_absmax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

inline void block_min_max(const float* x, int n, float* min, float* max) {
  float lo = 3.402823466e+38f, hi = -3.402823466e+38f;  // +-FLT_MAX
  for (int j = 0; j < n; ++j) {
    if (x[j] < lo) lo = x[j];
    if (x[j] > hi) hi = x[j];
  }
  *min = lo;
  *max = hi;
}

// Nibble packing shared by Q4_0/Q4_1/Q5_0/Q5_1/IQ4_NL: element j -> low nibble of qs[j],
// element j+16 -> high nibble.
inline int low_nibble(const uint8_t* qs, int e) { return e < QK / 2 ? (qs[e] & 0x0F) : (qs[e - QK / 2] >> 4); }

inline uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
inline void store_u32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
  p[2] = static_cast<uint8_t>(v >> 16);
  p[3] = static_cast<uint8_t>(v >> 24);
}

// best_index_int8: nearest codebook entry; an exact midpoint goes to the upper index.
inline int best_index_iq4nl(float v) {
  const int8_t* val = kvalues_iq4nl;
  if (v <= val[0]) return 0;
  if (v >= val[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (v < val[mid]) hi = mid;
    else lo = mid;
  }
  return v - val[hi - 1] < val[hi] - v ? hi - 1 : hi;
}

}  // namespace

// ---- plain element types -------------------------------------------------------------------
void quantize_row_f32(const float* x, float* y, int64_t k) { std::memcpy(y, x, static_cast<size_t>(k) * 4); }
void quantize_row_f16(const float* x, uint16_t* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) y[i] = fp32_to_fp16(x[i]);
}
void quantize_row_bf16(const float* x, uint16_t* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) y[i] = fp32_to_bf16(x[i]);
}
void dequantize_row_f32(const float* x, float* y, int64_t k) { std::memcpy(y, x, static_cast<size_t>(k) * 4); }
void dequantize_row_f16(const uint16_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) y[i] = fp16_to_fp32(x[i]);
}
void dequantize_row_bf16(const uint16_t* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k; ++i) y[i] = bf16_to_fp32(x[i]);
}

// ---- Q4_0: d = max/-8, q = min(15, trunc(x/d + 8.5)) ------------------------------------------
void quantize_row_q4_0_ref(const float* x, block_q4_0* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, x += QK) {
    const float d = signed_absmax(x, QK) / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK / 2; ++j) {
      const float x0 = x[j] * id;
      const float x1 = x[j + QK / 2] * id;
      const int q0 = static_cast<int8_t>(x0 + 8.5f);
      const int q1 = static_cast<int8_t>(x1 + 8.5f);
      y[i].qs[j] = static_cast<uint8_t>((q0 < 15 ? q0 : 15) | ((q1 < 15 ? q1 : 15) << 4));
    }
  }
}

void dequantize_row_q4_0(const block_q4_0* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, y += QK) {
    const float d = fp16_to_fp32(x[i].d);
    for (int e = 0; e < QK; ++e) y[e] = static_cast<float>(low_nibble(x[i].qs, e) - 8) * d;
  }
}

// ---- Q4_1: d = (max-min)/15, q = min(15, trunc((x-min)/d + 0.5)) ------------------------------
void quantize_row_q4_1_ref(const float* x, block_q4_1* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, x += QK) {
    float min, max;
    block_min_max(x, QK, &min, &max);
    const float d = (max - min) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].m = fp32_to_fp16(min);
    for (int j = 0; j < QK / 2; ++j) {
      const float x0 = (x[j] - min) * id;
      const float x1 = (x[j + QK / 2] - min) * id;
      const int q0 = static_cast<int8_t>(x0 + 0.5f);
      const int q1 = static_cast<int8_t>(x1 + 0.5f);
      y[i].qs[j] = static_cast<uint8_t>((q0 < 15 ? q0 : 15) | ((q1 < 15 ? q1 : 15) << 4));
    }
  }
}

void dequantize_row_q4_1(const block_q4_1* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, y += QK) {
    const float d = fp16_to_fp32(x[i].d);
    const float m = fp16_to_fp32(x[i].m);
    for (int e = 0; e < QK; ++e) y[e] = static_cast<float>(low_nibble(x[i].qs, e)) * d + m;
  }
}

// ---- Q5_0: d = max/-16, q = min(31, trunc(x/d + 16.5)); bit 4 of element j in qh bit j --------
void quantize_row_q5_0_ref(const float* x, block_q5_0* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, x += QK) {
    const float d = signed_absmax(x, QK) / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; ++j) {
      const float x0 = x[j] * id;
      const float x1 = x[j + QK / 2] * id;
      int q0 = static_cast<int8_t>(x0 + 16.5f);
      int q1 = static_cast<int8_t>(x1 + 16.5f);
      q0 = q0 < 31 ? q0 : 31;
      q1 = q1 < 31 ? q1 : 31;
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + QK / 2);
    }
    store_u32(y[i].qh, qh);
  }
}

void dequantize_row_q5_0(const block_q5_0* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, y += QK) {
    const float d = fp16_to_fp32(x[i].d);
    const uint32_t qh = load_u32(x[i].qh);
    for (int e = 0; e < QK; ++e) {
      const int q = low_nibble(x[i].qs, e) | static_cast<int>(((qh >> e) & 1u) << 4);
      y[e] = static_cast<float>(q - 16) * d;
    }
  }
}

// ---- Q5_1: d = (max-min)/31, q = trunc((x-min)/d + 0.5) ----------------------------------------
void quantize_row_q5_1_ref(const float* x, block_q5_1* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, x += QK) {
    float min, max;
    block_min_max(x, QK, &min, &max);
    const float d = (max - min) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].m = fp32_to_fp16(min);
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; ++j) {
      const float x0 = (x[j] - min) * id;
      const float x1 = (x[j + QK / 2] - min) * id;
      const int q0 = static_cast<uint8_t>(x0 + 0.5f);
      const int q1 = static_cast<uint8_t>(x1 + 0.5f);
      y[i].qs[j] = static_cast<uint8_t>((q0 & 0x0F) | ((q1 & 0x0F) << 4));
      qh |= static_cast<uint32_t>((q0 >> 4) & 1) << j;
      qh |= static_cast<uint32_t>((q1 >> 4) & 1) << (j + QK / 2);
    }
    store_u32(y[i].qh, qh);
  }
}

void dequantize_row_q5_1(const block_q5_1* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, y += QK) {
    const float d = fp16_to_fp32(x[i].d);
    const float m = fp16_to_fp32(x[i].m);
    const uint32_t qh = load_u32(x[i].qh);
    for (int e = 0; e < QK; ++e) {
      const int q = low_nibble(x[i].qs, e) | static_cast<int>(((qh >> e) & 1u) << 4);
      y[e] = static_cast<float>(q) * d + m;
    }
  }
}

// ---- Q8_0: d = amax/127, q = roundf(x/d) (half away from zero) ---------------------------------
void quantize_row_q8_0_ref(const float* x, block_q8_0* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, x += QK) {
    float amax = 0.0f;
    for (int j = 0; j < QK; ++j) {
      const float a = std::fabs(x[j]);
      amax = amax > a ? amax : a;
    }
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int j = 0; j < QK; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(x[j] * id));
  }
}

void dequantize_row_q8_0(const block_q8_0* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, y += QK) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < QK; ++j) y[j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

// ---- IQ4_NL: quantize_iq4_nl (ntry = 7, no imatrix: weights x^2) -------------------------------
void scalar::quantize_iq4_nl(const float* x, block_iq4_nl* y, int64_t k) {
  constexpr int ntry = 7;
  const int8_t* values = kvalues_iq4nl;
  for (int64_t i = 0; i < k / QK; ++i, x += QK) {
    uint8_t L[QK];
    float w[QK];
    for (int j = 0; j < QK; ++j) w[j] = x[j] * x[j];
    float amax = 0, max = 0;
    for (int j = 0; j < QK; ++j) {
      const float ax = std::fabs(x[j]);
      if (ax > amax) {
        amax = ax;
        max = x[j];
      }
    }
    float d = 0.0f;
    if (!(amax < 1e-15f)) {
      d = -max / values[0];
      float id = 1 / d;
      float sumqx = 0, sumq2 = 0;
      for (int j = 0; j < QK; ++j) {
        const float q = values[best_index_iq4nl(id * x[j])];
        sumqx += w[j] * q * x[j];
        sumq2 += w[j] * q * q;
      }
      d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
      float best = d * sumqx;
      for (int itry = -ntry; itry <= ntry; ++itry) {
        id = (itry + values[0]) / max;
        sumqx = sumq2 = 0;
        for (int j = 0; j < QK; ++j) {
          const float q = values[best_index_iq4nl(id * x[j])];
          sumqx += w[j] * q * x[j];
          sumq2 += w[j] * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
          d = sumqx / sumq2;
          best = d * sumqx;
        }
      }
    }
    y[i].d = fp32_to_fp16(d);
    // Re-index with the fp32 scale (an all-zero block has d = 0: every index becomes 8).
    const float id = d != 0.0f ? 1 / d : 0;
    for (int j = 0; j < QK; ++j) L[j] = static_cast<uint8_t>(best_index_iq4nl(id * x[j]));
    for (int j = 0; j < QK / 2; ++j) y[i].qs[j] = static_cast<uint8_t>(L[j] | (L[j + QK / 2] << 4));
  }
}

// The same search for 8 blocks at once, lane b = block b, with the scalar code's fp32 operations
// in its order (tests compare the two). best_index_int8's binary search becomes: the bracketing
// codebook pair (lo, hi) of v is found by counting entries <= v, then the same comparison
// `v - lo < hi - v` picks one (for v outside [-127, 113] it picks the end, as the search does).
namespace {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(QAT_EXPORT_NO_CLONES)
#define QAT_EXPORT_CLONES_IQ4 __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define QAT_EXPORT_CLONES_IQ4
#endif
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

QAT_EXPORT_CLONES_IQ4 void iq4_nl_scales_8(const float* x, float* d_out) {
  constexpr int ntry = 7;
  const int8_t* values = kvalues_iq4nl;
  const v8f zero = {};
  v8f xt[QK], w[QK];
  for (int b = 0; b < 8; ++b)
    for (int j = 0; j < QK; ++j) xt[j][b] = x[b * QK + j];
  v8f amax = zero, max = zero;
  for (int j = 0; j < QK; ++j) {
    w[j] = xt[j] * xt[j];
    const v8f ax = reinterpret_cast<v8f>(reinterpret_cast<v8i>(xt[j]) & 0x7fffffff);
    const v8i bigger = ax > amax;
    amax = bigger ? ax : amax;
    max = bigger ? xt[j] : max;
  }
  auto nearest_value = [&](v8f v) __attribute__((always_inline)) {
    v8f lo = zero + static_cast<float>(values[0]), hi = zero + static_cast<float>(values[1]);
    for (int k = 1; k < 15; ++k) {
      const v8i le = (zero + static_cast<float>(values[k])) <= v;
      lo = le ? zero + static_cast<float>(values[k]) : lo;
      hi = le ? zero + static_cast<float>(values[k + 1]) : hi;
    }
    return (v - lo < hi - v) ? lo : hi;
  };
  const v8i live = !(amax < 1e-15f);
  const v8f safe_max = live ? max : zero + 1.0f;
  v8f d = -safe_max / static_cast<float>(values[0]);
  v8f id = 1 / d;
  v8f sumqx = zero, sumq2 = zero;
  for (int j = 0; j < QK; ++j) {
    const v8f q = nearest_value(id * xt[j]);
    sumqx += w[j] * q * xt[j];
    sumq2 += w[j] * q * q;
  }
  d = sumq2 > 0 ? sumqx / sumq2 : zero;
  v8f best = d * sumqx;
  for (int itry = -ntry; itry <= ntry; ++itry) {
    id = static_cast<float>(itry + values[0]) / safe_max;
    sumqx = sumq2 = zero;
    for (int j = 0; j < QK; ++j) {
      const v8f q = nearest_value(id * xt[j]);
      sumqx += w[j] * q * xt[j];
      sumq2 += w[j] * q * q;
    }
    const v8i better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2);
    const v8f nd = sumqx / sumq2;
    d = better ? nd : d;
    best = better ? nd * sumqx : best;
  }
  d = live ? d : zero;
  for (int b = 0; b < 8; ++b) d_out[b] = d[b];
}
}  // namespace

void quantize_iq4_nl(const float* x, block_iq4_nl* y, int64_t k) {
  const int64_t nb = k / QK;
  int64_t i = 0;
  for (; i + 8 <= nb; i += 8) {
    float d[8];
    iq4_nl_scales_8(x + i * QK, d);
    for (int b = 0; b < 8; ++b) {
      const float* xb = x + (i + b) * QK;
      y[i + b].d = fp32_to_fp16(d[b]);
      const float id = d[b] != 0.0f ? 1 / d[b] : 0;  // re-index with the fp32 scale
      for (int j = 0; j < QK / 2; ++j)
        y[i + b].qs[j] = static_cast<uint8_t>(best_index_iq4nl(id * xb[j]) | (best_index_iq4nl(id * xb[j + QK / 2]) << 4));
    }
  }
  if (i < nb) scalar::quantize_iq4_nl(x + i * QK, y + i, (nb - i) * QK);
}

void dequantize_row_iq4_nl(const block_iq4_nl* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK; ++i, y += QK) {
    const float d = fp16_to_fp32(x[i].d);
    for (int e = 0; e < QK; ++e) y[e] = d * static_cast<float>(kvalues_iq4nl[low_nibble(x[i].qs, e)]);
  }
}

}  // namespace qat_export
