// CUDA registrations, compiled by the host compiler: the kernels (torch-free, nvcc) are launched
// on the current stream; nothing here waits for the device.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "checks.h"
#include "kernels/observe.h"

namespace qat::ops {
namespace {

void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

at::Tensor fake_quantize_cuda(const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                              int64_t axis, std::optional<int64_t> group_size, double grad_factor) {
  const FakeQuantPlan plan = check_fake_quantize(x, scale, zero_point, quant_min, quant_max, axis,
                                                 group_size, grad_factor);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), s = scale.contiguous(), z = zero_point.contiguous();
  at::Tensor y = at::empty(x.sizes(), xc.options());
  kernels::cuda::fake_quant_forward(plan.dtype, xc.const_data_ptr(), y.mutable_data_ptr(),
                                    xc.numel(), plan.layout,
                                    {s.const_data_ptr<float>(), z.const_data_ptr<float>()},
                                    plan.range, current_stream());
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, int64_t axis,
    std::optional<int64_t> group_size, double grad_factor, bool qparam_grads) {
  const FakeQuantPlan plan = check_fake_quantize(x, scale, zero_point, quant_min, quant_max, axis,
                                                 group_size, grad_factor);
  check_grad(grad, x);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), s = scale.contiguous(), z = zero_point.contiguous();
  const at::Tensor g = grad.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty(x.sizes(), xc.options());
  at::Tensor acc;
  double* acc_s = nullptr;
  double* acc_z = nullptr;
  if (qparam_grads) {
    acc = at::zeros({2, plan.layout.channels}, xc.options().dtype(at::kDouble));
    acc_s = acc.mutable_data_ptr<double>();
    acc_z = acc_s + plan.layout.channels;
  }
  kernels::cuda::fake_quant_backward(plan.dtype, xc.const_data_ptr(), g.const_data_ptr(),
                                     dx.mutable_data_ptr(), xc.numel(), plan.layout,
                                     {s.const_data_ptr<float>(), z.const_data_ptr<float>()},
                                     plan.range, float(grad_factor), acc_s, acc_z,
                                     current_stream());
  return backward_outputs(dx, acc, scale, zero_point);
}

at::Tensor fake_cast_cuda(const at::Tensor& x, c10::string_view fmt) {
  const kernels::DType dtype = kernel_dtype(x, "qat::fake_cast");
  const kernels::CastFormat format = parse_cast_format(std::string_view(fmt.data(), fmt.size()));
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty(x.sizes(), xc.options());
  kernels::cuda::fake_cast(dtype, xc.const_data_ptr(), y.mutable_data_ptr(), xc.numel(), format,
                           current_stream());
  return y;
}

// ---- observers ----------------------------------------------------------------------------
// Same checks and semantics as impl_cpu_observe.cpp. Enable flags stay on the device: the
// kernels read them, so an update never waits for the host (a disabled update costs a few empty
// launches). rebin_histogram and histogram_clip_range are host algorithms over a few thousand
// bins: they copy to the CPU (a synchronization), run the CPU kernel, and copy back.

// The flag as a one-element int64 tensor on its device (the tensor itself when it already is).
at::Tensor device_flag(const at::Tensor& flag) {
  return flag.scalar_type() == at::kLong ? flag.reshape({1}) : flag.to(at::kLong).reshape({1});
}

void update_minmax_cuda(const at::Tensor& x, const at::Tensor& running_min,
                        const at::Tensor& running_max, const at::Tensor& enabled,
                        std::optional<double> averaging_constant, int64_t axis,
                        std::optional<int64_t> group_size) {
  constexpr const char* op = "qat::update_minmax";
  const kernels::ChannelLayout layout =
      check_running_minmax(x, running_min, running_max, axis, group_size, op);
  check_flag(enabled, x.device(), op, "enabled");
  if (averaging_constant.has_value()) check_averaging_constant(*averaging_constant, op, "averaging_constant");
  if (x.numel() == 0) return;
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor flag = device_flag(enabled);
  const int64_t channels = layout.channels;
  // This batch's finite min / max per channel, then the running update, both gated on the flag.
  at::Tensor cur = at::empty({2, channels}, running_min.options());
  cur[0].fill_(INFINITY);
  cur[1].fill_(-INFINITY);
  float* cur_min = cur.mutable_data_ptr<float>();
  kernels::cuda::minmax(kernel_dtype(x, op), xc.const_data_ptr(), xc.numel(), layout, cur_min,
                        cur_min + channels, flag.const_data_ptr<int64_t>(), current_stream());
  kernels::cuda::update_running_minmax(cur_min, cur_min + channels,
                                       running_min.mutable_data_ptr<float>(),
                                       running_max.mutable_data_ptr<float>(), channels,
                                       flag.const_data_ptr<int64_t>(),
                                       averaging_constant.has_value(),
                                       float(averaging_constant.value_or(0.0)), current_stream());
}

void update_histogram_cuda(const at::Tensor& x, const at::Tensor& histogram,
                           const at::Tensor& range, const at::Tensor& enabled) {
  constexpr const char* op = "qat::update_histogram";
  const kernels::DType dtype = kernel_dtype(x, op);
  check_histogram(histogram, range, op);
  check_same_device(histogram, x, op, "histogram");
  check_same_device(range, x, op, "range");
  check_flag(enabled, x.device(), op, "enabled");
  if (x.numel() == 0) return;
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor flag = device_flag(enabled);
  const int64_t bins = histogram.numel();
  at::Tensor scratch =
      at::empty({kernels::cuda::histogram_update_scratch_int64(bins)}, histogram.options());
  kernels::cuda::histogram_update(dtype, xc.const_data_ptr(), xc.numel(),
                                  histogram.mutable_data_ptr<int64_t>(), bins,
                                  range.mutable_data_ptr<float>(), flag.const_data_ptr<int64_t>(),
                                  scratch.mutable_data_ptr<int64_t>(), current_stream());
}

at::Tensor rebin_histogram_cuda(const at::Tensor& histogram, const at::Tensor& range,
                                const at::Tensor& new_range) {
  static auto cpu_op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("qat::rebin_histogram", "")
                           .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return cpu_op.call(histogram.cpu(), range.cpu(), new_range.cpu()).to(histogram.device());
}

at::Tensor histogram_clip_range_cuda(const at::Tensor& histogram, const at::Tensor& range,
                                     c10::string_view method, double param, int64_t quant_levels,
                                     bool symmetric) {
  static auto cpu_op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("qat::histogram_clip_range", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double,
                            int64_t, bool)>();
  return cpu_op.call(histogram.cpu(), range.cpu(), method, param, quant_levels, symmetric)
      .to(range.device());
}

std::tuple<at::Tensor, at::Tensor> choose_qparams_cuda(const at::Tensor& min,
                                                       const at::Tensor& max, int64_t quant_min,
                                                       int64_t quant_max, bool symmetric) {
  constexpr const char* op = "qat::choose_qparams";
  check_minmax_pair(min, max, op);
  check_quant_range(quant_min, quant_max, op);
  c10::cuda::CUDAGuard guard(min.device());
  const at::Tensor lo = min.contiguous(), hi = max.contiguous();
  at::Tensor scale = at::empty(min.sizes(), lo.options());
  at::Tensor zero_point = at::empty(min.sizes(), lo.options());
  kernels::cuda::choose_qparams(lo.const_data_ptr<float>(), hi.const_data_ptr<float>(), lo.numel(),
                                int32_t(quant_min), int32_t(quant_max), symmetric,
                                scale.mutable_data_ptr<float>(),
                                zero_point.mutable_data_ptr<float>(), current_stream());
  return {scale, zero_point};
}

at::Tensor mse_errors_cuda(const at::Tensor& x, const at::Tensor& min, const at::Tensor& max,
                           const at::Tensor& ratios, int64_t quant_min, int64_t quant_max,
                           bool symmetric, int64_t axis, std::optional<int64_t> group_size) {
  constexpr const char* op = "qat::mse_errors";
  const kernels::ChannelLayout layout = check_mse_errors(x, min, max, ratios, axis, group_size, op);
  const kernels::DType dtype = kernel_dtype(x, op);
  const int64_t count = ratios.numel();
  c10::cuda::CUDAGuard guard(x.device());
  // The CPU op's candidates: ratios[r] * [min[c], max[c]] in fp32, then choose_qparams.
  const at::Tensor r = ratios.reshape({1, -1});
  auto [scale, zero_point] = choose_qparams_cuda(at::mul(min.reshape({-1, 1}), r),
                                                 at::mul(max.reshape({-1, 1}), r), quant_min,
                                                 quant_max, symmetric);
  const at::Tensor xc = x.contiguous();
  std::vector<int64_t> shape(min.sizes().begin(), min.sizes().end());
  shape.push_back(count);
  at::Tensor errors = at::zeros(shape, min.options().dtype(at::kDouble));
  kernels::cuda::mse_errors(dtype, xc.const_data_ptr(), xc.numel(), layout,
                            {scale.const_data_ptr<float>(), zero_point.const_data_ptr<float>(), count},
                            {float(quant_min), float(quant_max)},
                            errors.mutable_data_ptr<double>(), current_stream());
  return errors;
}

at::Tensor observe_fake_quantize_cuda(const at::Tensor& x, const at::Tensor& observer_on,
                                      const at::Tensor& fake_quant_on,
                                      const at::Tensor& running_min, const at::Tensor& running_max,
                                      const at::Tensor& scale, const at::Tensor& zero_point,
                                      double averaging_const, int64_t quant_min,
                                      int64_t quant_max, int64_t ch_axis, bool per_row_fake_quant,
                                      bool symmetric_quant) {
  constexpr const char* op = "qat::observe_fake_quantize";
  const kernels::ChannelLayout layout = check_observe_fake_quantize(
      x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const,
      quant_min, quant_max, ch_axis, per_row_fake_quant, op);
  const kernels::DType dtype = kernel_dtype(x, op);
  if (x.numel() == 0) return x.clone();

  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  const at::Tensor obs = device_flag(observer_on), fq = device_flag(fake_quant_on);
  // y is written whatever the flag (a bit copy of x when fake quantization is off), always
  // contiguous: the flag is not known on the host.
  at::Tensor y = at::empty(x.sizes(), xc.options());
  at::Tensor scratch = at::zeros(
      {kernels::cuda::observe_fake_quant_scratch_bytes(layout.channels)},
      xc.options().dtype(at::kByte));
  kernels::cuda::observe_fake_quant(
      dtype, xc.const_data_ptr(), y.mutable_data_ptr(), xc.numel(), layout,
      obs.const_data_ptr<int64_t>(), fq.const_data_ptr<int64_t>(),
      running_min.mutable_data_ptr<float>(), running_max.mutable_data_ptr<float>(),
      scale.mutable_data_ptr<float>(), zero_point.mutable_data_ptr<float>(),
      float(averaging_const), int32_t(quant_min), int32_t(quant_max), symmetric_quant,
      scratch.mutable_data_ptr(), current_stream());
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, CUDA, m) {
  m.impl("fake_quantize", &fake_quantize_cuda);
  m.impl("fake_quantize_backward", &fake_quantize_backward_cuda);
  m.impl("fake_cast", &fake_cast_cuda);
  m.impl("update_minmax", &update_minmax_cuda);
  m.impl("update_histogram", &update_histogram_cuda);
  m.impl("rebin_histogram", &rebin_histogram_cuda);
  m.impl("histogram_clip_range", &histogram_clip_range_cuda);
  m.impl("choose_qparams", &choose_qparams_cuda);
  m.impl("mse_errors", &mse_errors_cuda);
  m.impl("observe_fake_quantize", &observe_fake_quantize_cuda);
}

}  // namespace qat::ops
