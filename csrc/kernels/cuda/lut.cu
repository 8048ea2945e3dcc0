// CUDA palettization kernels: nearest-centroid fake quantization, indices and LUT gradients,
// with the same search (lut.h's lut_nearest) and the same tables as the CPU kernels, so outputs
// and indices are bit-identical. k-means has no CUDA kernel: it is a one-time initialization, and
// the ops layer runs the CPU kernel on a host copy.
//
// Work is cut into tiles of kTile elements inside one group; each block takes a contiguous range
// of tiles, so it builds a group's search table in shared memory once per group it enters.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../lut.h"
#include "cuda_common.cuh"

namespace qat::kernels::cuda {
namespace {

using namespace detail;

static_assert(kThreads == kMaxCentroids, "one thread per centroid builds the table");
constexpr int64_t kTile = int64_t(kThreads) * 8;

enum Mode : int { kFakeQuant = 0, kIndices = 1, kGrad = 2 };

struct SharedTable {
  float lut[kMaxCentroids];    // the group's centroids as given
  float value[kMaxCentroids];  // LutTable: distinct non-NaN values ascending...
  uint8_t index[kMaxCentroids];  // ...and the lowest index holding each
  uint8_t keep[kMaxCentroids];
  double acc[kMaxCentroids];   // kGrad: this block's sums for the group
};

// cpu::lut_table's table, built in parallel: centroid t is kept when it is not NaN and no lower
// index holds its value; its position is the number of kept values below it. Returns the size.
template <int kMode>
__device__ int build_table(const float* lut, int k, SharedTable& s) {
  const int t = threadIdx.x;
  __syncthreads();  // the previous group's table is no longer read
  float c = 0.0f;
  if (t < k) {
    c = lut[t];
    s.lut[t] = c;
  }
  if constexpr (kMode == kGrad) s.acc[t] = 0.0;
  __syncthreads();
  bool keep = t < k && c == c;
  for (int j = 0; keep && j < t; ++j) keep = s.lut[j] != c;
  s.keep[t] = keep ? 1 : 0;
  const int size = __syncthreads_count(keep);
  if (keep) {
    int pos = 0;
    for (int j = 0; j < k; ++j) pos += (s.keep[j] && s.lut[j] < c) ? 1 : 0;
    s.value[pos] = c;
    s.index[pos] = static_cast<uint8_t>(t);
  }
  __syncthreads();
  return size;
}

__device__ void flush(SharedTable& s, double* acc, int k) {
  __syncthreads();
  const int t = threadIdx.x;
  if (t < k && s.acc[t] != 0.0) atomicAdd(acc + t, s.acc[t]);
}

template <class T, int kMode>
__global__ void __launch_bounds__(kThreads)
    lut_kernel(const typename T::Storage* x, const typename T::Storage* dy,
               typename T::Storage* y, uint8_t* indices, double* acc, int64_t n,
               int64_t tiles_per_group, int64_t tiles, const float* lut, int k) {
  __shared__ SharedTable s;
  const int64_t per_block = ceil_div(tiles, gridDim.x);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per_block;
  const int64_t last = min64(tiles, first + per_block);
  int64_t group = -1;
  int size = 0;
  for (int64_t tile = first; tile < last; ++tile) {
    const int64_t g = tile / tiles_per_group;  // the same in every thread: syncs stay uniform
    if (g != group) {
      if constexpr (kMode == kGrad) {
        if (group >= 0) flush(s, acc + group * k, k);
      }
      size = build_table<kMode>(lut + g * k, k, s);
      group = g;
    }
    const int64_t begin = (tile - g * tiles_per_group) * kTile;
    const int64_t end = min64(n, begin + kTile);
    for (int64_t e = begin + threadIdx.x; e < end; e += kThreads) {
      const int64_t i = g * n + e;
      const float v = T::load(x[i]);
      const int j = (v != v || size == 0) ? 0 : lut_nearest(s.value, s.index, size, v);
      if constexpr (kMode == kFakeQuant) {
        y[i] = T::store(v != v ? v : s.lut[j]);
      } else if constexpr (kMode == kIndices) {
        indices[i] = static_cast<uint8_t>(j);
      } else {
        if (v == v) atomicAdd(&s.acc[j], double(T::load(dy[i])));
      }
    }
  }
  if constexpr (kMode == kGrad) {
    if (group >= 0) flush(s, acc + group * k, k);
  }
}

template <class T, int kMode>
void launch_as(const void* x, const void* dy, void* y, uint8_t* indices, double* acc,
               int64_t groups, int64_t n, const float* lut, int k, cudaStream_t stream) {
  using S = typename T::Storage;
  const int64_t tiles_per_group = ceil_div(n, kTile);
  const int64_t tiles = groups * tiles_per_group;
  const int64_t grid = std::max<int64_t>(
      1, std::min<int64_t>(tiles, resident_blocks<&lut_kernel<T, kMode>>()));
  lut_kernel<T, kMode><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
      static_cast<const S*>(x), static_cast<const S*>(dy), static_cast<S*>(y), indices, acc, n,
      tiles_per_group, tiles, lut, k);
  check_launch("lut_kernel");
}

template <int kMode>
void launch(DType dtype, const void* x, const void* dy, void* y, uint8_t* indices, double* acc,
            int64_t groups, int64_t n, const float* lut, int k, void* stream) {
  if (groups <= 0 || n <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return launch_as<F32, kMode>(x, dy, y, indices, acc, groups, n, lut, k, s);
    case DType::f16: return launch_as<F16, kMode>(x, dy, y, indices, acc, groups, n, lut, k, s);
    case DType::bf16: return launch_as<BF16, kMode>(x, dy, y, indices, acc, groups, n, lut, k, s);
  }
}

}  // namespace

void lut_fake_quant(DType dtype, const void* x, void* y, int64_t groups, int64_t n,
                    const float* lut, int k, void* stream) {
  launch<kFakeQuant>(dtype, x, nullptr, y, nullptr, nullptr, groups, n, lut, k, stream);
}

void lut_indices(DType dtype, const void* x, uint8_t* indices, int64_t groups, int64_t n,
                 const float* lut, int k, void* stream) {
  launch<kIndices>(dtype, x, nullptr, nullptr, indices, nullptr, groups, n, lut, k, stream);
}

void lut_grad(DType dtype, const void* x, const void* dy, int64_t groups, int64_t n,
              const float* lut, int k, double* acc, void* stream) {
  launch<kGrad>(dtype, x, dy, nullptr, nullptr, acc, groups, n, lut, k, stream);
}

}  // namespace qat::kernels::cuda
