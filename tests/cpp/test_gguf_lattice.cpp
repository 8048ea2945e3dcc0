// The torch-free GGUF lattice kernels (csrc/kernels/gguf_lattice.h) against the torch-free
// exporter core (export/): codes and stored parameters packed by qat_export::pack decode
// (qat_export::dequantize, llama.cpp's dequantize_row_*) to exactly the kernels' forward, for
// every type; the reference quantizer's parameters reproduce its dequantization (exactly for the
// K-quants); unpack/pack round-trips its bytes; the backward's tree sums agree with float64
// sums and do not depend on how blocks are split.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/gguf_lattice.h"
#include "qat_export/pack.h"
#include "qat_export/quantize.h"

namespace k = qat::kernels;
namespace qe = qat_export;

namespace {

struct TypeCase {
  k::GGUFType kt;
  qe::GGMLType et;
  const char* name;
};

const TypeCase kCases[] = {
    {k::GGUFType::Q4_0, qe::GGMLType::Q4_0, "Q4_0"},   {k::GGUFType::Q4_1, qe::GGMLType::Q4_1, "Q4_1"},
    {k::GGUFType::Q5_0, qe::GGMLType::Q5_0, "Q5_0"},   {k::GGUFType::Q5_1, qe::GGMLType::Q5_1, "Q5_1"},
    {k::GGUFType::Q8_0, qe::GGMLType::Q8_0, "Q8_0"},   {k::GGUFType::Q2_K, qe::GGMLType::Q2_K, "Q2_K"},
    {k::GGUFType::Q3_K, qe::GGMLType::Q3_K, "Q3_K"},   {k::GGUFType::Q4_K, qe::GGMLType::Q4_K, "Q4_K"},
    {k::GGUFType::Q5_K, qe::GGMLType::Q5_K, "Q5_K"},   {k::GGUFType::Q6_K, qe::GGMLType::Q6_K, "Q6_K"},
    {k::GGUFType::IQ4_NL, qe::GGMLType::IQ4_NL, "IQ4_NL"},
};

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Rows of mixed magnitude with an all-zero block, a constant block and an outlier.
std::vector<float> make_weight(int64_t n, int block, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) w[i] = nd(rng) * std::pow(10.0f, float((i / block) % 4) - 2.0f);
  for (int i = 0; i < block; ++i) w[i] = 0.0f;
  if (n >= 2 * block)
    for (int i = block; i < 2 * block; ++i) w[i] = 0.25f;
  if (n >= 3 * block) w[2 * block + 3] = 50.0f;
  return w;
}

// The parameters (as floats) and fields of a reference-quantized tensor.
struct Fields {
  std::vector<int8_t> codes, scales, mins;
  std::vector<uint16_t> d, dmin;
  std::vector<float> fd, fdmin, fscales, fmins;
};

Fields unpack_fields(const TypeCase& c, const std::vector<uint8_t>& bytes, int64_t n) {
  const qe::LatticeLayout* l = qe::lattice_layout(c.et);
  const int64_t nb = n / l->block;
  Fields f;
  f.codes.resize(static_cast<size_t>(n));
  f.d.resize(static_cast<size_t>(nb));
  f.dmin.resize(static_cast<size_t>(nb));
  f.scales.resize(static_cast<size_t>(nb * l->n_sub));
  f.mins.resize(static_cast<size_t>(nb * l->n_sub));
  qe::unpack(c.et, bytes.data(), nb, {f.codes.data(), f.d.data(), f.dmin.data(), f.scales.data(), f.mins.data()});
  for (uint16_t h : f.d) f.fd.push_back(qe::fp16_to_fp32(h));
  for (uint16_t h : f.dmin) f.fdmin.push_back(qe::fp16_to_fp32(h));
  for (int8_t s : f.scales) f.fscales.push_back(float(s));
  for (int8_t s : f.mins) f.fmins.push_back(float(s));
  return f;
}

k::GGUFParams params_of(const TypeCase& c, const Fields& f) {
  const k::GGUFLattice L = k::gguf_lattice(c.kt);
  return {f.fd.data(), L.has_dmin ? f.fdmin.data() : nullptr, L.has_scales ? f.fscales.data() : nullptr,
          L.has_mins ? f.fmins.data() : nullptr};
}

std::vector<uint8_t> reference_bytes(const TypeCase& c, const std::vector<float>& w, int64_t rows, int64_t cols) {
  std::vector<uint8_t> out(qe::row_size(c.et, cols) * static_cast<size_t>(rows));
  qe::quantize(c.et, w.data(), out.data(), rows, cols);
  return out;
}

// Packs what the kernels' forward used: its codes and the stored (fp16 / integer) parameters.
std::vector<uint8_t> pack_forward(const TypeCase& c, const std::vector<int8_t>& codes, const k::GGUFParams& p,
                                  int64_t n) {
  const k::GGUFLattice L = k::gguf_lattice(c.kt);
  const int64_t nb = n / L.block, ns = L.block / L.sub;
  std::vector<uint16_t> d(nb), dmin(nb);
  std::vector<int8_t> sc(nb * ns), mn(nb * ns);
  for (int64_t b = 0; b < nb; ++b) {
    d[b] = qe::fp32_to_fp16(k::gguf_stored_half(p.d[b]));
    if (L.has_dmin) dmin[b] = qe::fp32_to_fp16(k::gguf_stored_half(p.dmin[b]));
    for (int64_t j = 0; j < ns && L.has_scales; ++j) {
      sc[b * ns + j] = static_cast<int8_t>(k::gguf_stored_int(p.scales[b * ns + j], L.scale_lo, L.scale_hi));
      if (L.has_mins) mn[b * ns + j] = static_cast<int8_t>(k::gguf_stored_int(p.mins[b * ns + j], 0, L.min_hi));
    }
  }
  std::vector<uint8_t> out(qe::row_size(c.et, n));
  qe::pack(c.et, {codes.data(), d.data(), dmin.data(), sc.data(), mn.data()}, nb, out.data());
  return out;
}

class GGUFLattice : public ::testing::TestWithParam<int> {
 protected:
  const TypeCase& tc() const { return kCases[GetParam()]; }
};

TEST(GGUFLatticeTable, CodebookAndSearch) {
  for (int i = 0; i < 16; ++i) EXPECT_EQ(k::iq4nl_value(i), float(qe::kvalues_iq4nl[i]));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-140.0f, 130.0f);
  std::vector<float> probes;
  for (int i = 0; i < 20000; ++i) probes.push_back(u(rng));
  for (int i = 0; i + 1 < 16; ++i)  // exact midpoints go to the upper entry
    probes.push_back(0.5f * (qe::kvalues_iq4nl[i] + qe::kvalues_iq4nl[i + 1]));
  for (float v : probes) {
    int best = 0;  // brute force: nearest, ties up
    for (int j = 1; j < 16; ++j)
      if (std::fabs(v - qe::kvalues_iq4nl[j]) <= std::fabs(v - qe::kvalues_iq4nl[best])) best = j;
    EXPECT_EQ(k::iq4nl_best_index(v), best) << v;
  }
}

TEST_P(GGUFLattice, PackUnpackRoundTripsReferenceBytes) {
  std::mt19937 rng(10 + GetParam());
  const int block = k::gguf_lattice(tc().kt).block;
  const int64_t rows = 4, cols = 2 * 256;
  const auto w = make_weight(rows * cols, block, rng);
  const auto bytes = reference_bytes(tc(), w, rows, cols);
  Fields f = unpack_fields(tc(), bytes, rows * cols);
  std::vector<uint8_t> again(bytes.size());
  qe::pack(tc().et, {f.codes.data(), f.d.data(), f.dmin.data(), f.scales.data(), f.mins.data()},
           rows * cols / block, again.data());
  EXPECT_EQ(again, bytes) << tc().name;
}

TEST_P(GGUFLattice, PackedForwardDecodesBitwise) {
  std::mt19937 rng(20 + GetParam());
  const k::GGUFLattice L = k::gguf_lattice(tc().kt);
  const int64_t rows = 6, cols = 3 * 256, n = rows * cols, nb = n / L.block;
  const auto w = make_weight(n, L.block, rng);
  Fields f = unpack_fields(tc(), reference_bytes(tc(), w, rows, cols), n);
  // Trained-looking parameters: off the fp16 / integer grids, some out of range, a zero scale.
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : f.fd) v *= 1.0f + 0.05f * nd(rng);
  f.fd[1] = -f.fd[1];
  f.fd[2] = 0.0f;
  for (auto& v : f.fdmin) v *= 1.0f + 0.05f * nd(rng);
  for (auto& v : f.fscales) v += 1.5f * nd(rng);
  for (auto& v : f.fmins) v += 1.5f * nd(rng);
  if (L.has_scales) f.fscales[0] = float(L.scale_hi) + 9.0f;
  const k::GGUFParams p = params_of(tc(), f);
  std::vector<float> y(n);
  std::vector<int8_t> codes(n);
  k::cpu::gguf_forward(tc().kt, k::DType::f32, w.data(), y.data(), codes.data(), 0, nb, p);
  const auto packed = pack_forward(tc(), codes, p, n);
  std::vector<float> decoded(n);
  qe::dequantize(tc().et, packed.data(), decoded.data(), n);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(bits(y[i]), bits(decoded[i])) << tc().name << " element " << i << ": " << y[i] << " vs " << decoded[i];
    ASSERT_TRUE(std::isfinite(y[i]));
  }
  // y alone and codes alone agree with the joint call.
  std::vector<float> y2(n);
  std::vector<int8_t> c2(n);
  k::cpu::gguf_forward(tc().kt, k::DType::f32, w.data(), y2.data(), nullptr, 0, nb, p);
  k::cpu::gguf_forward(tc().kt, k::DType::f32, w.data(), nullptr, c2.data(), 0, nb, p);
  EXPECT_EQ(0, std::memcmp(y.data(), y2.data(), n * 4));
  EXPECT_EQ(codes, c2);
}

TEST_P(GGUFLattice, ReferenceParametersReproduceReferenceDequantization) {
  std::mt19937 rng(30 + GetParam());
  const k::GGUFLattice L = k::gguf_lattice(tc().kt);
  const int64_t rows = 16, cols = 4 * 256, n = rows * cols;
  const auto w = make_weight(n, L.block, rng);
  const auto bytes = reference_bytes(tc(), w, rows, cols);
  Fields f = unpack_fields(tc(), bytes, n);
  std::vector<float> y(n), ref(n);
  k::cpu::gguf_forward(tc().kt, k::DType::f32, w.data(), y.data(), nullptr, 0, n / L.block, params_of(tc(), f));
  qe::dequantize(tc().et, bytes.data(), ref.data(), n);
  int64_t equal = 0;
  for (int64_t i = 0; i < n; ++i) equal += y[i] == ref[i];
  if (L.block == 256) EXPECT_EQ(equal, n) << tc().name;  // K-quants: the same final-code rule
  else EXPECT_GT(double(equal) / double(n), 0.98) << tc().name;
}

TEST_P(GGUFLattice, BackwardSumsAndSplits) {
  std::mt19937 rng(40 + GetParam());
  const k::GGUFLattice L = k::gguf_lattice(tc().kt);
  const int64_t rows = 3, cols = 2 * 256, n = rows * cols, nb = n / L.block, ns = L.block / L.sub;
  const auto w = make_weight(n, L.block, rng);
  Fields f = unpack_fields(tc(), reference_bytes(tc(), w, rows, cols), n);
  const k::GGUFParams p = params_of(tc(), f);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> dy(n);
  for (auto& v : dy) v = nd(rng);
  std::vector<float> dw(n), gd(nb), gdmin(nb), gsc(nb * ns), gmn(nb * ns);
  k::GGUFParamGrads g{gd.data(), L.has_dmin ? gdmin.data() : nullptr, L.has_scales ? gsc.data() : nullptr,
                      L.has_mins ? gmn.data() : nullptr};
  k::cpu::gguf_backward(tc().kt, k::DType::f32, w.data(), dy.data(), dw.data(), 0, nb, p, g);
  // One block per call gives the same bits (no dependence on the thread split).
  std::vector<float> dw1(n), gd1(nb), gdmin1(nb), gsc1(nb * ns), gmn1(nb * ns);
  k::GGUFParamGrads g1{gd1.data(), L.has_dmin ? gdmin1.data() : nullptr, L.has_scales ? gsc1.data() : nullptr,
                       L.has_mins ? gmn1.data() : nullptr};
  for (int64_t b = 0; b < nb; ++b) k::cpu::gguf_backward(tc().kt, k::DType::f32, w.data(), dy.data(), dw1.data(), b, b + 1, p, g1);
  EXPECT_EQ(0, std::memcmp(dw.data(), dw1.data(), n * 4));
  EXPECT_EQ(0, std::memcmp(gd.data(), gd1.data(), nb * 4));
  EXPECT_EQ(0, std::memcmp(gsc.data(), gsc1.data(), nb * ns * 4));
  // Without parameter gradients dw is the same.
  std::vector<float> dw0(n);
  k::cpu::gguf_backward(tc().kt, k::DType::f32, w.data(), dy.data(), dw0.data(), 0, nb, p, {nullptr, nullptr, nullptr, nullptr});
  EXPECT_EQ(0, std::memcmp(dw.data(), dw0.data(), n * 4));
  // Sums against float64 sums of the per-element terms.
  for (int64_t b = 0; b < nb; ++b) {
    const float d = k::gguf_stored_half(p.d[b]);
    const float dmin = L.has_dmin ? k::gguf_stored_half(p.dmin[b]) : 0.0f;
    double sum_d = 0, sum_dmin = 0, mag = 1e-30;
    for (int64_t j = 0; j < ns; ++j) {
      const int sc = L.has_scales ? k::gguf_stored_int(p.scales[b * ns + j], L.scale_lo, L.scale_hi) : 0;
      const int m = L.has_mins ? k::gguf_stored_int(p.mins[b * ns + j], 0, L.min_hi) : 0;
      const k::GGUFSub sp = k::gguf_sub(L.kind, d, dmin, sc, m);
      double S = 0, B = 0, smag = 1e-30;
      for (int i = 0; i < L.sub; ++i) {
        const int64_t e = b * L.block + j * L.sub + i;
        k::GGUFGrad gr;
        switch (tc().kt) {
#define QAT_CASE(T) \
  case k::GGUFType::T: gr = k::gguf_backward_element<k::GGUFType::T>(w[e], dy[e], sp); break;
          QAT_CASE(Q4_0) QAT_CASE(Q4_1) QAT_CASE(Q5_0) QAT_CASE(Q5_1) QAT_CASE(Q8_0) QAT_CASE(Q2_K)
          QAT_CASE(Q3_K) QAT_CASE(Q4_K) QAT_CASE(Q5_K) QAT_CASE(Q6_K) QAT_CASE(IQ4_NL)
#undef QAT_CASE
        }
        EXPECT_EQ(bits(dw[e]), bits(gr.dx));
        S += gr.ds;
        B += gr.db;
        smag += std::fabs(gr.ds) + std::fabs(gr.db);
      }
      if (L.has_scales) {
        EXPECT_NEAR(gsc[b * ns + j], d * S, 1e-5 * std::fabs(d) * smag);
        sum_d += sc * S;
        sum_dmin += m * B;
        mag += std::fabs(sc) * smag;
        if (L.has_mins) EXPECT_NEAR(gmn[b * ns + j], dmin * B, 1e-5 * std::fabs(dmin) * smag);
      } else {
        sum_d = S;
        sum_dmin = B;
        mag = smag;
      }
    }
    EXPECT_NEAR(gd[b], sum_d, 1e-5 * mag) << tc().name << " block " << b;
    if (L.has_dmin) EXPECT_NEAR(gdmin[b], sum_dmin, 1e-5 * mag) << tc().name << " block " << b;
  }
}

TEST_P(GGUFLattice, HalfWeightsRoundTheFp32Lattice) {
  std::mt19937 rng(50 + GetParam());
  const k::GGUFLattice L = k::gguf_lattice(tc().kt);
  const int64_t rows = 2, cols = 256, n = rows * cols, nb = n / L.block;
  auto w = make_weight(n, L.block, rng);
  std::vector<uint16_t> wb(n);
  for (int64_t i = 0; i < n; ++i) {
    wb[i] = k::float_to_bf16_bits(w[i]);
    w[i] = k::bf16_bits_to_float(wb[i]);
  }
  Fields f = unpack_fields(tc(), reference_bytes(tc(), w, rows, cols), n);
  const k::GGUFParams p = params_of(tc(), f);
  std::vector<float> y(n);
  std::vector<uint16_t> yb(n);
  k::cpu::gguf_forward(tc().kt, k::DType::f32, w.data(), y.data(), nullptr, 0, nb, p);
  k::cpu::gguf_forward(tc().kt, k::DType::bf16, wb.data(), yb.data(), nullptr, 0, nb, p);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(yb[i], k::float_to_bf16_bits(y[i])) << tc().name << " " << i;
}

TEST(GGUFPack, RejectsOutOfRangeFields) {
  std::vector<int8_t> codes(256, 0), sc(8, 1), mn(8, 1);
  std::vector<uint16_t> d(1, 0x3c00), dmin(1, 0x3c00);
  std::vector<uint8_t> out(144);
  qe::pack(qe::GGMLType::Q4_K, {codes.data(), d.data(), dmin.data(), sc.data(), mn.data()}, 1, out.data());
  codes[7] = 16;
  EXPECT_THROW(qe::pack(qe::GGMLType::Q4_K, {codes.data(), d.data(), dmin.data(), sc.data(), mn.data()}, 1, out.data()),
               std::invalid_argument);
  codes[7] = 0;
  sc[3] = 64;
  EXPECT_THROW(qe::pack(qe::GGMLType::Q4_K, {codes.data(), d.data(), dmin.data(), sc.data(), mn.data()}, 1, out.data()),
               std::invalid_argument);
  EXPECT_THROW(qe::pack(qe::GGMLType::Q4_K, {codes.data(), d.data(), dmin.data(), nullptr, mn.data()}, 1, out.data()),
               std::invalid_argument);
  EXPECT_THROW(qe::pack(qe::GGMLType::F16, {codes.data(), d.data(), nullptr, nullptr, nullptr}, 1, out.data()),
               std::invalid_argument);
  EXPECT_EQ(qe::lattice_layout(qe::GGMLType::IQ4_XS), nullptr);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, GGUFLattice, ::testing::Range(0, 11),
                         [](const ::testing::TestParamInfo<int>& info) { return std::string(kCases[info.param].name); });

}  // namespace
