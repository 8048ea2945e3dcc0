// Compares the CUDA observer kernels (qat::kernels::cuda, csrc/kernels/cuda/observe.cu) with the
// CPU kernels of the same name (csrc/kernels/cpu/observe.cpp) on random inputs with NaN, inf,
// signed zeros, subnormals and channels without a finite element, for every layout family and
// fp32 / fp16 / bf16, at aligned and unaligned addresses. Torch-free; skips when no CUDA device
// is present.
//
// What must match how:
//  - choose_qparams, update_running_minmax, histogram counts, the fused kernel's scale /
//    zero_point and y: bit for bit;
//  - min / max (and running min / max and histogram range, which inherit them): equal as floats,
//    i.e. bit for bit except that -0.0 and +0.0 compare equal (the CPU keeps the first zero it
//    meets, the GPU prefers -0.0 for min and +0.0 for max whatever the order);
//  - mse_errors: same float terms summed in another order, relative difference <= 2e-5 (both
//    sides add partial float sums of at most 64 non-negative terms in double).
//
// Standalone build (CMake target test_observe_cuda does the same):
//   nvcc -std=c++17 -arch=sm_90 --fmad=false -I csrc tests/cpp/cuda/test_observe_cuda.cu
//        csrc/kernels/cuda/observe.cu csrc/kernels/cpu/observe.cpp csrc/kernels/cpu/fake_quant.cpp
//        -lgtest -lgtest_main
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
#include "kernels/observe.h"

namespace {

using qat::kernels::Candidates;
using qat::kernels::ChannelLayout;
using qat::kernels::DType;
using qat::kernels::QuantRange;
namespace qk = qat::kernels;

using namespace qat_cuda_test;

uint32_t fbits(float f) { return qk::float_bits(f); }

// ---- random inputs ----

int64_t channel_of(int64_t i, ChannelLayout l) { return (i / l.inner) % l.channels; }

float special_value(DType d, std::mt19937_64& rng, HostTensor* x, int64_t i) {
  const uint32_t r = static_cast<uint32_t>(rng());
  switch (r % 9) {
    case 0: return INFINITY;
    case 1: return -INFINITY;
    case 2: return 0.0f;
    case 3: return -0.0f;
    case 4: return 1e-40f;   // fp32 subnormal (0 in fp16 / bf16 storage... or subnormal bf16)
    case 5: return -3e-8f;   // fp16 subnormal
    default: {
      // NaN with random sign and payload, written as storage bits.
      const uint32_t sign = (r >> 8) & 1u;
      if (d == DType::f32)
        x->set_bits(i, (sign << 31) | 0x7f800000u | (((r >> 9) & 0x3fffffu) | 1u));
      else if (d == DType::f16)
        x->set_bits(i, (sign << 15) | 0x7c00u | (((r >> 9) & 0x3ffu) | 1u));
      else
        x->set_bits(i, (sign << 15) | 0x7f80u | (((r >> 9) & 0x7fu) | 1u));
      return NAN;  // caller must not overwrite
    }
  }
}

// Per channel a random center and spread (channels 5, 18, 31, ... hold no finite element when
// there are several channels), specials at `special_rate`, and repeated values.
HostTensor random_x(DType d, int64_t n, ChannelLayout l, std::mt19937_64& rng,
                    double special_rate = 0.04, bool dead_channels = true) {
  HostTensor x(d, n);
  std::uniform_real_distribution<float> u01(0.0f, 1.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> center(l.channels), spread(l.channels);
  for (int64_t c = 0; c < l.channels; ++c) {
    center[c] = normal(rng) * std::pow(10.0f, -2.0f + 4.0f * u01(rng));
    spread[c] = std::pow(10.0f, -3.0f + 5.0f * u01(rng));
    if (c % 7 == 3) center[c] = 0.0f;  // straddles zero
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t c = channel_of(i, l);
    const bool dead = dead_channels && l.channels > 1 && c % 13 == 5;
    const float pick = u01(rng);
    if (dead || pick < special_rate) {
      float v = special_value(d, rng, &x, i);
      if (dead && (v == v) && std::isfinite(v)) v = (i % 2) ? INFINITY : -INFINITY;
      if (v == v) x.set(i, v);
    } else if (pick < special_rate + 0.03) {
      x.set(i, center[c] + ((i % 2) ? spread[c] : -spread[c]));  // repeated extremes
    } else {
      x.set(i, center[c] + spread[c] * (2.0f * u01(rng) - 1.0f));
    }
  }
  return x;
}

// ---- comparisons ----

// Equal as floats: bit for bit, or both zeros of any sign, or both NaN.
bool same_value(float a, float b) {
  if (fbits(a) == fbits(b)) return true;
  if (a == 0.0f && b == 0.0f) return true;
  return std::isnan(a) && std::isnan(b);
}

::testing::AssertionResult same_values(const std::vector<float>& want, const std::vector<float>& got,
                                       const char* what) {
  if (want.size() != got.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  for (size_t i = 0; i < want.size(); ++i) {
    if (same_value(want[i], got[i])) continue;
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s[%zu]: cpu %.9g (0x%08x) cuda %.9g (0x%08x)", what, i,
                  want[i], fbits(want[i]), got[i], fbits(got[i]));
    return ::testing::AssertionFailure() << buf;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult same_bits(const std::vector<float>& want, const std::vector<float>& got,
                                     const char* what) {
  if (want.size() != got.size()) return ::testing::AssertionFailure() << what << ": sizes differ";
  for (size_t i = 0; i < want.size(); ++i) {
    if (fbits(want[i]) == fbits(got[i])) continue;
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s[%zu]: cpu %.9g (0x%08x) cuda %.9g (0x%08x)", what, i,
                  want[i], fbits(want[i]), got[i], fbits(got[i]));
    return ::testing::AssertionFailure() << buf;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult same_tensor_bits(const HostTensor& want, const HostTensor& got,
                                            int64_t n, const char* what) {
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (want.bits(i) == got.bits(i)) continue;
    if (first < 0) first = i;
    ++bad;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  char buf[256];
  std::snprintf(buf, sizeof(buf), "%s: %lld mismatches of %lld; first at %lld: cpu 0x%x (%.9g) cuda 0x%x (%.9g)",
                what, static_cast<long long>(bad), static_cast<long long>(n),
                static_cast<long long>(first), want.bits(first), want.get(first), got.bits(first),
                got.get(first));
  return ::testing::AssertionFailure() << buf;
}

// ---- layouts ----

struct Case {
  const char* name;
  int64_t n;
  ChannelLayout layout;
};

// Every slot mode of the chunked min / max (one slot, slot per channel, slot per segment when
// channels > 2048) and every MSE family (staged long / short segments, columns).
const Case kCases[] = {
    {"tensor_n1", 1, {1, 1}},
    {"tensor_n7", 7, {7, 1}},
    {"tensor_n4096", 4096, {4096, 1}},
    {"tensor_n1000003", 1000003, {1000003, 1}},
    {"axis0_long", 48 * 4099, {4099, 48}},
    {"axis0_short9", 100 * 9, {9, 100}},
    {"axis_middle", 6 * 16 * 130, {130, 16}},
    {"axis1_size1", 5 * 1 * 33, {33, 1}},
    {"inner_ge_n", 4000, {5000, 3}},
    {"last_37", 2001 * 37, {1, 37}},
    {"last_768", 523 * 768, {1, 768}},
    {"last_3000", 300 * 3000, {1, 3000}},      // > 2048 channels, inner 1
    {"last_ragged", 100003, {1, 8}},           // partial last row
    {"group32", 32 * 8192, {32, 8192}},        // > 2048 channels, short segments
    {"group7", 7 * 3001, {7, 3001}},
    {"group1024", 1024 * 100, {1024, 100}},
    {"group1025", 1025 * 50, {1025, 50}},
    {"segments_ragged", 1000003, {1000, 7}},   // partial last segment
    {"segments_many_ragged", 500001, {3, 2500}},
};
constexpr int kNumCases = sizeof(kCases) / sizeof(kCases[0]);
const int64_t kOffsets[] = {0, 1, 3};

// ---- choose_qparams ----

TEST(ObserveCuda, ChooseQparams) {
  REQUIRE_GPU();
  Stream stream;
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int64_t n = 4099;
  std::vector<float> lo(n), hi(n);
  for (int64_t i = 0; i < n; ++i) {
    float a = u(rng) * std::pow(10.0f, 6.0f * u(rng)), b = u(rng) * std::pow(10.0f, 6.0f * u(rng));
    switch (i % 11) {
      case 0: a = INFINITY, b = -INFINITY; break;          // never observed
      case 1: a = b = 0.0f; break;
      case 2: a = -0.0f, b = 0.0f; break;
      case 3: a = b = 1.5f; break;                          // one value
      case 4: a = -3e38f, b = 3e38f; break;
      case 5: a = 1e-40f, b = 2e-40f; break;
      case 6: a = std::fabs(a), b = a + std::fabs(b); break;  // positive only
      case 7: b = -std::fabs(b), a = b - std::fabs(a); break; // negative only
      case 8: a = 2.0f, b = 1.0f; break;                    // min > max
      default:
        if (a > b) std::swap(a, b);
    }
    lo[i] = a;
    hi[i] = b;
  }
  DeviceArray<float> d_lo(lo), d_hi(hi), d_s{std::vector<float>(n)}, d_z{std::vector<float>(n)};
  const int32_t ranges[][2] = {{-128, 127}, {0, 255}, {-8, 7}, {0, 15}, {-65536, 65535}, {0, 1}};
  for (const auto& r : ranges) {
    for (bool sym : {false, true}) {
      std::vector<float> ws(n), wz(n);
      qk::cpu::choose_qparams(lo.data(), hi.data(), n, r[0], r[1], sym, ws.data(), wz.data());
      qk::cuda::choose_qparams(d_lo.p, d_hi.p, n, r[0], r[1], sym, d_s.p, d_z.p, stream.s);
      stream.sync();
      EXPECT_TRUE(same_bits(ws, d_s.download(), "scale")) << r[0] << ".." << r[1] << " sym " << sym;
      EXPECT_TRUE(same_bits(wz, d_z.download(), "zero_point")) << r[0] << ".." << r[1] << " sym " << sym;
    }
  }
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

// ---- update_running_minmax ----

TEST(ObserveCuda, UpdateRunningMinmax) {
  REQUIRE_GPU();
  Stream stream;
  std::mt19937_64 rng(6);
  std::uniform_real_distribution<float> u(-10.0f, 10.0f);
  const int64_t C = 2053;
  std::vector<float> cur_lo(C), cur_hi(C), run_lo(C), run_hi(C);
  for (int64_t c = 0; c < C; ++c) {
    float a = u(rng), b = u(rng);
    if (a > b) std::swap(a, b);
    cur_lo[c] = a;
    cur_hi[c] = b;
    if (c % 5 == 0) cur_lo[c] = INFINITY, cur_hi[c] = -INFINITY;  // empty batch channel
    float p = u(rng), q = u(rng);
    if (p > q) std::swap(p, q);
    run_lo[c] = p;
    run_hi[c] = q;
    if (c % 3 == 0) run_lo[c] = INFINITY, run_hi[c] = -INFINITY;  // never observed
    if (c % 7 == 1) run_lo[c] = -0.0f, cur_lo[c] = 0.0f;
  }
  DeviceArray<float> d_cl(cur_lo), d_ch(cur_hi), d_rl(run_lo), d_rh(run_hi);
  for (int64_t enabled : {int64_t{0}, int64_t{1}, int64_t{7}}) {
    for (bool ma : {false, true}) {
      for (float avg : {0.01f, 0.5f, 1.0f, 0.0f}) {
        d_rl.upload(run_lo);
        d_rh.upload(run_hi);
        DeviceArray<int64_t> d_en(std::vector<int64_t>{enabled});
        std::vector<float> wl = run_lo, wh = run_hi;
        if (enabled)
          for (int64_t c = 0; c < C; ++c)
            qk::update_running_minmax(&wl[c], &wh[c], cur_lo[c], cur_hi[c], ma, avg);
        qk::cuda::update_running_minmax(d_cl.p, d_ch.p, d_rl.p, d_rh.p, C, d_en.p, ma, avg, stream.s);
        stream.sync();
        EXPECT_TRUE(same_bits(wl, d_rl.download(), "run_min")) << enabled << " " << ma << " " << avg;
        EXPECT_TRUE(same_bits(wh, d_rh.download(), "run_max")) << enabled << " " << ma << " " << avg;
      }
    }
  }
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

// ---- minmax ----

using Param = std::tuple<DType, int, int>;  // dtype, case, offset

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::string(dtype_name(std::get<0>(info.param))) + "_" +
         kCases[std::get<1>(info.param)].name + "_off" +
         std::to_string(kOffsets[std::get<2>(info.param)]);
}

class MinmaxCuda : public ::testing::TestWithParam<Param> {};

TEST_P(MinmaxCuda, MatchesCpu) {
  REQUIRE_GPU();
  const DType dtype = std::get<0>(GetParam());
  const Case& cs = kCases[std::get<1>(GetParam())];
  const int64_t off = kOffsets[std::get<2>(GetParam())];
  const int64_t n = cs.n, C = cs.layout.channels;
  std::mt19937_64 rng(100 + 13 * std::get<1>(GetParam()) + 7 * static_cast<int>(dtype));
  Stream stream;
  DeviceTensor d_x(dtype, n, off);
  std::vector<float> lo(C, INFINITY), hi(C, -INFINITY);
  DeviceArray<float> d_lo(lo), d_hi(hi);
  DeviceArray<int64_t> on(std::vector<int64_t>{1}), off_flag(std::vector<int64_t>{0});
  // Three batches folded into the same arrays: fresh (+inf / -inf), then finite running values,
  // then a disabled call that must change nothing.
  for (int batch = 0; batch < 3; ++batch) {
    const HostTensor x = random_x(dtype, n, cs.layout, rng, batch == 1 ? 0.3 : 0.04);
    d_x.upload(x);
    const bool enabled = batch != 2;
    if (enabled) qk::cpu::minmax(dtype, x.data(), 0, n, cs.layout, lo.data(), hi.data());
    qk::cuda::minmax(dtype, d_x.ptr(), n, cs.layout, d_lo.p, d_hi.p,
                     batch == 0 ? nullptr : (enabled ? on.p : off_flag.p), stream.s);
    stream.sync();
    EXPECT_TRUE(same_values(lo, d_lo.download(), "min")) << cs.name << " batch " << batch;
    EXPECT_TRUE(same_values(hi, d_hi.download(), "max")) << cs.name << " batch " << batch;
    // The GPU keeps its own zeros; continue from the CPU's values on both sides.
    d_lo.upload(lo);
    d_hi.upload(hi);
  }
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, MinmaxCuda,
                         ::testing::Combine(::testing::Values(DType::f32, DType::f16, DType::bf16),
                                            ::testing::Range(0, kNumCases), ::testing::Range(0, 3)),
                         param_name);

// The zero rule: min prefers -0.0 and max +0.0, whatever the order and the layout.
TEST(ObserveCuda, MinmaxSignedZeros) {
  REQUIRE_GPU();
  Stream stream;
  const int64_t n = 100000;
  HostTensor x(DType::f32, n);
  for (int64_t i = 0; i < n; ++i) x.set(i, (i * 7919) % 3 == 0 ? -0.0f : 0.0f);
  DeviceTensor d_x(DType::f32, n, 0);
  d_x.upload(x);
  for (ChannelLayout l : {ChannelLayout{n, 1}, ChannelLayout{1, 10}, ChannelLayout{100, 1000}}) {
    DeviceArray<float> d_lo(std::vector<float>(l.channels, INFINITY));
    DeviceArray<float> d_hi(std::vector<float>(l.channels, -INFINITY));
    qk::cuda::minmax(DType::f32, d_x.ptr(), n, l, d_lo.p, d_hi.p, nullptr, stream.s);
    stream.sync();
    for (float v : d_lo.download()) EXPECT_EQ(fbits(v), fbits(-0.0f));
    for (float v : d_hi.download()) EXPECT_EQ(fbits(v), fbits(0.0f));
  }
}

// ---- histogram_update ----

// The CPU op's update (csrc/ops/impl_cpu_observe.cpp, update_histogram_cpu) on one thread.
// Returns whether the counts were re-binned to a new grid.
bool cpu_histogram_update(DType dtype, const HostTensor& x, int64_t n, std::vector<int64_t>& counts,
                          float* range, bool enabled) {
  if (!enabled || n == 0) return false;
  float cur_lo = INFINITY, cur_hi = -INFINITY;
  qk::cpu::minmax(dtype, x.data(), 0, n, ChannelLayout{n, 1}, &cur_lo, &cur_hi);
  if (!(cur_lo <= cur_hi)) return false;
  bool rebinned = false;
  const int64_t bins = static_cast<int64_t>(counts.size());
  const bool had_data = range[0] <= range[1];
  const float new_min = had_data ? std::min(range[0], cur_lo) : cur_lo;
  const float new_max = had_data ? std::max(range[1], cur_hi) : cur_hi;
  const qk::HistogramGrid grid = qk::histogram_grid(new_min, new_max, bins);
  if (had_data) {
    const qk::HistogramGrid old = qk::histogram_grid(range[0], range[1], bins);
    if (old.exponent != grid.exponent || old.first != grid.first) {
      std::vector<int64_t> moved(bins, 0);
      qk::cpu::histogram_rebin(counts.data(), old, moved.data(), grid);
      counts = moved;
      rebinned = true;
    }
  }
  qk::cpu::histogram_add(dtype, x.data(), 0, n, grid, counts.data());
  range[0] = new_min;
  range[1] = new_max;
  return rebinned;
}

// Batch b of a histogram sequence: ranges that stay, grow, shift, jump by many octaves, batches
// without finite elements, single elements.
HostTensor histogram_batch(DType dtype, int b, int64_t n, std::mt19937_64& rng) {
  const ChannelLayout whole{n, 1};
  HostTensor x = random_x(dtype, n, whole, rng, 0.02, false);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  float lo = -1.0f, hi = 1.0f;
  switch (b % 8) {
    case 0: lo = -1.0f, hi = 1.0f; break;
    case 1: lo = -0.5f, hi = 0.25f; break;     // inside: grid unchanged
    case 2: lo = -3.0f, hi = 2.0f; break;      // grows
    case 3: lo = 0.0f, hi = 0.0f; break;       // replaced below: no finite element
    case 4: lo = -1000.0f, hi = 5e4f; break;   // many octaves
    case 5: lo = 10.0f, hi = 20.0f; break;     // disabled in the sequence
    case 6: lo = -7.0f, hi = -6.0f; break;
    default: lo = -6e4f, hi = 6e4f; break;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (b % 8 == 3) {
      x.set(i, (i % 3 == 0) ? INFINITY : ((i % 3 == 1) ? -INFINITY : NAN));
      continue;
    }
    if (!std::isfinite(x.get(i))) continue;  // keep the specials
    x.set(i, lo + (hi - lo) * 0.5f * (u(rng) + 1.0f));
  }
  return x;
}

class HistogramCuda : public ::testing::TestWithParam<std::tuple<DType, int, int>> {};

TEST_P(HistogramCuda, SequenceMatchesCpu) {
  REQUIRE_GPU();
  const DType dtype = std::get<0>(GetParam());
  const int64_t bins_list[] = {1, 7, 2048, 4096, 4097, 10000};
  const int64_t bins = bins_list[std::get<1>(GetParam())];
  const int64_t sizes[] = {1, 7, 4099, 1000003};
  const int64_t off = kOffsets[std::get<2>(GetParam())];
  std::mt19937_64 rng(300 + bins + 3 * static_cast<int>(dtype) + off);
  Stream stream;
  std::vector<int64_t> counts(bins, 0);
  float range[2] = {INFINITY, -INFINITY};
  DeviceArray<int64_t> d_counts(counts);
  DeviceArray<float> d_range(std::vector<float>{range[0], range[1]});
  DeviceArray<int64_t> on(std::vector<int64_t>{1}), off_flag(std::vector<int64_t>{0});
  const int64_t scratch_n = qk::cuda::histogram_update_scratch_int64(bins);
  int64_t* d_scratch = nullptr;
  ASSERT_EQ(cudaSuccess, cudaMalloc(&d_scratch, scratch_n * sizeof(int64_t)));
  ASSERT_EQ(cudaSuccess, cudaMemset(d_scratch, 0xab, scratch_n * sizeof(int64_t)));  // any content
  int rebins = 0;
  for (int b = 0; b < 16; ++b) {
    const int64_t n = sizes[(b * 3 + 1) % 4];
    const HostTensor x = histogram_batch(dtype, b, n, rng);
    const bool enabled = b % 8 != 5;
    DeviceTensor d_x(dtype, n, off);
    d_x.upload(x);
    rebins += cpu_histogram_update(dtype, x, n, counts, range, enabled);
    qk::cuda::histogram_update(dtype, d_x.ptr(), n, d_counts.p, bins, d_range.p,
                               enabled ? on.p : off_flag.p, d_scratch, stream.s);
    stream.sync();
    const std::vector<int64_t> got = d_counts.download();
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < bins; ++i)
      if (got[i] != counts[i]) bad += 1, first = first < 0 ? i : first;
    EXPECT_EQ(bad, 0) << "batch " << b << " n " << n << ": first bad bin " << first << " cpu "
                      << (first >= 0 ? counts[first] : 0) << " cuda " << (first >= 0 ? got[first] : 0);
    EXPECT_TRUE(same_values(std::vector<float>{range[0], range[1]}, d_range.download(), "range"))
        << "batch " << b;
    // Zeros of the range may differ in sign: continue from the CPU's on both sides.
    d_range.upload(std::vector<float>{range[0], range[1]});
    if (bad) break;
  }
  EXPECT_GE(rebins, 2) << "the sequence should exercise re-binning";
  cudaFree(d_scratch);
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

INSTANTIATE_TEST_SUITE_P(Bins, HistogramCuda,
                         ::testing::Combine(::testing::Values(DType::f32, DType::f16, DType::bf16),
                                            ::testing::Range(0, 6), ::testing::Range(0, 3)));

// ---- mse_errors ----

// Candidates from per-channel min / max clipped by `count` ratios, plus a few raw values the
// kernels must clamp (effective_scale / effective_zero_point).
void make_candidates(DType dtype, const HostTensor& x, int64_t n, ChannelLayout l, int64_t count,
                     QuantRange r, std::vector<float>* scale, std::vector<float>* zp) {
  std::vector<float> lo(l.channels, INFINITY), hi(l.channels, -INFINITY);
  qk::cpu::minmax(dtype, x.data(), 0, n, l, lo.data(), hi.data());
  scale->resize(l.channels * count);
  zp->resize(l.channels * count);
  for (int64_t c = 0; c < l.channels; ++c) {
    for (int64_t k = 0; k < count; ++k) {
      const float ratio = count == 1 ? 1.0f : 0.2f + 0.8f * float(k) / float(count - 1);
      const bool sym = (c + k) % 2 == 0;
      const qk::AffineQParams q = qk::qparams_minmax(lo[c] * ratio, hi[c] * ratio,
                                                     int32_t(r.quant_min), int32_t(r.quant_max), sym);
      (*scale)[c * count + k] = q.scale;
      (*zp)[c * count + k] = q.zero_point;
      if ((c * count + k) % 17 == 16) (*scale)[c * count + k] = 0.0f;        // -> kMinScale
      if ((c * count + k) % 19 == 18) (*zp)[c * count + k] = r.quant_max + 9.5f;  // clamped
    }
  }
}

class MseCuda : public ::testing::TestWithParam<std::tuple<DType, int, int>> {};

TEST_P(MseCuda, MatchesCpu) {
  REQUIRE_GPU();
  const DType dtype = std::get<0>(GetParam());
  const Case& cs = kCases[std::get<1>(GetParam())];
  const int64_t counts[] = {1, 3, 37, 100};
  const int64_t count = counts[std::get<2>(GetParam())];
  // Keep the CPU reference affordable: at most ~4e7 candidate evaluations.
  const int64_t n = std::min<int64_t>(cs.n, std::max<int64_t>(1, 40000000 / count));
  ChannelLayout layout = cs.layout;
  const QuantRange ranges[] = {{-128.0f, 127.0f}, {0.0f, 255.0f}, {-8.0f, 7.0f}, {0.0f, 15.0f}};
  const QuantRange r = ranges[(std::get<1>(GetParam()) + std::get<2>(GetParam())) % 4];
  std::mt19937_64 rng(500 + 31 * std::get<1>(GetParam()) + count + static_cast<int>(dtype));
  const HostTensor x = random_x(dtype, n, layout, rng);
  std::vector<float> scale, zp;
  make_candidates(dtype, x, n, layout, count, r, &scale, &zp);
  const int64_t size = layout.channels * count;
  std::vector<double> want(size, 0.0);
  qk::cpu::mse_errors(dtype, x.data(), 0, n, layout, Candidates{scale.data(), zp.data(), count}, r,
                      want.data());
  Stream stream;
  DeviceTensor d_x(dtype, n, std::get<1>(GetParam()) % 2);
  d_x.upload(x);
  DeviceArray<float> d_s(scale), d_z(zp);
  DeviceArray<double> d_err(std::vector<double>(size, 0.0));
  qk::cuda::mse_errors(dtype, d_x.ptr(), n, layout, Candidates{d_s.p, d_z.p, count}, r, d_err.p,
                       stream.s);
  stream.sync();
  const std::vector<double> got = d_err.download();
  int64_t bad = 0;
  for (int64_t i = 0; i < size; ++i) {
    const double a = want[i], b = got[i];
    if (a == b) continue;
    if (std::fabs(a - b) <= 2e-5 * std::max(std::fabs(a), std::fabs(b))) continue;
    if (bad++ < 5)
      ADD_FAILURE() << cs.name << " count " << count << " errors[" << i << "] (channel "
                    << i / count << ", candidate " << i % count << "): cpu " << a << " cuda " << b;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, MseCuda,
                         ::testing::Combine(::testing::Values(DType::f32, DType::f16, DType::bf16),
                                            ::testing::Range(0, kNumCases), ::testing::Range(0, 4)),
                         [](const ::testing::TestParamInfo<std::tuple<DType, int, int>>& info) {
                           return std::string(dtype_name(std::get<0>(info.param))) + "_" +
                                  kCases[std::get<1>(info.param)].name + "_r" +
                                  std::to_string(std::get<2>(info.param));
                         });

// ---- observe_fake_quant ----

struct FusedState {
  std::vector<float> run_min, run_max, scale, zero_point;
};

// The CPU op (observe_fake_quantize_cpu) composed from the CPU kernels.
void cpu_observe_fake_quant(DType dtype, const HostTensor& x, HostTensor& y, int64_t n,
                            ChannelLayout l, bool observe, bool fq, FusedState& st, float avg,
                            int32_t qmin, int32_t qmax, bool sym) {
  const int64_t C = l.channels;
  if (observe) {
    std::vector<float> lo(C, INFINITY), hi(C, -INFINITY);
    qk::cpu::minmax(dtype, x.data(), 0, n, l, lo.data(), hi.data());
    for (int64_t c = 0; c < C; ++c)
      qk::update_running_minmax(&st.run_min[c], &st.run_max[c], lo[c], hi[c], true, avg);
  }
  if (!fq) {
    y.bytes = x.bytes;
    return;
  }
  for (int64_t c = 0; c < C; ++c) {
    const qk::AffineQParams q = qk::qparams_fbgemm(st.run_min[c], st.run_max[c], qmin, qmax, sym);
    st.scale[c] = q.scale;
    st.zero_point[c] = q.zero_point;
  }
  qk::cpu::fake_quant_forward(dtype, x.data(), y.data(), 0, n, l,
                              {st.scale.data(), st.zero_point.data()},
                              {float(qmin), float(qmax)});
}

class FusedCuda : public ::testing::TestWithParam<Param> {};

TEST_P(FusedCuda, MatchesCpuComposition) {
  REQUIRE_GPU();
  const DType dtype = std::get<0>(GetParam());
  const Case& cs = kCases[std::get<1>(GetParam())];
  const int64_t off = kOffsets[std::get<2>(GetParam())];
  const int64_t n = cs.n, C = cs.layout.channels;
  std::mt19937_64 rng(700 + 11 * std::get<1>(GetParam()) + 5 * static_cast<int>(dtype) + off);
  const int32_t ranges[][2] = {{-128, 127}, {0, 255}, {-8, 7}, {0, 15}};
  const int32_t* r = ranges[(std::get<1>(GetParam()) + std::get<2>(GetParam())) % 4];
  const bool sym = std::get<1>(GetParam()) % 2 == 1;
  const float avg = std::get<2>(GetParam()) == 1 ? 1.0f : 0.01f;

  FusedState st{std::vector<float>(C, INFINITY), std::vector<float>(C, -INFINITY),
                std::vector<float>(C, 1.0f), std::vector<float>(C, 0.0f)};
  DeviceArray<float> d_rmin(st.run_min), d_rmax(st.run_max), d_s(st.scale), d_z(st.zero_point);
  const int64_t scratch_bytes = qk::cuda::observe_fake_quant_scratch_bytes(C);
  void* d_scratch = nullptr;
  ASSERT_EQ(cudaSuccess, cudaMalloc(&d_scratch, scratch_bytes));
  DeviceTensor d_x(dtype, n, off), d_y(dtype, n, off == 3 ? 0 : off);  // off 3: not co-aligned
  Stream stream;
  // (observer_on, fake_quant_on) per step; step 4's batch has no finite element.
  const int64_t flags[][2] = {{1, 1}, {1, 0}, {0, 1}, {1, 1}, {1, 1}, {0, 0}, {3, 1}};
  for (int step = 0; step < 7; ++step) {
    HostTensor x = random_x(dtype, n, cs.layout, rng, step == 3 ? 0.2 : 0.03);
    if (step == 4)
      for (int64_t i = 0; i < n; ++i) x.set(i, i % 2 ? NAN : -INFINITY);
    d_x.upload(x);
    const bool observe = flags[step][0] != 0, fq = flags[step][1] != 0;
    HostTensor want(dtype, n), got(dtype, n);
    cpu_observe_fake_quant(dtype, x, want, n, cs.layout, observe, fq, st, avg, r[0], r[1], sym);
    DeviceArray<int64_t> d_obs(std::vector<int64_t>{flags[step][0]});
    DeviceArray<int64_t> d_fq(std::vector<int64_t>{flags[step][1]});
    ASSERT_EQ(cudaSuccess, cudaMemset(d_scratch, 0, scratch_bytes));
    // In place on one step: y aliases x.
    const bool in_place = step == 6;
    qk::cuda::observe_fake_quant(dtype, d_x.ptr(), in_place ? d_x.ptr() : d_y.ptr(), n, cs.layout,
                                 d_obs.p, d_fq.p, d_rmin.p, d_rmax.p, d_s.p, d_z.p, avg, r[0],
                                 r[1], sym, d_scratch, stream.s);
    stream.sync();
    (in_place ? d_x : d_y).download(got);
    const std::string at = std::string(cs.name) + " step " + std::to_string(step);
    EXPECT_TRUE(same_values(st.run_min, d_rmin.download(), "run_min")) << at;
    EXPECT_TRUE(same_values(st.run_max, d_rmax.download(), "run_max")) << at;
    EXPECT_TRUE(same_bits(st.scale, d_s.download(), "scale")) << at;
    EXPECT_TRUE(same_bits(st.zero_point, d_z.download(), "zero_point")) << at;
    EXPECT_TRUE(same_tensor_bits(want, got, n, "y")) << at;
    // Running zeros may differ in sign: continue from the CPU's state on both sides.
    d_rmin.upload(st.run_min);
    d_rmax.upload(st.run_max);
  }
  cudaFree(d_scratch);
  EXPECT_EQ(cudaSuccess, cudaGetLastError());
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, FusedCuda,
                         ::testing::Combine(::testing::Values(DType::f32, DType::f16, DType::bf16),
                                            ::testing::Range(0, kNumCases), ::testing::Range(0, 3)),
                         param_name);

// ---- empty inputs ----

// n == 0 launches nothing and touches no pointer.
TEST(ObserveCuda, Empty) {
  REQUIRE_GPU();
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    qk::cuda::choose_qparams(nullptr, nullptr, 0, -128, 127, false, nullptr, nullptr, nullptr);
    qk::cuda::minmax(dtype, nullptr, 0, {1, 1}, nullptr, nullptr, nullptr, nullptr);
    qk::cuda::update_running_minmax(nullptr, nullptr, nullptr, nullptr, 0, nullptr, true, 0.1f, nullptr);
    qk::cuda::histogram_update(dtype, nullptr, 0, nullptr, 16, nullptr, nullptr, nullptr, nullptr);
    qk::cuda::mse_errors(dtype, nullptr, 0, {1, 4}, Candidates{nullptr, nullptr, 5},
                         {-128.0f, 127.0f}, nullptr, nullptr);
    qk::cuda::observe_fake_quant(dtype, nullptr, nullptr, 0, {1, 1}, nullptr, nullptr, nullptr,
                                 nullptr, nullptr, nullptr, 0.01f, 0, 255, false, nullptr, nullptr);
  }
  EXPECT_EQ(cudaSuccess, cudaDeviceSynchronize());
}

}  // namespace
