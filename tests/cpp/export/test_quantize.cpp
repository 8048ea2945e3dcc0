// Exporter core: type table, block layouts, scalar conversions, reference quantizers.
// Bit-level parity with gguf-py and llama.cpp is checked from Python (tests/python/export); here
// the layouts are checked against formulas written independently from formats.md, and the
// scalar helpers against the compiler's _Float16.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "qat_export/quantize.h"
#include "qat_export/types.h"

using namespace qat_export;

namespace {

const GGMLType kSupported[] = {GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q4_0, GGMLType::Q4_1,
                               GGMLType::Q5_0, GGMLType::Q5_1, GGMLType::Q8_0, GGMLType::Q2_K, GGMLType::Q3_K,
                               GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K, GGMLType::IQ4_NL};

std::vector<uint8_t> quantize_vec(GGMLType t, const std::vector<float>& x) {
  std::vector<uint8_t> out(row_size(t, static_cast<int64_t>(x.size())));
  EXPECT_EQ(quantize(t, x.data(), out.data(), 1, static_cast<int64_t>(x.size())), out.size());
  return out;
}

std::vector<float> dequantize_vec(GGMLType t, const std::vector<uint8_t>& q, size_t n) {
  std::vector<float> y(n);
  dequantize(t, q.data(), y.data(), static_cast<int64_t>(n));
  return y;
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

}  // namespace

// ---- type table and layouts ----------------------------------------------------------------------
TEST(TypeTable, BlockStructSizesMatchTheTable) {
  EXPECT_EQ(sizeof(block_q4_0), static_cast<size_t>(type_traits(GGMLType::Q4_0).type_size));
  EXPECT_EQ(sizeof(block_q4_1), static_cast<size_t>(type_traits(GGMLType::Q4_1).type_size));
  EXPECT_EQ(sizeof(block_q5_0), static_cast<size_t>(type_traits(GGMLType::Q5_0).type_size));
  EXPECT_EQ(sizeof(block_q5_1), static_cast<size_t>(type_traits(GGMLType::Q5_1).type_size));
  EXPECT_EQ(sizeof(block_q8_0), static_cast<size_t>(type_traits(GGMLType::Q8_0).type_size));
  EXPECT_EQ(sizeof(block_iq4_nl), static_cast<size_t>(type_traits(GGMLType::IQ4_NL).type_size));
  EXPECT_EQ(sizeof(block_q2_K), static_cast<size_t>(type_traits(GGMLType::Q2_K).type_size));
  EXPECT_EQ(sizeof(block_q3_K), static_cast<size_t>(type_traits(GGMLType::Q3_K).type_size));
  EXPECT_EQ(sizeof(block_q4_K), static_cast<size_t>(type_traits(GGMLType::Q4_K).type_size));
  EXPECT_EQ(sizeof(block_q5_K), static_cast<size_t>(type_traits(GGMLType::Q5_K).type_size));
  EXPECT_EQ(sizeof(block_q6_K), static_cast<size_t>(type_traits(GGMLType::Q6_K).type_size));
}

TEST(TypeTable, IdsNamesAndSizes) {
  struct Row { const char* name; uint32_t id; int64_t block, bytes; };
  const Row rows[] = {{"F32", 0, 1, 4},        {"F16", 1, 1, 2},       {"Q4_0", 2, 32, 18},   {"Q4_1", 3, 32, 20},
                      {"Q5_0", 6, 32, 22},     {"Q5_1", 7, 32, 24},    {"Q8_0", 8, 32, 34},   {"Q2_K", 10, 256, 84},
                      {"Q3_K", 11, 256, 110},  {"Q4_K", 12, 256, 144}, {"Q5_K", 13, 256, 176}, {"Q6_K", 14, 256, 210},
                      {"IQ4_NL", 20, 32, 18},  {"IQ4_XS", 23, 256, 136}, {"BF16", 30, 1, 2},  {"MXFP4", 39, 32, 17}};
  for (const Row& r : rows) {
    const TypeTraits* t = find_type(r.name);
    ASSERT_NE(t, nullptr) << r.name;
    EXPECT_EQ(static_cast<uint32_t>(t->type), r.id) << r.name;
    EXPECT_EQ(t->block_size, r.block) << r.name;
    EXPECT_EQ(t->type_size, r.bytes) << r.name;
    EXPECT_EQ(find_type(r.id), t);
  }
  for (uint32_t removed : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 43u, 1000u}) EXPECT_EQ(find_type(removed), nullptr);
  EXPECT_EQ(find_type("q4_k"), nullptr);  // names are case-sensitive
  EXPECT_EQ(row_size(GGMLType::Q4_K, 512), 288u);
  EXPECT_THROW(row_size(GGMLType::Q4_K, 100), std::invalid_argument);
  EXPECT_THROW(row_size(GGMLType::Q8_0, 33), std::invalid_argument);
}

// ---- scalar conversions --------------------------------------------------------------------------
TEST(Scalar, Fp32ToFp16MatchesFloat16Cast) {
  // Every exponent/high-mantissa pattern with low bits at and around the rounding boundaries.
  const uint32_t lows[] = {0x0000, 0x0001, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000, 0xffff};
  for (uint32_t hi = 0; hi < 0x10000; ++hi) {
    for (uint32_t lo : lows) {
      const uint32_t bits = (hi << 16) | lo;
      const float f = f32_from_bits(bits);
      const _Float16 h = static_cast<_Float16>(f);
      uint16_t hb;
      std::memcpy(&hb, &h, 2);
      if (std::isnan(f)) {
        EXPECT_EQ(fp32_to_fp16(f), static_cast<uint16_t>(((bits >> 16) & 0x8000) | 0x7e00)) << std::hex << bits;
      } else {
        ASSERT_EQ(fp32_to_fp16(f), hb) << std::hex << bits;
      }
    }
  }
}

TEST(Scalar, Fp16ToFp32IsExact) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    _Float16 v;
    const uint16_t hb = static_cast<uint16_t>(h);
    std::memcpy(&v, &hb, 2);
    const float ref = static_cast<float>(v);
    const float got = fp16_to_fp32(hb);
    if (std::isnan(ref)) {
      EXPECT_TRUE(std::isnan(got));
    } else {
      ASSERT_EQ(f32_bits(got), f32_bits(ref)) << std::hex << h;
    }
  }
}

TEST(Scalar, Bf16RoundsToNearestEvenAndQuietsNaN) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x3f808000)), 0x3f80);  // tie, even stays
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x3f818000)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x3f808001)), 0x3f81);
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x7f7fffff)), 0x7f80);  // FLT_MAX rounds to inf
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0x7f800001)), 0x7fc0);  // signalling NaN forced quiet
  EXPECT_EQ(fp32_to_bf16(f32_from_bits(0xffc00000)), 0xffc0);
  EXPECT_EQ(f32_bits(bf16_to_fp32(0xc0a0)), 0xc0a00000u);
}

TEST(Scalar, NearestIntRoundsHalfToEven) {
  EXPECT_EQ(nearest_int(0.5f), 0);
  EXPECT_EQ(nearest_int(1.5f), 2);
  EXPECT_EQ(nearest_int(2.5f), 2);
  EXPECT_EQ(nearest_int(-0.5f), 0);
  EXPECT_EQ(nearest_int(-1.5f), -2);
  EXPECT_EQ(nearest_int(-2.5f), -2);
  EXPECT_EQ(nearest_int(2.4999998f), 2);
  EXPECT_EQ(nearest_int(-31.6f), -32);
  EXPECT_EQ(nearest_int(4194303.0f), 4194303);
}

// ---- per-type rounding rules ------------------------------------------------------------------
TEST(RoundingRules, Q8_0RoundsHalfAwayFromZero) {
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;  // d = 1 exactly, id = 1
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.5f;
  x[4] = -0.5f;
  x[5] = 1.5f;
  const auto q = quantize_vec(GGMLType::Q8_0, x);
  EXPECT_EQ(rd16(q.data()), 0x3c00);  // fp16(1.0)
  const auto* qs = reinterpret_cast<const int8_t*>(q.data() + 2);
  EXPECT_EQ(qs[0], 127);
  EXPECT_EQ(qs[1], 3);
  EXPECT_EQ(qs[2], -3);
  EXPECT_EQ(qs[3], 1);
  EXPECT_EQ(qs[4], -1);
  EXPECT_EQ(qs[5], 2);
}

TEST(RoundingRules, Q4_0RoundsHalfUpAndMapsTheMaxToZero) {
  std::vector<float> x(32, 0.0f);
  x[0] = -8.0f;  // largest magnitude, negative: d = -8/-8 = 1
  x[1] = 2.5f;   // 2.5 + 8.5 = 11 -> q 11 (value +3): half up
  x[2] = -2.5f;  // -2.5 + 8.5 = 6 -> q 6 (value -2): half up, not away from zero
  x[3] = 7.9f;   // saturates at 15
  const auto q = quantize_vec(GGMLType::Q4_0, x);
  const block_q4_0* b = reinterpret_cast<const block_q4_0*>(q.data());
  EXPECT_EQ(b->d, 0x3c00);
  EXPECT_EQ(b->qs[0] & 0xF, 0);
  EXPECT_EQ(b->qs[1] & 0xF, 11);
  EXPECT_EQ(b->qs[2] & 0xF, 6);
  EXPECT_EQ(b->qs[3] & 0xF, 15);
  const auto y = dequantize_vec(GGMLType::Q4_0, q, 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[1], 3.0f);
  EXPECT_EQ(y[2], -2.0f);
  EXPECT_EQ(y[3], 7.0f);
}

TEST(RoundingRules, FirstLargestMagnitudeSetsTheSign) {
  std::vector<float> x(32, 0.0f);
  x[5] = 4.0f;
  x[9] = -4.0f;  // same magnitude later: the first (positive) one wins
  const auto q = quantize_vec(GGMLType::Q4_0, x);
  EXPECT_EQ(fp16_to_fp32(reinterpret_cast<const block_q4_0*>(q.data())->d), -0.5f);
}

TEST(RoundingRules, IQ4NLZeroBlockUsesIndex8) {
  std::vector<float> x(32, 0.0f);
  const auto q = quantize_vec(GGMLType::IQ4_NL, x);
  EXPECT_EQ(rd16(q.data()), 0);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(q[2 + j], 0x88);
}

TEST(RoundingRules, Q6KZeroBlockIsAllZeroBytes) {
  std::vector<float> x(256, 0.0f);
  const auto q = quantize_vec(GGMLType::Q6_K, x);
  for (uint8_t b : q) EXPECT_EQ(b, 0);
}

// ---- every type: zeros, constants, random, outliers --------------------------------------------
class EveryType : public ::testing::TestWithParam<GGMLType> {};

TEST_P(EveryType, ZerosRoundTripToZeros) {
  const GGMLType t = GetParam();
  std::vector<float> x(512, 0.0f);
  const auto y = dequantize_vec(t, quantize_vec(t, x), x.size());
  for (float v : y) EXPECT_EQ(v, 0.0f) << type_traits(t).name;
}

TEST_P(EveryType, RandomRoundTripErrorIsBounded) {
  const GGMLType t = GetParam();
  const int64_t rows = 4, n = 1024;
  const auto x = randn(static_cast<size_t>(rows * n), 1234);
  std::vector<uint8_t> q(row_size(t, n) * rows);
  quantize(t, x.data(), q.data(), rows, n);
  const auto y = dequantize_vec(t, q, x.size());
  // Bound relative to the RMS of the input: loose per format, but far below what a layout or
  // packing mistake produces (errors of the order of the values themselves).
  double err = 0, ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err += (y[i] - x[i]) * double(y[i] - x[i]);
    ref += x[i] * double(x[i]);
  }
  const double rel = std::sqrt(err / ref);
  double bound = 0.0;
  switch (t) {
    case GGMLType::F32: bound = 0.0; break;
    case GGMLType::F16: bound = 1e-3; break;
    case GGMLType::BF16: bound = 4e-3; break;
    case GGMLType::Q8_0: bound = 0.01; break;
    case GGMLType::Q6_K: bound = 0.03; break;
    case GGMLType::Q5_0: case GGMLType::Q5_1: case GGMLType::Q5_K: bound = 0.06; break;
    case GGMLType::Q4_0: case GGMLType::Q4_1: case GGMLType::Q4_K: case GGMLType::IQ4_NL: bound = 0.12; break;
    case GGMLType::Q3_K: bound = 0.25; break;
    case GGMLType::Q2_K: bound = 0.45; break;
    default: FAIL();
  }
  EXPECT_LE(rel, bound) << type_traits(t).name;
}

TEST_P(EveryType, ConstantBlocksAreExactWhereTheFormatCanBe) {
  const GGMLType t = GetParam();
  std::vector<float> x(256, 0.75f);  // exactly representable in fp16
  const auto y = dequantize_vec(t, quantize_vec(t, x), x.size());
  for (float v : y) EXPECT_NEAR(v, 0.75f, 0.75f * 0.02f) << type_traits(t).name;
}

TEST_P(EveryType, OneOutlierPerBlock) {
  const GGMLType t = GetParam();
  auto x = randn(1024, 99, 0.01f);
  for (size_t i = 0; i < x.size(); i += 64) x[i] = 50.0f;
  const auto y = dequantize_vec(t, quantize_vec(t, x), x.size());
  for (size_t i = 0; i < x.size(); i += 64) EXPECT_NEAR(y[i], 50.0f, 50.0f * 0.2f) << type_traits(t).name;
}

TEST_P(EveryType, RowsAreIndependent) {
  const GGMLType t = GetParam();
  const int64_t n = 512;
  const auto x = randn(static_cast<size_t>(3 * n), 7);
  std::vector<uint8_t> all(row_size(t, n) * 3);
  quantize(t, x.data(), all.data(), 3, n);
  std::vector<float> row1(x.begin() + n, x.begin() + 2 * n);
  const auto q1 = quantize_vec(t, row1);
  EXPECT_EQ(0, std::memcmp(q1.data(), all.data() + row_size(t, n), q1.size())) << type_traits(t).name;
}

TEST_P(EveryType, RejectsNonFiniteInputForBlockTypes) {
  const GGMLType t = GetParam();
  std::vector<float> x(256, 1.0f);
  x[17] = std::nanf("");
  std::vector<uint8_t> q(row_size(t, 256));
  if (type_traits(t).block_size == 1) {
    EXPECT_NO_THROW(quantize(t, x.data(), q.data(), 1, 256));
    const auto y = dequantize_vec(t, q, 256);
    EXPECT_TRUE(std::isnan(y[17]));
  } else {
    EXPECT_THROW(quantize(t, x.data(), q.data(), 1, 256), std::invalid_argument);
    x[17] = INFINITY;
    EXPECT_THROW(quantize(t, x.data(), q.data(), 1, 256), std::invalid_argument);
  }
}

INSTANTIATE_TEST_SUITE_P(Types, EveryType, ::testing::ValuesIn(kSupported),
                         [](const auto& info) { return std::string(type_traits(info.param).name); });

TEST(Errors, UnsupportedTypesAndBadRowLengths) {
  std::vector<float> x(256, 1.0f);
  std::vector<uint8_t> q(4096);
  EXPECT_THROW(quantize(GGMLType::IQ2_XXS, x.data(), q.data(), 1, 256), std::invalid_argument);
  EXPECT_THROW(quantize(GGMLType::Q4_K, x.data(), q.data(), 1, 96), std::invalid_argument);
  EXPECT_THROW(dequantize(GGMLType::Q8_0, q.data(), x.data(), 33), std::invalid_argument);
}

// ---- dequantizers against the layouts in formats.md, on random bytes ---------------------------
namespace {
std::vector<uint8_t> random_blocks(GGMLType t, int nblocks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(static_cast<size_t>(type_traits(t).type_size * nblocks));
  for (auto& v : b) v = static_cast<uint8_t>(rng());
  // Keep the fp16 scales finite and modest so the formula comparison is about layout.
  auto fix_half = [&](size_t off) {
    const uint16_t h = static_cast<uint16_t>(0x2000 + (rng() % 0x1800) + ((rng() & 1) << 15));
    b[off] = static_cast<uint8_t>(h);
    b[off + 1] = static_cast<uint8_t>(h >> 8);
  };
  const size_t ts = static_cast<size_t>(type_traits(t).type_size);
  for (int i = 0; i < nblocks; ++i) {
    const size_t o = i * ts;
    switch (t) {
      case GGMLType::Q4_K: case GGMLType::Q5_K: fix_half(o); fix_half(o + 2); break;
      case GGMLType::Q2_K: fix_half(o + 80); fix_half(o + 82); break;
      case GGMLType::Q3_K: fix_half(o + 108); break;
      case GGMLType::Q6_K: fix_half(o + 208); break;
      default: break;
    }
  }
  return b;
}
}  // namespace

TEST(Layout, Q2KFormula) {
  const auto b = random_blocks(GGMLType::Q2_K, 2, 1);
  const auto y = dequantize_vec(GGMLType::Q2_K, b, 512);
  for (int i = 0; i < 2; ++i) {
    const uint8_t* blk = b.data() + 84 * i;
    const float d = fp16_to_fp32(rd16(blk + 80)), dmin = fp16_to_fp32(rd16(blk + 82));
    for (int e = 0; e < 256; ++e) {
      const uint8_t sc = blk[e / 16];
      const int q = (blk[16 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      EXPECT_EQ(y[256 * i + e], (d * (sc & 15)) * q - dmin * (sc >> 4)) << e;
    }
  }
}

TEST(Layout, Q3KFormula) {
  const auto b = random_blocks(GGMLType::Q3_K, 2, 2);
  const auto y = dequantize_vec(GGMLType::Q3_K, b, 512);
  for (int i = 0; i < 2; ++i) {
    const uint8_t* blk = b.data() + 110 * i;
    const uint8_t* hmask = blk;
    const uint8_t* qs = blk + 32;
    const uint8_t* scales = blk + 96;
    const float d = fp16_to_fp32(rd16(blk + 108));
    for (int e = 0; e < 256; ++e) {
      const int j = e / 16;
      const int low4 = j < 8 ? (scales[j] & 15) : (scales[j - 8] >> 4);
      const int s = (low4 | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
      const int u = ((qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) | (((hmask[e % 32] >> (e / 32)) & 1) << 2);
      EXPECT_EQ(y[256 * i + e], (d * s) * (u - 4)) << e;
    }
  }
}

TEST(Layout, Q4KAndQ5KFormula) {
  for (GGMLType t : {GGMLType::Q4_K, GGMLType::Q5_K}) {
    const auto b = random_blocks(t, 2, 3);
    const auto y = dequantize_vec(t, b, 512);
    const size_t ts = static_cast<size_t>(type_traits(t).type_size);
    for (int i = 0; i < 2; ++i) {
      const uint8_t* blk = b.data() + ts * i;
      const float d = fp16_to_fp32(rd16(blk)), dmin = fp16_to_fp32(rd16(blk + 2));
      const uint8_t* sc = blk + 4;
      const uint8_t* qh = blk + 16;
      const uint8_t* qs = t == GGMLType::Q4_K ? blk + 16 : blk + 48;
      for (int e = 0; e < 256; ++e) {
        const int j = e / 32;
        int s, m;
        if (j < 4) {
          s = sc[j] & 63;
          m = sc[j + 4] & 63;
        } else {
          s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
          m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
        }
        const int p = e / 64, r = e % 64;
        int q = r < 32 ? (qs[32 * p + r] & 0xF) : (qs[32 * p + r - 32] >> 4);
        if (t == GGMLType::Q5_K) q |= ((qh[e % 32] >> (e / 32)) & 1) << 4;
        EXPECT_EQ(y[256 * i + e], (d * s) * q - dmin * m) << type_traits(t).name << " " << e;
      }
    }
  }
}

TEST(Layout, Q6KFormula) {
  const auto b = random_blocks(GGMLType::Q6_K, 2, 4);
  const auto y = dequantize_vec(GGMLType::Q6_K, b, 512);
  for (int i = 0; i < 2; ++i) {
    const uint8_t* blk = b.data() + 210 * i;
    const uint8_t* ql = blk;
    const uint8_t* qh = blk + 128;
    const auto* scales = reinterpret_cast<const int8_t*>(blk + 192);
    const float d = fp16_to_fp32(rd16(blk + 208));
    for (int e = 0; e < 256; ++e) {
      const int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
      const uint8_t lo = ql[64 * h + l + 32 * (k & 1)];
      const int u = (k < 2 ? (lo & 0xF) : (lo >> 4)) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
      EXPECT_EQ(y[256 * i + e], (d * scales[e / 16]) * (u - 32)) << e;
    }
  }
}

TEST(Layout, LegacyNibbleOrder) {
  // Element j: low nibble of qs[j]; element j + 16: high nibble (not the even/odd interleave).
  std::vector<uint8_t> b(18, 0);
  b[0] = 0x00;
  b[1] = 0x3c;  // d = 1
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const auto y = dequantize_vec(GGMLType::Q4_0, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(y[j], j - 8.0f);
    EXPECT_EQ(y[j + 16], 7.0f - j);
  }
  const auto z = dequantize_vec(GGMLType::IQ4_NL, b, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(z[j], static_cast<float>(kvalues_iq4nl[j]));
    EXPECT_EQ(z[j + 16], static_cast<float>(kvalues_iq4nl[15 - j]));
  }
}

// ---- the side-by-side searches (K-quants, IQ4_NL) equal the one-block-at-a-time ports -------------------
namespace {
std::vector<float> k_quant_stress_input(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::uniform_real_distribution<float> logscale(-12.0f, 12.0f);
  std::vector<float> x(static_cast<size_t>(QK_K) * 64);
  for (size_t sb = 0; sb < 64; ++sb) {
    float* b = x.data() + sb * QK_K;
    const int kind = static_cast<int>(sb % 8);
    for (int e = 0; e < QK_K; ++e) {
      const int sub = e / 16;
      float v = normal(rng);
      switch (kind) {
        case 0: break;                                                   // plain normal
        case 1: v = std::fabs(v) + 0.5f; break;                          // all positive
        case 2: v = -std::fabs(v) - 0.5f; break;                         // all negative
        case 3: v = (sub % 3 == 0) ? 0.0f : v; break;                    // zero sub-blocks
        case 4: v = (sub % 4 == 1) ? 0.375f : v * 1e-3f; break;          // constant sub-blocks
        case 5: v = (e % 37 == 0) ? 40.0f * v : 0.01f * v; break;        // outliers
        case 6: v *= std::exp2(static_cast<float>(sub) - 8.0f); break;   // scales across sub-blocks
        case 7: v = uni(rng) * std::exp2(logscale(rng)); break;          // wild magnitudes
      }
      b[e] = v;
    }
  }
  return x;
}
}  // namespace

TEST(SearchLanes, SameBytesAsTheScalarPorts) {
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto x = k_quant_stress_input(seed);
    const int64_t n = static_cast<int64_t>(x.size());
    {
      std::vector<block_q2_K> a(n / QK_K), b(n / QK_K);
      quantize_row_q2_K_ref(x.data(), a.data(), n);
      scalar::quantize_row_q2_K_ref(x.data(), b.data(), n);
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0]))) << "Q2_K seed " << seed;
    }
    {
      std::vector<block_q4_K> a(n / QK_K), b(n / QK_K);
      quantize_row_q4_K_ref(x.data(), a.data(), n);
      scalar::quantize_row_q4_K_ref(x.data(), b.data(), n);
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0]))) << "Q4_K seed " << seed;
    }
    {
      // 64 super-blocks = 512 IQ4_NL blocks; also an odd count that leaves a scalar tail.
      for (int64_t m : {n, n - 5 * 32}) {
        std::vector<block_iq4_nl> a(m / 32), b(m / 32);
        quantize_iq4_nl(x.data(), a.data(), m);
        scalar::quantize_iq4_nl(x.data(), b.data(), m);
        ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0]))) << "IQ4_NL seed " << seed;
      }
    }
    {
      std::vector<block_q5_K> a(n / QK_K), b(n / QK_K);
      quantize_row_q5_K_ref(x.data(), a.data(), n);
      scalar::quantize_row_q5_K_ref(x.data(), b.data(), n);
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0]))) << "Q5_K seed " << seed;
    }
  }
}
