// Autograd for the qat ops, in C++ so LibTorch training loops and Python get the same gradients.
// Forward redispatches below the autograd key; backward calls only registered ops.
#include <ATen/ops/where.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "dispatch.h"

namespace qat::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class FakeQuantizeFunction : public torch::autograd::Function<FakeQuantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& scale,
                            const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                            int64_t axis, std::optional<int64_t> group_size, double grad_factor) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, scale, zero_point});
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["axis"] = axis;
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["grad_factor"] = grad_factor;
    return call_fake_quantize(x, scale, zero_point, quant_min, quant_max, axis, group_size,
                                    grad_factor);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool scale_grad = ctx->needs_input_grad(1);
    const bool zero_point_grad = ctx->needs_input_grad(2);
    const auto& group = ctx->saved_data["group_size"];
    auto [dx, dscale, dzero_point] = call_fake_quantize_backward(
        grad_outputs[0], saved[0], saved[1], saved[2], ctx->saved_data["quant_min"].toInt(),
        ctx->saved_data["quant_max"].toInt(), ctx->saved_data["axis"].toInt(),
        group.isNone() ? std::nullopt : std::optional<int64_t>(group.toInt()),
        ctx->saved_data["grad_factor"].toDouble(), scale_grad || zero_point_grad);
    return {ctx->needs_input_grad(0) ? dx : at::Tensor(),
            scale_grad ? dscale : at::Tensor(),
            zero_point_grad ? dzero_point : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class FakeCastFunction : public torch::autograd::Function<FakeCastFunction> {
 public:
  static at::Tensor forward(AutogradContext*, const at::Tensor& x, c10::string_view fmt) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_fake_cast(x, fmt);
  }
  // Straight-through: rounding to the format is treated as the identity.
  static variable_list backward(AutogradContext*, variable_list grad_outputs) {
    return {grad_outputs[0], at::Tensor()};
  }
};

// Straight-through gradient masked where the forward saturated, with the qparams the forward
// used: copies, because the buffers may move again before backward runs.
class ObserveFakeQuantizeFunction : public torch::autograd::Function<ObserveFakeQuantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& observer_on,
                            const at::Tensor& fake_quant_on, const at::Tensor& running_min,
                            const at::Tensor& running_max, const at::Tensor& scale,
                            const at::Tensor& zero_point, double averaging_const,
                            int64_t quant_min, int64_t quant_max, int64_t ch_axis,
                            bool per_row_fake_quant, bool symmetric_quant) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = call_observe_fake_quantize(x, observer_on, fake_quant_on, running_min,
                                              running_max, scale, zero_point, averaging_const,
                                              quant_min, quant_max, ch_axis, per_row_fake_quant,
                                              symmetric_quant);
    ctx->save_for_backward({x, scale.clone(), zero_point.clone(), fake_quant_on.ne(0)});
    ctx->saved_data["quant_min"] = quant_min;
    ctx->saved_data["quant_max"] = quant_max;
    ctx->saved_data["axis"] = per_row_fake_quant ? ch_axis : int64_t(0);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    at::Tensor dx = std::get<0>(call_fake_quantize_backward(
        grad, saved[0], saved[1], saved[2], ctx->saved_data["quant_min"].toInt(),
        ctx->saved_data["quant_max"].toInt(), ctx->saved_data["axis"].toInt(), std::nullopt, 1.0,
        false));
    // Without fake quantization the forward was the identity; a device-side select, no sync.
    dx = at::where(saved[3].reshape({}), dx, grad);
    variable_list grads(13);
    grads[0] = dx;
    return grads;
  }
};

at::Tensor fake_quantize_autograd(const at::Tensor& x, const at::Tensor& scale,
                                  const at::Tensor& zero_point, int64_t quant_min,
                                  int64_t quant_max, int64_t axis,
                                  std::optional<int64_t> group_size, double grad_factor) {
  return FakeQuantizeFunction::apply(x, scale, zero_point, quant_min, quant_max, axis, group_size,
                                     grad_factor);
}

at::Tensor observe_fake_quantize_autograd(
    const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
    const at::Tensor& running_min, const at::Tensor& running_max, const at::Tensor& scale,
    const at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
    int64_t ch_axis, bool per_row_fake_quant, bool symmetric_quant) {
  return ObserveFakeQuantizeFunction::apply(x, observer_on, fake_quant_on, running_min, running_max,
                                            scale, zero_point, averaging_const, quant_min,
                                            quant_max, ch_axis, per_row_fake_quant,
                                            symmetric_quant);
}

at::Tensor fake_cast_autograd(const at::Tensor& x, c10::string_view fmt) {
  return FakeCastFunction::apply(x, fmt);
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, Autograd, m) {
  m.impl("fake_quantize", &fake_quantize_autograd);
  m.impl("fake_cast", &fake_cast_autograd);
  m.impl("observe_fake_quantize", &observe_fake_quantize_autograd);
  // Statistics and calibration are not differentiable: their outputs never require grad.
  for (const char* op : {"update_minmax", "update_histogram", "rebin_histogram",
                         "histogram_clip_range", "choose_qparams", "mse_errors"}) {
    m.impl(op, torch::CppFunction::makeFallthrough());
  }
}

}  // namespace qat::ops
