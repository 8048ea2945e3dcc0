// CUDA observer kernels on raw device pointers (declarations and contracts: ../observe.h). The CPU
// kernels (csrc/kernels/cpu/observe.cpp) are the reference; both evaluate observe_math.h and
// quant_math.h in fp32 / fp64 without contraction (--fmad=false), so:
//  - choose_qparams, update_running_minmax, histogram counts and range, and the fused kernel's
//    scale / zero_point / y are bit-identical to the CPU path;
//  - min / max are identical as values; only the sign of a zero may differ: the CPU keeps the
//    first of -0.0 / +0.0 it meets, here the result does not depend on order: min prefers -0.0
//    and max prefers +0.0 (keys below order -0.0 before +0.0). Every later formula treats both
//    zeros alike, except a moving average that starts from that value (its zero keeps the sign);
//  - mse_errors sums the same float terms in another order: partial sums of at most 64 terms in
//    float (as the CPU's 16 lanes of 64), then double; relative difference below 1e-5. Its
//    double atomics land in any order, so it is the one result not reproducible bit for bit
//    from run to run (everything else, integer counts included, is).
// Non-finite elements are skipped everywhere (mse_errors counts them as 0, which every candidate
// reproduces exactly, as the CPU does). Nothing synchronizes with the host; every launch goes on
// `stream`; enable flags are read on the device, so disabled updates cost a few empty launches.
//
// Kernel families:
//  - minmax_chunk (device function): per-channel finite min / max of a chunk of contiguous
//    elements, 16-byte vector loads. Each thread folds a run of elements sharing a slot in
//    registers, as order-preserving 32-bit keys, and flushes a run to shared-memory slots with
//    32-bit atomicMin / atomicMax when the slot changes; warps whose lanes all hold the same slot
//    reduce with __reduce_{min,max}_sync first. After the chunk one atomic pair per touched slot
//    goes to global memory (the Sink). Slots are channels when there are at most kSlots
//    channels, else the segments (runs of `inner` elements) the chunk spans: the host caps the
//    chunk so that at most kSlots segments fit. Shared atomics are cheap next to the memory
//    traffic even for inner == 1 (two per element at worst), so one code path serves per
//    tensor, per channel and per group layouts.
//  - minmax_kernel: grid-stride over chunks; FloatSink folds into the caller's float arrays with
//    the signed / unsigned integer atomic trick, KeySink into zeroed key arrays (atomicMax only).
//  - histogram: batch min / max (minmax_kernel, KeySink) -> histogram_plan_kernel (one thread:
//    grids, union range, written to scratch and range) -> copy + rebin kernels (exact integer
//    merge with coarser_index, only when the grid changed) -> histogram_add_kernel (privatized
//    32-bit shared counts when bins <= kSharedBins, else 64-bit global atomics).
//  - mse_staged_kernel: a warp stages up to kStage elements of one segment, or several whole
//    short segments, in shared memory; lanes own candidates (and parts of the segment when
//    there are fewer than 32 candidates) and read the staged values as broadcasts; one double
//    atomicAdd per (staged segment, candidate, part). x is read once.
//  - mse_columns_kernel: inner == 1 with several channels; a lane owns a column and kTile
//    candidates in registers and walks rows; warps of a block share the column loads in L1.
//  - observe_fake_quant_kernel: cooperative; phase 1 minmax_chunk into zeroed key scratch,
//    grid sync, phase 2 one thread per channel (moving average, qparams_fbgemm, effective
//    parameters into scratch), grid sync, phase 3 fake quantization over the same chunks in
//    reverse order, so the elements phase 1 read last are re-read first while still in L2.
#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "../observe.h"
#include "cuda_common.cuh"

namespace qat::kernels::cuda {
namespace {

namespace cg = cooperative_groups;
using namespace detail;

constexpr unsigned kFull = 0xffffffffu;

constexpr int kSlots = 2048;        // shared min / max slots of a chunk (16 KiB)
constexpr int kSharedBins = 4096;   // histograms up to this many bins count in shared memory
constexpr int kStage = 1024;        // elements a warp stages for mse_errors (4 KiB per warp)
constexpr int kFold = 64;           // float terms per partial sum before it is added in double
constexpr int kTile = 8;            // candidates per lane in mse_columns_kernel
constexpr int64_t kMinUnitsPerChunk = 2 * kThreads;

// Only (i / inner) % channels matters: when every element lands in channel 0 say so.
ChannelLayout normalize(ChannelLayout layout, int64_t n) {
  if (layout.inner < 1 || layout.channels < 1)
    throw std::invalid_argument("qat observe CUDA: layout.inner and layout.channels must be >= 1");
  if (layout.channels == 1 || layout.inner >= n) return ChannelLayout{n, 1};
  return layout;
}

// Bit copy (y = x when fake quantization is off) of units u = last, last - step, ... >= begin;
// aligned units go four 16-byte loads at a time before any is stored.
template <class T, bool kAligned>
__device__ __forceinline__ void copy_units_backward(const typename T::Storage* x,
                                                    typename T::Storage* y, int64_t head,
                                                    int64_t last, int64_t begin, int64_t step) {
  using S = typename T::Storage;
  constexpr int V = T::kVec, K = 4;
  int64_t u = last;
  if constexpr (kAligned) {
    for (; u - (K - 1) * step >= begin; u -= K * step) {
      uint4 r[K];
#pragma unroll
      for (int k = 0; k < K; ++k)
        r[k] = *reinterpret_cast<const uint4*>(x + head + (u - k * step) * V);
#pragma unroll
      for (int k = 0; k < K; ++k) *reinterpret_cast<uint4*>(y + head + (u - k * step) * V) = r[k];
    }
  }
  for (; u >= begin; u -= step) {
    const S* src = x + head + u * V;
    S* dst = y + head + u * V;
    if constexpr (kAligned) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
      S r[V];
#pragma unroll
      for (int j = 0; j < V; ++j) r[j] = src[j];
#pragma unroll
      for (int j = 0; j < V; ++j) dst[j] = r[j];
    }
  }
}

// Units per batch: a thread issues kBatch 16-byte loads before using any of them, so enough
// bytes are in flight per SM to saturate HBM even at modest occupancy.
template <class T>
constexpr int kBatch = 16 / T::kVec;

// fn(u, v) for units u = first, first + step, ... < end (v: the unit's elements in fp32).
template <class T, bool kAligned, class Fn>
__device__ __forceinline__ void units_forward(const typename T::Storage* x, int64_t head,
                                              int64_t first, int64_t end, int64_t step, Fn&& fn) {
  constexpr int V = T::kVec, K = kBatch<T>;
  int64_t u = first;
  for (; u + (K - 1) * step < end; u += K * step) {
    float v[K][V];
#pragma unroll
    for (int k = 0; k < K; ++k) load_unit<T, kAligned>(x + head + (u + k * step) * V, v[k]);
#pragma unroll
    for (int k = 0; k < K; ++k) fn(u + k * step, v[k]);
  }
  for (; u < end; u += step) {
    float v[V];
    load_unit<T, kAligned>(x + head + u * V, v);
    fn(u, v);
  }
}

// fn(u, v) for units u = last, last - step, ... >= begin. fn may store to unit u of an output
// that aliases x: a batch's units are loaded before any is stored, and they are this thread's.
template <class T, bool kAligned, class Fn>
__device__ __forceinline__ void units_backward(const typename T::Storage* x, int64_t head,
                                               int64_t last, int64_t begin, int64_t step,
                                               Fn&& fn) {
  constexpr int V = T::kVec, K = kBatch<T>;
  int64_t u = last;
  for (; u - (K - 1) * step >= begin; u -= K * step) {
    float v[K][V];
#pragma unroll
    for (int k = 0; k < K; ++k) load_unit<T, kAligned>(x + head + (u - k * step) * V, v[k]);
#pragma unroll
    for (int k = 0; k < K; ++k) fn(u - k * step, v[k]);
  }
  for (; u >= begin; u -= step) {
    float v[V];
    load_unit<T, kAligned>(x + head + u * V, v);
    fn(u, v);
  }
}

// a / b for 0 <= a, 0 < b: 32-bit division when both fit.
__device__ __forceinline__ int64_t div_nonneg(int64_t a, int64_t b) {
  if (((static_cast<uint64_t>(a) | static_cast<uint64_t>(b)) >> 32) == 0)
    return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

// ---------------------------------------------------------------------------------------------
// Order-preserving keys and float atomics
// ---------------------------------------------------------------------------------------------

// key(a) < key(b) iff a < b for non-NaN floats, with -0.0 < +0.0: a total order, so a min / max
// over keys does not depend on the order of the elements.
constexpr uint32_t kEmptyMin = 0xffffffffu;  // above every finite key: identity of min
constexpr uint32_t kEmptyMax = 0u;           // below every finite key: identity of max

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_float(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ uint32_t umin32(uint32_t a, uint32_t b) { return a < b ? a : b; }
__device__ __forceinline__ uint32_t umax32(uint32_t a, uint32_t b) { return a > b ? a : b; }

// *addr = min(*addr, v) in the keys' total order, for a non-NaN *addr: non-negative floats
// order like their bits as signed integers, negative ones in reverse as unsigned integers.
__device__ __forceinline__ void atomic_min_float(float* addr, float v) {
  if (__float_as_uint(v) & 0x80000000u)
    atomicMax(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
  else
    atomicMin(reinterpret_cast<int*>(addr), __float_as_int(v));
}

__device__ __forceinline__ void atomic_max_float(float* addr, float v) {
  if (__float_as_uint(v) & 0x80000000u)
    atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
  else
    atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
}

// Folds a chunk's result for channel c into the caller's float min / max arrays.
struct FloatSink {
  float* min;
  float* max;
  __device__ __forceinline__ void operator()(int64_t c, uint32_t kmin, uint32_t kmax) const {
    atomic_min_float(min + c, key_float(kmin));
    atomic_max_float(max + c, key_float(kmax));
  }
};

// Folds into zero-initialized keys: [~min key of each channel..., max key of each channel...].
// The min key is stored complemented so that both halves start at 0 (empty) and use atomicMax.
struct KeySink {
  uint32_t* keys;
  int64_t channels;
  __device__ __forceinline__ void operator()(int64_t c, uint32_t kmin, uint32_t kmax) const {
    atomicMax(keys + c, ~kmin);
    atomicMax(keys + channels + c, kmax);
  }
};

// Batch min / max of channel c from KeySink keys (written in this kernel or an earlier one):
// +inf / -inf for a channel without finite elements. __ldcg: read at L2, never a stale L1 line.
__device__ __forceinline__ float key_sink_min(const uint32_t* keys, int64_t c) {
  const uint32_t w = __ldcg(keys + c);
  return w == 0 ? INFINITY : key_float(~w);
}
__device__ __forceinline__ float key_sink_max(const uint32_t* keys, int64_t channels, int64_t c) {
  const uint32_t w = __ldcg(keys + channels + c);
  return w == 0 ? -INFINITY : key_float(w);
}

__device__ __forceinline__ uint32_t warp_min_u32(uint32_t v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_min_sync(kFull, v);
#else
  for (int o = kWarp / 2; o > 0; o >>= 1) v = umin32(v, __shfl_xor_sync(kFull, v, o));
  return v;
#endif
}

__device__ __forceinline__ uint32_t warp_max_u32(uint32_t v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  return __reduce_max_sync(kFull, v);
#else
  for (int o = kWarp / 2; o > 0; o >>= 1) v = umax32(v, __shfl_xor_sync(kFull, v, o));
  return v;
#endif
}

// ---------------------------------------------------------------------------------------------
// Chunked per-channel min / max (shared by minmax, histogram_update and observe_fake_quant)
// ---------------------------------------------------------------------------------------------

enum SlotMode : int {
  kOneSlot = 0,    // one channel (per tensor, or inner >= n)
  kByChannel = 1,  // slot = channel, channels <= kSlots
  kBySegment = 2,  // slot = segment - first segment of the chunk (chunks capped to kSlots segments)
};

// Elements [head, head + nunits * kVec) form units (16-byte aligned when kAligned); units are cut
// into chunks of units_per_chunk. Chunk 0 also owns the head elements [0, head), the last chunk
// the tail [head + nunits * kVec, n): fewer than kVec each.
struct ChunkPlan {
  int64_t n;
  int64_t head;
  int64_t nunits;
  int64_t units_per_chunk;
  int64_t nchunks;   // >= 1
  int64_t inner;     // normalized layout
  int64_t channels;
};

struct ChunkSpan {
  int64_t u0, u1;      // units [u0, u1)
  int64_t e0, e1;      // elements [e0, e1), scalars included
  int64_t nhead;       // scalar elements [0, nhead)
  int64_t body_end;    // scalar elements [body_end, body_end + ntail)
  int64_t ntail;
};

__device__ __forceinline__ ChunkSpan chunk_span(const ChunkPlan& p, int64_t k, int vec) {
  ChunkSpan s;
  s.u0 = k * p.units_per_chunk;
  s.u1 = min64(p.nunits, s.u0 + p.units_per_chunk);
  const bool first = k == 0, last = k == p.nchunks - 1;
  s.body_end = p.head + p.nunits * vec;
  s.e0 = first ? 0 : p.head + s.u0 * vec;
  s.e1 = last ? p.n : p.head + s.u1 * vec;
  s.nhead = first ? p.head : 0;
  s.ntail = last ? p.n - s.body_end : 0;
  return s;
}

// A thread's current run: consecutive finite elements of one slot, as keys. Empty while kmin is
// kEmptyMin (then kmax is kEmptyMax).
struct Run {
  int slot;
  uint32_t kmin, kmax;
};

__device__ __forceinline__ void run_flush(const Run& r, uint32_t* s_min, uint32_t* s_max) {
  if (r.kmin != kEmptyMin) {
    atomicMin(s_min + r.slot, r.kmin);
    atomicMax(s_max + r.slot, r.kmax);
  }
}

__device__ __forceinline__ void run_add(Run& r, int slot, float v, uint32_t* s_min,
                                        uint32_t* s_max) {
  if (!is_finite(v)) return;
  const uint32_t key = order_key(v);
  if (slot != r.slot) {
    run_flush(r, s_min, s_max);
    r.slot = slot;
    r.kmin = key;
    r.kmax = key;
  } else {
    r.kmin = umin32(r.kmin, key);
    r.kmax = umax32(r.kmax, key);
  }
}

// Flushes every lane's run into the shared slots. All 32 lanes must call it (converged). When
// all non-empty runs of the warp share one slot (per tensor, long segments) the warp reduces
// first and one lane issues the atomics.
__device__ __forceinline__ void warp_flush(const Run& r, uint32_t* s_min, uint32_t* s_max) {
  const bool has = r.kmin != kEmptyMin;
  const unsigned active = __ballot_sync(kFull, has);
  if (active == 0) return;  // warp-uniform
  const int leader = __ffs(active) - 1;
  const int slot = __shfl_sync(kFull, r.slot, leader);
  if (__all_sync(kFull, !has || r.slot == slot)) {
    const uint32_t mn = warp_min_u32(r.kmin);  // empty lanes hold the identities
    const uint32_t mx = warp_max_u32(r.kmax);
    if (static_cast<int>(threadIdx.x % kWarp) == leader) {
      atomicMin(s_min + slot, mn);
      atomicMax(s_max + slot, mx);
    }
  } else {
    run_flush(r, s_min, s_max);
  }
}

// Finite min / max of chunk k, per slot, handed to sink(channel, min key, max key) once per
// non-empty slot. Block-uniform: every thread of the block must call it (it synchronizes).
// s_min / s_max: kSlots entries (1 for kOneSlot).
template <class T, int kMode, bool kAligned, class Sink>
__device__ __forceinline__ void minmax_chunk(const typename T::Storage* x, const ChunkPlan& p,
                                             int64_t k, uint32_t* s_min, uint32_t* s_max,
                                             const Sink& sink) {
  constexpr int V = T::kVec;
  const ChunkSpan sp = chunk_span(p, k, V);
  int64_t s0 = 0;  // first segment of the chunk (kBySegment)
  int used = 1;    // slots in use
  if constexpr (kMode == kByChannel) used = static_cast<int>(p.channels);
  if constexpr (kMode == kBySegment) {
    s0 = sp.e0 / p.inner;
    used = static_cast<int>((sp.e1 - 1) / p.inner - s0 + 1);  // <= kSlots (host caps the chunk)
  }
  for (int s = threadIdx.x; s < used; s += blockDim.x) {
    s_min[s] = kEmptyMin;
    s_max[s] = kEmptyMax;
  }
  __syncthreads();

  Run run{kMode == kOneSlot ? 0 : -1, kEmptyMin, kEmptyMax};
  units_forward<T, kAligned>(x, p.head, sp.u0 + threadIdx.x, sp.u1, blockDim.x,
                             [&](int64_t u, const float (&v)[V]) {
    const int64_t i0 = p.head + u * V;
    if constexpr (kMode == kOneSlot) {
      // Branch-free: non-finite elements contribute the identities.
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const bool f = is_finite(v[j]);
        const uint32_t key = order_key(v[j]);
        run.kmin = umin32(run.kmin, f ? key : kEmptyMin);
        run.kmax = umax32(run.kmax, f ? key : kEmptyMax);
      }
    } else {
      // One division per unit, then step across segment boundaries (at most one per element).
      int64_t seg = div_nonneg(i0, p.inner);
      int64_t c = 0;
      if constexpr (kMode == kByChannel) c = seg - div_nonneg(seg, p.channels) * p.channels;
      int64_t next = (seg + 1) * p.inner;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if (i0 + j == next) {
          next += p.inner;
          ++seg;
          if constexpr (kMode == kByChannel) c = c + 1 == p.channels ? 0 : c + 1;
        }
        const int slot = kMode == kByChannel ? static_cast<int>(c) : static_cast<int>(seg - s0);
        run_add(run, slot, v[j], s_min, s_max);
      }
    }
  });
  // Scalar head (chunk 0) and tail (last chunk): fewer than 2 * kVec <= blockDim elements.
  if (threadIdx.x < sp.nhead + sp.ntail) {
    const int64_t t = threadIdx.x;
    const int64_t i = t < sp.nhead ? t : sp.body_end + (t - sp.nhead);
    const float v = T::load(x[i]);
    if constexpr (kMode == kOneSlot) {
      const bool f = is_finite(v);
      const uint32_t key = order_key(v);
      run.kmin = umin32(run.kmin, f ? key : kEmptyMin);
      run.kmax = umax32(run.kmax, f ? key : kEmptyMax);
    } else {
      const int64_t seg = i / p.inner;
      const int slot = kMode == kByChannel ? static_cast<int>(seg % p.channels)
                                           : static_cast<int>(seg - s0);
      run_add(run, slot, v, s_min, s_max);
    }
  }
  warp_flush(run, s_min, s_max);
  __syncthreads();
  for (int s = threadIdx.x; s < used; s += blockDim.x) {
    const uint32_t mn = s_min[s];
    if (mn != kEmptyMin) {
      const int64_t c = kMode == kBySegment ? (s0 + s) % p.channels : s;
      sink(c, mn, s_max[s]);
    }
  }
  __syncthreads();  // the slots are re-initialized by the next chunk
}

template <int kMode>
__host__ __device__ constexpr int slot_count() {
  return kMode == kOneSlot ? 1 : kSlots;
}

int slot_mode(ChannelLayout normalized) {
  if (normalized.channels == 1) return kOneSlot;
  return normalized.channels <= kSlots ? kByChannel : kBySegment;
}

// Chunks for `target` blocks: about one chunk per block, at least kMinUnitsPerChunk units, and in
// kBySegment mode few enough elements to span at most kSlots segments. A chunk holds at most
// L = units * vec + 2 * (vec - 1) elements, which span at most ceil((L - 1) / inner) + 1
// segments: so units * vec + 2 * vec - 3 <= (kSlots - 1) * inner suffices.
ChunkPlan make_chunk_plan(int64_t n, int64_t head, int vec, ChannelLayout normalized, int mode,
                          int64_t target) {
  ChunkPlan p{};
  p.n = n;
  p.head = head;
  p.nunits = (n - head) / vec;
  p.inner = normalized.inner;
  p.channels = normalized.channels;
  int64_t upc = std::max(ceil_div(p.nunits, std::max<int64_t>(target, 1)), kMinUnitsPerChunk);
  if (mode == kBySegment) {
    const int64_t cap = ((kSlots - 1) * p.inner - 2 * vec + 3) / vec;
    upc = std::max<int64_t>(1, std::min(upc, cap));
  }
  p.units_per_chunk = upc;
  p.nchunks = std::max<int64_t>(1, ceil_div(p.nunits, upc));
  return p;
}

template <class T, int kMode, bool kAligned, class Sink>
__global__ void __launch_bounds__(kThreads)
    minmax_kernel(const typename T::Storage* x, ChunkPlan p, Sink sink, const int64_t* enabled) {
  __shared__ uint32_t s_min[slot_count<kMode>()], s_max[slot_count<kMode>()];
  if (enabled != nullptr && *enabled == 0) return;  // grid-uniform
  for (int64_t k = blockIdx.x; k < p.nchunks; k += gridDim.x)
    minmax_chunk<T, kMode, kAligned>(x, p, k, s_min, s_max, sink);
}

template <class T, int kMode, bool kAligned, class Sink>
void launch_minmax_as(const void* x, int64_t n, int64_t head, ChannelLayout layout, Sink sink,
                      const int64_t* enabled, cudaStream_t stream) {
  using S = typename T::Storage;
  constexpr auto kernel = &minmax_kernel<T, kMode, kAligned, Sink>;
  const int64_t target = resident_blocks<kernel>();
  const ChunkPlan p = make_chunk_plan(n, head, T::kVec, layout, kMode, target);
  const int64_t grid = std::max<int64_t>(1, std::min(target, p.nchunks));
  kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(static_cast<const S*>(x), p, sink,
                                                              enabled);
  check_launch("minmax_kernel");
}

template <class T, int kMode, class Sink>
void launch_minmax_mode(bool aligned, const void* x, int64_t n, int64_t head,
                        ChannelLayout layout, Sink sink, const int64_t* enabled,
                        cudaStream_t stream) {
  if (aligned)
    launch_minmax_as<T, kMode, true>(x, n, head, layout, sink, enabled, stream);
  else
    launch_minmax_as<T, kMode, false>(x, n, 0, layout, sink, enabled, stream);
}

// Per-channel finite min / max of x[0, n) into `sink`. layout already normalized.
template <class T, class Sink>
void launch_minmax(const void* x, int64_t n, ChannelLayout layout, Sink sink,
                   const int64_t* enabled, cudaStream_t stream) {
  int64_t head = 0;
  const bool aligned = co_aligned({x}, sizeof(typename T::Storage), n, &head);
  switch (slot_mode(layout)) {
    case kOneSlot:
      return launch_minmax_mode<T, kOneSlot>(aligned, x, n, head, layout, sink, enabled, stream);
    case kByChannel:
      return launch_minmax_mode<T, kByChannel>(aligned, x, n, head, layout, sink, enabled, stream);
    default:
      return launch_minmax_mode<T, kBySegment>(aligned, x, n, head, layout, sink, enabled, stream);
  }
}

template <class Sink>
void minmax_dispatch(DType dtype, const void* x, int64_t n, ChannelLayout layout, Sink sink,
                     const int64_t* enabled, cudaStream_t stream) {
  switch (dtype) {
    case DType::f32: return launch_minmax<F32>(x, n, layout, sink, enabled, stream);
    case DType::f16: return launch_minmax<F16>(x, n, layout, sink, enabled, stream);
    case DType::bf16: return launch_minmax<BF16>(x, n, layout, sink, enabled, stream);
  }
  throw std::invalid_argument("qat observe CUDA: unknown dtype");
}

// ---------------------------------------------------------------------------------------------
// choose_qparams, update_running_minmax
// ---------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    choose_qparams_kernel(const float* min, const float* max, int64_t n, int32_t quant_min,
                          int32_t quant_max, bool symmetric, float* scale, float* zero_point) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const AffineQParams q = qparams_minmax(min[i], max[i], quant_min, quant_max, symmetric);
    scale[i] = q.scale;
    zero_point[i] = q.zero_point;
  }
}

__global__ void __launch_bounds__(kThreads)
    update_running_kernel(const float* cur_min, const float* cur_max, float* run_min,
                          float* run_max, int64_t channels, const int64_t* enabled,
                          bool moving_average, float averaging_constant) {
  if (enabled != nullptr && *enabled == 0) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < channels;
       c += stride) {
    kernels::update_running_minmax(run_min + c, run_max + c, cur_min[c], cur_max[c], moving_average,
                          averaging_constant);
  }
}

int64_t small_grid(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(ceil_div(n, kThreads), 4096)); }

// ---------------------------------------------------------------------------------------------
// Running histogram
// ---------------------------------------------------------------------------------------------

// scratch (int64 words): [0] batch keys (KeySink, 2 x uint32), [1, 8) the plan, [8, 8 + bins)
// the old counts while re-binning.
struct HistPlan {
  int32_t active;   // enabled and the batch has a finite element
  int32_t changed;  // the histogram had data and its grid changed: re-bin
  int32_t new_exponent, old_exponent;
  int64_t new_first, old_first;
};
static_assert(sizeof(HistPlan) <= 7 * sizeof(int64_t), "HistPlan must fit in scratch[1, 8)");

__global__ void histogram_plan_kernel(const int64_t* enabled, const uint32_t* keys, float* range,
                                      int64_t bins, HistPlan* plan) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  HistPlan p{0, 0, 0, 0, 0, 0};
  if ((enabled == nullptr || *enabled != 0) && keys[0] != 0) {
    const float bmin = key_sink_min(keys, 0), bmax = key_sink_max(keys, 1, 0);
    const float lo = range[0], hi = range[1];
    const bool had_data = lo <= hi;
    // std::min(lo, bmin) / std::max(hi, bmax), as the CPU op.
    const float new_min = had_data ? (bmin < lo ? bmin : lo) : bmin;
    const float new_max = had_data ? (hi < bmax ? bmax : hi) : bmax;
    const HistogramGrid grid = histogram_grid(new_min, new_max, bins);
    p.active = 1;
    p.new_exponent = grid.exponent;
    p.new_first = grid.first;
    if (had_data) {
      const HistogramGrid old = histogram_grid(lo, hi, bins);
      p.old_exponent = old.exponent;
      p.old_first = old.first;
      p.changed = old.exponent != grid.exponent || old.first != grid.first;
    }
    range[0] = new_min;  // nothing after this kernel reads range
    range[1] = new_max;
  }
  *plan = p;
}

// Moves counts to `old` and zeroes counts, when re-binning.
__global__ void __launch_bounds__(kThreads)
    histogram_copy_kernel(const HistPlan* plan, int64_t* counts, int64_t* old, int64_t bins) {
  if (!plan->changed) return;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < bins;
       i += stride) {
    old[i] = counts[i];
    counts[i] = 0;
  }
}

// cpu::histogram_rebin: old global bin -> coarser_index on the new grid, integer atomics (exact,
// order-independent). The clamp never triggers for grids of nested ranges; it keeps writes in
// bounds.
__global__ void __launch_bounds__(kThreads)
    histogram_rebin_kernel(const HistPlan* plan, const int64_t* old, int64_t* counts,
                           int64_t bins) {
  if (!plan->changed) return;
  const HistPlan p = *plan;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < bins;
       i += stride) {
    const int64_t v = old[i];
    if (v == 0) continue;
    int64_t k = coarser_index(p.old_first + i, p.old_exponent, p.new_exponent) - p.new_first;
    k = k < 0 ? 0 : (k >= bins ? bins - 1 : k);
    atomicAdd(reinterpret_cast<unsigned long long*>(counts + k), static_cast<unsigned long long>(v));
  }
}

// cpu::histogram_add on the plan's new grid. kShared: per-block 32-bit counts in shared memory
// (a block counts far fewer than 2^32 elements: the host checks), flushed with one 64-bit atomic
// per non-empty bin.
template <class T, bool kAligned, bool kShared>
__global__ void __launch_bounds__(kThreads)
    histogram_add_kernel(const typename T::Storage* x, int64_t n, int64_t head, int64_t nunits,
                         const HistPlan* plan, int64_t* counts, int64_t bins) {
  constexpr int V = T::kVec;
  __shared__ uint32_t s_counts[kShared ? kSharedBins : 1];
  if (!plan->active) return;  // grid-uniform
  const int64_t first = plan->new_first;
  const double inv_width = ldexp(1.0, -plan->new_exponent);  // exact: a power of two
  if constexpr (kShared) {
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) s_counts[b] = 0;
    __syncthreads();
  }
  auto add = [&](float v) {
    if (!is_finite(v)) return;
    int64_t k = floor_to_int(double(v) * inv_width) - first;
    k = k < 0 ? 0 : (k >= bins ? bins - 1 : k);
    if constexpr (kShared)
      atomicAdd(s_counts + k, 1u);
    else
      atomicAdd(reinterpret_cast<unsigned long long*>(counts + k), 1ull);
  };
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  units_forward<T, kAligned>(x, head, tid, nunits, stride, [&](int64_t, const float (&v)[V]) {
#pragma unroll
    for (int j = 0; j < V; ++j) add(v[j]);
  });
  const int64_t body_end = head + nunits * V;
  if (tid < head + (n - body_end)) {
    const int64_t i = tid < head ? tid : body_end + (tid - head);
    add(T::load(x[i]));
  }
  if constexpr (kShared) {
    __syncthreads();
    for (int64_t b = threadIdx.x; b < bins; b += blockDim.x) {
      const uint32_t c = s_counts[b];
      if (c != 0) atomicAdd(reinterpret_cast<unsigned long long*>(counts + b), static_cast<unsigned long long>(c));
    }
  }
}

// Grid of histogram_add_kernel: at most one resident wave, one unit per thread at least.
template <auto Kernel>
int64_t histogram_add_grid(int64_t nunits, int64_t rest) {
  return std::max<int64_t>(
      1, std::min(resident_blocks<Kernel>(), ceil_div(std::max(nunits, rest), kThreads)));
}

template <class T, bool kAligned, bool kShared>
void launch_histogram_add_as(const void* x, int64_t n, int64_t head, const HistPlan* plan,
                             int64_t* counts, int64_t bins, cudaStream_t stream) {
  using S = typename T::Storage;
  constexpr auto kernel = &histogram_add_kernel<T, kAligned, kShared>;
  const int64_t nunits = (n - head) / T::kVec;
  const int64_t rest = head + (n - head - nunits * T::kVec);
  const int64_t grid = histogram_add_grid<kernel>(nunits, rest);
  kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(static_cast<const S*>(x), n, head,
                                                              nunits, plan, counts, bins);
  check_launch("histogram_add_kernel");
}

template <class T, bool kAligned>
void launch_histogram_add(const void* x, int64_t n, int64_t head, const HistPlan* plan,
                          int64_t* counts, int64_t bins, cudaStream_t stream) {
  bool shared = bins <= kSharedBins;
  if (shared) {
    // A block counts at most ceil(nunits / (grid * kThreads)) units per thread plus one scalar:
    // the 32-bit shared counters must not wrap.
    const int64_t nunits = (n - head) / T::kVec;
    const int64_t rest = head + (n - head - nunits * T::kVec);
    const int64_t grid = histogram_add_grid<&histogram_add_kernel<T, kAligned, true>>(nunits, rest);
    const int64_t per_block = ceil_div(nunits, grid * kThreads) * kThreads * T::kVec + kThreads;
    shared = per_block < int64_t{0xffffffff};
  }
  if (shared)
    launch_histogram_add_as<T, kAligned, true>(x, n, head, plan, counts, bins, stream);
  else
    launch_histogram_add_as<T, kAligned, false>(x, n, head, plan, counts, bins, stream);
}

template <class T>
void histogram_update_impl(const void* x, int64_t n, int64_t* counts, int64_t bins, float* range,
                           const int64_t* enabled, int64_t* scratch, cudaStream_t stream) {
  auto* keys = reinterpret_cast<uint32_t*>(scratch);
  auto* plan = reinterpret_cast<HistPlan*>(scratch + 1);
  int64_t* old = scratch + 8;
  check(cudaMemsetAsync(keys, 0, 2 * sizeof(uint32_t), stream), "cudaMemsetAsync");
  launch_minmax<T>(x, n, ChannelLayout{n, 1}, KeySink{keys, 1}, enabled, stream);
  histogram_plan_kernel<<<1, kWarp, 0, stream>>>(enabled, keys, range, bins, plan);
  check_launch("histogram_plan_kernel");
  const unsigned bin_grid = static_cast<unsigned>(small_grid(bins));
  histogram_copy_kernel<<<bin_grid, kThreads, 0, stream>>>(plan, counts, old, bins);
  check_launch("histogram_copy_kernel");
  histogram_rebin_kernel<<<bin_grid, kThreads, 0, stream>>>(plan, old, counts, bins);
  check_launch("histogram_rebin_kernel");

  int64_t head = 0;
  if (co_aligned({x}, sizeof(typename T::Storage), n, &head))
    launch_histogram_add<T, true>(x, n, head, plan, counts, bins, stream);
  else
    launch_histogram_add<T, false>(x, n, 0, plan, counts, bins, stream);
}

// ---------------------------------------------------------------------------------------------
// MSE errors over candidates
// ---------------------------------------------------------------------------------------------

struct CandParams {
  float scale, inv_scale, zero_point;
};

__device__ __forceinline__ CandParams candidate(const Candidates& cand, int64_t ci, QuantRange r) {
  CandParams p;
  p.scale = effective_scale(cand.scale[ci]);
  p.inv_scale = 1.0f / p.scale;
  p.zero_point = effective_zero_point(cand.zero_point[ci], r.quant_min, r.quant_max);
  return p;
}

// Work unit w of a warp: long mode (pieces_per_seg > 0) is piece w % pieces_per_seg of segment
// w / pieces_per_seg (at most kStage elements); short mode is segs_per_unit whole segments
// (segs_per_unit * inner <= kStage). Values are staged with non-finite elements as 0.
template <class T>
__global__ void __launch_bounds__(kThreads)
    mse_staged_kernel(const typename T::Storage* x, int64_t n, int64_t inner, int64_t channels,
                      int64_t pieces_per_seg, int64_t segs_per_unit, int64_t nwork,
                      Candidates cand, QuantRange range, double* errors) {
  __shared__ float stage[kThreads / kWarp][kStage];
  const int lane = threadIdx.x % kWarp;
  float* buf = stage[threadIdx.x / kWarp];
  const int64_t gw = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t nw = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  // Fewer than 32 candidates: P lanes per candidate, each summing every P-th element.
  int P = 1;
  while (2 * P * cand.count <= kWarp) P *= 2;
  const int64_t items = cand.count * P;
  const float qmin = range.quant_min, qmax = range.quant_max;

  for (int64_t w = gw; w < nwork; w += nw) {  // warp-uniform
    int64_t seg, start, end;
    if (pieces_per_seg > 0) {
      seg = w / pieces_per_seg;
      start = seg * inner + (w - seg * pieces_per_seg) * kStage;
      end = min64(min64(start + kStage, (seg + 1) * inner), n);
    } else {
      seg = w * segs_per_unit;
      start = seg * inner;
      end = min64((seg + segs_per_unit) * inner, n);
    }
    if (start >= n) continue;  // a partial last segment has fewer pieces
    const int len = static_cast<int>(end - start);
    __syncwarp();  // every lane is done reading the previous unit
    for (int k = lane; k < len; k += kWarp) {
      const float v = T::load(x[start + k]);
      buf[k] = is_finite(v) ? v : 0.0f;
    }
    __syncwarp();
    for (int64_t a = start; a < end; ++seg) {  // the unit's segments, warp-uniform
      const int64_t b = min64((seg + 1) * inner, end);
      const int64_t c = seg % channels;
      const float* v = buf + (a - start);
      const int m = static_cast<int>(b - a);
      for (int64_t it = lane; it < items; it += kWarp) {
        const int64_t r = it / P;
        const int part = static_cast<int>(it - r * P);
        const int64_t ci = c * cand.count + r;
        const CandParams q = candidate(cand, ci, range);
        double total = 0.0;
        float acc = 0.0f;
        int t = 0;
        for (int k = part; k < m; k += P) {
          const float d = fake_quant_value(v[k], q.scale, q.inv_scale, q.zero_point, qmin, qmax) - v[k];
          acc += d * d;
          if (++t == kFold) {
            total += double(acc);
            acc = 0.0f;
            t = 0;
          }
        }
        total += double(acc);
        if (total != 0.0) atomicAdd(errors + ci, total);  // errors start at +0.0
      }
      a = b;
    }
  }
}

// inner == 1, channels > 1: lane threadIdx.x owns column c, threadIdx.y picks kTile candidates,
// blockIdx.z a range of rows.
template <class T>
__global__ void __launch_bounds__(kThreads)
    mse_columns_kernel(const typename T::Storage* x, int64_t n, int64_t channels, int64_t rows,
                       int64_t rows_per_block, Candidates cand, QuantRange range,
                       double* errors) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  const int64_t r0 = (static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y) * kTile;
  if (c >= channels || r0 >= cand.count) return;  // no barriers in this kernel
  const float qmin = range.quant_min, qmax = range.quant_max;
  CandParams q[kTile];
  float acc[kTile];
  double total[kTile];
#pragma unroll
  for (int k = 0; k < kTile; ++k) {
    q[k] = r0 + k < cand.count ? candidate(cand, c * cand.count + r0 + k, range)
                               : CandParams{1.0f, 1.0f, 0.0f};
    acc[k] = 0.0f;
    total[k] = 0.0;
  }
  const int64_t row0 = static_cast<int64_t>(blockIdx.z) * rows_per_block;
  const int64_t row1 = min64(rows, row0 + rows_per_block);
  int t = 0;
  for (int64_t row = row0; row < row1; ++row) {
    const int64_t i = row * channels + c;
    if (i >= n) break;  // partial last row
    float v = T::load(x[i]);
    v = is_finite(v) ? v : 0.0f;
#pragma unroll
    for (int k = 0; k < kTile; ++k) {
      const float d = fake_quant_value(v, q[k].scale, q[k].inv_scale, q[k].zero_point, qmin, qmax) - v;
      acc[k] += d * d;
    }
    if (++t == kFold) {
#pragma unroll
      for (int k = 0; k < kTile; ++k) {
        total[k] += double(acc[k]);
        acc[k] = 0.0f;
      }
      t = 0;
    }
  }
#pragma unroll
  for (int k = 0; k < kTile; ++k) {
    total[k] += double(acc[k]);
    if (r0 + k < cand.count && total[k] != 0.0)
      atomicAdd(errors + c * cand.count + r0 + k, total[k]);
  }
}

template <class T>
void mse_impl(const void* xv, int64_t n, ChannelLayout layout, Candidates cand, QuantRange range,
              double* errors, cudaStream_t stream) {
  using S = typename T::Storage;
  const S* x = static_cast<const S*>(xv);
  if (layout.inner == 1 && layout.channels > 1) {
    const int64_t channels = layout.channels;
    const int64_t rows = ceil_div(n, channels);
    const int64_t tiles = ceil_div(cand.count, kTile);
    const int by = static_cast<int>(std::min<int64_t>(tiles, kThreads / kWarp));
    const int64_t gx = ceil_div(channels, kWarp);
    const int64_t gy = ceil_div(tiles, by);
    if (gx > 0x7fffffff || gy > 65535)
      throw std::invalid_argument("qat observe CUDA: mse_errors has too many channels or candidates");
    constexpr auto kernel = &mse_columns_kernel<T>;
    const int64_t target = 4 * resident_blocks<kernel>();
    int64_t gz = std::max<int64_t>(1, ceil_div(target, gx * gy));
    gz = std::min({gz, ceil_div(rows, 4 * kFold), int64_t{65535}});
    gz = std::max<int64_t>(gz, 1);
    const int64_t rows_per_block = ceil_div(rows, gz);
    gz = ceil_div(rows, rows_per_block);
    kernel<<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), static_cast<unsigned>(gz)),
             dim3(kWarp, by), 0, stream>>>(x, n, channels, rows, rows_per_block, cand, range,
                                           errors);
    check_launch("mse_columns_kernel");
    return;
  }
  const int64_t nseg = ceil_div(n, layout.inner);
  int64_t pieces_per_seg = 0, segs_per_unit = 0, nwork = 0;
  if (layout.inner > kStage) {
    pieces_per_seg = ceil_div(layout.inner, kStage);
    nwork = nseg * pieces_per_seg;
  } else {
    segs_per_unit = kStage / layout.inner;
    nwork = ceil_div(nseg, segs_per_unit);
  }
  constexpr auto kernel = &mse_staged_kernel<T>;
  constexpr int kWarpsPerBlock = kThreads / kWarp;
  const int64_t grid =
      std::max<int64_t>(1, std::min(resident_blocks<kernel>(), ceil_div(nwork, kWarpsPerBlock)));
  kernel<<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
      x, n, layout.inner, layout.channels, pieces_per_seg, segs_per_unit, nwork, cand, range,
      errors);
  check_launch("mse_staged_kernel");
}

// ---------------------------------------------------------------------------------------------
// Fused observe + fake quantize (cooperative)
// ---------------------------------------------------------------------------------------------

struct FusedArgs {
  const void* x;
  void* y;
  ChunkPlan chunks;   // normalized layout
  int64_t channels;   // every channel of the running statistics (phase 2)
  const int64_t* observer_on;
  const int64_t* fake_quant_on;
  float* run_min;
  float* run_max;
  float* scale;
  float* zero_point;
  float averaging_constant;
  int32_t quant_min, quant_max;
  bool symmetric;
  uint32_t* keys;   // 2 * channels, zeroed by the caller
  float4* params;   // channels: effective scale, 1 / scale, effective zero point
};

// Phase 3 over chunk k, units in reverse order: y = fake_quant(x), or a bit copy when !fq.
template <class T, int kMode, bool kAligned>
__device__ __forceinline__ void fake_quant_chunk(const typename T::Storage* x,
                                                 typename T::Storage* y, const ChunkPlan& p,
                                                 int64_t k, const float4* params, float qmin,
                                                 float qmax, bool fq) {
  constexpr int V = T::kVec;
  const ChunkSpan sp = chunk_span(p, k, V);
  const bool scalar = threadIdx.x < sp.nhead + sp.ntail;
  const int64_t si = threadIdx.x < sp.nhead ? int64_t(threadIdx.x)
                                            : sp.body_end + (int64_t(threadIdx.x) - sp.nhead);
  if (!fq) {
    copy_units_backward<T, kAligned>(x, y, p.head, sp.u1 - 1 - threadIdx.x, sp.u0, blockDim.x);
    if (scalar) y[si] = x[si];
    return;
  }
  float4 q = kMode == kOneSlot ? __ldcg(params) : make_float4(1.0f, 1.0f, 0.0f, 0.0f);
  units_backward<T, kAligned>(x, p.head, sp.u1 - 1 - threadIdx.x, sp.u0, blockDim.x,
                              [&](int64_t u, const float (&v)[V]) {
    const int64_t i0 = p.head + u * V;
    float out[V];
    if constexpr (kMode == kOneSlot) {
#pragma unroll
      for (int j = 0; j < V; ++j) out[j] = fake_quant_value(v[j], q.x, q.y, q.z, qmin, qmax);
    } else {
      const int64_t seg = div_nonneg(i0, p.inner);
      int64_t c = seg - div_nonneg(seg, p.channels) * p.channels;
      int64_t next = (seg + 1) * p.inner;
      q = __ldcg(params + c);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if (i0 + j == next) {
          next += p.inner;
          c = c + 1 == p.channels ? 0 : c + 1;
          q = __ldcg(params + c);
        }
        out[j] = fake_quant_value(v[j], q.x, q.y, q.z, qmin, qmax);
      }
    }
    store_unit<T, kAligned>(y + i0, out);
  });
  if (scalar) {
    if constexpr (kMode != kOneSlot) q = __ldcg(params + (si / p.inner) % p.channels);
    y[si] = T::store(fake_quant_value(T::load(x[si]), q.x, q.y, q.z, qmin, qmax));
  }
}

template <class T, int kMode, bool kAligned>
__global__ void __launch_bounds__(kThreads) observe_fake_quant_kernel(FusedArgs a) {
  using S = typename T::Storage;
  __shared__ uint32_t s_min[slot_count<kMode>()], s_max[slot_count<kMode>()];
  cg::grid_group grid = cg::this_grid();
  const S* x = static_cast<const S*>(a.x);
  S* y = static_cast<S*>(a.y);
  // The flags are only read: every thread sees the same values, so the barriers below are
  // skipped by the whole grid or by nobody.
  const bool observe = a.observer_on == nullptr || *a.observer_on != 0;
  const bool fq = a.fake_quant_on == nullptr || *a.fake_quant_on != 0;
  const int64_t nchunks = a.chunks.nchunks;

  // Phase 1: per-channel finite min / max of x into the zeroed keys. Atomics (one pair per
  // block and touched slot) rather than per-block partials: partials would need grid x channels
  // words, too many for thousands of channels, while the keys need no ordering between blocks.
  if (observe) {
    const KeySink sink{a.keys, a.channels};
    for (int64_t k = blockIdx.x; k < nchunks; k += gridDim.x)
      minmax_chunk<T, kMode, kAligned>(x, a.chunks, k, s_min, s_max, sink);
    grid.sync();
  }

  // Phase 2: one thread per channel.
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < a.channels;
       c += nthreads) {
    float lo = a.run_min[c], hi = a.run_max[c];
    if (observe) {
      kernels::update_running_minmax(&lo, &hi, key_sink_min(a.keys, c), key_sink_max(a.keys, a.channels, c),
                            true, a.averaging_constant);
      a.run_min[c] = lo;
      a.run_max[c] = hi;
    }
    if (fq) {
      const AffineQParams q = qparams_fbgemm(lo, hi, a.quant_min, a.quant_max, a.symmetric);
      a.scale[c] = q.scale;
      a.zero_point[c] = q.zero_point;
      // What fake_quant_forward derives from (scale, zero_point), computed once per channel.
      const float s = effective_scale(q.scale);
      a.params[c] = make_float4(s, 1.0f / s,
                                effective_zero_point(q.zero_point, float(a.quant_min), float(a.quant_max)),
                                0.0f);
    }
  }
  if (fq) grid.sync();  // phase 3 reads params; a plain copy needs nothing from phase 2

  // Phase 3: the same chunks as phase 1, in reverse order.
  const float qmin = float(a.quant_min), qmax = float(a.quant_max);
  if (static_cast<int64_t>(blockIdx.x) < nchunks) {
    const int64_t last = blockIdx.x + (nchunks - 1 - blockIdx.x) / gridDim.x * gridDim.x;
    for (int64_t k = last; k >= static_cast<int64_t>(blockIdx.x); k -= gridDim.x)
      fake_quant_chunk<T, kMode, kAligned>(x, y, a.chunks, k, a.params, qmin, qmax, fq);
  }
}

template <class T, int kMode, bool kAligned>
void launch_fused_as(FusedArgs a, int64_t n, int64_t head, ChannelLayout layout,
                     cudaStream_t stream) {
  constexpr auto kernel = &observe_fake_quant_kernel<T, kMode, kAligned>;
  const int64_t target = resident_blocks<kernel>();
  a.chunks = make_chunk_plan(n, head, T::kVec, layout, kMode, target);
  // Cooperative: every block resident at once, so the grid never exceeds one wave.
  const int64_t grid = std::max<int64_t>(1, std::min(target, a.chunks.nchunks));
  void* args[] = {&a};
  check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel),
                                    dim3(static_cast<unsigned>(grid)), dim3(kThreads), args, 0,
                                    stream),
        "cudaLaunchCooperativeKernel(observe_fake_quant_kernel)");
}

template <class T, int kMode>
void launch_fused_mode(bool aligned, const FusedArgs& a, int64_t n, int64_t head,
                       ChannelLayout layout, cudaStream_t stream) {
  if (aligned)
    launch_fused_as<T, kMode, true>(a, n, head, layout, stream);
  else
    launch_fused_as<T, kMode, false>(a, n, 0, layout, stream);
}

template <class T>
void fused_impl(const FusedArgs& a, int64_t n, ChannelLayout layout, cudaStream_t stream) {
  int64_t head = 0;
  const bool aligned = co_aligned({a.x, a.y}, sizeof(typename T::Storage), n, &head);
  switch (slot_mode(layout)) {
    case kOneSlot: return launch_fused_mode<T, kOneSlot>(aligned, a, n, head, layout, stream);
    case kByChannel: return launch_fused_mode<T, kByChannel>(aligned, a, n, head, layout, stream);
    default: return launch_fused_mode<T, kBySegment>(aligned, a, n, head, layout, stream);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

void choose_qparams(const float* min, const float* max, int64_t n, int32_t quant_min,
                    int32_t quant_max, bool symmetric, float* scale, float* zero_point,
                    void* stream) {
  if (n <= 0) return;
  choose_qparams_kernel<<<static_cast<unsigned>(small_grid(n)), kThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(min, max, n, quant_min, quant_max,
                                                               symmetric, scale, zero_point);
  check_launch("choose_qparams_kernel");
}

void minmax(DType dtype, const void* x, int64_t n, ChannelLayout layout, float* min, float* max,
            const int64_t* enabled, void* stream) {
  if (n <= 0) return;
  minmax_dispatch(dtype, x, n, normalize(layout, n), FloatSink{min, max}, enabled,
                  static_cast<cudaStream_t>(stream));
}

void update_running_minmax(const float* cur_min, const float* cur_max, float* run_min,
                           float* run_max, int64_t channels, const int64_t* enabled,
                           bool moving_average, float averaging_constant, void* stream) {
  if (channels <= 0) return;
  update_running_kernel<<<static_cast<unsigned>(small_grid(channels)), kThreads, 0,
                          static_cast<cudaStream_t>(stream)>>>(
      cur_min, cur_max, run_min, run_max, channels, enabled, moving_average, averaging_constant);
  check_launch("update_running_kernel");
}

void histogram_update(DType dtype, const void* x, int64_t n, int64_t* counts, int64_t bins,
                      float* range, const int64_t* enabled, int64_t* scratch, void* stream) {
  if (n <= 0) return;
  if (bins < 1) throw std::invalid_argument("qat observe CUDA: histogram_update needs bins >= 1");
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return histogram_update_impl<F32>(x, n, counts, bins, range, enabled, scratch, s);
    case DType::f16: return histogram_update_impl<F16>(x, n, counts, bins, range, enabled, scratch, s);
    case DType::bf16: return histogram_update_impl<BF16>(x, n, counts, bins, range, enabled, scratch, s);
  }
  throw std::invalid_argument("qat observe CUDA: unknown dtype");
}

void mse_errors(DType dtype, const void* x, int64_t n, ChannelLayout layout,
                Candidates candidates, QuantRange range, double* errors, void* stream) {
  if (n <= 0 || candidates.count <= 0) return;
  layout = normalize(layout, n);
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return mse_impl<F32>(x, n, layout, candidates, range, errors, s);
    case DType::f16: return mse_impl<F16>(x, n, layout, candidates, range, errors, s);
    case DType::bf16: return mse_impl<BF16>(x, n, layout, candidates, range, errors, s);
  }
  throw std::invalid_argument("qat observe CUDA: unknown dtype");
}

void observe_fake_quant(DType dtype, const void* x, void* y, int64_t n, ChannelLayout layout,
                        const int64_t* observer_on, const int64_t* fake_quant_on, float* run_min,
                        float* run_max, float* scale, float* zero_point,
                        float averaging_constant, int32_t quant_min, int32_t quant_max,
                        bool symmetric, void* scratch, void* stream) {
  if (n <= 0) return;
  const int64_t channels = layout.channels;
  const ChannelLayout normalized = normalize(layout, n);
  if (reinterpret_cast<uintptr_t>(scratch) % 16 != 0)
    throw std::invalid_argument("qat observe CUDA: observe_fake_quant scratch must be 16-byte aligned");
  FusedArgs a{};
  a.x = x;
  a.y = y;
  a.channels = channels;
  a.observer_on = observer_on;
  a.fake_quant_on = fake_quant_on;
  a.run_min = run_min;
  a.run_max = run_max;
  a.scale = scale;
  a.zero_point = zero_point;
  a.averaging_constant = averaging_constant;
  a.quant_min = quant_min;
  a.quant_max = quant_max;
  a.symmetric = symmetric;
  a.keys = static_cast<uint32_t*>(scratch);
  a.params = reinterpret_cast<float4*>(static_cast<char*>(scratch) + (8 * channels + 15) / 16 * 16);
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::f32: return fused_impl<F32>(a, n, normalized, s);
    case DType::f16: return fused_impl<F16>(a, n, normalized, s);
    case DType::bf16: return fused_impl<BF16>(a, n, normalized, s);
  }
  throw std::invalid_argument("qat observe CUDA: unknown dtype");
}

}  // namespace qat::kernels::cuda
