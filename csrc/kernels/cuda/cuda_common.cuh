// Shared by the CUDA kernel files (not a public header): host helpers for errors, device
// properties and grid sizes, and the element storage types with their 16-byte unit accesses.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "../quant_math.h"

namespace qat::kernels::cuda::detail {

constexpr int kThreads = 256;     // threads per block, every 1-D kernel
constexpr int kMaxDevices = 64;   // devices whose properties are cached
constexpr int kWarp = 32;

// ---------------------------------------------------------------------------------------------
// Host helpers: errors, device properties, grid sizes
// ---------------------------------------------------------------------------------------------

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("qat CUDA: ") + what + ": " +
                             cudaGetErrorString(err));
}

// Launches are asynchronous: this only reports configuration errors, it never waits.
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

inline int current_device() {
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  return dev;
}

inline int sm_count(int dev) {
  static std::atomic<int> cache[kMaxDevices];  // 0 = not queried yet
  bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached) {
    int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int v = 0;
  check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev),
        "cudaDeviceGetAttribute(MultiProcessorCount)");
  v = std::max(v, 1);
  if (cached) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

// Blocks of kBlock threads that one wave of `Kernel` keeps resident on the current device.
// Grid-stride kernels launch at most this many, so no block waits for a second wave; it is also
// the cooperative launch limit. Cached per kernel and device: the occupancy calculator neither
// launches nor synchronizes.
template <auto Kernel, int kBlock = kThreads>
int64_t resident_blocks() {
  static std::atomic<int> cache[kMaxDevices];
  int dev = current_device();
  bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached) {
    int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return v;
  }
  int per_sm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, kBlock, 0),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  int v = std::max(per_sm, 1) * sm_count(dev);
  if (cached) cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// The pointers (nullptr ignored) share their address modulo 16 and it is a whole number of
// elements: then one scalar head of `head` elements brings all of them to 16-byte alignment.
inline bool co_aligned(std::initializer_list<const void*> ptrs, size_t elem_size, int64_t n,
                int64_t* head) {
  int64_t mod = -1;
  for (const void* p : ptrs) {
    if (p == nullptr) continue;
    int64_t m = static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) % 16);
    if (mod < 0) mod = m;
    if (m != mod) return false;
  }
  if (mod < 0 || mod % static_cast<int64_t>(elem_size) != 0) return false;
  *head = std::min<int64_t>(n, ((16 - mod) % 16) / static_cast<int64_t>(elem_size));
  return true;
}

// ---------------------------------------------------------------------------------------------
// Storage types
// ---------------------------------------------------------------------------------------------

struct F32 {
  using Storage = float;
  static constexpr int kVec = 4;  // elements per 16-byte unit
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};

// fp16 goes through the hardware converters, which are exact (load) and round to nearest even
// (store) for every non-NaN value, like quant_math.h's half_bits_to_float / float_to_half_bits.
// NaNs are rebuilt the way those functions build them (sign and payload kept on load,
// sign | 0x7e00 on store), so results match the CPU bit for bit whatever the hardware does with
// NaN payloads. This is several integer instructions per element cheaper than the bit
// manipulation, which matters: fp16 fake quantization is close to compute bound on H100.
struct F16 {
  using Storage = uint16_t;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float load(uint16_t h) {
    uint32_t em = h & 0x7fffu;
    float f = __half2float(__ushort_as_half(h));
    float nan = bits_float((uint32_t(h & 0x8000u) << 16) | 0x7f800000u | (em << 13));
    return em > 0x7c00u ? nan : f;
  }
  static __device__ __forceinline__ uint16_t store(float f) {
    uint16_t h = __half_as_ushort(__float2half_rn(f));
    uint16_t nan = uint16_t(((float_bits(f) >> 16) & 0x8000u) | 0x7e00u);
    return f != f ? nan : h;
  }
};

// bf16 conversions are a shift and a few integer operations: use quant_math.h as is (CUDA's
// float -> bf16 conversion would not keep the NaN payload the way the CPU does).
struct BF16 {
  using Storage = uint16_t;
  static constexpr int kVec = 8;
  static __device__ __forceinline__ float load(uint16_t b) { return bf16_bits_to_float(b); }
  static __device__ __forceinline__ uint16_t store(float f) { return float_to_bf16_bits(f); }
};

// A unit is kVec consecutive elements. Aligned units move as one 16-byte access; unaligned
// ones element by element (still one unit per thread, so the channel bookkeeping is shared).
template <class T, bool kAligned>
__device__ __forceinline__ void load_unit(const typename T::Storage* p, float (&v)[T::kVec]) {
  if constexpr (kAligned) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
    if constexpr (sizeof(typename T::Storage) == 4) {
#pragma unroll
      for (int k = 0; k < 4; ++k) v[k] = T::load(__uint_as_float(w[k]));
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {  // little endian: the low half is the lower address
        v[2 * k] = T::load(uint16_t(w[k] & 0xffffu));
        v[2 * k + 1] = T::load(uint16_t(w[k] >> 16));
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < T::kVec; ++k) v[k] = T::load(p[k]);
  }
}

template <class T, bool kAligned>
__device__ __forceinline__ void store_unit(typename T::Storage* p, const float (&v)[T::kVec]) {
  if constexpr (kAligned) {
    uint32_t w[4];
    if constexpr (sizeof(typename T::Storage) == 4) {
#pragma unroll
      for (int k = 0; k < 4; ++k) w[k] = __float_as_uint(T::store(v[k]));
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k)
        w[k] = uint32_t(T::store(v[2 * k])) | (uint32_t(T::store(v[2 * k + 1])) << 16);
    }
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
#pragma unroll
    for (int k = 0; k < T::kVec; ++k) p[k] = T::store(v[k]);
  }
}

}  // namespace qat::kernels::cuda::detail
