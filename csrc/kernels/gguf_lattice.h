// Exact GGUF lattices for fake quantization (shared/specs/formats.md §2.3, §2.4): per-type scalar
// math shared by the CPU and CUDA kernels and the C++ tests. Torch-free.
//
// A weight is a contiguous run of blocks along its last dim (32 elements, or 256 for K-quants);
// block b covers elements [b * block, (b + 1) * block). Learnable parameters are float32:
//   d       [n_blocks]           block / super-block scale, used as stored: fp16 (RNE)
//   dmin    [n_blocks]           Q4_1/Q5_1: the block minimum m (added); Q2_K/Q4_K/Q5_K: the
//                                super-block min scale (subtracted); fp16 like d
//   scales  [n_blocks, n_sub]    K-quant sub-block scales, rounded half to even and clamped to
//                                the format's integer range
//   mins    [n_blocks, n_sub]    Q2_K/Q4_K/Q5_K sub-block mins, likewise
// The codes are then computed from those stored values with the rule ggml's reference quantizer
// uses for its final codes, and y is ggml's dequantize_row_<type> of (stored values, codes), in
// its fp32 operation order, so y is bitwise what llama.cpp decodes from the exported bytes.
#pragma once

#include <cstdint>

#include "fake_quant.h"
#include "quant_math.h"

// The element functions are inlined into the CPU loops whatever their size: an out-of-line call
// stops GCC from vectorizing the loop (and would run the baseline ISA inside target clones).
#if defined(__CUDACC__)
#define QAT_GGUF_INLINE QAT_HD
#elif defined(__GNUC__)
#define QAT_GGUF_INLINE inline __attribute__((always_inline))
#else
#define QAT_GGUF_INLINE inline
#endif

namespace qat::kernels {

// ggml_type ids.
enum class GGUFType : int {
  Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, IQ4_NL = 20,
};

// How a type turns (x, stored parameters) into a code and back:
//   kSymmetric  Q8_0, Q4_0, Q5_0  y = (u - offset) * d
//   kAffine     Q4_1, Q5_1        y = u * d + m
//   kCodebook   IQ4_NL            y = d * kvalues[u]
//   kMinK       Q2_K, Q4_K, Q5_K  y = (d * sc) * u - dmin * m
//   kSignedK    Q3_K, Q6_K        y = (d * sc) * (u - offset)
enum class GGUFKind : int { kSymmetric, kAffine, kCodebook, kMinK, kSignedK };

struct GGUFLattice {
  GGUFKind kind;
  int block;               // elements per block (a K-quant super-block is 256)
  int sub;                 // elements per sub-block (the whole block for 32-element types)
  int code_hi;             // stored codes u lie in [0, code_hi] (Q8_0: [-127, 127])
  int offset;              // value = u - offset
  int scale_lo, scale_hi;  // K-quant sub-block scale range
  int min_hi;              // Q2_K/Q4_K/Q5_K sub-block min range [0, min_hi]
  bool has_dmin, has_scales, has_mins;
};

// The table; block == 0 for anything that is not one of the eleven lattice types.
QAT_HD constexpr GGUFLattice gguf_lattice(GGUFType t) {
  switch (t) {
    case GGUFType::Q8_0: return {GGUFKind::kSymmetric, 32, 32, 127, 0, 0, 0, 0, false, false, false};
    case GGUFType::Q4_0: return {GGUFKind::kSymmetric, 32, 32, 15, 8, 0, 0, 0, false, false, false};
    case GGUFType::Q5_0: return {GGUFKind::kSymmetric, 32, 32, 31, 16, 0, 0, 0, false, false, false};
    case GGUFType::Q4_1: return {GGUFKind::kAffine, 32, 32, 15, 0, 0, 0, 0, true, false, false};
    case GGUFType::Q5_1: return {GGUFKind::kAffine, 32, 32, 31, 0, 0, 0, 0, true, false, false};
    case GGUFType::IQ4_NL: return {GGUFKind::kCodebook, 32, 32, 15, 0, 0, 0, 0, false, false, false};
    case GGUFType::Q2_K: return {GGUFKind::kMinK, 256, 16, 3, 0, 0, 15, 15, true, true, true};
    case GGUFType::Q4_K: return {GGUFKind::kMinK, 256, 32, 15, 0, 0, 63, 63, true, true, true};
    case GGUFType::Q5_K: return {GGUFKind::kMinK, 256, 32, 31, 0, 0, 63, 63, true, true, true};
    case GGUFType::Q3_K: return {GGUFKind::kSignedK, 256, 16, 7, 4, -32, 31, 0, false, true, false};
    case GGUFType::Q6_K: return {GGUFKind::kSignedK, 256, 16, 63, 32, -128, 127, 0, false, true, false};
  }
  return {GGUFKind::kSymmetric, 0, 0, 0, 0, 0, 0, 0, false, false, false};
}

// ---- stored parameters -----------------------------------------------------------------------

// A learned fp16 field as stored: NaN -> 0, clamped to the finite fp16 range (so a scale never
// becomes inf), rounded to nearest even.
QAT_GGUF_INLINE float gguf_stored_half(float v) {
  v = v != v ? 0.0f : v;
  v = v > 65504.0f ? 65504.0f : (v < -65504.0f ? -65504.0f : v);
  return half_bits_to_float(float_to_half_bits(v));
}

// A learned integer field as stored: rounded half to even, clamped to [lo, hi]; NaN -> 0.
QAT_GGUF_INLINE int gguf_stored_int(float v, int lo, int hi) {
  float r = v != v ? 0.0f : round_half_even(v);
  r = r < float(lo) ? float(lo) : (r > float(hi) ? float(hi) : r);
  return int(r + 0.0f);  // + 0: see gguf_forward_element (a -0 must not survive float(int(r)))
}

// ggml's kvalues_iq4nl, packed four int8 to a little-endian word so that a device lookup is a
// few register selects rather than a local-memory array.
QAT_GGUF_INLINE float iq4nl_value(int i) {
  const uint32_t word = i < 8 ? (i < 4 ? 0xBFAD9881u : 0xF6EADDCFu) : (i < 12 ? 0x26190D01u : 0x71594535u);
  return float(int8_t(uint8_t(word >> (8 * (i & 3)))));
}

// best_index_int8 over kvalues_iq4nl: the bracketing pair (lo, lo + 1) by counting the entries
// 1..14 that are <= v, then ggml's comparison `v - lo < hi - v` (an exact midpoint goes up; below
// -127 or above 113 it picks the end, as ggml's early returns do). Branch-free so loops over it
// vectorize. v is not NaN. *value gets the entry.
QAT_GGUF_INLINE int iq4nl_nearest(float v, float* value) {
  int lo = 0;
  float vlo = -127.0f, vhi = -104.0f;
#if defined(__CUDA_ARCH__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__CUDACC__)
#pragma GCC unroll 16
#endif
  for (int k = 1; k < 15; ++k) {
    const bool le = iq4nl_value(k) <= v;
    lo += le ? 1 : 0;
    vlo = le ? iq4nl_value(k) : vlo;
    vhi = le ? iq4nl_value(k + 1) : vhi;
  }
  const bool up = !(v - vlo < vhi - v);
  *value = up ? vhi : vlo;
  return up ? lo + 1 : lo;
}

// The entry alone (floats only: mixing it with the index's integer masks defeats GCC's
// vectorizer in the backward).
QAT_GGUF_INLINE float iq4nl_nearest_value(float v) {
  float vlo = -127.0f, vhi = -104.0f;
#if defined(__CUDA_ARCH__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__CUDACC__)
#pragma GCC unroll 16
#endif
  for (int k = 1; k < 15; ++k) {
    const bool le = iq4nl_value(k) <= v;
    vlo = le ? iq4nl_value(k) : vlo;
    vhi = le ? iq4nl_value(k + 1) : vhi;
  }
  return v - vlo < vhi - v ? vlo : vhi;
}

QAT_GGUF_INLINE int iq4nl_best_index(float v) {
  float value;
  return iq4nl_nearest(v, &value);
}

// What one sub-block applies: s the effective scale (d, or d * sc), inv = 1 / s (legacy types
// multiply by it, as ggml's quantizers do), b the offset (Q4_1/Q5_1: m; Q2..5_K: dmin * m).
struct GGUFSub {
  float s, inv, b;
};

QAT_GGUF_INLINE GGUFSub gguf_sub(GGUFKind kind, float d, float dmin, int sc, int m) {
  GGUFSub p{d, 0.0f, 0.0f};
  if (kind == GGUFKind::kMinK || kind == GGUFKind::kSignedK) p.s = d * float(sc);
  if (kind == GGUFKind::kAffine) p.b = dmin;
  if (kind == GGUFKind::kMinK) p.b = dmin * float(m);
  p.inv = p.s != 0.0f ? 1.0f / p.s : 0.0f;
  return p;
}

// ---- one element -----------------------------------------------------------------------------

// t: the scaled input the format rounds (x / d, (x - m) / d, (x + dmin*m) / (d*sc), ...).
// A zero scale maps every x to t = 0 (ggml: id = 0, or the dj == 0 skip): the forward's codes.
// Branch-free (the unused quotient of a zero scale is computed and dropped) so loops vectorize.
QAT_GGUF_INLINE float gguf_scaled(GGUFKind kind, float x, GGUFSub p) {
  float t;
  switch (kind) {
    case GGUFKind::kAffine: t = (x - p.b) * p.inv; break;
    case GGUFKind::kMinK: t = (x + p.b) / p.s; break;
    case GGUFKind::kSignedK: t = x / p.s; break;
    default: t = x * p.inv; break;
  }
  return p.s != 0.0f ? t : 0.0f;
}

// The code before clamping, as a float: each type's own rounding of t.
//   Q8_0 roundf (half away from zero); Q4_0/Q5_0/Q4_1/Q5_1 truncation of t + offset + 0.5
//   (half up); K-quants nearest_int (half to even) + offset; IQ4_NL best_index (exact).
QAT_GGUF_INLINE float gguf_raw_code(GGUFType type, GGUFKind kind, int offset, float t) {
  switch (kind) {
    case GGUFKind::kSymmetric:
      return type == GGUFType::Q8_0 ? roundf(t) : truncf(t + (float(offset) + 0.5f));
    case GGUFKind::kAffine: return truncf(t + 0.5f);
    case GGUFKind::kCodebook: return float(iq4nl_best_index(t));
    default: return round_half_even(t) + float(offset);
  }
}

// ggml's dequantize_row_<type> of one element, in its fp32 order. r is the stored code as a
// float (an exact integer, never -0): ggml converts the integer code to float, which gives the
// same value; working on r avoids float(int(r)), which GCC folds into truncf and then fails to
// vectorize (and which would keep a -0).
QAT_GGUF_INLINE float gguf_dequant(GGUFKind kind, int offset, float r, GGUFSub p) {
  switch (kind) {
    case GGUFKind::kSymmetric: return (r - float(offset)) * p.s;
    case GGUFKind::kAffine: return r * p.s + p.b;
    case GGUFKind::kMinK: return p.s * r - p.b;
    default: return p.s * (r - float(offset));  // kSignedK (kCodebook decodes in iq4nl_nearest)
  }
}

struct GGUFCode {
  int u;    // stored code
  float y;  // dequantized value (NaN where x is NaN)
};

// Forward of one element. NaN x: the code of 0, y = NaN.
template <GGUFType T>
QAT_GGUF_INLINE GGUFCode gguf_forward_element(float x, GGUFSub p) {
  constexpr GGUFLattice L = gguf_lattice(T);
  const bool is_nan = x != x;
  const float t = gguf_scaled(L.kind, is_nan ? 0.0f : x, p);
  if (L.kind == GGUFKind::kCodebook) {  // the search gives the code in range and its value
    float v;
    GGUFCode c;
    c.u = iq4nl_nearest(t, &v);
    c.y = is_nan ? x : p.s * v;  // = gguf_dequant
    return c;
  }
  const float lo = T == GGUFType::Q8_0 ? -127.0f : 0.0f;
  float r = gguf_raw_code(T, L.kind, L.offset, t);
  r = r < lo ? lo : (r > float(L.code_hi) ? float(L.code_hi) : r);
  r += 0.0f;  // a -0 from roundf / truncf becomes +0, as the integer code is
  GGUFCode c;
  c.u = int(r);
  c.y = is_nan ? x : gguf_dequant(L.kind, L.offset, r, p);
  return c;
}

// Gradients of one element (LSQ with a straight-through rounding):
//   inside the clamp range: dy/dx = 1, dy/ds = value(u) - t, dy/db = 0;
//   saturated:              dy/dx = 0, dy/ds = value(u),     dy/db = +1 (Q4_1/Q5_1) or -1 (K).
// A zero scale is taken as the limit of a tiny positive one (t = +-2^24 by the sign of x's
// offset distance), so a sub-block scale that reached 0 still gets a gradient. A NaN x counts
// as x = 0 with g = 0, so it adds nothing.
struct GGUFGrad {
  float dx, ds, db;
};

template <GGUFType T>
QAT_GGUF_INLINE GGUFGrad gguf_backward_element(float x, float g, GGUFSub p) {
  constexpr GGUFLattice L = gguf_lattice(T);
  constexpr float kBig = 16777216.0f;
  // Branch-free, and every mask a single float comparison: GCC's vectorizer gives up on
  // selects between combined boolean masks.
  const bool is_nan = x != x;
  const float x0 = is_nan ? 0.0f : x;
  const float g0 = is_nan ? 0.0f : g;
  const float e = L.kind == GGUFKind::kAffine ? x0 - p.b : (L.kind == GGUFKind::kMinK ? x0 + p.b : x0);
  const float limit = e > 0.0f ? kBig : (e < 0.0f ? -kBig : 0.0f);
  const float t = p.s != 0.0f ? gguf_scaled(L.kind, x0, p) : limit;
  float raw, lo, hi, v;
  if (L.kind == GGUFKind::kCodebook) {
    raw = t;  // inside the codebook's span [-127, 113]
    lo = -127.0f;
    hi = 113.0f;
    v = iq4nl_nearest_value(t);
  } else {
    raw = gguf_raw_code(T, L.kind, L.offset, t);
    lo = T == GGUFType::Q8_0 ? -127.0f : 0.0f;
    hi = float(L.code_hi);
  }
  const float clamped = raw < lo ? lo : (raw > hi ? hi : raw);
  const bool inside = clamped == raw;
  if (L.kind != GGUFKind::kCodebook) v = (clamped + 0.0f) - float(L.offset);  // exact: small integers
  GGUFGrad out;
  out.dx = inside ? g0 : 0.0f;
  out.ds = g0 * (inside ? v - t : v);
  out.db = 0.0f;
  if (L.kind == GGUFKind::kAffine) out.db = inside ? 0.0f : g0;
  if (L.kind == GGUFKind::kMinK) out.db = inside ? 0.0f : -g0;
  return out;
}

// Raw float32 learnable parameters (see the top of this file). dmin / scales / mins are nullptr
// for types without them.
struct GGUFParams {
  const float* d;
  const float* dmin;
  const float* scales;
  const float* mins;
};

// Parameter gradients, laid out like GGUFParams; all nullptr when none are wanted. Each block's
// sums are reduced with the same pairwise tree on every backend (halving: v[i] += v[i + h] for
// h = n/2 .. 1), so CPU and CUDA gradients are bitwise equal:
//   S_j = tree over sub-block j of g*dy/ds, B_j likewise of g*dy/db;
//   legacy: grad_d = S_0 (grad_dmin = B_0);
//   K: grad_scales[j] = d * S_j, grad_mins[j] = dmin * B_j,
//      grad_d = tree_j(sc_j * S_j), grad_dmin = tree_j(m_j * B_j).
struct GGUFParamGrads {
  float* d;
  float* dmin;
  float* scales;
  float* mins;
};

namespace cpu {

// Blocks [block_begin, block_end) of a contiguous weight. y and codes may each be nullptr.
void gguf_forward(GGUFType type, DType dtype, const void* w, void* y, int8_t* codes,
                  int64_t block_begin, int64_t block_end, GGUFParams p);

// dw over the blocks (straight-through, zero where the code saturated) and, when g.d is set,
// the parameter gradients of those blocks.
void gguf_backward(GGUFType type, DType dtype, const void* w, const void* dy, void* dw,
                   int64_t block_begin, int64_t block_end, GGUFParams p, GGUFParamGrads g);

}  // namespace cpu

namespace cuda {

// Device pointers; `stream` is a cudaStream_t. Nothing synchronizes.
void gguf_forward(GGUFType type, DType dtype, const void* w, void* y, int8_t* codes,
                  int64_t n_blocks, GGUFParams p, void* stream);
void gguf_backward(GGUFType type, DType dtype, const void* w, const void* dy, void* dw,
                   int64_t n_blocks, GGUFParams p, GGUFParamGrads g, void* stream);

}  // namespace cuda

}  // namespace qat::kernels
