// CPU palettization kernels: k-means on one group's sorted values, and the nearest-centroid
// lookups walked run by run (a run is the part of [begin, end) inside one group, which shares
// one search table).
#include "../lut.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "cpu_common.h"

namespace qat::kernels::cpu {

void lut_table(const float* lut, int k, LutTable* table) {
  std::pair<float, int> items[kMaxCentroids];
  int m = 0;
  for (int j = 0; j < k; ++j)
    if (!std::isnan(lut[j])) items[m++] = {lut[j], j};
  // By value, then index: the first of equal values (-0.0 == +0.0 included) has the lowest index.
  std::sort(items, items + m, [](const std::pair<float, int>& a, const std::pair<float, int>& b) {
    return a.first < b.first || (a.first == b.first && a.second < b.second);
  });
  int size = 0;
  for (int i = 0; i < m; ++i) {
    if (size > 0 && items[i].first == table->value[size - 1]) continue;
    table->value[size] = items[i].first;
    table->index[size] = static_cast<uint8_t>(items[i].second);
    ++size;
  }
  table->size = size;
}

namespace {

constexpr int kBlock = 64;
constexpr int kCountMax = 32;  // tables up to this size: rank by counting, else binary search

// The nearest index (lut_nearest) of xs[0..nb) into out, nb <= kBlock, size >= 1. Written as
// loops over the block's elements so that they vectorize (compares, gathers): the rank by counting
// or by binary searches run side by side, then lut_pick's choice between the two neighbours. Where
// the run of equal distances may reach past them (or x is +-inf), a flag sends the element through
// lut_nearest itself. (The exact spelling matters: GCC 12 vectorizes this form, not the ternaries
// of lut_pick.)
QAT_CPU_CLONES
void nearest_block(const float* __restrict value, const int32_t* __restrict index,
                   const uint8_t* index8, int size, const float* __restrict xs, int nb,
                   int32_t* __restrict out) {
  int32_t pos[kBlock];
  for (int i = 0; i < nb; ++i) pos[i] = 0;
  if (size <= kCountMax) {
    for (int j = 0; j < size; ++j) {
      const float v = value[j];
      for (int i = 0; i < nb; ++i) pos[i] += v <= xs[i] ? 1 : 0;
    }
  } else {
    for (int len = size; len > 1;) {
      const int half = len >> 1;
      for (int i = 0; i < nb; ++i) pos[i] += value[pos[i] + half] <= xs[i] ? half : 0;
      len -= half;
    }
    for (int i = 0; i < nb; ++i) pos[i] += value[pos[i]] <= xs[i] ? 1 : 0;
  }
  int32_t slow[kBlock];
  for (int i = 0; i < nb; ++i) {
    const float x = xs[i];
    const int32_t p = pos[i];
    const int32_t lo = std::max(p - 1, 0), hi = std::min(p, size - 1);
    const int32_t lo2 = std::max(p - 2, 0), hi2 = std::min(p + 1, size - 1);
    const float dl = fabsf(x - value[lo]), dr = fabsf(x - value[hi]);
    const float el = fabsf(x - value[lo2]), er = fabsf(x - value[hi2]);
    const int32_t il = index[lo], ir = index[hi];
    const int32_t best = dl < dr ? il : std::min(il, ir);
    out[i] = x != x ? 0 : (dr < dl ? ir : best);
    // The run reaches past lo when lo is (one of) the nearest and lo2 is as near; el >= dl always.
    slow[i] = ((el == dl) & (dl <= dr) & (lo2 < lo)) | ((er == dr) & (dr <= dl) & (hi2 > hi));
  }
  for (int i = 0; i < nb; ++i)
    if (slow[i]) out[i] = lut_nearest(value, index8, size, xs[i]);
}

// Calls fn(i, x_i as float, nearest index of x_i) for i in [0, count), a block at a time.
template <class T, class Fn>
QAT_INLINE void for_each_nearest(const LutTable& t, const int32_t* index32,
                                 const typename T::Storage* x, int64_t count, Fn&& fn) {
  float xs[kBlock];
  int32_t near[kBlock];
  for (int64_t b = 0; b < count; b += kBlock) {
    const int nb = static_cast<int>(std::min<int64_t>(kBlock, count - b));
    for (int i = 0; i < nb; ++i) xs[i] = T::load(x[b + i]);
    if (t.size == 0) {  // every centroid is NaN
      for (int i = 0; i < nb; ++i) near[i] = 0;
    } else {
      nearest_block(t.value, index32, t.index, t.size, xs, nb, near);
    }
    for (int i = 0; i < nb; ++i) fn(b + i, xs[i], near[i]);
  }
}

// Calls fn(table, int32 indices, group_lut, group, first, last) for each run of [begin, end) inside one group.
// The table's indices also come widened to int32 (gathers have no byte form).
template <class Fn>
void for_each_group(int64_t begin, int64_t end, int64_t n, const float* lut, int k, Fn&& fn) {
  LutTable table;
  int32_t index32[kMaxCentroids];
  for (int64_t i = begin; i < end;) {
    const int64_t g = i / n;
    const int64_t stop = std::min((g + 1) * n, end);
    lut_table(lut + g * k, k, &table);
    for (int j = 0; j < table.size; ++j) index32[j] = table.index[j];
    fn(table, index32, lut + g * k, g, i, stop);
    i = stop;
  }
}

template <class T>
void fake_quant_as(const void* xv, void* yv, int64_t begin, int64_t end, int64_t n,
                   const float* lut, int k) {
  auto x = static_cast<const typename T::Storage*>(xv);
  auto y = static_cast<typename T::Storage*>(yv);
  for_each_group(begin, end, n, lut, k, [&](const LutTable& t, const int32_t* i32, const float* c, int64_t, int64_t a, int64_t b) {
    auto ya = y + a;
    for_each_nearest<T>(t, i32, x + a, b - a, [&](int64_t i, float v, int j) QAT_INLINE_LAMBDA {
      ya[i] = T::store(v != v ? v : c[j]);
    });
  });
}

template <class T>
void indices_as(const void* xv, uint8_t* out, int64_t begin, int64_t end, int64_t n,
                const float* lut, int k) {
  auto x = static_cast<const typename T::Storage*>(xv);
  for_each_group(begin, end, n, lut, k, [&](const LutTable& t, const int32_t* i32, const float*, int64_t, int64_t a, int64_t b) {
    uint8_t* oa = out + a;
    for_each_nearest<T>(t, i32, x + a, b - a, [&](int64_t i, float, int j) QAT_INLINE_LAMBDA {
      oa[i] = static_cast<uint8_t>(j);
    });
  });
}

template <class T>
void grad_as(const void* xv, const void* dyv, int64_t begin, int64_t end, int64_t n,
             const float* lut, int k, double* acc) {
  auto x = static_cast<const typename T::Storage*>(xv);
  auto dy = static_cast<const typename T::Storage*>(dyv);
  for_each_group(begin, end, n, lut, k, [&](const LutTable& t, const int32_t* i32, const float*, int64_t g, int64_t a, int64_t b) {
    double* row = acc + g * k;
    auto da = dy + a;
    for_each_nearest<T>(t, i32, x + a, b - a, [&](int64_t i, float v, int j) QAT_INLINE_LAMBDA {
      if (v == v) row[j] += double(T::load(da[i]));
    });
  });
}

template <class T>
void gather_finite(const void* xv, int64_t n, std::vector<float>& out) {
  auto x = static_cast<const typename T::Storage*>(xv);
  out.clear();
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const float v = T::load(x[i]);
    // + 0.0f turns -0.0 into +0.0: both are one value, and the sort must not pick either.
    if (std::isfinite(v)) out.push_back(v + 0.0f);
  }
}

// Ascending sort of finite values without -0.0: an LSD radix sort (11, 11, 10 bits) of their
// order-preserving bit patterns, several times faster than std::sort on millions of values.
void sort_values(std::vector<float>& v, std::vector<uint32_t>& keys) {
  const size_t n = v.size();
  if (n < 4096) {
    std::sort(v.begin(), v.end());
    return;
  }
  keys.resize(2 * n);
  uint32_t* a = keys.data();
  uint32_t* b = a + n;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t u = float_bits(v[i]);
    a[i] = u ^ ((0u - (u >> 31)) | 0x80000000u);  // negative: flip all bits; positive: the sign
  }
  constexpr int kBits[3] = {11, 11, 10};
  size_t count[1 << 11];
  for (int pass = 0, shift = 0; pass < 3; shift += kBits[pass++]) {
    const uint32_t mask = (1u << kBits[pass]) - 1;
    std::fill(count, count + mask + 1, size_t(0));
    for (size_t i = 0; i < n; ++i) ++count[(a[i] >> shift) & mask];
    if (count[(a[0] >> shift) & mask] == n) continue;  // one digit everywhere: already in order
    size_t sum = 0;
    for (uint32_t d = 0; d <= mask; ++d) {
      const size_t c = count[d];
      count[d] = sum;
      sum += c;
    }
    for (size_t i = 0; i < n; ++i) b[count[(a[i] >> shift) & mask]++] = a[i];
    std::swap(a, b);
  }
  for (size_t i = 0; i < n; ++i) {
    const uint32_t k = a[i];
    v[i] = bits_float(k ^ ((k >> 31) ? 0x80000000u : 0xffffffffu));
  }
}

// Boundaries between neighbouring centroids over the distinct sorted values v[0..d): cluster j
// is v[bounds[j] .. bounds[j + 1]). A value goes to the nearer centroid in float64, the lower
// one on a tie; the midpoint search lands within a value or two of the boundary, then the
// distances themselves decide.
void assign(const std::vector<float>& v, const double* c, int k, std::vector<int64_t>& bounds) {
  const int64_t d = static_cast<int64_t>(v.size());
  bounds.assign(static_cast<size_t>(k) + 1, 0);
  bounds[k] = d;
  for (int j = 0; j + 1 < k; ++j) {
    const double lo = c[j], hi = c[j + 1], mid = 0.5 * (lo + hi);
    const int64_t start = bounds[j];
    int64_t p = std::upper_bound(v.begin() + start, v.end(), mid,
                                 [](double m, float e) { return m < double(e); }) - v.begin();
    auto to_lower = [&](int64_t i) { return std::fabs(double(v[i]) - lo) <= std::fabs(double(v[i]) - hi); };
    while (p < d && to_lower(p)) ++p;
    while (p > start && !to_lower(p - 1)) --p;
    bounds[j + 1] = p;
  }
}

// New centroids: cluster means; an empty cluster takes the value farthest from its own cluster's
// new mean (smallest value on a tie, each value once). Re-sorted afterwards.
void update(const KMeansWorkspace& ws, const std::vector<int64_t>& bounds, int k, double* c) {
  const std::vector<float>& v = ws.values;
  int64_t lo[kMaxCentroids], hi[kMaxCentroids];
  int empty[kMaxCentroids], empties = 0;
  for (int j = 0; j < k; ++j) {
    lo[j] = bounds[j];
    hi[j] = bounds[j + 1];
    const int64_t count = ws.cum_count[hi[j]] - ws.cum_count[lo[j]];
    if (count > 0) {
      c[j] = (ws.cum_sum[hi[j]] - ws.cum_sum[lo[j]]) / double(count);
    } else {
      empty[empties++] = j;
    }
  }
  if (empties == 0) return;
  for (int e = 0; e < empties; ++e) {
    double best = -1.0;
    int best_j = -1;
    bool best_left = true;
    for (int j = 0; j < k; ++j) {
      if (lo[j] >= hi[j]) continue;  // empty, or all values taken
      const double dl = std::fabs(double(v[lo[j]]) - c[j]);
      const double dr = std::fabs(double(v[hi[j] - 1]) - c[j]);
      if (dl > best) best = dl, best_j = j, best_left = true;
      if (dr > best) best = dr, best_j = j, best_left = false;
    }
    // More distinct values than centroids leaves some value off every mean: best_j >= 0.
    const int j = best_j;
    c[empty[e]] = best_left ? double(v[lo[j]++]) : double(v[--hi[j]]);
  }
  std::sort(c, c + k);
}

}  // namespace

int kmeans_1d(DType dtype, const void* x, int64_t n, int k, int max_iters, float* centroids,
              KMeansWorkspace& ws) {
  switch (dtype) {
    case DType::f32: gather_finite<F32>(x, n, ws.values); break;
    case DType::f16: gather_finite<F16>(x, n, ws.values); break;
    case DType::bf16: gather_finite<BF16>(x, n, ws.values); break;
  }
  std::vector<float>& v = ws.values;
  const int64_t m = static_cast<int64_t>(v.size());
  if (m == 0) {
    std::fill(centroids, centroids + k, 0.0f);
    return 0;
  }
  sort_values(v, ws.sort_keys);
  float quantile[kMaxCentroids];
  for (int j = 0; j < k; ++j) quantile[j] = v[static_cast<size_t>((2 * int64_t(j) + 1) * m / (2 * int64_t(k)))];

  // Distinct values in place, with prefix counts and sums (float64) of the sorted values.
  ws.cum_count.resize(static_cast<size_t>(m) + 1);
  ws.cum_sum.resize(static_cast<size_t>(m) + 1);
  int64_t d = 0;
  double sum = 0.0;
  for (int64_t i = 0; i < m;) {
    const float value = v[i];
    ws.cum_count[d] = i;
    ws.cum_sum[d] = sum;
    for (; i < m && v[i] == value; ++i) sum += double(value);
    v[d++] = value;
  }
  ws.cum_count[d] = m;
  ws.cum_sum[d] = sum;
  v.resize(static_cast<size_t>(d));

  if (d <= k) {
    for (int j = 0; j < k; ++j) centroids[j] = v[std::min<int64_t>(j, d - 1)];
    return 0;
  }

  // Quantile ranks among the distinct values, then strictly increasing: capped so that the
  // centroids above still fit, then pushed up past the one below.
  double c[kMaxCentroids];
  int64_t rank_below = -1;
  for (int j = 0; j < k; ++j) {
    int64_t r = std::lower_bound(v.begin(), v.end(), quantile[j]) - v.begin();
    r = std::min<int64_t>(r, d - k + j);
    r = std::max<int64_t>(r, rank_below + 1);
    c[j] = double(v[r]);
    rank_below = r;
  }

  int iters = 0;
  ws.prev_bounds.clear();
  for (;;) {
    assign(v, c, k, ws.bounds);
    if (ws.bounds == ws.prev_bounds || iters >= max_iters) break;
    update(ws, ws.bounds, k, c);
    ++iters;
    std::swap(ws.bounds, ws.prev_bounds);
  }
  for (int j = 0; j < k; ++j) centroids[j] = float(c[j]);
  return iters;
}

void lut_fake_quant(DType dtype, const void* x, void* y, int64_t begin, int64_t end, int64_t n,
                    const float* lut, int k) {
  switch (dtype) {
    case DType::f32: return fake_quant_as<F32>(x, y, begin, end, n, lut, k);
    case DType::f16: return fake_quant_as<F16>(x, y, begin, end, n, lut, k);
    case DType::bf16: return fake_quant_as<BF16>(x, y, begin, end, n, lut, k);
  }
}

void lut_indices(DType dtype, const void* x, uint8_t* indices, int64_t begin, int64_t end,
                 int64_t n, const float* lut, int k) {
  switch (dtype) {
    case DType::f32: return indices_as<F32>(x, indices, begin, end, n, lut, k);
    case DType::f16: return indices_as<F16>(x, indices, begin, end, n, lut, k);
    case DType::bf16: return indices_as<BF16>(x, indices, begin, end, n, lut, k);
  }
}

void lut_grad(DType dtype, const void* x, const void* dy, int64_t begin, int64_t end, int64_t n,
              const float* lut, int k, double* acc) {
  switch (dtype) {
    case DType::f32: return grad_as<F32>(x, dy, begin, end, n, lut, k, acc);
    case DType::f16: return grad_as<F16>(x, dy, begin, end, n, lut, k, acc);
    case DType::bf16: return grad_as<BF16>(x, dy, begin, end, n, lut, k, acc);
  }
}

}  // namespace qat::kernels::cpu
