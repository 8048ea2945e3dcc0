// What the CUDA GoogleTests share: the skip-without-GPU guard, raw host storage in fp32 / fp16 /
// bf16 (read and written through quant_math.h, so the host rounds as the kernels do), and RAII
// device buffers. Torch-free, like the kernels under test.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/fake_quant.h"  // DType
#include "kernels/quant_math.h"

namespace qat_cuda_test {

namespace qk = qat::kernels;
using qk::DType;

inline bool gpu_available() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define REQUIRE_GPU() \
  if (!qat_cuda_test::gpu_available()) GTEST_SKIP() << "no CUDA device"

#define CUDA_OK(expr) ASSERT_EQ(cudaSuccess, (expr)) << #expr

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
  }
  return "?";
}

inline size_t elem_size(DType d) { return d == DType::f32 ? 4 : 2; }

// Host-side storage: raw bytes, elements read and written through quant_math.h.
struct HostTensor {
  DType dtype;
  std::vector<unsigned char> bytes;
  HostTensor(DType d, int64_t n) : dtype(d), bytes(static_cast<size_t>(n) * elem_size(d)) {}
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  uint32_t bits(int64_t i) const {
    if (dtype == DType::f32) {
      uint32_t u;
      std::memcpy(&u, bytes.data() + 4 * i, 4);
      return u;
    }
    uint16_t h;
    std::memcpy(&h, bytes.data() + 2 * i, 2);
    return h;
  }
  void set_bits(int64_t i, uint32_t u) {
    if (dtype == DType::f32) {
      std::memcpy(bytes.data() + 4 * i, &u, 4);
    } else {
      uint16_t h = static_cast<uint16_t>(u);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  float get(int64_t i) const {
    switch (dtype) {
      case DType::f32: return qk::bits_float(bits(i));
      case DType::f16: return qk::half_bits_to_float(static_cast<uint16_t>(bits(i)));
      default: return qk::bf16_bits_to_float(static_cast<uint16_t>(bits(i)));
    }
  }
  void set(int64_t i, float v) {
    switch (dtype) {
      case DType::f32: set_bits(i, qk::float_bits(v)); break;
      case DType::f16: set_bits(i, qk::float_to_half_bits(v)); break;
      default: set_bits(i, qk::float_to_bf16_bits(v)); break;
    }
  }
  bool is_nan(int64_t i) const { return std::isnan(get(i)); }
};

// Device allocation with room for an element offset, so that tests control alignment.
struct DeviceTensor {
  unsigned char* base = nullptr;
  size_t esize = 0;
  int64_t offset = 0;
  int64_t n = 0;
  DeviceTensor(DType d, int64_t n_, int64_t offset_) : esize(elem_size(d)), offset(offset_), n(n_) {
    EXPECT_EQ(cudaSuccess, cudaMalloc(&base, (static_cast<size_t>(n) + offset + 16) * esize + 64));
  }
  ~DeviceTensor() { cudaFree(base); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  void* ptr() const { return base + offset * esize; }
  void upload(const HostTensor& h) const {
    if (n) EXPECT_EQ(cudaSuccess, cudaMemcpy(ptr(), h.data(), n * esize, cudaMemcpyHostToDevice));
  }
  void download(HostTensor& h) const {
    if (n) EXPECT_EQ(cudaSuccess, cudaMemcpy(h.data(), ptr(), n * esize, cudaMemcpyDeviceToHost));
  }
};

template <class T>
struct DeviceArray {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceArray(const std::vector<T>& h) : n(h.size()) {
    EXPECT_EQ(cudaSuccess, cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    upload(h);
  }
  ~DeviceArray() { cudaFree(p); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void upload(const std::vector<T>& h) const {
    EXPECT_EQ(h.size(), n);
    if (n) EXPECT_EQ(cudaSuccess, cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> h(n);
    if (n) EXPECT_EQ(cudaSuccess, cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { EXPECT_EQ(cudaSuccess, cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s); }
  void sync() const { EXPECT_EQ(cudaSuccess, cudaStreamSynchronize(s)); }
};

}  // namespace qat_cuda_test
