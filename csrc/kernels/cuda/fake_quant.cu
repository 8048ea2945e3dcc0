// CUDA fake-quantization kernels on raw device pointers. Element-wise results are bit-identical
// to the CPU kernels (csrc/kernels/cpu/fake_quant.cpp): both evaluate the same quant_math.h
// functions in fp32. LSQ scale / zero-point gradients are summed in double as on the CPU, only in
// a different order. Nothing here synchronizes with the host; every launch goes on `stream`.
//
// Kernel families:
//  - elementwise_kernel: forward, straight-through backward and fake_cast over a flat range,
//    16-byte units when the pointers allow it.
//  - columns_kernel: layouts with inner == 1 and several channels (per channel along the last
//    dim); each thread owns a few columns and walks rows, keeping its parameters in registers.
//  - lsq_long_kernel / lsq_short_kernel: LSQ backward for the other layouts, reducing inside
//    blocks / groups of lanes so that few double atomics reach memory.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "../fake_quant.h"
#include "cuda_common.cuh"

namespace qat::kernels::cuda {
namespace {

using namespace detail;

bool all_aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Per-element math, exactly as the CPU kernels apply it
// ---------------------------------------------------------------------------------------------

struct ChanParams {
  float scale, inv_scale, zero_point;
};

__device__ __forceinline__ ChanParams channel_params(QParams qp, int64_t c, QuantRange r) {
  ChanParams p;
  p.scale = effective_scale(__ldg(qp.scale + c));
  p.inv_scale = 1.0f / p.scale;  // IEEE division (no fast math), as on the CPU
  p.zero_point = effective_zero_point(__ldg(qp.zero_point + c), r.quant_min, r.quant_max);
  return p;
}

enum Op : int { kForward = 0, kSte = 1, kLsq = 2, kCast = 3 };

struct OpArgs {
  QuantRange range;
  float grad_factor;
  FloatFormat fmt;
};

// x: input, g: incoming gradient (backward only). LSQ adds its scale / zero-point terms to ss / sz.
template <int kOp>
__device__ __forceinline__ float apply(float x, float g, const ChanParams& p, const OpArgs& a,
                                       double& ss, double& sz) {
  const float qmin = a.range.quant_min, qmax = a.range.quant_max;
  if constexpr (kOp == kForward) {
    return fake_quant_value(x, p.scale, p.inv_scale, p.zero_point, qmin, qmax);
  } else if constexpr (kOp == kSte) {
    return fake_quant_in_range(x, p.inv_scale, p.zero_point, qmin, qmax) ? g : g * 0.0f;
  } else if constexpr (kOp == kLsq) {
    LsqGrads l = lsq_grads(x, g, p.scale, p.inv_scale, p.zero_point, qmin, qmax, a.grad_factor);
    ss += double(l.dscale);
    sz += double(l.dzero_point);
    return l.dx;
  } else {
    return fake_cast_value(x, a.fmt);
  }
}

// One unit (kVec elements) of a backward pass: load x and dy, apply the op, store dx.
template <class T, bool kAligned, int kOp>
__device__ __forceinline__ void backward_unit(const typename T::Storage* x,
                                              const typename T::Storage* dy,
                                              typename T::Storage* dx, const ChanParams& p,
                                              const OpArgs& args, double& ss, double& sz) {
  float vx[T::kVec], vg[T::kVec], vo[T::kVec];
  load_unit<T, kAligned>(x, vx);
  load_unit<T, kAligned>(dy, vg);
#pragma unroll
  for (int j = 0; j < T::kVec; ++j) vo[j] = apply<kOp>(vx[j], vg[j], p, args, ss, sz);
  store_unit<T, kAligned>(dx, vo);
}

// a / b for 0 <= a, 0 < b: 32-bit division when both fit, which is much cheaper than the
// emulated 64-bit one and covers every tensor below 2^32 elements.
__device__ __forceinline__ int64_t div_nonneg(int64_t a, int64_t b) {
  if (((static_cast<uint64_t>(a) | static_cast<uint64_t>(b)) >> 32) == 0)
    return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

__device__ __forceinline__ int64_t channel_of(int64_t i, ChannelLayout layout) {
  int64_t segment = div_nonneg(i, layout.inner);
  return segment - div_nonneg(segment, layout.channels) * layout.channels;
}

// ---------------------------------------------------------------------------------------------
// Element-wise kernel: forward, straight-through backward, fake_cast
// ---------------------------------------------------------------------------------------------

// How a unit finds its quantization parameters.
enum ChanMode : int {
  kNoParams = 0,    // fake_cast
  kOneChannel = 1,  // channels == 1: computed once per thread
  kPerUnit = 2,     // units never straddle a segment (inner % kVec == 0, units start at 0)
  kPerElement = 3,  // otherwise: one division per unit, then step across segment boundaries
};

// Elements [head, head + nunits * kVec) are processed as units (16-byte aligned when kAligned);
// the fewer than 2 * kVec elements before and after are handled one per thread.
template <class T, int kOp, int kMode, bool kAligned>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(const typename T::Storage* a, const typename T::Storage* b,
                       typename T::Storage* out, int64_t n, int64_t head, int64_t nunits,
                       ChannelLayout layout, QParams qp, OpArgs args) {
  constexpr int V = T::kVec;
  constexpr bool kTwoInputs = kOp == kSte;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  double unused_s = 0.0, unused_z = 0.0;

  ChanParams p{};
  if constexpr (kMode == kOneChannel) p = channel_params(qp, 0, args.range);

  for (int64_t u = tid; u < nunits; u += stride) {
    const int64_t i0 = head + u * V;
    float va[V], vb[V] = {}, vo[V];
    load_unit<T, kAligned>(a + i0, va);
    if constexpr (kTwoInputs) load_unit<T, kAligned>(b + i0, vb);
    if constexpr (kMode == kPerElement) {
      // One division for the unit, then walk it: at most one boundary per element.
      int64_t segment = div_nonneg(i0, layout.inner);
      int64_t c = segment - div_nonneg(segment, layout.channels) * layout.channels;
      int64_t next = (segment + 1) * layout.inner;  // first index of the next segment
      p = channel_params(qp, c, args.range);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if (i0 + j == next) {
          next += layout.inner;
          c = c + 1 == layout.channels ? 0 : c + 1;
          p = channel_params(qp, c, args.range);
        }
        vo[j] = apply<kOp>(va[j], vb[j], p, args, unused_s, unused_z);
      }
    } else {
      if constexpr (kMode == kPerUnit) p = channel_params(qp, channel_of(i0, layout), args.range);
#pragma unroll
      for (int j = 0; j < V; ++j) vo[j] = apply<kOp>(va[j], vb[j], p, args, unused_s, unused_z);
    }
    store_unit<T, kAligned>(out + i0, vo);
  }

  // Scalar leftovers: the head before the first aligned unit and the tail after the last unit.
  const int64_t body_end = head + nunits * V;
  const int64_t rest = head + (n - body_end);
  if (tid < rest) {
    const int64_t i = tid < head ? tid : body_end + (tid - head);
    if constexpr (kMode == kPerUnit || kMode == kPerElement)
      p = channel_params(qp, channel_of(i, layout), args.range);
    const float g = kTwoInputs ? T::load(b[i]) : 0.0f;
    out[i] = T::store(apply<kOp>(T::load(a[i]), g, p, args, unused_s, unused_z));
  }
}

template <auto Kernel, class... Args>
void launch_1d(int64_t blocks_needed, cudaStream_t stream, const char* name, Args... args) {
  int64_t grid = std::max<int64_t>(1, std::min(blocks_needed, resident_blocks<Kernel>()));
  Kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(args...);
  check_launch(name);
}

template <class T, int kOp, int kMode, bool kAligned>
void launch_elementwise_as(const void* a, const void* b, void* out, int64_t n, int64_t head,
                           int64_t nunits, ChannelLayout layout, QParams qp, OpArgs args,
                           cudaStream_t stream) {
  using S = typename T::Storage;
  int64_t rest = head + (n - head - nunits * T::kVec);
  launch_1d<&elementwise_kernel<T, kOp, kMode, kAligned>>(
      ceil_div(std::max(nunits, rest), kThreads), stream, "elementwise_kernel",
      static_cast<const S*>(a), static_cast<const S*>(b), static_cast<S*>(out), n, head, nunits,
      layout, qp, args);
}

template <class T, int kOp, int kMode>
void launch_elementwise_mode(bool aligned, const void* a, const void* b, void* out, int64_t n,
                             int64_t head, int64_t nunits, ChannelLayout layout, QParams qp,
                             OpArgs args, cudaStream_t stream) {
  if (aligned)
    launch_elementwise_as<T, kOp, kMode, true>(a, b, out, n, head, nunits, layout, qp, args,
                                               stream);
  else
    launch_elementwise_as<T, kOp, kMode, false>(a, b, out, n, head, nunits, layout, qp, args,
                                                stream);
}

template <class T, int kOp>
void launch_elementwise(const void* a, const void* b, void* out, int64_t n, ChannelLayout layout,
                        QParams qp, OpArgs args, cudaStream_t stream) {
  constexpr int V = T::kVec;
  int64_t head = 0;
  bool aligned = co_aligned({a, b, out}, sizeof(typename T::Storage), n, &head);
  if (!aligned) head = 0;  // unaligned units start at element 0
  int64_t nunits = (n - head) / V;
  if constexpr (kOp == kCast) {
    launch_elementwise_mode<T, kOp, kNoParams>(aligned, a, b, out, n, head, nunits, layout, qp,
                                               args, stream);
  } else if (layout.channels == 1) {
    launch_elementwise_mode<T, kOp, kOneChannel>(aligned, a, b, out, n, head, nunits, layout, qp,
                                                 args, stream);
  } else if (head == 0 && layout.inner % V == 0) {
    launch_elementwise_mode<T, kOp, kPerUnit>(aligned, a, b, out, n, head, nunits, layout, qp,
                                              args, stream);
  } else {
    launch_elementwise_mode<T, kOp, kPerElement>(aligned, a, b, out, n, head, nunits, layout, qp,
                                                 args, stream);
  }
}

// ---------------------------------------------------------------------------------------------
// Column kernel: inner == 1, channels > 1 (forward, straight-through and LSQ backward)
// ---------------------------------------------------------------------------------------------

// Block (bx, by): tx picks a column unit (kVec columns when aligned, else one column), ty a row.
// A warp covers consecutive column units and then the next rows, which are contiguous, so
// accesses coalesce even for a handful of channels. Each thread keeps the parameters of its
// columns in registers across all its rows; with LSQ it sums its rows in double, the block sums
// over ty in shared memory, and one atomic per column and block goes out.
template <class T, int kOp, bool kAligned>
__global__ void __launch_bounds__(kThreads)
    columns_kernel(const typename T::Storage* x, const typename T::Storage* dy,
                   typename T::Storage* out, int64_t n, int64_t channels, int64_t ncolunits,
                   int64_t rows, QParams qp, OpArgs args, double* acc_scale, double* acc_zp) {
  constexpr int V = kAligned ? T::kVec : 1;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int bx = blockDim.x, by = blockDim.y;
  const int64_t ncolblocks = ceil_div(ncolunits, bx);
  const int64_t row_stride = static_cast<int64_t>(gridDim.y) * by;

  for (int64_t cb = blockIdx.x; cb < ncolblocks; cb += gridDim.x) {  // uniform per block
    const int64_t cu = cb * bx + tx;
    const bool active = cu < ncolunits;
    const int64_t c0 = cu * V;
    ChanParams p[V];
    double ss[V], sz[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      ss[v] = 0.0;
      sz[v] = 0.0;
      if (active) p[v] = channel_params(qp, c0 + v, args.range);
    }
    if (active) {
      for (int64_t row = static_cast<int64_t>(blockIdx.y) * by + ty; row < rows;
           row += row_stride) {
        const int64_t i0 = row * channels + c0;
        if constexpr (kAligned) {
          if (i0 + V <= n) {  // aligned: channels % kVec == 0 and 16-byte base pointers
            float vx[T::kVec], vg[T::kVec] = {}, vo[T::kVec];
            load_unit<T, true>(x + i0, vx);
            if constexpr (kOp != kForward) load_unit<T, true>(dy + i0, vg);
#pragma unroll
            for (int v = 0; v < V; ++v) vo[v] = apply<kOp>(vx[v], vg[v], p[v], args, ss[v], sz[v]);
            store_unit<T, true>(out + i0, vo);
            continue;
          }
        }
        // Unaligned columns, or a partial last row when n is not a multiple of channels.
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if (i0 + v < n) {
            const float g = kOp != kForward ? T::load(dy[i0 + v]) : 0.0f;
            out[i0 + v] = T::store(apply<kOp>(T::load(x[i0 + v]), g, p[v], args, ss[v], sz[v]));
          }
        }
      }
    }
    if constexpr (kOp == kLsq) {
      __shared__ double red_s[kThreads], red_z[kThreads];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        red_s[ty * bx + tx] = ss[v];
        red_z[ty * bx + tx] = sz[v];
        __syncthreads();
        if (ty == 0 && active) {
          double ts = 0.0, tz = 0.0;
          for (int k = 0; k < by; ++k) {
            ts += red_s[k * bx + tx];
            tz += red_z[k * bx + tx];
          }
          // Adding zero changes nothing (the accumulators start at +0.0): skip the atomic.
          if (ts != 0.0) atomicAdd(acc_scale + c0 + v, ts);
          if (tz != 0.0) atomicAdd(acc_zp + c0 + v, tz);
        }
        __syncthreads();  // red_* is rewritten for the next column
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// LSQ backward, long segments: inner >= 1024 or one channel
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sums a and b over the block; thread 0 gets the totals. Ends with a barrier so the scratch
// arrays can be reused right away.
__device__ __forceinline__ void block_sum2(double& a, double& b, double* scratch_a,
                                           double* scratch_b) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    scratch_a[warp] = a;
    scratch_b[warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x / kWarp;
    a = lane < nwarps ? scratch_a[lane] : 0.0;
    b = lane < nwarps ? scratch_b[lane] : 0.0;
    a = warp_sum(a);
    b = warp_sum(b);
  }
  __syncthreads();
}

// Work items are pieces of at most `piece` elements of one segment [seg * inner, (seg+1) * inner):
// a block takes an item, sums it and issues one atomic pair for the segment's channel. Within a
// piece, units are placed on the 16-byte grid of the pointers (kAligned: they share `head`).
template <class T, bool kAligned>
__global__ void __launch_bounds__(kThreads)
    lsq_long_kernel(const typename T::Storage* x, const typename T::Storage* dy,
                    typename T::Storage* dx, int64_t n, int64_t head, ChannelLayout layout,
                    int64_t piece, int64_t pieces_per_segment, int64_t nitems, QParams qp,
                    OpArgs args, double* acc_scale, double* acc_zp) {
  constexpr int V = T::kVec;
  __shared__ double scratch_s[kThreads / kWarp], scratch_z[kThreads / kWarp];

  for (int64_t item = blockIdx.x; item < nitems; item += gridDim.x) {  // uniform per block
    const int64_t segment = item / pieces_per_segment;
    const int64_t p0 = segment * layout.inner + (item - segment * pieces_per_segment) * piece;
    // A partial last segment (n % inner != 0) has fewer pieces than the others.
    if (p0 >= n) continue;  // uniform per block, like the loop
    const int64_t p1 = min64(min64(p0 + piece, (segment + 1) * layout.inner), n);
    const int64_t c = segment % layout.channels;
    const ChanParams p = channel_params(qp, c, args.range);

    // Units [v0, v1): v0 is the first unit boundary at or after p0 (p0 itself when unaligned).
    const int64_t origin = kAligned ? head : p0;
    int64_t v0 = p0 <= origin ? origin : origin + (p0 - origin + V - 1) / V * V;
    v0 = min64(v0, p1);
    const int64_t nunits = (p1 - v0) / V;
    const int64_t v1 = v0 + nunits * V;

    double ss = 0.0, sz = 0.0;
    for (int64_t u = threadIdx.x; u < nunits; u += blockDim.x) {
      const int64_t i = v0 + u * V;
      backward_unit<T, kAligned, kLsq>(x + i, dy + i, dx + i, p, args, ss, sz);
    }
    // Fewer than kVec elements before v0 and fewer than kVec after v1.
    const int64_t nhead = v0 - p0;
    if (threadIdx.x < nhead + (p1 - v1)) {
      const int64_t i = threadIdx.x < nhead ? p0 + threadIdx.x : v1 + (threadIdx.x - nhead);
      dx[i] = T::store(apply<kLsq>(T::load(x[i]), T::load(dy[i]), p, args, ss, sz));
    }

    block_sum2(ss, sz, scratch_s, scratch_z);
    if (threadIdx.x == 0) {
      if (ss != 0.0) atomicAdd(acc_scale + c, ss);
      if (sz != 0.0) atomicAdd(acc_zp + c, sz);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// LSQ backward, short segments: 1 < inner < 1024 (per group, per channel on inner dims)
// ---------------------------------------------------------------------------------------------

// A group of `group` lanes (a power of two <= 32, sized to the segment) owns whole segments:
// lanes stride over the segment's units, a butterfly inside the group sums, and the group's
// first lane issues one atomic pair per segment. A warp handles 32 / group consecutive segments,
// which are contiguous in memory. The loop is warp-uniform so every lane reaches the shuffles.
// kAligned: all pointers 16-byte aligned and inner % kVec == 0, so every segment starts a unit.
template <class T, bool kAligned>
__global__ void __launch_bounds__(kThreads)
    lsq_short_kernel(const typename T::Storage* x, const typename T::Storage* dy,
                     typename T::Storage* dx, int64_t n, ChannelLayout layout, int64_t nsegments,
                     int group, QParams qp, OpArgs args, double* acc_scale, double* acc_zp) {
  constexpr int V = T::kVec;
  const int lane = threadIdx.x % kWarp;
  const int in_group = lane & (group - 1);
  const int groups_per_warp = kWarp / group;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t nwarps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;

  for (int64_t base = warp * groups_per_warp; base < nsegments;
       base += nwarps * groups_per_warp) {
    const int64_t segment = base + lane / group;
    const bool active = segment < nsegments;
    int64_t c = 0;
    double ss = 0.0, sz = 0.0;
    if (active) {
      const int64_t s0 = segment * layout.inner;
      const int64_t len = min64(layout.inner, n - s0);
      c = segment % layout.channels;
      const ChanParams p = channel_params(qp, c, args.range);
      int64_t nunits = 0;
      if constexpr (kAligned) {
        nunits = len / V;
        for (int64_t u = in_group; u < nunits; u += group) {
          const int64_t i = s0 + u * V;
          backward_unit<T, true, kLsq>(x + i, dy + i, dx + i, p, args, ss, sz);
        }
      }
      // Element by element: everything when unaligned, else a short last segment's tail.
      for (int64_t k = nunits * V + in_group; k < len; k += group) {
        const int64_t i = s0 + k;
        dx[i] = T::store(apply<kLsq>(T::load(x[i]), T::load(dy[i]), p, args, ss, sz));
      }
    }
    // Butterfly over the group: xor offsets below `group` stay inside the group.
    for (int offset = group / 2; offset > 0; offset >>= 1) {
      ss += __shfl_xor_sync(0xffffffffu, ss, offset);
      sz += __shfl_xor_sync(0xffffffffu, sz, offset);
    }
    if (active && in_group == 0) {
      if (ss != 0.0) atomicAdd(acc_scale + c, ss);
      if (sz != 0.0) atomicAdd(acc_zp + c, sz);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host dispatch
// ---------------------------------------------------------------------------------------------

// Only (i / inner) % channels matters: when every element lands in channel 0 say so, which
// lets the kernels treat the tensor as a single run.
ChannelLayout normalize(ChannelLayout layout, int64_t n) {
  if (layout.inner < 1 || layout.channels < 1)
    throw std::invalid_argument("qat fake_quant CUDA: layout.inner and layout.channels must be >= 1");
  if (layout.channels == 1 || layout.inner >= n) return ChannelLayout{n, 1};
  return layout;
}

template <class T, int kOp, bool kAligned>
void launch_columns_as(const void* x, const void* dy, void* out, int64_t n,
                       ChannelLayout layout, QParams qp, OpArgs args, double* acc_scale,
                       double* acc_zp, cudaStream_t stream) {
  using S = typename T::Storage;
  constexpr int V = kAligned ? T::kVec : 1;
  // Each thread should walk enough rows that its LSQ atomics stay a small fraction of the work.
  constexpr int64_t kMinRowsPerThread = 16;
  const int64_t channels = layout.channels;
  const int64_t ncolunits = channels / V;  // channels % V == 0 when aligned
  const int64_t rows = ceil_div(n, channels);
  const int bx = static_cast<int>(std::min<int64_t>(ncolunits, kThreads));
  const int by = kThreads / bx;
  const int64_t ncolblocks = ceil_div(ncolunits, bx);

  constexpr auto kernel = &columns_kernel<T, kOp, kAligned>;
  const int64_t target = resident_blocks<kernel>();
  const int64_t gx = std::min(ncolblocks, target);
  int64_t gy = std::max<int64_t>(1, target / gx);
  gy = std::min(gy, ceil_div(rows, by));
  if (kOp == kLsq) gy = std::min(gy, std::max<int64_t>(1, ceil_div(rows, by * kMinRowsPerThread)));
  gy = std::max<int64_t>(1, std::min<int64_t>(gy, 65535));

  kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy)), dim3(bx, by), 0, stream>>>(
      static_cast<const S*>(x), static_cast<const S*>(dy), static_cast<S*>(out), n, channels,
      ncolunits, rows, qp, args, acc_scale, acc_zp);
  check_launch("columns_kernel");
}

template <class T, int kOp>
void launch_columns(const void* x, const void* dy, void* out, int64_t n, ChannelLayout layout,
                    QParams qp, OpArgs args, double* acc_scale, double* acc_zp,
                    cudaStream_t stream) {
  if (layout.channels % T::kVec == 0 && all_aligned16({x, dy, out}))
    launch_columns_as<T, kOp, true>(x, dy, out, n, layout, qp, args, acc_scale, acc_zp, stream);
  else
    launch_columns_as<T, kOp, false>(x, dy, out, n, layout, qp, args, acc_scale, acc_zp, stream);
}

template <class T, bool kAligned>
void launch_lsq_long_as(const void* x, const void* dy, void* dx, int64_t n, int64_t head,
                        ChannelLayout layout, QParams qp, OpArgs args, double* acc_scale,
                        double* acc_zp, cudaStream_t stream) {
  using S = typename T::Storage;
  constexpr auto kernel = &lsq_long_kernel<T, kAligned>;
  const int64_t target = resident_blocks<kernel>();
  // Pieces: enough to give every resident block one, at least a few units per thread each,
  // and a multiple of 16 elements so pieces of one segment keep the same alignment.
  const int64_t min_piece = int64_t{4} * kThreads * T::kVec;
  const int64_t piece = ceil_div(std::max(min_piece, ceil_div(n, target)), 16) * 16;
  const int64_t nsegments = ceil_div(n, layout.inner);
  const int64_t pieces_per_segment = ceil_div(layout.inner, piece);
  const int64_t nitems = nsegments * pieces_per_segment;
  launch_1d<kernel>(nitems, stream, "lsq_long_kernel", static_cast<const S*>(x),
                    static_cast<const S*>(dy), static_cast<S*>(dx), n, head, layout, piece,
                    pieces_per_segment, nitems, qp, args, acc_scale, acc_zp);
}

template <class T, bool kAligned>
void launch_lsq_short_as(const void* x, const void* dy, void* dx, int64_t n,
                         ChannelLayout layout, QParams qp, OpArgs args, double* acc_scale,
                         double* acc_zp, cudaStream_t stream) {
  using S = typename T::Storage;
  const int64_t units = kAligned ? layout.inner / T::kVec : layout.inner;
  int group = 1;
  while (group < kWarp && group < units) group *= 2;
  const int64_t nsegments = ceil_div(n, layout.inner);
  const int64_t warps = ceil_div(nsegments, kWarp / group);
  launch_1d<&lsq_short_kernel<T, kAligned>>(
      ceil_div(warps, kThreads / kWarp), stream, "lsq_short_kernel", static_cast<const S*>(x),
      static_cast<const S*>(dy), static_cast<S*>(dx), n, layout, nsegments, group, qp, args,
      acc_scale, acc_zp);
}

template <class T>
void forward_impl(const void* x, void* y, int64_t n, ChannelLayout layout, QParams qp,
                  OpArgs args, cudaStream_t stream) {
  if (layout.inner == 1 && layout.channels > 1)
    launch_columns<T, kForward>(x, nullptr, y, n, layout, qp, args, nullptr, nullptr, stream);
  else
    launch_elementwise<T, kForward>(x, nullptr, y, n, layout, qp, args, stream);
}

template <class T>
void backward_impl(const void* x, const void* dy, void* dx, int64_t n, ChannelLayout layout,
                   QParams qp, OpArgs args, double* acc_scale, double* acc_zp,
                   cudaStream_t stream) {
  const bool columns = layout.inner == 1 && layout.channels > 1;
  if (acc_scale == nullptr) {
    if (columns)
      launch_columns<T, kSte>(x, dy, dx, n, layout, qp, args, nullptr, nullptr, stream);
    else
      launch_elementwise<T, kSte>(x, dy, dx, n, layout, qp, args, stream);
    return;
  }
  if (columns) {
    launch_columns<T, kLsq>(x, dy, dx, n, layout, qp, args, acc_scale, acc_zp, stream);
  } else if (layout.inner >= 1024 || layout.channels == 1) {
    int64_t head = 0;
    if (co_aligned({x, dy, dx}, sizeof(typename T::Storage), n, &head))
      launch_lsq_long_as<T, true>(x, dy, dx, n, head, layout, qp, args, acc_scale, acc_zp,
                                  stream);
    else
      launch_lsq_long_as<T, false>(x, dy, dx, n, 0, layout, qp, args, acc_scale, acc_zp, stream);
  } else {
    if (layout.inner % T::kVec == 0 && all_aligned16({x, dy, dx}))
      launch_lsq_short_as<T, true>(x, dy, dx, n, layout, qp, args, acc_scale, acc_zp, stream);
    else
      launch_lsq_short_as<T, false>(x, dy, dx, n, layout, qp, args, acc_scale, acc_zp, stream);
  }
}

template <class T>
void cast_impl(const void* x, void* y, int64_t n, OpArgs args, cudaStream_t stream) {
  launch_elementwise<T, kCast>(x, nullptr, y, n, ChannelLayout{n, 1}, QParams{nullptr, nullptr},
                               args, stream);
}

}  // namespace

void fake_quant_forward(DType dtype, const void* x, void* y, int64_t n, ChannelLayout layout,
                        QParams qp, QuantRange range, void* stream) {
  if (n <= 0) return;
  layout = normalize(layout, n);  // throws on a layout the kernels cannot index
  const OpArgs args{range, 0.0f, cast_format(CastFormat::fp16)};
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return forward_impl<F32>(x, y, n, layout, qp, args, s);
    case DType::f16: return forward_impl<F16>(x, y, n, layout, qp, args, s);
    case DType::bf16: return forward_impl<BF16>(x, y, n, layout, qp, args, s);
  }
  throw std::invalid_argument("qat fake_quant CUDA: unknown dtype");
}

void fake_quant_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t n,
                         ChannelLayout layout, QParams qp, QuantRange range, float grad_factor,
                         double* acc_scale, double* acc_zero_point, void* stream) {
  if (n <= 0) return;
  layout = normalize(layout, n);
  const OpArgs args{range, grad_factor, cast_format(CastFormat::fp16)};
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32:
      return backward_impl<F32>(x, dy, dx, n, layout, qp, args, acc_scale, acc_zero_point, s);
    case DType::f16:
      return backward_impl<F16>(x, dy, dx, n, layout, qp, args, acc_scale, acc_zero_point, s);
    case DType::bf16:
      return backward_impl<BF16>(x, dy, dx, n, layout, qp, args, acc_scale, acc_zero_point, s);
  }
  throw std::invalid_argument("qat fake_quant CUDA: unknown dtype");
}

void fake_cast(DType dtype, const void* x, void* y, int64_t n, CastFormat fmt, void* stream) {
  if (n <= 0) return;
  const OpArgs args{QuantRange{0.0f, 0.0f}, 0.0f, cast_format(fmt)};
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return cast_impl<F32>(x, y, n, args, s);
    case DType::f16: return cast_impl<F16>(x, y, n, args, s);
    case DType::bf16: return cast_impl<BF16>(x, y, n, args, s);
  }
  throw std::invalid_argument("qat fake_quant CUDA: unknown dtype");
}

}  // namespace qat::kernels::cuda
