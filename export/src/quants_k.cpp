// K-quants: Q2_K .. Q6_K (formats.md §2.4, §2.5). Compiled with -ffp-contract=off.
//
// All arithmetic is fp32, accumulated left to right, in llama.cpp's evaluation order: a sum like
// `s += w*x*l` is ((w*x)*l) added to s. Changing the order changes bytes.
#include <cmath>
#include <cstring>

#include "qat_export/quantize.h"

namespace qat_export {
namespace {

constexpr float kGroupMaxEps = 1e-15f;

inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// make_qx_quants with qw == NULL and rmse_type == 1 (weights x^2), the only use (Q6_K).
// Returns the scale; L gets q + nmax in [0, 2*nmax).
float make_qx_quants_rmse1(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// make_q3_quants with do_rmse = true (Q3_K). L gets q + nmax.
float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.f;
  }
  const float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        const int new_l = clampi(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (new_l != L[i]) {
          slx += w * x[i] * new_l;
          sl2 += w * new_l * new_l;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = static_cast<int8_t>(new_l);
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// make_qkx2_quants: x ~ scale*L - the_min, L in [0, nmax], searched over nstep+1 trial scales.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep, bool use_mad) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = static_cast<uint8_t>(clampi(l, 0, nmax));
    float diff = scale * L[i] + min - x[i];
    diff = use_mad ? std::fabs(diff) : diff * diff;
    best_error += weights[i] * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        float diff = this_scale * Laux[i] + this_min - x[i];
        diff = use_mad ? std::fabs(diff) : diff * diff;
        cur_error += weights[i] * diff;
      }
      if (cur_error < best_error) {
        std::memcpy(L, Laux, static_cast<size_t>(n));
        best_error = cur_error;
        scale = this_scale;
        min = this_min;  // feeds the next trials' (max - min) and (x - min)
      }
    }
  }
  *the_min = -min;
  return scale;
}

// ---- the same search, run on all sub-blocks of a super-block at once --------------------------
// make_qkx2_quants is a chain of short serial fp32 sums (32 or 16 terms per trial, 16 to 21
// trials), so one sub-block at a time is latency-bound. The sub-blocks of a super-block are
// independent: below, lane l runs sub-block l with exactly the scalar code's operations in the
// scalar code's order (so the results are bit-identical; tests compare both on random input),
// and the innermost loops run across lanes, which the compiler vectorizes.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(QAT_EXPORT_NO_CLONES)
#define QAT_EXPORT_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define QAT_EXPORT_CLONES
#endif

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
template <int NL> struct Lanes;
template <> struct Lanes<8> { using F = v8f; using I = v8i; };

// NL sub-blocks of N elements, x[l*N + i]; lane l of every vector below is sub-block l.
// Weights: |x| (kAbsWeights, Q2_K) or sqrt(sum x^2 / N) + |x| (Q4_K, Q5_K).
// Writes L[l*N + i], scales[l], mins[l] (the_min). Branches of the scalar code become selects.
template <int NL, int N, bool kMad, bool kAbsWeights>
__attribute__((always_inline)) inline void qkx2_lanes(const float* x, int nmax, float rmin, float rdelta, int nstep,
                                                      uint8_t* L, float* scales, float* mins) {
  using F = typename Lanes<NL>::F;
  using I = typename Lanes<NL>::I;
  const I zero_i = {};
  const I nmax_i = zero_i + nmax;
  const F zero_f = {};
  auto fabs_v = [](F v) __attribute__((always_inline)) { return reinterpret_cast<F>(reinterpret_cast<I>(v) & 0x7fffffff); };
  // nearest_int (bit trick), then clamp to [0, nmax], as a float.
  auto quant = [&](F v) __attribute__((always_inline)) {
    const F t = v + 12582912.f;
    I q = (reinterpret_cast<I>(t) & 0x007fffff) - 0x00400000;
    q = q < 0 ? zero_i : q;
    q = q > nmax_i ? nmax_i : q;
    return __builtin_convertvector(q, F);
  };

  F xt[N], wt[N], Lf[N], Laux[N];
  for (int l = 0; l < NL; ++l)
    for (int i = 0; i < N; ++i) xt[i][l] = x[l * N + i];
  if (kAbsWeights) {
    for (int i = 0; i < N; ++i) wt[i] = fabs_v(xt[i]);
  } else {
    F sum_x2 = zero_f;
    for (int i = 0; i < N; ++i) sum_x2 += xt[i] * xt[i];
    F av_x;
    for (int l = 0; l < NL; ++l) av_x[l] = std::sqrt(sum_x2[l] / N);
    for (int i = 0; i < N; ++i) wt[i] = av_x + fabs_v(xt[i]);
  }
  F mn = xt[0], mx = xt[0], sum_w = wt[0], sum_x = wt[0] * xt[0];
  for (int i = 1; i < N; ++i) {
    mn = xt[i] < mn ? xt[i] : mn;
    mx = xt[i] > mx ? xt[i] : mx;
    sum_w += wt[i];
    sum_x += wt[i] * xt[i];
  }
  mn = mn > 0 ? zero_f : mn;
  const I flat = mx == mn;  // all zero (or all equal and <= 0): L = 0, scale 0
  const F one_f = zero_f + 1.0f;
  F range = flat ? one_f : mx - mn;
  F iscale = static_cast<float>(nmax) / range;
  F scale = 1 / iscale;
  F best = zero_f;
  for (int i = 0; i < N; ++i) {
    Lf[i] = quant(iscale * (xt[i] - mn));
    F diff = scale * Lf[i] + mn - xt[i];
    diff = kMad ? fabs_v(diff) : diff * diff;
    best += wt[i] * diff;
  }
  for (int is = 0; is <= nstep; ++is) {
    range = flat ? one_f : mx - mn;
    iscale = (rmin + rdelta * is + nmax) / range;
    F sum_l = zero_f, sum_l2 = zero_f, sum_xl = zero_f;
    for (int i = 0; i < N; ++i) {
      const F lf = quant(iscale * (xt[i] - mn));
      Laux[i] = lf;
      sum_l += wt[i] * lf;
      sum_l2 += wt[i] * lf * lf;
      sum_xl += wt[i] * lf * xt[i];
    }
    const F D = sum_w * sum_l2 - sum_l * sum_l;
    const I ok = (D > 0) & ~flat;
    F this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
    F this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
    const I pos = this_min > 0;
    this_scale = pos ? sum_xl / sum_l2 : this_scale;
    this_min = pos ? zero_f : this_min;
    this_scale = ok ? this_scale : zero_f;
    this_min = ok ? this_min : zero_f;
    F cur = zero_f;
    for (int i = 0; i < N; ++i) {
      F diff = this_scale * Laux[i] + this_min - xt[i];
      diff = kMad ? fabs_v(diff) : diff * diff;
      cur += wt[i] * diff;
    }
    const I accept = ok & (cur < best);
    for (int i = 0; i < N; ++i) Lf[i] = accept ? Laux[i] : Lf[i];
    best = accept ? cur : best;
    scale = accept ? this_scale : scale;
    mn = accept ? this_min : mn;  // feeds the next trials' (max - min) and (x - min)
  }
  for (int l = 0; l < NL; ++l) {
    scales[l] = flat[l] ? 0.0f : scale[l];
    mins[l] = -mn[l];
    for (int i = 0; i < N; ++i) L[l * N + i] = flat[l] ? 0 : static_cast<uint8_t>(Lf[i][l]);
  }
}

QAT_EXPORT_CLONES void search_q2_K_lanes(const float* x, uint8_t* L, float* scales, float* mins) {
  // Two halves of 8 lanes: 16-lane (64-byte) vectors compile poorly without AVX-512.
  qkx2_lanes<8, 16, true, true>(x, 3, -0.5f, 0.1f, 15, L, scales, mins);
  qkx2_lanes<8, 16, true, true>(x + 128, 3, -0.5f, 0.1f, 15, L + 128, scales + 8, mins + 8);
}
QAT_EXPORT_CLONES void search_q4_K_lanes(const float* x, uint8_t* L, float* scales, float* mins) {
  qkx2_lanes<QK_K / 32, 32, false, false>(x, 15, -1.f, 0.1f, 20, L, scales, mins);
}
QAT_EXPORT_CLONES void search_q5_K_lanes(const float* x, uint8_t* L, float* scales, float* mins) {
  qkx2_lanes<QK_K / 32, 32, false, false>(x, 31, -0.5f, 0.1f, 15, L, scales, mins);
}

// The straight ports, one sub-block at a time (the ground truth for the lanes above).
void search_q2_K_scalar(const float* x, uint8_t* L, float* scales, float* mins) {
  float weights[16];
  uint8_t Laux[16];
  for (int j = 0; j < QK_K / 16; ++j) {
    for (int l = 0; l < 16; ++l) weights[l] = std::fabs(x[16 * j + l]);
    scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, true);
  }
}
template <int NMAX>
void search_k4_scalar(const float* x, uint8_t* L, float* scales, float* mins) {
  float weights[32];
  uint8_t Laux[32];
  for (int j = 0; j < QK_K / 32; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] = NMAX == 15
                    ? make_qkx2_quants(32, 15, xs, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, false)
                    : make_qkx2_quants(32, 31, xs, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, false);
  }
}

// 6-bit scale/min packing of Q4_K/Q5_K (get_scale_min_k4).
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

inline void set_scale_min_k4(int j, uint8_t ls, uint8_t lm, uint8_t* scales) {
  if (j < 4) {
    scales[j] = ls;
    scales[j + 4] = lm;
  } else {
    scales[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
    scales[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
    scales[j] |= static_cast<uint8_t>((lm >> 4) << 6);
  }
}

using SearchFn = void (*)(const float* x, uint8_t* L, float* scales, float* mins);

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): sub-block search, 6-bit scales, re-quantize.
// Writes d, dmin, scales and the 256 codes in L.
template <int NMAX>
void quantize_superblock_k4(const float* x, half_bits* d_out, half_bits* dmin_out, uint8_t* packed, uint8_t* L,
                            SearchFn search) {
  float mins[QK_K / 32], scales[QK_K / 32];
  search(x, L, scales, mins);
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < QK_K / 32; ++j) {
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  std::memset(packed, 0, K_SCALE_SIZE);
  for (int j = 0; j < QK_K / 32; ++j) {
    // llama.cpp converts to uint8_t before the min(63, .)
    uint8_t ls = static_cast<uint8_t>(nearest_int(inv_scale * scales[j]));
    uint8_t lm = static_cast<uint8_t>(nearest_int(inv_min * mins[j]));
    ls = ls < 63 ? ls : 63;
    lm = lm < 63 ? lm : 63;
    set_scale_min_k4(j, ls, lm, packed);
  }
  *d_out = fp32_to_fp16(max_scale / 63.f);
  *dmin_out = fp32_to_fp16(max_min / 63.f);
  const float d_all = fp16_to_fp32(*d_out), dmin_all = fp16_to_fp32(*dmin_out);
  for (int j = 0; j < QK_K / 32; ++j) {
    uint8_t sc, m;
    get_scale_min_k4(j, packed, &sc, &m);
    const float d = d_all * sc;
    if (d == 0.0f) continue;  // keep the codes from the search
    const float dm = dmin_all * m;
    for (int ii = 0; ii < 32; ++ii)
      L[32 * j + ii] = static_cast<uint8_t>(clampi(nearest_int((x[32 * j + ii] + dm) / d), 0, NMAX));
  }
}

}  // namespace

// ---- Q2_K ---------------------------------------------------------------------------------------
namespace {
void q2_K_rows(const float* x, block_q2_K* y, int64_t k, SearchFn search) {
  const float q4scale = 15.f;
  for (int64_t i = 0; i < k / QK_K; ++i, x += QK_K) {
    uint8_t L[QK_K];
    float mins[QK_K / 16], scales[QK_K / 16];
    search(x, L, scales, mins);
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
      const float iscale = q4scale / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = static_cast<uint8_t>(nearest_int(iscale * scales[j]));
      y[i].d = fp32_to_fp16(max_scale / q4scale);
    } else {
      for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = 0;
      y[i].d = fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
      const float iscale = q4scale / max_min;
      for (int j = 0; j < QK_K / 16; ++j)
        y[i].scales[j] = static_cast<uint8_t>(y[i].scales[j] | (nearest_int(iscale * mins[j]) << 4));
      y[i].dmin = fp32_to_fp16(max_min / q4scale);
    } else {
      y[i].dmin = fp32_to_fp16(0.f);
    }
    const float d_all = fp16_to_fp32(y[i].d), dmin_all = fp16_to_fp32(y[i].dmin);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = d_all * (y[i].scales[j] & 0xF);
      if (d == 0.0f) continue;
      const float dm = dmin_all * (y[i].scales[j] >> 4);
      for (int ii = 0; ii < 16; ++ii)
        L[16 * j + ii] = static_cast<uint8_t>(clampi(nearest_int((x[16 * j + ii] + dm) / d), 0, 3));
    }
    // 2-bit planes: element e -> qs[32*(e/128) + e%32], shift 2*((e%128)/32).
    for (int j = 0; j < QK_K; j += 128)
      for (int l = 0; l < 32; ++l)
        y[i].qs[j / 4 + l] =
            static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
  }
}

}  // namespace

void quantize_row_q2_K_ref(const float* x, block_q2_K* y, int64_t k) { q2_K_rows(x, y, k, search_q2_K_lanes); }
void scalar::quantize_row_q2_K_ref(const float* x, block_q2_K* y, int64_t k) { q2_K_rows(x, y, k, search_q2_K_scalar); }

void dequantize_row_q2_K(const block_q2_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    for (int e = 0; e < QK_K; ++e) {
      const uint8_t sc = x[i].scales[e / 16];
      const float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
      const int q = (x[i].qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      y[e] = dl * q - ml;
    }
  }
}

// ---- Q3_K ---------------------------------------------------------------------------------------
void quantize_row_q3_K_ref(const float* x, block_q3_K* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i, x += QK_K) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0, amax = 0;
    for (int j = 0; j < QK_K / 16; ++j) {
      scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
      const float scale = std::fabs(scales[j]);
      if (scale > amax) {
        amax = scale;
        max_scale = scales[j];
      }
    }
    std::memset(y[i].scales, 0, 12);
    if (max_scale != 0.0f) {
      const float iscale = -32.f / max_scale;
      for (int j = 0; j < QK_K / 16; ++j) {
        int8_t l = static_cast<int8_t>(nearest_int(iscale * scales[j]));  // int8_t first, as llama.cpp
        l = static_cast<int8_t>(clampi(l, -32, 31) + 32);
        if (j < 8) y[i].scales[j] = static_cast<uint8_t>(l & 0xF);
        else y[i].scales[j - 8] = static_cast<uint8_t>(y[i].scales[j - 8] | ((l & 0xF) << 4));
        l = static_cast<int8_t>(l >> 4);
        y[i].scales[j % 4 + 8] = static_cast<uint8_t>(y[i].scales[j % 4 + 8] | (l << (2 * (j / 4))));
      }
      y[i].d = fp32_to_fp16(1 / iscale);
    } else {
      y[i].d = fp32_to_fp16(0.f);
    }
    const float d_all = fp16_to_fp32(y[i].d);
    for (int j = 0; j < QK_K / 16; ++j) {
      int sc = j < 8 ? (y[i].scales[j] & 0xF) : (y[i].scales[j - 8] >> 4);
      sc = (sc | (((y[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
      const float d = d_all * sc;
      if (d == 0.0f) continue;
      for (int ii = 0; ii < 16; ++ii)
        L[16 * j + ii] = static_cast<int8_t>(clampi(nearest_int(x[16 * j + ii] / d), -4, 3) + 4);
    }
    // High bit of element e -> hmask[e % 32] bit e/32; low 2 bits -> 2-bit planes.
    std::memset(y[i].hmask, 0, QK_K / 8);
    for (int e = 0; e < QK_K; ++e) {
      if (L[e] > 3) {
        y[i].hmask[e % 32] = static_cast<uint8_t>(y[i].hmask[e % 32] | (1u << (e / 32)));
        L[e] = static_cast<int8_t>(L[e] - 4);
      }
    }
    for (int j = 0; j < QK_K; j += 128)
      for (int l = 0; l < 32; ++l)
        y[i].qs[j / 4 + l] =
            static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
  }
}

void dequantize_row_q3_K(const block_q3_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i, y += QK_K) {
    const float d_all = fp16_to_fp32(x[i].d);
    int sc[QK_K / 16];
    for (int j = 0; j < QK_K / 16; ++j) {
      const int low = j < 8 ? (x[i].scales[j] & 0xF) : (x[i].scales[j - 8] >> 4);
      sc[j] = (low | (((x[i].scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
    }
    for (int e = 0; e < QK_K; ++e) {
      const float dl = d_all * sc[e / 16];
      const int low = (x[i].qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      const int high = (x[i].hmask[e % 32] >> (e / 32)) & 1;
      y[e] = dl * (low - (high ? 0 : 4));
    }
  }
}

// ---- Q4_K ---------------------------------------------------------------------------------------
namespace {
void q4_K_rows(const float* x, block_q4_K* y, int64_t k, SearchFn search) {
  for (int64_t i = 0; i < k / QK_K; ++i, x += QK_K) {
    uint8_t L[QK_K];
    quantize_superblock_k4<15>(x, &y[i].d, &y[i].dmin, y[i].scales, L, search);
    // Element e, p = e/64, r = e%64: low nibble of qs[32p + r] (r < 32), else high nibble.
    for (int j = 0; j < QK_K; j += 64)
      for (int l = 0; l < 32; ++l) y[i].qs[j / 2 + l] = static_cast<uint8_t>(L[j + l] | (L[j + l + 32] << 4));
  }
}

}  // namespace

void quantize_row_q4_K_ref(const float* x, block_q4_K* y, int64_t k) { q4_K_rows(x, y, k, search_q4_K_lanes); }
void scalar::quantize_row_q4_K_ref(const float* x, block_q4_K* y, int64_t k) {
  q4_K_rows(x, y, k, search_k4_scalar<15>);
}

void dequantize_row_q4_K(const block_q4_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    for (int j = 0; j < QK_K / 32; ++j) {
      uint8_t sc, m;
      get_scale_min_k4(j, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      const uint8_t* q = x[i].qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      for (int l = 0; l < 32; ++l) y[32 * j + l] = d1 * ((q[l] >> shift) & 0xF) - m1;
    }
  }
}

// ---- Q5_K ---------------------------------------------------------------------------------------
namespace {
void q5_K_rows(const float* x, block_q5_K* y, int64_t k, SearchFn search) {
  for (int64_t i = 0; i < k / QK_K; ++i, x += QK_K) {
    uint8_t L[QK_K];
    quantize_superblock_k4<31>(x, &y[i].d, &y[i].dmin, y[i].scales, L, search);
    // Low 4 bits packed like Q4_K; bit 4 of element e -> qh[e % 32] bit e/32.
    std::memset(y[i].qh, 0, QK_K / 8);
    for (int e = 0; e < QK_K; ++e)
      if (L[e] > 15) y[i].qh[e % 32] = static_cast<uint8_t>(y[i].qh[e % 32] | (1u << (e / 32)));
    for (int j = 0; j < QK_K; j += 64)
      for (int l = 0; l < 32; ++l)
        y[i].qs[j / 2 + l] = static_cast<uint8_t>((L[j + l] & 0xF) | ((L[j + l + 32] & 0xF) << 4));
  }
}

}  // namespace

void quantize_row_q5_K_ref(const float* x, block_q5_K* y, int64_t k) { q5_K_rows(x, y, k, search_q5_K_lanes); }
void scalar::quantize_row_q5_K_ref(const float* x, block_q5_K* y, int64_t k) {
  q5_K_rows(x, y, k, search_k4_scalar<31>);
}

void dequantize_row_q5_K(const block_q5_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d), dmin = fp16_to_fp32(x[i].dmin);
    for (int j = 0; j < QK_K / 32; ++j) {
      uint8_t sc, m;
      get_scale_min_k4(j, x[i].scales, &sc, &m);
      const float d1 = d * sc, m1 = dmin * m;
      const uint8_t* q = x[i].qs + 32 * (j / 2);
      const int shift = 4 * (j % 2);
      for (int l = 0; l < 32; ++l) {
        const int e = 32 * j + l;
        const int v = ((q[l] >> shift) & 0xF) + (((x[i].qh[l] >> (e / 32)) & 1) ? 16 : 0);
        y[e] = d1 * v - m1;
      }
    }
  }
}

// ---- Q6_K ---------------------------------------------------------------------------------------
void quantize_row_q6_K_ref(const float* x, block_q6_K* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i, x += QK_K) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
      scales[ib] = make_qx_quants_rmse1(16, 32, x + 16 * ib, L + 16 * ib);
      const float abs_scale = std::fabs(scales[ib]);
      if (abs_scale > max_abs_scale) {
        max_abs_scale = abs_scale;
        max_scale = scales[ib];
      }
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(block_q6_K));
      continue;
    }
    const float iscale = -128.f / max_scale;
    y[i].d = fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib) {
      const int s = nearest_int(iscale * scales[ib]);
      y[i].scales[ib] = static_cast<int8_t>(s < 127 ? s : 127);
    }
    const float d_all = fp16_to_fp32(y[i].d);
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = d_all * y[i].scales[j];
      if (d == 0.0f) continue;
      for (int ii = 0; ii < 16; ++ii)
        L[16 * j + ii] = static_cast<int8_t>(clampi(nearest_int(x[16 * j + ii] / d), -32, 31) + 32);
    }
    // Element e, h = e/128, r = e%128, kq = r/32, l = r%32: low nibble in ql[64h + l + 32*(kq&1)]
    // (low half for kq < 2, high half otherwise); high 2 bits in qh[32h + l] bits 2kq..2kq+1.
    for (int h = 0; h < QK_K / 128; ++h) {
      const int8_t* Lh = L + 128 * h;
      uint8_t* ql = y[i].ql + 64 * h;
      uint8_t* qh = y[i].qh + 32 * h;
      for (int l = 0; l < 32; ++l) {
        ql[l] = static_cast<uint8_t>((Lh[l] & 0xF) | ((Lh[l + 64] & 0xF) << 4));
        ql[l + 32] = static_cast<uint8_t>((Lh[l + 32] & 0xF) | ((Lh[l + 96] & 0xF) << 4));
        qh[l] = static_cast<uint8_t>((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                     ((Lh[l + 96] >> 4) << 6));
      }
    }
  }
}

void dequantize_row_q6_K(const block_q6_K* x, float* y, int64_t k) {
  for (int64_t i = 0; i < k / QK_K; ++i, y += QK_K) {
    const float d = fp16_to_fp32(x[i].d);
    for (int e = 0; e < QK_K; ++e) {
      const int h = e / 128, r = e % 128, kq = r / 32, l = r % 32;
      const uint8_t lo = x[i].ql[64 * h + l + 32 * (kq & 1)];
      const int low = kq < 2 ? (lo & 0xF) : (lo >> 4);
      const int high = (x[i].qh[32 * h + l] >> (2 * kq)) & 3;
      y[e] = d * x[i].scales[e / 16] * ((low | (high << 4)) - 32);
    }
  }
}

}  // namespace qat_export
