#include "dispatch.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace qat::ops {

at::Tensor call_fake_quantize(const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                              int64_t axis, std::optional<int64_t> group_size,
                              double grad_factor) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::fake_quantize", "")
                       .typed<decltype(call_fake_quantize)>();
  return op.call(x, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_fake_quantize_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, int64_t axis,
    std::optional<int64_t> group_size, double grad_factor, bool qparam_grads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::fake_quantize_backward", "")
                       .typed<decltype(call_fake_quantize_backward)>();
  return op.call(grad, x, scale, zero_point, quant_min, quant_max, axis, group_size, grad_factor,
                 qparam_grads);
}

at::Tensor call_fake_cast(const at::Tensor& x, c10::string_view fmt) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::fake_cast", "")
                       .typed<decltype(call_fake_cast)>();
  return op.call(x, fmt);
}

at::Tensor call_observe_fake_quantize(const at::Tensor& x, const at::Tensor& observer_on,
                                      const at::Tensor& fake_quant_on,
                                      const at::Tensor& running_min,
                                      const at::Tensor& running_max, const at::Tensor& scale,
                                      const at::Tensor& zero_point, double averaging_const,
                                      int64_t quant_min, int64_t quant_max, int64_t ch_axis,
                                      bool per_row_fake_quant, bool symmetric_quant) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::observe_fake_quantize", "")
                       .typed<decltype(call_observe_fake_quantize)>();
  return op.call(x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point,
                 averaging_const, quant_min, quant_max, ch_axis, per_row_fake_quant,
                 symmetric_quant);
}

void call_update_minmax(const at::Tensor& x, const at::Tensor& running_min,
                        const at::Tensor& running_max, const at::Tensor& enabled,
                        std::optional<double> averaging_constant, int64_t axis,
                        std::optional<int64_t> group_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::update_minmax", "")
                       .typed<decltype(call_update_minmax)>();
  op.call(x, running_min, running_max, enabled, averaging_constant, axis, group_size);
}

std::tuple<at::Tensor, at::Tensor> call_choose_qparams(const at::Tensor& min, const at::Tensor& max,
                                                       int64_t quant_min, int64_t quant_max,
                                                       bool symmetric) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::choose_qparams", "")
                       .typed<decltype(call_choose_qparams)>();
  return op.call(min, max, quant_min, quant_max, symmetric);
}

at::Tensor call_mse_errors(const at::Tensor& x, const at::Tensor& min, const at::Tensor& max,
                           const at::Tensor& ratios, int64_t quant_min, int64_t quant_max,
                           bool symmetric, int64_t axis, std::optional<int64_t> group_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::mse_errors", "")
                       .typed<decltype(call_mse_errors)>();
  return op.call(x, min, max, ratios, quant_min, quant_max, symmetric, axis, group_size);
}

}  // namespace qat::ops
