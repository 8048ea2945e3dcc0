// The CUDA GGUF lattice kernels against the CPU ones (csrc/kernels/gguf_lattice.h), bit for bit:
// y, codes, dw and every parameter gradient (both backends reduce with the same tree), for every
// type and storage dtype, on random weights and trained-looking parameters (off the fp16 /
// integer grids, out of range, zero and negative scales, NaN / inf elements). Torch-free; skips
// when no CUDA device is present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_support.cuh"
#include "kernels/gguf_lattice.h"

namespace {

namespace k = qat::kernels;

using namespace qat_cuda_test;

struct TypeCase {
  k::GGUFType type;
  const char* name;
};
const TypeCase kTypes[] = {{k::GGUFType::Q4_0, "Q4_0"}, {k::GGUFType::Q4_1, "Q4_1"}, {k::GGUFType::Q5_0, "Q5_0"},
                           {k::GGUFType::Q5_1, "Q5_1"}, {k::GGUFType::Q8_0, "Q8_0"}, {k::GGUFType::Q2_K, "Q2_K"},
                           {k::GGUFType::Q3_K, "Q3_K"}, {k::GGUFType::Q4_K, "Q4_K"}, {k::GGUFType::Q5_K, "Q5_K"},
                           {k::GGUFType::Q6_K, "Q6_K"}, {k::GGUFType::IQ4_NL, "IQ4_NL"}};
const k::DType kDTypes[] = {k::DType::f32, k::DType::f16, k::DType::bf16};

// Raw storage of n elements of `dtype` from floats (rounded as the kernels' stores round).
std::vector<unsigned char> to_storage(const std::vector<float>& v, k::DType dtype) {
  std::vector<unsigned char> out(v.size() * elem_size(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == k::DType::f32) {
      std::memcpy(&out[4 * i], &v[i], 4);
    } else {
      const uint16_t h = dtype == k::DType::f16 ? k::float_to_half_bits(v[i]) : k::float_to_bf16_bits(v[i]);
      std::memcpy(&out[2 * i], &h, 2);
    }
  }
  return out;
}

template <class T>
T* to_device(const std::vector<T>& host) {
  T* p = nullptr;
  if (cudaMalloc(&p, std::max<size_t>(host.size(), 1) * sizeof(T)) != cudaSuccess) return nullptr;
  cudaMemcpy(p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  return p;
}

template <class T>
std::vector<T> to_host(const T* p, size_t n) {
  std::vector<T> out(n);
  cudaMemcpy(out.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
  return out;
}

struct Params {
  std::vector<float> d, dmin, scales, mins;
};

Params random_params(const k::GGUFLattice& L, int64_t nb, std::mt19937& rng) {
  const int64_t ns = L.block / L.sub;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  Params p;
  for (int64_t b = 0; b < nb; ++b) {
    p.d.push_back(0.02f * nd(rng));
    p.dmin.push_back(0.02f * nd(rng));
  }
  p.d[0] = 0.0f;
  if (nb > 1) p.d[1] = 1e30f;  // clamps to the largest fp16
  if (nb > 2) p.d[2] = NAN;    // stored as 0
  for (int64_t i = 0; i < nb * ns; ++i) {
    p.scales.push_back(float(L.scale_lo) - 2.0f + u(rng) * float(L.scale_hi - L.scale_lo + 4));
    p.mins.push_back(-2.0f + u(rng) * float(L.min_hi + 4));
  }
  return p;
}

class GGUFLatticeCuda : public ::testing::TestWithParam<int> {};

TEST_P(GGUFLatticeCuda, MatchesCpuBitwise) {
  REQUIRE_GPU();
  const TypeCase tc = kTypes[GetParam()];
  const k::GGUFLattice L = k::gguf_lattice(tc.type);
  std::mt19937 rng(7 + GetParam());
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t n_blocks : {int64_t(1), int64_t(7), int64_t(1000)}) {
    const int64_t n = n_blocks * L.block, ns = L.block / L.sub;
    std::vector<float> wf(n), gf(n);
    for (int64_t i = 0; i < n; ++i) {
      wf[i] = nd(rng) * 0.3f;
      gf[i] = nd(rng);
    }
    wf[3] = NAN;
    wf[n - 1] = INFINITY;
    for (int i = 0; i < L.block / 2 && n_blocks > 3; ++i) wf[3 * L.block + i] = 0.0f;
    const Params P = random_params(L, n_blocks, rng);
    const k::GGUFParams hp{P.d.data(), L.has_dmin ? P.dmin.data() : nullptr, L.has_scales ? P.scales.data() : nullptr,
                           L.has_mins ? P.mins.data() : nullptr};
    float* dd = to_device(P.d);
    float* ddmin = to_device(P.dmin);
    float* dsc = to_device(P.scales);
    float* dmn = to_device(P.mins);
    const k::GGUFParams dp{dd, L.has_dmin ? ddmin : nullptr, L.has_scales ? dsc : nullptr, L.has_mins ? dmn : nullptr};
    for (k::DType dtype : kDTypes) {
      const size_t es = elem_size(dtype);
      const auto w = to_storage(wf, dtype), g = to_storage(gf, dtype);
      // CPU
      std::vector<unsigned char> y(n * es), dw(n * es), dw_ste(n * es);
      std::vector<int8_t> codes(n);
      std::vector<float> gd(n_blocks), gdmin(n_blocks), gsc(n_blocks * ns), gmn(n_blocks * ns);
      k::cpu::gguf_forward(tc.type, dtype, w.data(), y.data(), codes.data(), 0, n_blocks, hp);
      k::cpu::gguf_backward(tc.type, dtype, w.data(), g.data(), dw.data(), 0, n_blocks, hp,
                            {gd.data(), L.has_dmin ? gdmin.data() : nullptr, L.has_scales ? gsc.data() : nullptr,
                             L.has_mins ? gmn.data() : nullptr});
      // CUDA
      unsigned char* dw_dev = to_device(w);
      unsigned char* dg_dev = to_device(g);
      unsigned char* y_dev = to_device(std::vector<unsigned char>(n * es));
      unsigned char* dwo_dev = to_device(std::vector<unsigned char>(n * es));
      unsigned char* dws_dev = to_device(std::vector<unsigned char>(n * es));
      int8_t* c_dev = to_device(std::vector<int8_t>(n));
      float* gd_dev = to_device(std::vector<float>(n_blocks));
      float* gdmin_dev = to_device(std::vector<float>(n_blocks));
      float* gsc_dev = to_device(std::vector<float>(n_blocks * ns));
      float* gmn_dev = to_device(std::vector<float>(n_blocks * ns));
      k::cuda::gguf_forward(tc.type, dtype, dw_dev, y_dev, c_dev, n_blocks, dp, nullptr);
      k::cuda::gguf_backward(tc.type, dtype, dw_dev, dg_dev, dwo_dev, n_blocks, dp,
                             {gd_dev, L.has_dmin ? gdmin_dev : nullptr, L.has_scales ? gsc_dev : nullptr,
                              L.has_mins ? gmn_dev : nullptr},
                             nullptr);
      k::cuda::gguf_backward(tc.type, dtype, dw_dev, dg_dev, dws_dev, n_blocks, dp, {nullptr, nullptr, nullptr, nullptr},
                             nullptr);
      CUDA_OK(cudaDeviceSynchronize());
      const std::string what = std::string(tc.name) + " dtype " + std::to_string(int(dtype)) + " blocks " +
                               std::to_string(n_blocks);
      EXPECT_EQ(to_host(y_dev, n * es), y) << what << " y";
      EXPECT_EQ(to_host(c_dev, n), codes) << what << " codes";
      EXPECT_EQ(to_host(dwo_dev, n * es), dw) << what << " dw";
      EXPECT_EQ(to_host(dws_dev, n * es), dw) << what << " dw (no parameter gradients)";
      auto same_bits = [&](const float* dev, const std::vector<float>& host, const char* name) {
        const auto got = to_host(dev, host.size());
        EXPECT_EQ(0, std::memcmp(got.data(), host.data(), host.size() * 4)) << what << " " << name;
      };
      same_bits(gd_dev, gd, "grad d");
      if (L.has_dmin) same_bits(gdmin_dev, gdmin, "grad dmin");
      if (L.has_scales) same_bits(gsc_dev, gsc, "grad scales");
      if (L.has_mins) same_bits(gmn_dev, gmn, "grad mins");
      for (void* p : {(void*)dw_dev, (void*)dg_dev, (void*)y_dev, (void*)dwo_dev, (void*)dws_dev, (void*)c_dev,
                      (void*)gd_dev, (void*)gdmin_dev, (void*)gsc_dev, (void*)gmn_dev})
        cudaFree(p);
    }
    for (float* p : {dd, ddmin, dsc, dmn}) cudaFree(p);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GGUFLatticeCuda, ::testing::Range(0, 11),
                         [](const ::testing::TestParamInfo<int>& info) { return std::string(kTypes[info.param].name); });

}  // namespace
