// CPU registrations of the observer ops: argument checks, at::parallel_for over the torch-free
// kernels of kernels/observe.h and kernels/calibrate.h, and the small per-channel updates.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "kernels/calibrate.h"
#include "kernels/observe.h"

namespace qat::ops {
namespace {

constexpr int64_t kGrain = 32768;

bool flag_set(const at::Tensor& flag) { return flag.item<bool>(); }

// Splits x over threads and folds each part into accumulators of `width` entries (per channel
// or per channel pair, as the caller lays them out). With many channels every thread owns a
// slice of channels across all outer rows, so `out` is shared without races; with few, each
// thread fills its own copy and the copies are merged into `out`.
// init(acc) resets one copy, part(begin, end, acc) runs the kernel, merge(out, copy) folds.
template <class T, class Init, class Part, class Merge>
void reduce_channels(int64_t numel, kernels::ChannelLayout layout, int64_t width, T* out,
                     Init init, Part part, Merge merge) {
  const int64_t channels = layout.channels, inner = layout.inner;
  const int64_t threads = at::get_num_threads();
  if (numel == 0) return;
  if (channels >= 4 * threads) {
    const int64_t row = channels * inner, outer = numel / row;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, outer * inner));
    at::parallel_for(0, channels, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t o = 0; o < outer; ++o) part(o * row + c0 * inner, o * row + c1 * inner, out);
    });
    return;
  }
  const int64_t size = channels * width;
  std::vector<T> copies(size_t(threads * size));
  for (int64_t t = 0; t < threads; ++t) init(copies.data() + t * size);
  at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
    part(b, e, copies.data() + at::get_thread_num() * size);
  });
  for (int64_t t = 0; t < threads; ++t) merge(out, copies.data() + t * size);
}

// The finite min / max of x per channel (+inf / -inf where a channel has no finite element).
struct BatchMinMax {
  std::vector<float> values;  // [min of each channel..., max of each channel...]
  int64_t channels;
  float min(int64_t c) const { return values[size_t(c)]; }
  float max(int64_t c) const { return values[size_t(channels + c)]; }
};

BatchMinMax batch_minmax(const at::Tensor& xc, kernels::DType dtype, kernels::ChannelLayout layout) {
  const int64_t channels = layout.channels;
  auto init = [channels](float* acc) {
    std::fill_n(acc, channels, INFINITY);
    std::fill_n(acc + channels, channels, -INFINITY);
  };
  BatchMinMax out{std::vector<float>(size_t(2 * channels)), channels};
  init(out.values.data());
  reduce_channels<float>(xc.numel(), layout, 2, out.values.data(), init,
      [&](int64_t b, int64_t e, float* acc) {
        kernels::cpu::minmax(dtype, xc.const_data_ptr(), b, e, layout, acc, acc + channels);
      },
      [channels](float* dst, const float* src) {
        for (int64_t i = 0; i < channels; ++i) {
          dst[i] = src[i] < dst[i] ? src[i] : dst[i];
          dst[channels + i] = src[channels + i] > dst[channels + i] ? src[channels + i] : dst[channels + i];
        }
      });
  return out;
}

void update_minmax_cpu(const at::Tensor& x, const at::Tensor& running_min,
                       const at::Tensor& running_max, const at::Tensor& enabled,
                       std::optional<double> averaging_constant, int64_t axis,
                       std::optional<int64_t> group_size) {
  constexpr const char* op = "qat::update_minmax";
  const kernels::ChannelLayout layout =
      check_running_minmax(x, running_min, running_max, axis, group_size, op);
  check_flag(enabled, x.device(), op, "enabled");
  if (averaging_constant.has_value()) check_averaging_constant(*averaging_constant, op, "averaging_constant");
  if (!flag_set(enabled) || x.numel() == 0) return;
  const at::Tensor xc = x.contiguous();
  const BatchMinMax cur = batch_minmax(xc, kernel_dtype(x, op), layout);
  float* lo = running_min.mutable_data_ptr<float>();
  float* hi = running_max.mutable_data_ptr<float>();
  const float c = float(averaging_constant.value_or(0.0));
  for (int64_t i = 0; i < layout.channels; ++i) {
    kernels::update_running_minmax(lo + i, hi + i, cur.min(i), cur.max(i),
                                   averaging_constant.has_value(), c);
  }
}

void update_histogram_cpu(const at::Tensor& x, const at::Tensor& histogram,
                          const at::Tensor& range, const at::Tensor& enabled) {
  constexpr const char* op = "qat::update_histogram";
  const kernels::DType dtype = kernel_dtype(x, op);
  check_histogram(histogram, range, op);
  check_same_device(histogram, x, op, "histogram");
  check_flag(enabled, x.device(), op, "enabled");
  if (!flag_set(enabled) || x.numel() == 0) return;
  const at::Tensor xc = x.contiguous();
  float* r = range.mutable_data_ptr<float>();
  int64_t* counts = histogram.mutable_data_ptr<int64_t>();
  const int64_t bins = histogram.numel();
  const int64_t threads = at::get_num_threads();

  // The batch's range first (a cheap vectorized pass), so its grid is known before counting.
  const BatchMinMax cur = batch_minmax(xc, dtype, {xc.numel(), 1});
  if (!(cur.min(0) <= cur.max(0))) return;  // no finite element
  const bool had_data = r[0] <= r[1];
  const float new_min = had_data ? std::min(r[0], cur.min(0)) : cur.min(0);
  const float new_max = had_data ? std::max(r[1], cur.max(0)) : cur.max(0);
  const kernels::HistogramGrid grid = kernels::histogram_grid(new_min, new_max, bins);
  if (had_data) {
    const kernels::HistogramGrid old = kernels::histogram_grid(r[0], r[1], bins);
    if (old.exponent != grid.exponent || old.first != grid.first) {
      std::vector<int64_t> moved(size_t(bins), 0);
      kernels::cpu::histogram_rebin(counts, old, moved.data(), grid);
      std::copy(moved.begin(), moved.end(), counts);
    }
  }
  std::vector<int64_t> copies(size_t(threads * bins), 0);
  at::parallel_for(0, xc.numel(), kGrain, [&](int64_t b, int64_t e) {
    kernels::cpu::histogram_add(dtype, xc.const_data_ptr(), b, e, grid,
                                copies.data() + at::get_thread_num() * bins);
  });
  for (int64_t t = 0; t < threads; ++t)
    for (int64_t i = 0; i < bins; ++i) counts[i] += copies[size_t(t * bins + i)];
  r[0] = new_min;
  r[1] = new_max;
}

at::Tensor rebin_histogram_cpu(const at::Tensor& histogram, const at::Tensor& range,
                               const at::Tensor& new_range) {
  constexpr const char* op = "qat::rebin_histogram";
  check_histogram(histogram, range, op);
  check_histogram(histogram, new_range, op);
  const float* r = range.const_data_ptr<float>();
  const float* n = new_range.const_data_ptr<float>();
  const int64_t bins = histogram.numel();
  at::Tensor out = at::zeros_like(histogram);
  if (!(r[0] <= r[1])) return out;  // nothing observed yet
  TORCH_CHECK(n[0] <= r[0] && n[1] >= r[1], op, ": new_range [", n[0], ", ", n[1],
              "] must contain range [", r[0], ", ", r[1], "]");
  kernels::cpu::histogram_rebin(histogram.const_data_ptr<int64_t>(),
                                kernels::histogram_grid(r[0], r[1], bins),
                                out.mutable_data_ptr<int64_t>(),
                                kernels::histogram_grid(n[0], n[1], bins));
  return out;
}

at::Tensor histogram_clip_range_cpu(const at::Tensor& histogram, const at::Tensor& range,
                                    c10::string_view method, double param, int64_t quant_levels,
                                    bool symmetric) {
  constexpr const char* op = "qat::histogram_clip_range";
  check_histogram(histogram, range, op);
  const float* r = range.const_data_ptr<float>();
  const int64_t* counts = histogram.const_data_ptr<int64_t>();
  const kernels::HistogramGrid grid =
      r[0] <= r[1] ? kernels::histogram_grid(r[0], r[1], histogram.numel())
                   : kernels::HistogramGrid{0, 0, histogram.numel()};
  kernels::ClipRange clip{};
  if (method == "percentile") {
    TORCH_CHECK(param > 0.0 && param <= 100.0, op, ": percentile must lie in (0, 100], got ", param);
    clip = kernels::histogram_percentile(counts, grid, r[0], r[1], param, symmetric);
  } else if (method == "entropy") {
    TORCH_CHECK(quant_levels >= 2, op, ": quant_levels must be at least 2, got ", quant_levels);
    clip = kernels::histogram_entropy(counts, grid, r[0], r[1], quant_levels);
  } else {
    TORCH_CHECK(false, op, ": method must be 'percentile' or 'entropy', got '", std::string(method), "'");
  }
  at::Tensor out = at::empty({2}, range.options());
  out.mutable_data_ptr<float>()[0] = clip.min;
  out.mutable_data_ptr<float>()[1] = clip.max;
  return out;
}

std::tuple<at::Tensor, at::Tensor> choose_qparams_cpu(const at::Tensor& min, const at::Tensor& max,
                                                      int64_t quant_min, int64_t quant_max,
                                                      bool symmetric) {
  constexpr const char* op = "qat::choose_qparams";
  check_minmax_pair(min, max, op);
  check_quant_range(quant_min, quant_max, op);
  const at::Tensor lo = min.contiguous(), hi = max.contiguous();
  at::Tensor scale = at::empty(min.sizes(), lo.options());
  at::Tensor zero_point = at::empty(min.sizes(), lo.options());
  kernels::cpu::choose_qparams(lo.const_data_ptr<float>(), hi.const_data_ptr<float>(), lo.numel(),
                               int32_t(quant_min), int32_t(quant_max), symmetric,
                               scale.mutable_data_ptr<float>(), zero_point.mutable_data_ptr<float>());
  return {scale, zero_point};
}

at::Tensor mse_errors_cpu(const at::Tensor& x, const at::Tensor& min, const at::Tensor& max,
                          const at::Tensor& ratios, int64_t quant_min, int64_t quant_max,
                          bool symmetric, int64_t axis, std::optional<int64_t> group_size) {
  constexpr const char* op = "qat::mse_errors";
  const kernels::ChannelLayout layout = check_mse_errors(x, min, max, ratios, axis, group_size, op);
  const kernels::DType dtype = kernel_dtype(x, op);
  const int64_t count = ratios.numel();
  // Candidate r of channel c clips to ratios[r] * [min[c], max[c]], the fp32 products a caller
  // recomputes to turn the winning ratio into qparams with choose_qparams.
  const at::Tensor r = ratios.reshape({1, -1});
  auto [scale, zero_point] = choose_qparams_cpu(at::mul(min.reshape({-1, 1}), r),
                                                at::mul(max.reshape({-1, 1}), r), quant_min,
                                                quant_max, symmetric);
  const kernels::Candidates cand{scale.const_data_ptr<float>(),
                                 zero_point.const_data_ptr<float>(), count};
  const kernels::QuantRange range{float(quant_min), float(quant_max)};
  const at::Tensor xc = x.contiguous();
  std::vector<int64_t> shape(min.sizes().begin(), min.sizes().end());
  shape.push_back(count);
  at::Tensor errors = at::zeros(shape, min.options().dtype(at::kDouble));
  const int64_t size = layout.channels * count;
  reduce_channels<double>(xc.numel(), layout, count, errors.mutable_data_ptr<double>(),
      [size](double* acc) { std::fill_n(acc, size, 0.0); },
      [&](int64_t b, int64_t e, double* acc) {
        kernels::cpu::mse_errors(dtype, xc.const_data_ptr(), b, e, layout, cand, range, acc);
      },
      [size](double* dst, const double* src) {
        for (int64_t i = 0; i < size; ++i) dst[i] += src[i];
      });
  return errors;
}

at::Tensor observe_fake_quantize_cpu(const at::Tensor& x, const at::Tensor& observer_on,
                                     const at::Tensor& fake_quant_on, const at::Tensor& running_min,
                                     const at::Tensor& running_max, const at::Tensor& scale,
                                     const at::Tensor& zero_point, double averaging_const,
                                     int64_t quant_min, int64_t quant_max, int64_t ch_axis,
                                     bool per_row_fake_quant, bool symmetric_quant) {
  constexpr const char* op = "qat::observe_fake_quantize";
  const kernels::ChannelLayout layout = check_observe_fake_quantize(
      x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const,
      quant_min, quant_max, ch_axis, per_row_fake_quant, op);
  const kernels::DType dtype = kernel_dtype(x, op);
  if (x.numel() == 0) return x.clone();

  const at::Tensor xc = x.contiguous();
  const int64_t channels = layout.channels;
  float* lo = running_min.mutable_data_ptr<float>();
  float* hi = running_max.mutable_data_ptr<float>();
  if (flag_set(observer_on)) {
    const BatchMinMax cur = batch_minmax(xc, dtype, layout);
    for (int64_t c = 0; c < channels; ++c)
      kernels::update_running_minmax(lo + c, hi + c, cur.min(c), cur.max(c), true, float(averaging_const));
  }
  if (!flag_set(fake_quant_on)) return x.clone();
  float* s = scale.mutable_data_ptr<float>();
  float* z = zero_point.mutable_data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) {
    const kernels::AffineQParams q = kernels::qparams_fbgemm(lo[c], hi[c], int32_t(quant_min),
                                                             int32_t(quant_max), symmetric_quant);
    s[c] = q.scale;
    z[c] = q.zero_point;
  }
  at::Tensor y = at::empty(x.sizes(), xc.options());
  const kernels::QuantRange range{float(quant_min), float(quant_max)};
  at::parallel_for(0, xc.numel(), kGrain, [&](int64_t b, int64_t e) {
    kernels::cpu::fake_quant_forward(dtype, xc.const_data_ptr(), y.mutable_data_ptr(), b, e, layout,
                                     {s, z}, range);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, CPU, m) {
  m.impl("update_minmax", &update_minmax_cpu);
  m.impl("update_histogram", &update_histogram_cpu);
  m.impl("rebin_histogram", &rebin_histogram_cpu);
  m.impl("histogram_clip_range", &histogram_clip_range_cpu);
  m.impl("choose_qparams", &choose_qparams_cpu);
  m.impl("mse_errors", &mse_errors_cpu);
  m.impl("observe_fake_quantize", &observe_fake_quantize_cpu);
}

}  // namespace qat::ops
