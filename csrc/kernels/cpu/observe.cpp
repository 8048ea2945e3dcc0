// CPU observer kernels: min/max, histograms and the MSE candidate search. Non-finite elements
// are skipped (treated as absent), so they never reach a statistic.
#include "../observe.h"
#include "cpu_common.h"

#include <vector>

namespace qat::kernels::cpu {
namespace {

constexpr int kLanes = 16;

// Min / max of a run's finite elements folded into *lo / *hi, in fixed lanes so it vectorizes.
template <class T>
QAT_INLINE void minmax_run(const typename T::Storage* x, int64_t n, float* lo, float* hi) {
  float lane_lo[kLanes], lane_hi[kLanes];
  for (int j = 0; j < kLanes; ++j) {
    lane_lo[j] = INFINITY;
    lane_hi[j] = -INFINITY;
  }
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      float v = T::load(x[i + j]);
      bool f = is_finite(v);
      float a = f ? v : INFINITY, b = f ? v : -INFINITY;
      lane_lo[j] = a < lane_lo[j] ? a : lane_lo[j];
      lane_hi[j] = b > lane_hi[j] ? b : lane_hi[j];
    }
  }
  for (; i < n; ++i) {
    float v = T::load(x[i]);
    if (is_finite(v)) {
      lane_lo[0] = v < lane_lo[0] ? v : lane_lo[0];
      lane_hi[0] = v > lane_hi[0] ? v : lane_hi[0];
    }
  }
  float l = *lo, h = *hi;
  for (int j = 0; j < kLanes; ++j) {
    l = lane_lo[j] < l ? lane_lo[j] : l;
    h = lane_hi[j] > h ? lane_hi[j] : h;
  }
  *lo = l;
  *hi = h;
}

// inner == 1: a row of channels, one statistic per element.
template <class T>
QAT_INLINE void minmax_row(const typename T::Storage* x, int64_t c_begin, int64_t c_end, float* lo,
                           float* hi) {
  for (int64_t c = c_begin; c < c_end; ++c) {
    float v = T::load(x[c]);
    bool f = is_finite(v);
    float a = f ? v : INFINITY, b = f ? v : -INFINITY;
    lo[c] = a < lo[c] ? a : lo[c];
    hi[c] = b > hi[c] ? b : hi[c];
  }
}

template <class T>
QAT_INLINE void minmax_impl(const void* xv, int64_t begin, int64_t end, ChannelLayout layout,
                            float* lo, float* hi) {
  auto x = static_cast<const typename T::Storage*>(xv);
  if (layout.inner == 1 && layout.channels > 1) {
    for_each_run(begin, end, ChannelLayout{layout.channels, 1}, [&](int64_t, int64_t a, int64_t b) QAT_INLINE_LAMBDA {
      int64_t c0 = a % layout.channels;
      minmax_row<T>(x + a - c0, c0, c0 + (b - a), lo, hi);
    });
    return;
  }
  for_each_run(begin, end, layout, [&](int64_t c, int64_t a, int64_t b) QAT_INLINE_LAMBDA {
    minmax_run<T>(x + a, b - a, lo + c, hi + c);
  });
}

// Bin indices are computed in fp32 in blocks (vectorized: scaling by a power of two is exact, and
// |x / 2^exponent| < 2^25 for x inside the grid's range), then counted into interleaved copies
// of the histogram so consecutive equal bins do not serialize on one counter.
template <class T>
QAT_INLINE void histogram_impl(const void* xv, int64_t begin, int64_t end, HistogramGrid grid,
                               int64_t* counts) {
  auto x = static_cast<const typename T::Storage*>(xv);
  const int64_t bins = grid.bins;
  if (grid.exponent < -126 || grid.exponent > 126) {  // 2^-exponent is no normal float: rare
    const double inv_width = ldexp(1.0, -grid.exponent);
    for (int64_t i = begin; i < end; ++i) {
      float v = T::load(x[i]);
      if (!is_finite(v)) continue;
      int64_t k = floor_to_int(double(v) * inv_width) - grid.first;
      ++counts[k < 0 ? 0 : (k >= bins ? bins - 1 : k)];
    }
    return;
  }
  constexpr int64_t kBlock = 256;
  constexpr int64_t kCopies = 4;
  std::vector<int64_t> copies(size_t(kCopies * bins), 0);
  const float inv = ldexpf(1.0f, -grid.exponent);
  // Clamp the scaled value before converting: far outside the grid it may not fit an int32.
  const float lowest = float(grid.first) - 1.0f, highest = float(grid.first + bins);
  const int32_t first = int32_t(grid.first), last = int32_t(bins - 1);
  int32_t idx[kBlock];
  for (int64_t i = begin; i < end; i += kBlock) {
    const int64_t n = end - i < kBlock ? end - i : kBlock;
    for (int64_t j = 0; j < n; ++j) {
      const float v = T::load(x[i + j]);
      const bool f = is_finite(v);
      float r = v * inv;
      r = r < lowest ? lowest : (r > highest ? highest : r);
      // A negative value whose scaled form underflows to -0 still lies in bin -1.
      int32_t k = int32_t(floorf(r)) - int32_t((v < 0.0f) & (r == 0.0f)) - first;
      k = k < 0 ? 0 : (k > last ? last : k);
      idx[j] = f ? k : -1;
    }
    for (int64_t j = 0; j < n; ++j) {
      if (idx[j] >= 0) ++copies[size_t((j & (kCopies - 1)) * bins + idx[j])];
    }
  }
  for (int64_t c = 0; c < kCopies; ++c)
    for (int64_t b = 0; b < bins; ++b) counts[b] += copies[size_t(c * bins + b)];
}

// One chunk of a run, already widened to fp32 with non-finite elements replaced by 0 (which
// every candidate reproduces exactly, so they add no error): its squared error per candidate.
constexpr int64_t kChunk = 1024;

QAT_INLINE void mse_chunk(const float* v, int64_t n, const float* scale, const float* zero_point,
                          int64_t count, QuantRange r, double* errors) {
  for (int64_t k = 0; k < count; ++k) {
    const float s = effective_scale(scale[k]);
    const float inv = 1.0f / s;
    const float zp = effective_zero_point(zero_point[k], r.quant_min, r.quant_max);
    float lane[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        float d = fake_quant_value(v[i + j], s, inv, zp, r.quant_min, r.quant_max) - v[i + j];
        lane[j] += d * d;
      }
    }
    for (; i < n; ++i) {
      float d = fake_quant_value(v[i], s, inv, zp, r.quant_min, r.quant_max) - v[i];
      lane[0] += d * d;
    }
    double total = 0.0;
    for (int j = 0; j < kLanes; ++j) total += double(lane[j]);
    errors[k] += total;
  }
}

template <class T>
QAT_INLINE void mse_impl(const void* xv, int64_t begin, int64_t end, ChannelLayout layout,
                         Candidates cand, QuantRange r, double* errors) {
  auto x = static_cast<const typename T::Storage*>(xv);
  float buf[kChunk];
  for_each_run(begin, end, layout, [&](int64_t c, int64_t a, int64_t b) QAT_INLINE_LAMBDA {
    for (int64_t i = a; i < b; i += kChunk) {
      const int64_t n = b - i < kChunk ? b - i : kChunk;
      for (int64_t j = 0; j < n; ++j) {
        float v = T::load(x[i + j]);
        buf[j] = is_finite(v) ? v : 0.0f;
      }
      mse_chunk(buf, n, cand.scale + c * cand.count, cand.zero_point + c * cand.count,
                cand.count, r, errors + c * cand.count);
    }
  });
}

}  // namespace

void choose_qparams(const float* min, const float* max, int64_t n, int32_t quant_min,
                    int32_t quant_max, bool symmetric, float* scale, float* zero_point) {
  for (int64_t i = 0; i < n; ++i) {
    AffineQParams q = qparams_minmax(min[i], max[i], quant_min, quant_max, symmetric);
    scale[i] = q.scale;
    zero_point[i] = q.zero_point;
  }
}

QAT_CPU_CLONES
void minmax(DType dtype, const void* x, int64_t begin, int64_t end, ChannelLayout layout,
            float* min, float* max) {
  switch (dtype) {
    case DType::f32: return minmax_impl<F32>(x, begin, end, layout, min, max);
    case DType::f16: return minmax_impl<F16>(x, begin, end, layout, min, max);
    case DType::bf16: return minmax_impl<BF16>(x, begin, end, layout, min, max);
  }
}

QAT_CPU_CLONES
void histogram_add(DType dtype, const void* x, int64_t begin, int64_t end, HistogramGrid grid,
                   int64_t* counts) {
  switch (dtype) {
    case DType::f32: return histogram_impl<F32>(x, begin, end, grid, counts);
    case DType::f16: return histogram_impl<F16>(x, begin, end, grid, counts);
    case DType::bf16: return histogram_impl<BF16>(x, begin, end, grid, counts);
  }
}

void histogram_rebin(const int64_t* counts, HistogramGrid from, int64_t* out, HistogramGrid to) {
  for (int64_t i = 0; i < from.bins; ++i) {
    if (counts[i] == 0) continue;
    int64_t k = coarser_index(from.first + i, from.exponent, to.exponent) - to.first;
    k = k < 0 ? 0 : (k >= to.bins ? to.bins - 1 : k);
    out[k] += counts[i];
  }
}

QAT_CPU_CLONES
void mse_errors(DType dtype, const void* x, int64_t begin, int64_t end, ChannelLayout layout,
                Candidates candidates, QuantRange range, double* errors) {
  switch (dtype) {
    case DType::f32: return mse_impl<F32>(x, begin, end, layout, candidates, range, errors);
    case DType::f16: return mse_impl<F16>(x, begin, end, layout, candidates, range, errors);
    case DType::bf16: return mse_impl<BF16>(x, begin, end, layout, candidates, range, errors);
  }
}

}  // namespace qat::kernels::cpu
