// CUDA kernels of the GGUF lattices (gguf_lattice.h): the same per-element math as the CPU
// kernels (--fmad=false, IEEE division), so y, codes and dw are bitwise the CPU's. The parameter
// gradients use the CPU's reduction tree too: a sub-block's sum is a warp butterfly over its 16
// or 32 lanes (xor offsets sub/2 .. 1, which is the CPU's in-place halving), a super-block's the
// same halving over its sub-blocks in shared memory; one CTA owns a tile of 256 elements (one
// K-quant super-block or eight 32-element blocks), so gradients need no atomics and are bitwise
// equal to the CPU's. Nothing synchronizes with the host; every launch goes on `stream`.
#include <cuda_runtime.h>

#include <cstdint>

#include "../gguf_lattice.h"
#include "cuda_common.cuh"

namespace qat::kernels::cuda {
namespace {

using namespace detail;

constexpr int kTile = 256;  // elements per CTA tile in the backward, = kThreads

template <GGUFType T>
__device__ __forceinline__ GGUFSub sub_at(GGUFParams p, int64_t b, int j, float* d_out, float* dmin_out, int* sc_out,
                                          int* m_out) {
  constexpr GGUFLattice L = gguf_lattice(T);
  constexpr int ns = L.block / L.sub;
  const float d = gguf_stored_half(__ldg(p.d + b));
  const float dmin = L.has_dmin ? gguf_stored_half(__ldg(p.dmin + b)) : 0.0f;
  const int sc = L.has_scales ? gguf_stored_int(__ldg(p.scales + b * ns + j), L.scale_lo, L.scale_hi) : 0;
  const int m = L.has_mins ? gguf_stored_int(__ldg(p.mins + b * ns + j), 0, L.min_hi) : 0;
  *d_out = d;
  *dmin_out = dmin;
  *sc_out = sc;
  *m_out = m;
  return gguf_sub(L.kind, d, dmin, sc, m);
}

template <GGUFType T, class S>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const typename S::Storage* __restrict__ w, typename S::Storage* __restrict__ y,
               int8_t* __restrict__ codes, int64_t n, GGUFParams p) {
  constexpr GGUFLattice L = gguf_lattice(T);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t b = i / L.block;
    const int j = int(i % L.block) / L.sub;
    float d, dmin;
    int sc, m;
    const GGUFSub sp = sub_at<T>(p, b, j, &d, &dmin, &sc, &m);
    const GGUFCode c = gguf_forward_element<T>(S::load(w[i]), sp);
    if (y != nullptr) y[i] = S::store(c.y);
    if (codes != nullptr) codes[i] = int8_t(c.u);
  }
}

// dw only: element-wise.
template <GGUFType T, class S>
__global__ void __launch_bounds__(kThreads)
backward_ste_kernel(const typename S::Storage* __restrict__ w, const typename S::Storage* __restrict__ dy,
                    typename S::Storage* __restrict__ dw, int64_t n, GGUFParams p) {
  constexpr GGUFLattice L = gguf_lattice(T);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float d, dmin;
    int sc, m;
    const GGUFSub sp = sub_at<T>(p, i / L.block, int(i % L.block) / L.sub, &d, &dmin, &sc, &m);
    dw[i] = S::store(gguf_backward_element<T>(S::load(w[i]), S::load(dy[i]), sp).dx);
  }
}

// dw and the parameter gradients: one tile of kTile elements per CTA iteration.
template <GGUFType T, class S>
__global__ void __launch_bounds__(kThreads)
backward_params_kernel(const typename S::Storage* __restrict__ w, const typename S::Storage* __restrict__ dy,
                       typename S::Storage* __restrict__ dw, int64_t n, GGUFParams p, GGUFParamGrads g) {
  constexpr GGUFLattice L = gguf_lattice(T);
  constexpr int ns = L.block / L.sub;
  constexpr bool kLegacy = ns == 1;
  __shared__ float sum_s[kTile / 16], sum_b[kTile / 16];
  const int64_t n_tiles = (n + kTile - 1) / kTile;
  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const int64_t i = tile * kTile + threadIdx.x;
    const bool valid = i < n;  // n is whole blocks, so a warp is all valid or all not
    float ds = 0.0f, db = 0.0f, d = 0.0f, dmin = 0.0f;
    int sc = 0, m = 0;
    const int64_t b = i / L.block;
    const int j = int(i % L.block) / L.sub;
    if (valid) {
      const GGUFSub sp = sub_at<T>(p, b, j, &d, &dmin, &sc, &m);
      const GGUFGrad gr = gguf_backward_element<T>(S::load(w[i]), S::load(dy[i]), sp);
      dw[i] = S::store(gr.dx);
      ds = gr.ds;
      db = gr.db;
    }
#pragma unroll
    for (int off = L.sub / 2; off >= 1; off /= 2) {
      ds += __shfl_xor_sync(0xffffffffu, ds, off);
      if (L.has_dmin) db += __shfl_xor_sync(0xffffffffu, db, off);
    }
    const bool leader = valid && (threadIdx.x % L.sub) == 0;
    if (kLegacy) {
      if (leader) {
        g.d[b] = ds;
        if (L.has_dmin) g.dmin[b] = db;
      }
      continue;  // no shared memory used: nothing to wait for
    }
    if (leader) {
      g.scales[b * ns + j] = d * ds;
      sum_s[j] = float(sc) * ds;
      if (L.has_mins) {
        g.mins[b * ns + j] = dmin * db;
        sum_b[j] = float(m) * db;
      }
    }
    __syncthreads();
    if (threadIdx.x == 0 && valid) {
      for (int h = ns / 2; h >= 1; h /= 2)
        for (int k = 0; k < h; ++k) {
          sum_s[k] += sum_s[k + h];
          if (L.has_mins) sum_b[k] += sum_b[k + h];
        }
      g.d[b] = sum_s[0];
      if (L.has_mins) g.dmin[b] = sum_b[0];
    }
    __syncthreads();  // the next tile reuses the shared sums
  }
}

int64_t grid_for(int64_t units) {
  const int64_t cap = int64_t(sm_count(current_device())) * 8;
  return units < cap ? (units > 0 ? units : 1) : cap;
}

template <GGUFType T, class S>
void forward_t(const void* w, void* y, int8_t* codes, int64_t n, GGUFParams p, cudaStream_t stream) {
  forward_kernel<T, S><<<grid_for(ceil_div(n, kThreads)), kThreads, 0, stream>>>(
      static_cast<const typename S::Storage*>(w), static_cast<typename S::Storage*>(y), codes, n, p);
  check_launch("gguf forward_kernel");
}

template <GGUFType T, class S>
void backward_t(const void* w, const void* dy, void* dw, int64_t n, GGUFParams p, GGUFParamGrads g,
                cudaStream_t stream) {
  auto wp = static_cast<const typename S::Storage*>(w);
  auto dyp = static_cast<const typename S::Storage*>(dy);
  auto dwp = static_cast<typename S::Storage*>(dw);
  if (g.d == nullptr) {
    backward_ste_kernel<T, S><<<grid_for(ceil_div(n, kThreads)), kThreads, 0, stream>>>(wp, dyp, dwp, n, p);
    check_launch("gguf backward_ste_kernel");
    return;
  }
  backward_params_kernel<T, S><<<grid_for(ceil_div(n, kTile)), kThreads, 0, stream>>>(wp, dyp, dwp, n, p, g);
  check_launch("gguf backward_params_kernel");
}

#define QAT_GGUF_TYPES(X) \
  X(Q4_0) X(Q4_1) X(Q5_0) X(Q5_1) X(Q8_0) X(Q2_K) X(Q3_K) X(Q4_K) X(Q5_K) X(Q6_K) X(IQ4_NL)

template <class S>
void forward_dtype(GGUFType type, const void* w, void* y, int8_t* codes, int64_t n, GGUFParams p,
                   cudaStream_t stream) {
  switch (type) {
#define QAT_CASE(t) \
  case GGUFType::t: return forward_t<GGUFType::t, S>(w, y, codes, n, p, stream);
    QAT_GGUF_TYPES(QAT_CASE)
#undef QAT_CASE
  }
}

template <class S>
void backward_dtype(GGUFType type, const void* w, const void* dy, void* dw, int64_t n, GGUFParams p,
                    GGUFParamGrads g, cudaStream_t stream) {
  switch (type) {
#define QAT_CASE(t) \
  case GGUFType::t: return backward_t<GGUFType::t, S>(w, dy, dw, n, p, g, stream);
    QAT_GGUF_TYPES(QAT_CASE)
#undef QAT_CASE
  }
}

}  // namespace

void gguf_forward(GGUFType type, DType dtype, const void* w, void* y, int8_t* codes, int64_t n_blocks,
                  GGUFParams p, void* stream) {
  const int64_t n = n_blocks * gguf_lattice(type).block;
  if (n == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return forward_dtype<F32>(type, w, y, codes, n, p, s);
    case DType::f16: return forward_dtype<F16>(type, w, y, codes, n, p, s);
    case DType::bf16: return forward_dtype<BF16>(type, w, y, codes, n, p, s);
  }
}

void gguf_backward(GGUFType type, DType dtype, const void* w, const void* dy, void* dw, int64_t n_blocks,
                   GGUFParams p, GGUFParamGrads g, void* stream) {
  const int64_t n = n_blocks * gguf_lattice(type).block;
  if (n == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return backward_dtype<F32>(type, w, dy, dw, n, p, g, s);
    case DType::f16: return backward_dtype<F16>(type, w, dy, dw, n, p, g, s);
    case DType::bf16: return backward_dtype<BF16>(type, w, dy, dw, n, p, g, s);
  }
}

}  // namespace qat::kernels::cuda
