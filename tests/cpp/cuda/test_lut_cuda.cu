// The CUDA palettization kernels against the CPU kernels on random inputs: outputs and indices
// bit for bit, LUT gradients up to summation order (CUDA adds with atomics). Torch-free; skips
// when no CUDA device is present.
//
// Standalone build (CMake target test_lut_cuda does the same):
//   nvcc -std=c++17 -arch=sm_90 --fmad=false -I csrc tests/cpp/cuda/test_lut_cuda.cu
//        csrc/kernels/cuda/lut.cu csrc/kernels/cpu/lut.cpp -lgtest -lgtest_main
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cuda_test_support.cuh"
#include "kernels/lut.h"

namespace {

namespace qk = qat::kernels;
using qk::DType;

using namespace qat_cuda_test;

void store(DType d, std::vector<unsigned char>& buf, int64_t i, float v) {
  if (d == DType::f32) {
    std::memcpy(buf.data() + 4 * i, &v, 4);
    return;
  }
  uint16_t h = d == DType::f16 ? qk::float_to_half_bits(v) : qk::float_to_bf16_bits(v);
  std::memcpy(buf.data() + 2 * i, &h, 2);
}

template <class T>
struct DeviceBuffer {
  T* p = nullptr;
  size_t n = 0;
  explicit DeviceBuffer(size_t count) : n(count) {
    EXPECT_EQ(cudaSuccess, cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    EXPECT_EQ(cudaSuccess, cudaMemset(p, 0, std::max<size_t>(n, 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& h) : DeviceBuffer(h.size()) {
    if (n) EXPECT_EQ(cudaSuccess, cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::vector<T> download() const {
    std::vector<T> h(n);
    if (n) EXPECT_EQ(cudaSuccess, cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

struct Case {
  int64_t groups, n;
  int k;
};

class LutCuda : public ::testing::TestWithParam<DType> {};

TEST_P(LutCuda, MatchesCpuKernels) {
  REQUIRE_GPU();
  const DType dt = GetParam();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.5f);
  for (Case c : {Case{1, 1, 1}, Case{1, 100000, 16}, Case{7, 3000, 4}, Case{64, 257, 256},
                 Case{300, 64, 8}, Case{2, 5000, 2}}) {
    std::vector<float> lut(c.groups * c.k);
    for (float& v : lut) v = g(rng);
    if (c.k > 3) {
      lut[1] = lut[c.k - 1];  // duplicate at a lower index
      lut[2] = nan;
    }
    if (c.groups > 1) std::fill(lut.begin() + c.k, lut.begin() + 2 * c.k, nan);  // no valid centroid
    const int64_t numel = c.groups * c.n;
    std::vector<unsigned char> x(numel * elem_size(dt)), dy(x.size());
    for (int64_t i = 0; i < numel; ++i) {
      float v = g(rng);
      if (i % 101 == 0) v = nan;
      if (i % 103 == 0) v = (i & 1) ? inf : -inf;
      if (i % 7 == 0 && c.k > 1) v = 0.5f * (lut[(i / c.n) * c.k] + lut[(i / c.n) * c.k + 1]);  // ties
      store(dt, x, i, v);
      store(dt, dy, i, g(rng));
    }
    // CPU reference.
    std::vector<unsigned char> y_cpu(x.size());
    std::vector<uint8_t> idx_cpu(numel);
    std::vector<double> acc_cpu(c.groups * c.k, 0.0);
    qk::cpu::lut_fake_quant(dt, x.data(), y_cpu.data(), 0, numel, c.n, lut.data(), c.k);
    qk::cpu::lut_indices(dt, x.data(), idx_cpu.data(), 0, numel, c.n, lut.data(), c.k);
    qk::cpu::lut_grad(dt, x.data(), dy.data(), 0, numel, c.n, lut.data(), c.k, acc_cpu.data());
    // CUDA.
    DeviceBuffer<unsigned char> dx(x), ddy(dy), dyout(x.size());
    DeviceBuffer<float> dlut(lut);
    DeviceBuffer<uint8_t> didx(numel);
    DeviceBuffer<double> dacc(acc_cpu.size());
    cudaStream_t s = nullptr;
    qk::cuda::lut_fake_quant(dt, dx.p, dyout.p, c.groups, c.n, dlut.p, c.k, s);
    qk::cuda::lut_indices(dt, dx.p, didx.p, c.groups, c.n, dlut.p, c.k, s);
    qk::cuda::lut_grad(dt, dx.p, ddy.p, c.groups, c.n, dlut.p, c.k, dacc.p, s);
    ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
    EXPECT_EQ(dyout.download(), y_cpu) << "groups=" << c.groups << " n=" << c.n << " k=" << c.k;
    EXPECT_EQ(didx.download(), idx_cpu) << "groups=" << c.groups << " n=" << c.n << " k=" << c.k;
    std::vector<double> acc = dacc.download();
    for (size_t i = 0; i < acc.size(); ++i)
      ASSERT_NEAR(acc[i], acc_cpu[i], 1e-9 * (1.0 + std::fabs(acc_cpu[i]))) << i;
  }
}

TEST(LutCuda, EmptyLaunchesNothing) {
  REQUIRE_GPU();
  qk::cuda::lut_fake_quant(DType::f32, nullptr, nullptr, 4, 0, nullptr, 16, nullptr);
  qk::cuda::lut_grad(DType::f32, nullptr, nullptr, 0, 10, nullptr, 16, nullptr, nullptr);
  EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
}

INSTANTIATE_TEST_SUITE_P(DTypes, LutCuda, ::testing::Values(DType::f32, DType::f16, DType::bf16));

}  // namespace
