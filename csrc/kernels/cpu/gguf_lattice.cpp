// CPU kernels of the GGUF lattices (gguf_lattice.h). A caller's range is whole blocks, so one
// thread owns each block's parameter gradients: no atomics, and the fixed reduction tree makes
// the sums independent of the thread count. Loops run over a block's elements into local arrays
// (branch-free, so GCC vectorizes them), then store.
#include "../gguf_lattice.h"
#include "cpu_common.h"

namespace qat::kernels::cpu {
namespace {

constexpr int kMaxBlock = 256;
constexpr int kMaxSub = 16;

// The stored parameters of block b and the per-sub-block scale / offset they give.
struct BlockParams {
  float d, dmin;
  int sc[kMaxSub], m[kMaxSub];
  GGUFSub sub[kMaxSub];
};

template <GGUFType T>
QAT_INLINE void load_block(int64_t b, GGUFParams p, BlockParams& bp) {
  constexpr GGUFLattice L = gguf_lattice(T);
  constexpr int n_sub = L.block / L.sub;
  bp.d = gguf_stored_half(p.d[b]);
  bp.dmin = L.has_dmin ? gguf_stored_half(p.dmin[b]) : 0.0f;
  for (int j = 0; j < n_sub; ++j) {
    bp.sc[j] = L.has_scales ? gguf_stored_int(p.scales[b * n_sub + j], L.scale_lo, L.scale_hi) : 0;
    bp.m[j] = L.has_mins ? gguf_stored_int(p.mins[b * n_sub + j], 0, L.min_hi) : 0;
    bp.sub[j] = gguf_sub(L.kind, bp.d, bp.dmin, bp.sc[j], bp.m[j]);
  }
}

// The pairwise tree every backend uses (gguf_lattice.h, GGUFParamGrads). N is a power of two.
template <int N>
QAT_INLINE float tree_sum(float* v) {
  for (int h = N / 2; h >= 1; h /= 2)
    for (int i = 0; i < h; ++i) v[i] += v[i + h];
  return v[0];
}

template <GGUFType T, class S>
QAT_INLINE void forward_blocks(const void* wv, void* yv, int8_t* codes, int64_t b0, int64_t b1,
                               GGUFParams p) {
  constexpr GGUFLattice L = gguf_lattice(T);
  constexpr int n_sub = L.block / L.sub;
  auto w = static_cast<const typename S::Storage*>(wv);
  auto y = static_cast<typename S::Storage*>(yv);
  BlockParams bp;
  // Local copies in and out: with nothing that may alias, GCC vectorizes the element loop
  // without a runtime overlap check (which it otherwise fails at run time).
  float xs[kMaxBlock], ys[kMaxBlock];
  int us[kMaxBlock];
  for (int64_t b = b0; b < b1; ++b) {
    load_block<T>(b, p, bp);
    const int64_t base = b * L.block;
    for (int e = 0; e < L.block; ++e) xs[e] = S::load(w[base + e]);
    for (int j = 0; j < n_sub; ++j) {
      const GGUFSub sp = bp.sub[j];
      for (int i = 0; i < L.sub; ++i) {
        const GGUFCode c = gguf_forward_element<T>(xs[j * L.sub + i], sp);
        ys[j * L.sub + i] = c.y;
        us[j * L.sub + i] = c.u;
      }
    }
    if (y != nullptr)
      for (int e = 0; e < L.block; ++e) y[base + e] = S::store(ys[e]);
    if (codes != nullptr)
      for (int e = 0; e < L.block; ++e) codes[base + e] = int8_t(us[e]);
  }
}

template <GGUFType T, class S>
QAT_INLINE void backward_blocks(const void* wv, const void* dyv, void* dwv, int64_t b0, int64_t b1,
                                GGUFParams p, GGUFParamGrads g) {
  constexpr GGUFLattice L = gguf_lattice(T);
  constexpr int n_sub = L.block / L.sub;
  constexpr bool kLegacy = n_sub == 1;
  auto w = static_cast<const typename S::Storage*>(wv);
  auto dy = static_cast<const typename S::Storage*>(dyv);
  auto dw = static_cast<typename S::Storage*>(dwv);
  BlockParams bp;
  float xs[kMaxBlock], gs[kMaxBlock], dxs[kMaxBlock], cs[kMaxBlock], cb[kMaxBlock];
  float sums_s[kMaxSub], sums_b[kMaxSub];
  for (int64_t b = b0; b < b1; ++b) {
    load_block<T>(b, p, bp);
    const int64_t base = b * L.block;
    for (int e = 0; e < L.block; ++e) {
      xs[e] = S::load(w[base + e]);
      gs[e] = S::load(dy[base + e]);
    }
    for (int j = 0; j < n_sub; ++j) {
      const GGUFSub sp = bp.sub[j];
      for (int i = 0; i < L.sub; ++i) {
        const int e = j * L.sub + i;
        const GGUFGrad gr = gguf_backward_element<T>(xs[e], gs[e], sp);
        dxs[e] = gr.dx;
        cs[e] = gr.ds;
        cb[e] = gr.db;
      }
    }
    for (int e = 0; e < L.block; ++e) dw[base + e] = S::store(dxs[e]);
    if (g.d == nullptr) continue;
    for (int j = 0; j < n_sub; ++j) {
      sums_s[j] = tree_sum<L.sub>(cs + j * L.sub);
      if (L.has_dmin) sums_b[j] = tree_sum<L.sub>(cb + j * L.sub);
    }
    if (kLegacy) {
      g.d[b] = sums_s[0];
      if (L.has_dmin) g.dmin[b] = sums_b[0];
      continue;
    }
    float ts[kMaxSub], tb[kMaxSub];
    for (int j = 0; j < n_sub; ++j) {
      g.scales[b * n_sub + j] = bp.d * sums_s[j];
      ts[j] = float(bp.sc[j]) * sums_s[j];
      if (L.has_mins) {
        g.mins[b * n_sub + j] = bp.dmin * sums_b[j];
        tb[j] = float(bp.m[j]) * sums_b[j];
      }
    }
    g.d[b] = tree_sum<n_sub>(ts);
    if (L.has_mins) g.dmin[b] = tree_sum<n_sub>(tb);
  }
}

#define QAT_GGUF_TYPES(X) \
  X(Q4_0) X(Q4_1) X(Q5_0) X(Q5_1) X(Q8_0) X(Q2_K) X(Q3_K) X(Q4_K) X(Q5_K) X(Q6_K) X(IQ4_NL)

template <class S>
QAT_INLINE void forward_dtype(GGUFType type, const void* w, void* y, int8_t* codes, int64_t b0,
                              int64_t b1, GGUFParams p) {
  switch (type) {
#define QAT_CASE(t) \
  case GGUFType::t: return forward_blocks<GGUFType::t, S>(w, y, codes, b0, b1, p);
    QAT_GGUF_TYPES(QAT_CASE)
#undef QAT_CASE
  }
}

template <class S>
QAT_INLINE void backward_dtype(GGUFType type, const void* w, const void* dy, void* dw, int64_t b0,
                               int64_t b1, GGUFParams p, GGUFParamGrads g) {
  switch (type) {
#define QAT_CASE(t) \
  case GGUFType::t: return backward_blocks<GGUFType::t, S>(w, dy, dw, b0, b1, p, g);
    QAT_GGUF_TYPES(QAT_CASE)
#undef QAT_CASE
  }
}

}  // namespace

QAT_CPU_CLONES
void gguf_forward(GGUFType type, DType dtype, const void* w, void* y, int8_t* codes,
                  int64_t block_begin, int64_t block_end, GGUFParams p) {
  switch (dtype) {
    case DType::f32: return forward_dtype<F32>(type, w, y, codes, block_begin, block_end, p);
    case DType::f16: return forward_dtype<F16>(type, w, y, codes, block_begin, block_end, p);
    case DType::bf16: return forward_dtype<BF16>(type, w, y, codes, block_begin, block_end, p);
  }
}

QAT_CPU_CLONES
void gguf_backward(GGUFType type, DType dtype, const void* w, const void* dy, void* dw,
                   int64_t block_begin, int64_t block_end, GGUFParams p, GGUFParamGrads g) {
  switch (dtype) {
    case DType::f32: return backward_dtype<F32>(type, w, dy, dw, block_begin, block_end, p, g);
    case DType::f16: return backward_dtype<F16>(type, w, dy, dw, block_begin, block_end, p, g);
    case DType::bf16: return backward_dtype<BF16>(type, w, dy, dw, block_begin, block_end, p, g);
  }
}

}  // namespace qat::kernels::cpu
