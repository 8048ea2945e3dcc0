// Compares the CUDA kernels (qat::kernels::cuda) with the CPU reference (qat::kernels::cpu) on
// random inputs: outputs and dx bit for bit, LSQ accumulators up to summation order. Torch-free;
// skips when no CUDA device is present.
//
// Standalone build (CMake target test_kernels_cuda does the same):
//   nvcc -std=c++17 -arch=sm_90 --fmad=false -I csrc tests/cpp/cuda/test_fake_quant_cuda.cu
//        csrc/kernels/cuda/fake_quant.cu csrc/kernels/cpu/fake_quant.cpp -lgtest -lgtest_main
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_test_support.cuh"
#include "kernels/fake_quant.h"

namespace {

using qat::kernels::CastFormat;
using qat::kernels::ChannelLayout;
using qat::kernels::DType;
using qat::kernels::QParams;
using qat::kernels::QuantRange;
namespace qk = qat::kernels;

using namespace qat_cuda_test;

// ---- random inputs ----

struct Problem {
  ChannelLayout layout;
  QuantRange range;
  std::vector<float> scale, zero_point;
};

std::vector<float> random_scales(int64_t channels, std::mt19937_64& rng, bool specials) {
  std::uniform_real_distribution<float> log_s(std::log(1e-3f), std::log(2.0f));
  std::vector<float> s(channels);
  for (auto& v : s) v = std::exp(log_s(rng));
  if (specials && channels >= 8) {
    // Values effective_scale clamps: zero, negative, NaN, below 2^-23, above 2^100.
    s[1] = 0.0f;
    s[2] = -0.5f;
    s[3] = std::nanf("");
    s[4] = 1e-30f;
    s[5] = 1e35f;
    s[6] = qk::kMinScale;
  }
  return s;
}

std::vector<float> random_zero_points(int64_t channels, QuantRange r, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> zp(r.quant_min - 3.0f, r.quant_max + 3.0f);
  std::vector<float> z(channels);
  for (int64_t c = 0; c < channels; ++c) {
    float v = zp(rng);
    if (c % 5 == 1) v = std::floor(v) + 0.5f;        // ties for round_half_even
    if (c % 7 == 2) v = std::round(v);               // integral, the common case
    if (c % 11 == 3) v = std::nanf("");              // NaN zero point clamps to quant_min
    z[c] = v;
  }
  return z;
}

int64_t channel_of(int64_t i, ChannelLayout l) { return (i / l.inner) % l.channels; }

// x around the quantization grid of its channel, with exact ties, saturating values and
// non-finite values.
HostTensor random_x(DType d, int64_t n, const Problem& p, std::mt19937_64& rng) {
  HostTensor x(d, n);
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    int64_t c = channel_of(i, p.layout);
    float s = qk::effective_scale(p.scale[c]);
    float zp = qk::effective_zero_point(p.zero_point[c], p.range.quant_min, p.range.quant_max);
    float lo = (p.range.quant_min - zp - 4.0f) * s, hi = (p.range.quant_max - zp + 4.0f) * s;
    float pick = u01(rng);
    if (pick < 0.75f) {
      x.set(i, lo + (hi - lo) * u01(rng));
    } else if (pick < 0.88f) {
      float k = std::floor(p.range.quant_min - zp + (p.range.quant_max - p.range.quant_min + 2) * u01(rng));
      x.set(i, (k + 0.5f) * s);  // a tie after scaling (when representable)
    } else if (pick < 0.95f) {
      x.set(i, (u01(rng) - 0.5f) * 1e4f * s);
    } else {
      uint32_t r = static_cast<uint32_t>(rng());
      switch (r % 8) {
        case 0: x.set(i, INFINITY); break;
        case 1: x.set(i, -INFINITY); break;
        case 2: x.set(i, 0.0f); break;
        case 3: x.set(i, -0.0f); break;
        case 4: x.set(i, 1e-40f); break;  // fp32 subnormal
        default: {
          // NaN with random sign and payload, written as storage bits.
          uint32_t sign = (r >> 8) & 1u;
          if (d == DType::f32)
            x.set_bits(i, (sign << 31) | 0x7f800000u | (((r >> 9) & 0x3fffffu) | 1u));
          else if (d == DType::f16)
            x.set_bits(i, (sign << 15) | 0x7c00u | (((r >> 9) & 0x3ffu) | 1u));
          else
            x.set_bits(i, (sign << 15) | 0x7f80u | (((r >> 9) & 0x7fu) | 1u));
        }
      }
    }
  }
  return x;
}

HostTensor random_dy(DType d, int64_t n, std::mt19937_64& rng, bool specials) {
  HostTensor g(d, n);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) {
    float v = u(rng);
    if (i % 97 == 5) v = -0.0f;
    if (specials && i % 53 == 7) v = (i % 3 == 0) ? std::nanf("") : (i % 2 ? INFINITY : -INFINITY);
    g.set(i, v);
  }
  return g;
}

// ---- comparisons ----

::testing::AssertionResult same_bits(const HostTensor& want, const HostTensor& got, int64_t n,
                                     bool nan_equivalent) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (want.bits(i) == got.bits(i)) continue;
    if (nan_equivalent && want.is_nan(i) && got.is_nan(i)) continue;
    if (first < 0) first = i;
    ++bad;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%lld mismatches of %lld; first at %lld: cpu 0x%x (%.9g) cuda 0x%x (%.9g)",
                static_cast<long long>(bad), static_cast<long long>(n),
                static_cast<long long>(first), want.bits(first), want.get(first), got.bits(first),
                got.get(first));
  return ::testing::AssertionFailure() << buf;
}

::testing::AssertionResult close_sums(const std::vector<double>& want,
                                      const std::vector<double>& got,
                                      const std::vector<double>& abs_sum, const char* what) {
  for (size_t c = 0; c < want.size(); ++c) {
    double a = want[c], b = got[c];
    if (std::isnan(a) && std::isnan(b)) continue;
    if (a == b) continue;
    double tol = 1e-9 * (std::fabs(a) + abs_sum[c]) + 1e-300;
    if (std::fabs(a - b) <= tol) continue;
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s[%zu]: cpu %.17g cuda %.17g (sum |terms| %.6g)", what, c,
                  a, b, abs_sum[c]);
    return ::testing::AssertionFailure() << buf;
  }
  return ::testing::AssertionSuccess();
}

// Sum of |term| per channel, the scale of the rounding differences between summation orders.
void lsq_abs_sums(const HostTensor& x, const HostTensor& dy, int64_t n, const Problem& p,
                  float grad_factor, std::vector<double>* abs_s, std::vector<double>* abs_z) {
  abs_s->assign(p.layout.channels, 0.0);
  abs_z->assign(p.layout.channels, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t c = channel_of(i, p.layout);
    float s = qk::effective_scale(p.scale[c]);
    float zp = qk::effective_zero_point(p.zero_point[c], p.range.quant_min, p.range.quant_max);
    qk::LsqGrads g = qk::lsq_grads(x.get(i), dy.get(i), s, 1.0f / s, zp, p.range.quant_min,
                                   p.range.quant_max, grad_factor);
    (*abs_s)[c] += std::fabs(double(g.dscale));
    (*abs_z)[c] += std::fabs(double(g.dzero_point));
  }
}

// ---- test cases ----

struct Case {
  const char* name;
  int64_t n;
  ChannelLayout layout;
};

const Case kCases[] = {
    {"tensor_n1", 1, {1, 1}},
    {"tensor_n7", 7, {7, 1}},
    {"tensor_n4096", 4096, {4096, 1}},
    {"tensor_n1000003", 1000003, {1000003, 1}},
    {"axis0_long", 48 * 4099, {4099, 48}},
    {"axis0_1024", 40 * 1024, {1024, 40}},
    {"axis0_short36", 256 * 36, {36, 256}},
    {"axis0_short9", 100 * 9, {9, 100}},
    {"axis_middle", 6 * 16 * 130, {130, 16}},
    {"axis1_size1", 5 * 1 * 33, {33, 1}},  // a single channel with inner < n
    {"last_768", 1303 * 768, {1, 768}},
    {"last_37", 2001 * 37, {1, 37}},
    {"last_3", 5000 * 3, {1, 3}},
    {"last_wide", 3 * 100000, {1, 100000}},
    {"last_ragged", 1000003, {1, 8}},  // partial last row
    {"group32", 32 * 8192, {32, 8192}},
    {"group128", 128 * 1000, {128, 1000}},
    {"group512", 512 * 300, {512, 300}},
    {"group7", 7 * 3001, {7, 3001}},
    {"segments_ragged", 1000003, {1000, 7}},       // partial last segment
    {"segments_long_ragged", 1000003, {2048, 5}},  // long segments, partial last one
    {"segments_huge_ragged", 3000001, {1200000, 2}},  // several pieces per segment, last partial
};

struct Offsets {
  int64_t x, y, dy, dx;
};
const Offsets kOffsets[] = {{0, 0, 0, 0}, {1, 1, 1, 1}, {3, 0, 5, 2}};

const QuantRange kRanges[] = {{-128.0f, 127.0f}, {0.0f, 255.0f}, {-8.0f, 7.0f}, {-65536.0f, 65535.0f}};

Problem make_problem(const Case& cs, int index, std::mt19937_64& rng) {
  Problem p;
  p.layout = cs.layout;
  p.range = kRanges[index % 4];
  p.scale = random_scales(cs.layout.channels, rng, true);
  p.zero_point = random_zero_points(cs.layout.channels, p.range, rng);
  return p;
}

using Param = std::tuple<DType, int, int>;  // dtype, case, offsets

class FakeQuantCuda : public ::testing::TestWithParam<Param> {};

TEST_P(FakeQuantCuda, MatchesCpu) {
  REQUIRE_GPU();
  const DType dtype = std::get<0>(GetParam());
  const Case& cs = kCases[std::get<1>(GetParam())];
  const Offsets& off = kOffsets[std::get<2>(GetParam())];
  const int64_t n = cs.n;
  std::mt19937_64 rng(1234 + 17 * std::get<1>(GetParam()) + 101 * static_cast<int>(dtype));
  Problem p = make_problem(cs, std::get<1>(GetParam()), rng);
  const float grad_factor = 0.37f;

  HostTensor x = random_x(dtype, n, p, rng);
  HostTensor dy = random_dy(dtype, n, rng, false);

  DeviceArray<float> d_scale(p.scale), d_zp(p.zero_point);
  const QParams host_qp{p.scale.data(), p.zero_point.data()};
  const QParams dev_qp{d_scale.p, d_zp.p};
  DeviceTensor d_x(dtype, n, off.x), d_y(dtype, n, off.y), d_dy(dtype, n, off.dy),
      d_dx(dtype, n, off.dx);
  d_x.upload(x);
  d_dy.upload(dy);
  Stream stream;

  // Forward.
  {
    HostTensor want(dtype, n), got(dtype, n);
    qk::cpu::fake_quant_forward(dtype, x.data(), want.data(), 0, n, p.layout, host_qp, p.range);
    qk::cuda::fake_quant_forward(dtype, d_x.ptr(), d_y.ptr(), n, p.layout, dev_qp, p.range,
                                 stream.s);
    stream.sync();
    d_y.download(got);
    EXPECT_TRUE(same_bits(want, got, n, false)) << "forward " << cs.name;
  }
  // Straight-through backward.
  {
    HostTensor want(dtype, n), got(dtype, n);
    qk::cpu::fake_quant_backward(dtype, x.data(), dy.data(), want.data(), 0, n, p.layout, host_qp,
                                 p.range, grad_factor, nullptr, nullptr);
    qk::cuda::fake_quant_backward(dtype, d_x.ptr(), d_dy.ptr(), d_dx.ptr(), n, p.layout, dev_qp,
                                  p.range, grad_factor, nullptr, nullptr, stream.s);
    stream.sync();
    d_dx.download(got);
    EXPECT_TRUE(same_bits(want, got, n, false)) << "ste backward " << cs.name;
  }
  // LSQ backward.
  {
    const int64_t C = p.layout.channels;
    HostTensor want(dtype, n), got(dtype, n);
    std::vector<double> want_s(C, 0.0), want_z(C, 0.0);
    qk::cpu::fake_quant_backward(dtype, x.data(), dy.data(), want.data(), 0, n, p.layout, host_qp,
                                 p.range, grad_factor, want_s.data(), want_z.data());
    DeviceArray<double> acc_s(std::vector<double>(C, 0.0)), acc_z(std::vector<double>(C, 0.0));
    qk::cuda::fake_quant_backward(dtype, d_x.ptr(), d_dy.ptr(), d_dx.ptr(), n, p.layout, dev_qp,
                                  p.range, grad_factor, acc_s.p, acc_z.p, stream.s);
    stream.sync();
    d_dx.download(got);
    EXPECT_TRUE(same_bits(want, got, n, false)) << "lsq dx " << cs.name;
    std::vector<double> abs_s, abs_z;
    lsq_abs_sums(x, dy, n, p, grad_factor, &abs_s, &abs_z);
    EXPECT_TRUE(close_sums(want_s, acc_s.download(), abs_s, "dscale")) << cs.name;
    EXPECT_TRUE(close_sums(want_z, acc_z.download(), abs_z, "dzero_point")) << cs.name;
  }
  // fake_cast (layout-independent; every format).
  for (CastFormat fmt : {CastFormat::fp16, CastFormat::bf16, CastFormat::fp8_e4m3,
                         CastFormat::fp8_e5m2}) {
    HostTensor want(dtype, n), got(dtype, n);
    qk::cpu::fake_cast(dtype, x.data(), want.data(), 0, n, fmt);
    qk::cuda::fake_cast(dtype, d_x.ptr(), d_y.ptr(), n, fmt, stream.s);
    stream.sync();
    d_y.download(got);
    EXPECT_TRUE(same_bits(want, got, n, false)) << "fake_cast fmt " << static_cast<int>(fmt);
  }
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::string(dtype_name(std::get<0>(info.param))) + "_" +
         kCases[std::get<1>(info.param)].name + "_off" + std::to_string(std::get<2>(info.param));
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, FakeQuantCuda,
    ::testing::Combine(::testing::Values(DType::f32, DType::f16, DType::bf16),
                       ::testing::Range(0, static_cast<int>(sizeof(kCases) / sizeof(kCases[0]))),
                       ::testing::Range(0, static_cast<int>(sizeof(kOffsets) / sizeof(kOffsets[0])))),
    param_name);

// NaN / inf gradients: dx may differ in NaN bits only (GPU arithmetic returns the canonical NaN
// where x86 propagates the operand's), so NaNs compare equal among themselves.
TEST(FakeQuantCudaSpecial, NonFiniteGradients) {
  REQUIRE_GPU();
  Stream stream;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    for (int ci : {3, 6, 10, 15}) {
      const Case& cs = kCases[ci];
      const int64_t n = cs.n;
      std::mt19937_64 rng(99 + ci);
      Problem p = make_problem(cs, ci, rng);
      HostTensor x = random_x(dtype, n, p, rng);
      HostTensor dy = random_dy(dtype, n, rng, true);
      DeviceArray<float> d_scale(p.scale), d_zp(p.zero_point);
      DeviceTensor d_x(dtype, n, 0), d_dy(dtype, n, 0), d_dx(dtype, n, 0);
      d_x.upload(x);
      d_dy.upload(dy);
      const int64_t C = p.layout.channels;
      for (bool lsq : {false, true}) {
        HostTensor want(dtype, n), got(dtype, n);
        std::vector<double> want_s(C, 0.0), want_z(C, 0.0);
        qk::cpu::fake_quant_backward(dtype, x.data(), dy.data(), want.data(), 0, n, p.layout,
                                     QParams{p.scale.data(), p.zero_point.data()}, p.range, 0.5f,
                                     lsq ? want_s.data() : nullptr, lsq ? want_z.data() : nullptr);
        DeviceArray<double> acc_s(std::vector<double>(C, 0.0)), acc_z(std::vector<double>(C, 0.0));
        qk::cuda::fake_quant_backward(dtype, d_x.ptr(), d_dy.ptr(), d_dx.ptr(), n, p.layout,
                                      QParams{d_scale.p, d_zp.p}, p.range, 0.5f,
                                      lsq ? acc_s.p : nullptr, lsq ? acc_z.p : nullptr, stream.s);
        stream.sync();
        d_dx.download(got);
        EXPECT_TRUE(same_bits(want, got, n, true))
            << dtype_name(dtype) << " " << cs.name << (lsq ? " lsq" : " ste");
        if (lsq) {
          std::vector<double> abs_s, abs_z;
          lsq_abs_sums(x, dy, n, p, 0.5f, &abs_s, &abs_z);
          EXPECT_TRUE(close_sums(want_s, acc_s.download(), abs_s, "dscale")) << cs.name;
          EXPECT_TRUE(close_sums(want_z, acc_z.download(), abs_z, "dzero_point")) << cs.name;
        }
      }
    }
  }
}

// In place: y == x for the forward, dx == dy for the backward.
TEST(FakeQuantCudaSpecial, InPlace) {
  REQUIRE_GPU();
  Stream stream;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    for (int ci : {3, 5, 8, 11, 15}) {
      const Case& cs = kCases[ci];
      const int64_t n = cs.n;
      std::mt19937_64 rng(7 + ci);
      Problem p = make_problem(cs, ci, rng);
      HostTensor x = random_x(dtype, n, p, rng);
      HostTensor dy = random_dy(dtype, n, rng, false);
      DeviceArray<float> d_scale(p.scale), d_zp(p.zero_point);
      const QParams hq{p.scale.data(), p.zero_point.data()}, dq{d_scale.p, d_zp.p};
      DeviceTensor d_x(dtype, n, 1), d_dy(dtype, n, 1);

      HostTensor want(dtype, n), got(dtype, n);
      qk::cpu::fake_quant_forward(dtype, x.data(), want.data(), 0, n, p.layout, hq, p.range);
      d_x.upload(x);
      qk::cuda::fake_quant_forward(dtype, d_x.ptr(), d_x.ptr(), n, p.layout, dq, p.range, stream.s);
      stream.sync();
      d_x.download(got);
      EXPECT_TRUE(same_bits(want, got, n, false)) << "forward in place " << cs.name;

      const int64_t C = p.layout.channels;
      std::vector<double> ws(C, 0.0), wz(C, 0.0);
      qk::cpu::fake_quant_backward(dtype, x.data(), dy.data(), want.data(), 0, n, p.layout, hq,
                                   p.range, 1.0f, ws.data(), wz.data());
      d_x.upload(x);
      d_dy.upload(dy);
      DeviceArray<double> acc_s(std::vector<double>(C, 0.0)), acc_z(std::vector<double>(C, 0.0));
      qk::cuda::fake_quant_backward(dtype, d_x.ptr(), d_dy.ptr(), d_dy.ptr(), n, p.layout, dq,
                                    p.range, 1.0f, acc_s.p, acc_z.p, stream.s);
      stream.sync();
      d_dy.download(got);
      EXPECT_TRUE(same_bits(want, got, n, false)) << "lsq in place " << cs.name;
      std::vector<double> abs_s, abs_z;
      lsq_abs_sums(x, dy, n, p, 1.0f, &abs_s, &abs_z);
      EXPECT_TRUE(close_sums(ws, acc_s.download(), abs_s, "dscale")) << cs.name;
      EXPECT_TRUE(close_sums(wz, acc_z.download(), abs_z, "dzero_point")) << cs.name;
    }
  }
}

// n == 0 launches nothing and touches no pointer.
TEST(FakeQuantCudaSpecial, Empty) {
  REQUIRE_GPU();
  const QParams qp{nullptr, nullptr};
  const QuantRange r{-128.0f, 127.0f};
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    qk::cuda::fake_quant_forward(dtype, nullptr, nullptr, 0, {1, 1}, qp, r, nullptr);
    qk::cuda::fake_quant_backward(dtype, nullptr, nullptr, nullptr, 0, {1, 4}, qp, r, 1.0f,
                                  nullptr, nullptr, nullptr);
    qk::cuda::fake_cast(dtype, nullptr, nullptr, 0, CastFormat::fp8_e4m3, nullptr);
  }
  EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
}

}  // namespace
