// Torch-free kernels against scalar references written independently of quant_math.h:
// libm's nearbyintf / fmaf and the compiler's own _Float16 conversions.
#include <gtest/gtest.h>

#include <cfenv>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/fake_quant.h"

namespace k = qat::kernels;

namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The scalar reference: PyTorch's formula spelled with libm.
float ref_fake_quant(float x, float s, float zp, float qmin, float qmax) {
  if (std::isnan(x)) return x;
  float inv = 1.0f / s;
  float q = std::nearbyintf(x * inv) + zp;
  q = std::fmin(std::fmax(q, qmin), qmax);
  return (q - zp) * s;
}

std::vector<float> random_inputs(size_t n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-200.0f, 200.0f);
  std::uniform_int_distribution<int> k(-150, 150);
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = (i % 3 == 0) ? (k(rng) + 0.5f) * scale : u(rng) * scale;
  return x;
}

}  // namespace

TEST(RoundHalfEven, MatchesNearbyintOnEveryExponent) {
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);
  std::mt19937 rng(1);
  for (int i = 0; i < 2000000; ++i) {
    float x = from_bits(rng());
    if (std::isnan(x)) continue;
    ASSERT_EQ(bits(k::round_half_even(x)), bits(std::nearbyintf(x))) << x;
  }
  for (float t : {0.5f, 1.5f, 2.5f, -0.5f, -2.5f, 4194304.5f, 8388607.5f, -8388607.5f, 0.49999997f})
    EXPECT_EQ(bits(k::round_half_even(t)), bits(std::nearbyintf(t))) << t;
}

TEST(HalfConversion, AllHalvesRoundTripAndMatchCompiler) {
  for (uint32_t h = 0; h < 65536; ++h) {
    _Float16 hf;
    uint16_t hb = uint16_t(h);
    std::memcpy(&hf, &hb, 2);
    float expected = float(hf);
    float got = k::half_bits_to_float(hb);
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got));
      continue;
    }
    ASSERT_EQ(bits(got), bits(expected)) << h;
    ASSERT_EQ(k::float_to_half_bits(got), hb) << h;
  }
  std::mt19937 rng(2);
  for (int i = 0; i < 2000000; ++i) {
    float x = from_bits(rng());
    if (std::isnan(x)) continue;
    _Float16 hf = _Float16(x);
    uint16_t expected;
    std::memcpy(&expected, &hf, 2);
    ASSERT_EQ(k::float_to_half_bits(x), expected) << x;
  }
}

TEST(Bf16Conversion, RoundsToNearestEven) {
  std::mt19937 rng(3);
  for (int i = 0; i < 2000000; ++i) {
    float x = from_bits(rng());
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(k::bf16_bits_to_float(k::float_to_bf16_bits(x))));
      continue;
    }
    float y = k::bf16_bits_to_float(k::float_to_bf16_bits(x));
    // Independent check: y is one of the two bf16 neighbours of x and the nearer (ties to even).
    uint32_t lo = bits(x) & 0xffff0000u, hi = lo + 0x10000u;
    double dlo = std::fabs(double(x) - double(from_bits(lo)));
    // Above the largest bf16 the upper neighbour is inf, which IEEE rounding places at 2^128.
    double hi_value = (hi & 0x7fffffffu) == 0x7f800000u ? std::copysign(std::ldexp(1.0, 128), double(x))
                                                         : double(from_bits(hi));
    double dhi = std::fabs(hi_value - double(x));
    uint32_t want = dlo < dhi ? lo : (dhi < dlo ? hi : (((lo >> 16) & 1u) ? hi : lo));
    if (std::isinf(x)) want = bits(x);
    ASSERT_EQ(bits(y), want) << x;
  }
}

TEST(FakeQuantForward, MatchesScalarReferenceAllLayouts) {
  const int64_t rows = 37, cols = 96;
  auto x = random_inputs(rows * cols, 0.05f, 4);
  x[5] = NAN;
  x[6] = INFINITY;
  x[7] = -1e30f;
  std::vector<float> scale(rows * cols), zp(rows * cols);
  std::mt19937 rng(5);
  for (size_t i = 0; i < scale.size(); ++i) {
    scale[i] = 0.01f + 0.1f * float(rng() % 1000) / 1000.0f;
    zp[i] = float(int(rng() % 16) - 8);
  }
  const std::vector<k::ChannelLayout> layouts = {
      {rows * cols, 1}, {cols, rows}, {1, cols}, {32, rows * cols / 32}, {8, cols / 8}};
  for (auto layout : layouts) {
    std::vector<float> y(x.size());
    // Two ranges, to exercise runs that start and end mid-channel.
    const int64_t split = 1001;
    k::cpu::fake_quant_forward(k::DType::f32, x.data(), y.data(), 0, split, layout,
                               {scale.data(), zp.data()}, {-8.0f, 7.0f});
    k::cpu::fake_quant_forward(k::DType::f32, x.data(), y.data(), split, rows * cols, layout,
                               {scale.data(), zp.data()}, {-8.0f, 7.0f});
    for (int64_t i = 0; i < rows * cols; ++i) {
      int64_t c = (i / layout.inner) % layout.channels;
      float expected = ref_fake_quant(x[i], scale[c], zp[c], -8.0f, 7.0f);
      if (std::isnan(expected)) {
        ASSERT_TRUE(std::isnan(y[i]));
      } else {
        ASSERT_EQ(bits(y[i]), bits(expected)) << "i=" << i << " inner=" << layout.inner;
      }
    }
  }
}

TEST(FakeQuantBackward, LsqSumsMatchDoubleReference) {
  const int64_t channels = 6, inner = 5000;
  auto x = random_inputs(channels * inner, 0.02f, 6);
  std::vector<float> dy(x.size()), dx(x.size());
  std::mt19937 rng(7);
  std::normal_distribution<float> n01;
  for (auto& v : dy) v = n01(rng);
  std::vector<float> scale = {0.02f, 0.01f, 0.03f, 0.02f, 0.05f, 0.015f};
  std::vector<float> zp = {0, 3, -2, 7, -8, 1};
  std::vector<double> acc_s(channels), acc_z(channels);
  const float gf = 0.25f, qmin = -8, qmax = 7;
  k::cpu::fake_quant_backward(k::DType::f32, x.data(), dy.data(), dx.data(), 0, channels * inner,
                              {inner, channels}, {scale.data(), zp.data()}, {qmin, qmax}, gf,
                              acc_s.data(), acc_z.data());
  for (int64_t c = 0; c < channels; ++c) {
    double ref_s = 0, ref_z = 0, abs_s = 0;
    for (int64_t j = 0; j < inner; ++j) {
      int64_t i = c * inner + j;
      float s = scale[c], inv = 1.0f / s;
      float q = std::nearbyintf(std::fmaf(x[i], inv, zp[c]));
      float ds, dz = 0.0f, g;
      if (q < qmin || q > qmax) {
        ds = (dy[i] * ((q < qmin ? qmin : qmax) - zp[c])) * gf;
        dz = ((dy[i] * -1.0f) * s) * gf;
        g = dy[i] * 0.0f;
      } else {
        ds = ((dy[i] * std::fmaf(q - zp[c], s, -x[i])) * inv) * gf;
        g = dy[i];
      }
      ASSERT_EQ(bits(dx[i]), bits(g)) << i;
      ref_s += ds;
      ref_z += dz;
      abs_s += std::fabs(ds);
    }
    EXPECT_NEAR(acc_s[c], ref_s, 1e-12 * abs_s + 1e-30);
    EXPECT_NEAR(acc_z[c], ref_z, 1e-9);
  }
}

TEST(FakeCast, Fp16MatchesCompilerConversionWithSaturation) {
  std::mt19937 rng(8);
  const k::FloatFormat fmt = k::cast_format(k::CastFormat::fp16);
  for (int i = 0; i < 2000000; ++i) {
    float x = from_bits(rng());
    float y = k::fake_cast_value(x, fmt);
    if (std::isnan(x)) {
      ASSERT_TRUE(std::isnan(y));
      continue;
    }
    float clamped = std::isinf(x) ? x : std::fmin(std::fmax(x, -65504.0f), 65504.0f);
    ASSERT_EQ(bits(y), bits(float(_Float16(clamped)))) << x;
  }
}

TEST(FakeCast, Fp8E4m3Grid) {
  const k::FloatFormat fmt = k::cast_format(k::CastFormat::fp8_e4m3);
  // Every e4m3fn value, enumerated from its definition.
  std::vector<float> grid;
  for (int e = 0; e < 16; ++e)
    for (int m = 0; m < 8; ++m) {
      if (e == 15 && m == 7) continue;  // NaN encoding
      grid.push_back(e == 0 ? std::ldexp(m / 8.0f, -6) : std::ldexp(1.0f + m / 8.0f, e - 7));
    }
  for (float v : grid) EXPECT_EQ(k::fake_cast_value(v, fmt), v);
  for (size_t i = 0; i + 1 < grid.size(); ++i) {
    float mid = 0.5f * (grid[i] + grid[i + 1]);
    int m_lo = int(i % 8);  // even mantissa wins the tie
    float expected = (m_lo % 2 == 0) ? grid[i] : grid[i + 1];
    EXPECT_EQ(k::fake_cast_value(mid, fmt), expected) << mid;
    EXPECT_EQ(k::fake_cast_value(-mid, fmt), -expected) << mid;
  }
  EXPECT_EQ(k::fake_cast_value(1e6f, fmt), 448.0f);
  EXPECT_EQ(k::fake_cast_value(-INFINITY, fmt), -448.0f);
  EXPECT_TRUE(std::isnan(k::fake_cast_value(NAN, fmt)));
}
