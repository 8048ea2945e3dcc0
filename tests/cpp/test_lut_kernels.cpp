// Torch-free palettization kernels against scalar references: brute-force nearest centroid over
// every LUT entry, plain loops for the fake quantization and the gradient sums, and an O(n k)
// Lloyd's algorithm in double from the documented initialization.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/lut.h"

namespace k = qat::kernels;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
const float kNaN = std::numeric_limits<float>::quiet_NaN();

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// The definition: smallest j minimizing fl(|x - c_j|) over non-NaN centroids; +-inf x to the
// largest / smallest centroid (lowest index among equal ones); NaN x or no valid centroid: 0.
int ref_nearest(const float* lut, int n, float x) {
  if (std::isnan(x)) return 0;
  int best = -1;
  float best_d = 0.0f;
  for (int j = 0; j < n; ++j) {
    if (std::isnan(lut[j])) continue;
    float d = std::fabs(x - lut[j]);
    bool better;
    if (x == kInf) better = best < 0 || lut[j] > lut[best];
    else if (x == -kInf) better = best < 0 || lut[j] < lut[best];
    else better = best < 0 || d < best_d;
    if (better) best = j, best_d = d;
  }
  return best < 0 ? 0 : best;
}

std::vector<float> random_lut(std::mt19937& rng, int n) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> lut(n);
  for (float& v : lut) v = g(rng);
  if (n > 3) {
    lut[1] = lut[n - 1];  // a duplicate at a lower index
    lut[2] = -0.0f;
    lut[0] = 0.0f;        // +0 before -0: one value, index 0 wins
  }
  return lut;
}

// Points that stress the search: the centroids, their midpoints (ties), just off them,
// huge magnitudes (distances that round together), infinities and NaN.
std::vector<float> probe_points(std::mt19937& rng, const std::vector<float>& lut, int count) {
  std::normal_distribution<float> g(0.0f, 2.0f);
  std::vector<float> xs;
  for (float c : lut) {
    xs.push_back(c);
    xs.push_back(std::nextafter(c, kInf));
    for (float d : lut) xs.push_back(0.5f * (c + d));
  }
  for (float v : {kInf, -kInf, kNaN, 1e30f, -1e30f, 3e38f, 1e-40f, 0.0f, -0.0f}) xs.push_back(v);
  for (int i = 0; i < count; ++i) xs.push_back(g(rng));
  return xs;
}

}  // namespace

TEST(LutNearest, MatchesBruteForce) {
  std::mt19937 rng(1);
  for (int n : {1, 2, 3, 5, 16, 17, 64, 255, 256}) {
    for (int trial = 0; trial < 4; ++trial) {
      std::vector<float> lut = random_lut(rng, n);
      if (trial == 1 && n > 4) lut[3] = kNaN;
      if (trial == 2 && n > 5) lut[4] = kInf, lut[5] = -kInf;
      if (trial == 3) std::fill(lut.begin(), lut.end(), 0.25f);
      k::LutTable t;
      k::cpu::lut_table(lut.data(), n, &t);
      for (int i = 1; i < t.size; ++i) ASSERT_LT(t.value[i - 1], t.value[i]);
      for (float x : probe_points(rng, lut, 500)) {
        int got = std::isnan(x) ? 0 : k::lut_nearest(t.value, t.index, t.size, x);
        ASSERT_EQ(got, ref_nearest(lut.data(), n, x)) << "n=" << n << " trial=" << trial << " x=" << x;
      }
    }
  }
}

TEST(LutNearest, BlockKernelMatchesBruteForce) {
  // The kernels' vectorized path (counting up to 32 entries, binary search above, a scalar
  // fallback for long runs of equal distances and infinities) on the same probe points.
  std::mt19937 rng(6);
  for (int n : {1, 2, 3, 17, 32, 33, 64, 256}) {
    for (int trial = 0; trial < 3; ++trial) {
      std::vector<float> lut = random_lut(rng, n);
      if (trial == 1 && n > 4) lut[3] = kNaN;
      if (trial == 2) {
        for (int j = 0; j < n; ++j) lut[j] = 1e-8f * float(j % 7);  // spacing far below ulp(1)
      }
      std::vector<float> xs = probe_points(rng, lut, 300);
      for (float v : {1.0f, -1.0f, 1e9f, 0.5f}) xs.push_back(v);
      std::vector<uint8_t> idx(xs.size());
      for (size_t b = 0; b < xs.size(); b += 100)  // runs not aligned to the 64-element blocks
        k::cpu::lut_indices(k::DType::f32, xs.data(), idx.data(), int64_t(b),
                            int64_t(std::min(xs.size(), b + 100)), int64_t(xs.size()), lut.data(), n);
      for (size_t i = 0; i < xs.size(); ++i)
        ASSERT_EQ(idx[i], ref_nearest(lut.data(), n, xs[i])) << "n=" << n << " trial=" << trial << " x=" << xs[i];
    }
  }
}

TEST(LutNearest, FloatRoundingTies) {
  // |1 - c| rounds to 1 for every c here: all tie, the lowest index wins whatever its value.
  const float lut[4] = {1e-8f, 0.0f, 3e-8f, 2e-8f};
  k::LutTable t;
  k::cpu::lut_table(lut, 4, &t);
  for (float x : {-1.0f, 1e9f, -1e9f, 0.5f})
    EXPECT_EQ(k::lut_nearest(t.value, t.index, t.size, x), ref_nearest(lut, 4, x)) << x;
  EXPECT_EQ(k::lut_nearest(t.value, t.index, t.size, -1.0f), 0);
}

TEST(LutTable, SkipsNaNAndKeepsLowestIndex) {
  const float lut[6] = {kNaN, 2.0f, -0.0f, 2.0f, 0.0f, kNaN};
  k::LutTable t;
  k::cpu::lut_table(lut, 6, &t);
  ASSERT_EQ(t.size, 2);
  EXPECT_EQ(t.index[0], 2);
  EXPECT_EQ(t.index[1], 1);
  k::cpu::lut_table(lut, 1, &t);
  EXPECT_EQ(t.size, 0);
}

class LutOps : public ::testing::TestWithParam<k::DType> {};

namespace {

size_t elem_size(k::DType d) { return d == k::DType::f32 ? 4 : 2; }

float load(k::DType d, const std::vector<unsigned char>& buf, int64_t i) {
  if (d == k::DType::f32) {
    float f;
    std::memcpy(&f, buf.data() + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, buf.data() + 2 * i, 2);
  return d == k::DType::f16 ? k::half_bits_to_float(h) : k::bf16_bits_to_float(h);
}

void store(k::DType d, std::vector<unsigned char>& buf, int64_t i, float v) {
  if (d == k::DType::f32) {
    std::memcpy(buf.data() + 4 * i, &v, 4);
    return;
  }
  uint16_t h = d == k::DType::f16 ? k::float_to_half_bits(v) : k::float_to_bf16_bits(v);
  std::memcpy(buf.data() + 2 * i, &h, 2);
}

}  // namespace

TEST_P(LutOps, FakeQuantIndicesAndGradMatchScalarLoops) {
  const k::DType dt = GetParam();
  std::mt19937 rng(2);
  std::normal_distribution<float> g(0.0f, 2.0f);
  for (int n_cent : {1, 4, 16, 256}) {
    const int64_t groups = 3, n = 1000;
    std::vector<float> lut;
    for (int64_t gi = 0; gi < groups; ++gi) {
      std::vector<float> row = random_lut(rng, n_cent);
      lut.insert(lut.end(), row.begin(), row.end());
    }
    lut[n_cent - 1] = kNaN;  // a NaN centroid in group 0
    std::vector<unsigned char> x(groups * n * elem_size(dt)), dy(x.size()), y(x.size());
    for (int64_t i = 0; i < groups * n; ++i) {
      store(dt, x, i, i % 97 == 0 ? kNaN : (i % 89 == 0 ? kInf : g(rng)));
      store(dt, dy, i, g(rng));
    }
    std::vector<uint8_t> idx(groups * n);
    std::vector<double> acc(groups * n_cent, 0.0);
    // In uneven chunks, as the ops layer's threads call them.
    for (int64_t b = 0; b < groups * n; b += 777) {
      const int64_t e = std::min(groups * n, b + 777);
      k::cpu::lut_fake_quant(dt, x.data(), y.data(), b, e, n, lut.data(), n_cent);
      k::cpu::lut_indices(dt, x.data(), idx.data(), b, e, n, lut.data(), n_cent);
      k::cpu::lut_grad(dt, x.data(), dy.data(), b, e, n, lut.data(), n_cent, acc.data());
    }
    std::vector<double> ref_acc(groups * n_cent, 0.0);
    std::vector<unsigned char> ref_y(x.size());
    for (int64_t i = 0; i < groups * n; ++i) {
      const float* c = lut.data() + (i / n) * n_cent;
      const float v = load(dt, x, i);
      const int j = ref_nearest(c, n_cent, v);
      ASSERT_EQ(idx[i], j) << i;
      store(dt, ref_y, i, std::isnan(v) ? v : c[j]);
      if (!std::isnan(v)) ref_acc[(i / n) * n_cent + j] += double(load(dt, dy, i));
    }
    ASSERT_EQ(y, ref_y);
    for (size_t i = 0; i < acc.size(); ++i) ASSERT_NEAR(acc[i], ref_acc[i], 1e-9 * (1 + std::fabs(ref_acc[i])));
  }
}

INSTANTIATE_TEST_SUITE_P(DTypes, LutOps, ::testing::Values(k::DType::f32, k::DType::f16, k::DType::bf16));

// ---- k-means ----

namespace {

// Brute-force Lloyd's algorithm in double: the documented initialization, assignment by argmin
// over every centroid (lower index on a tie), means by direct sums, emptied clusters reseeded at
// the value farthest from its cluster's new mean.
std::vector<double> ref_kmeans(std::vector<float> x, int kc, int max_iters, int* iterations) {
  std::vector<double> s;
  for (float v : x)
    if (std::isfinite(v)) s.push_back(double(v) + 0.0);
  std::sort(s.begin(), s.end());
  if (s.empty()) return std::vector<double>(kc, 0.0);
  std::vector<double> u = s;
  u.erase(std::unique(u.begin(), u.end()), u.end());
  const int64_t m = s.size(), d = u.size();
  if (d <= kc) {
    std::vector<double> out(kc, u.back());
    std::copy(u.begin(), u.end(), out.begin());
    return out;
  }
  std::vector<double> c(kc);
  int64_t below = -1;
  for (int j = 0; j < kc; ++j) {
    double q = s[(2 * int64_t(j) + 1) * m / (2 * int64_t(kc))];
    int64_t r = std::lower_bound(u.begin(), u.end(), q) - u.begin();
    r = std::max<int64_t>(std::min<int64_t>(r, d - kc + j), below + 1);
    c[j] = u[r];
    below = r;
  }
  auto nearest = [&](double v, const std::vector<double>& cs) {
    int best = 0;
    for (int j = 1; j < kc; ++j)
      if (std::fabs(v - cs[j]) < std::fabs(v - cs[best])) best = j;
    return best;
  };
  std::vector<int> prev, a(m);
  int iters = 0;
  for (;;) {
    for (int64_t i = 0; i < m; ++i) a[i] = nearest(s[i], c);
    if (a == prev || iters >= max_iters) break;
    std::vector<double> sum(kc, 0.0), next = c;
    std::vector<int64_t> cnt(kc, 0);
    for (int64_t i = 0; i < m; ++i) sum[a[i]] += s[i], cnt[a[i]]++;
    std::vector<int> empty;
    for (int j = 0; j < kc; ++j) {
      if (cnt[j]) next[j] = sum[j] / cnt[j];
      else empty.push_back(j);
    }
    std::vector<double> dist(d);
    for (int64_t i = 0; i < d; ++i) dist[i] = std::fabs(u[i] - next[nearest(u[i], c)]);
    for (int j : empty) {
      int64_t far = std::max_element(dist.begin(), dist.end()) - dist.begin();
      next[j] = u[far];
      dist[far] = -1.0;
    }
    std::sort(next.begin(), next.end());
    c = next;
    prev = a;
    ++iters;
  }
  *iterations = iters;
  return c;
}

void expect_kmeans(const std::vector<float>& x, int kc, int max_iters = 300) {
  k::cpu::KMeansWorkspace ws;
  std::vector<float> got(kc);
  const int iters = k::cpu::kmeans_1d(k::DType::f32, x.data(), int64_t(x.size()), kc, max_iters,
                                      got.data(), ws);
  int ref_iters = 0;
  std::vector<double> ref = ref_kmeans(x, kc, max_iters, &ref_iters);
  EXPECT_EQ(iters, ref_iters);
  for (int j = 0; j < kc; ++j) {
    EXPECT_NEAR(got[j], ref[j], 1e-6 * (1 + std::fabs(ref[j]))) << "j=" << j << " k=" << kc;
    if (j) EXPECT_LE(got[j - 1], got[j]);
  }
}

}  // namespace

TEST(KMeans, MatchesBruteForceLloyd) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::cauchy_distribution<float> cauchy(0.0f, 3.0f);
  for (int kc : {1, 2, 4, 16, 64}) {
    std::vector<float> x(3000), heavy(1200), discrete(500);
    for (float& v : x) v = g(rng);
    for (float& v : heavy) v = std::max(-100.0f, std::min(100.0f, cauchy(rng)));
    for (float& v : discrete) v = std::round(g(rng) * 4.0f);
    expect_kmeans(x, kc);
    expect_kmeans(heavy, kc);
    expect_kmeans(discrete, kc);
    expect_kmeans(x, kc, 2);
  }
  // Past the radix sort's threshold (4096 values), with negatives, duplicates and -0.0.
  std::vector<float> big(20000);
  for (float& v : big) v = std::round(g(rng) * 512.0f) / 256.0f;
  big[5] = -0.0f;
  for (int kc : {1, 16, 64}) expect_kmeans(big, kc);
  std::vector<float> few(10000);
  for (size_t i = 0; i < few.size(); ++i) few[i] = float(int(i * 7919 % 11) - 5) * 0.75f;
  expect_kmeans(few, 16);
}

TEST(KMeans, ReseedsEmptyClusters) {
  std::vector<float> x;
  for (auto [v, n] : {std::pair{8.0f, 5}, {9.0f, 4}, {18.0f, 1}, {21.0f, 4}, {27.0f, 4}, {29.0f, 4}, {38.0f, 1}})
    x.insert(x.end(), n, v);
  expect_kmeans(x, 4);
}

TEST(KMeans, ConvergesToAFixedPoint) {
  std::mt19937 rng(4);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(8192);
  for (float& v : x) v = g(rng);
  k::cpu::KMeansWorkspace ws;
  float c[16];
  const int iters = k::cpu::kmeans_1d(k::DType::f32, x.data(), int64_t(x.size()), 16, 100000, c, ws);
  EXPECT_LT(iters, 100000);
  // Each centroid is the mean of the values nearest to it.
  double sum[16] = {};
  int64_t cnt[16] = {};
  for (float v : x) {
    int j = ref_nearest(c, 16, v);
    sum[j] += v;
    cnt[j]++;
  }
  for (int j = 0; j < 16; ++j) {
    ASSERT_GT(cnt[j], 0);
    EXPECT_NEAR(c[j], sum[j] / cnt[j], 1e-5);
  }
}

TEST(KMeans, DegenerateGroups) {
  k::cpu::KMeansWorkspace ws;
  float c[4];
  const float few[6] = {3.0f, 1.0f, 3.0f, kNaN, 1.0f, -kInf};
  EXPECT_EQ(k::cpu::kmeans_1d(k::DType::f32, few, 6, 4, 10, c, ws), 0);
  EXPECT_EQ(std::vector<float>(c, c + 4), (std::vector<float>{1.0f, 3.0f, 3.0f, 3.0f}));
  const float constant[3] = {-2.0f, -2.0f, -2.0f};
  k::cpu::kmeans_1d(k::DType::f32, constant, 3, 4, 10, c, ws);
  EXPECT_EQ(std::vector<float>(c, c + 4), std::vector<float>(4, -2.0f));
  const float none[2] = {kNaN, kInf};
  k::cpu::kmeans_1d(k::DType::f32, none, 2, 4, 10, c, ws);
  EXPECT_EQ(std::vector<float>(c, c + 4), std::vector<float>(4, 0.0f));
  k::cpu::kmeans_1d(k::DType::f32, nullptr, 0, 4, 10, c, ws);
  EXPECT_EQ(std::vector<float>(c, c + 4), std::vector<float>(4, 0.0f));
  const float zeros[3] = {-0.0f, 0.0f, 5.0f};
  k::cpu::kmeans_1d(k::DType::f32, zeros, 3, 2, 10, c, ws);
  EXPECT_EQ(bits(c[0]), bits(0.0f));  // -0.0 and +0.0 are one value, stored as +0.0
  EXPECT_EQ(c[1], 5.0f);
}

TEST(KMeans, HalfInputsEqualTheirFloatValues) {
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<uint16_t> h(2000), b(2000);
  std::vector<float> hf(2000), bf(2000);
  for (size_t i = 0; i < h.size(); ++i) {
    h[i] = k::float_to_half_bits(g(rng));
    b[i] = k::float_to_bf16_bits(g(rng));
    hf[i] = k::half_bits_to_float(h[i]);
    bf[i] = k::bf16_bits_to_float(b[i]);
  }
  k::cpu::KMeansWorkspace ws;
  float c1[16], c2[16];
  k::cpu::kmeans_1d(k::DType::f16, h.data(), 2000, 16, 300, c1, ws);
  k::cpu::kmeans_1d(k::DType::f32, hf.data(), 2000, 16, 300, c2, ws);
  EXPECT_EQ(std::memcmp(c1, c2, sizeof(c1)), 0);
  k::cpu::kmeans_1d(k::DType::bf16, b.data(), 2000, 16, 300, c1, ws);
  k::cpu::kmeans_1d(k::DType::f32, bf.data(), 2000, 16, 300, c2, ws);
  EXPECT_EQ(std::memcmp(c1, c2, sizeof(c1)), 0);
}
