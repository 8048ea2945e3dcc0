// Typed dispatcher calls of the qat operators (full dispatch: autograd, then the device key).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace qat::ops {

at::Tensor call_fake_quantize(const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                              int64_t axis, std::optional<int64_t> group_size,
                              double grad_factor);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_fake_quantize_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, int64_t axis,
    std::optional<int64_t> group_size, double grad_factor, bool qparam_grads);

at::Tensor call_fake_cast(const at::Tensor& x, c10::string_view fmt);

}  // namespace qat::ops

namespace qat::ops {

at::Tensor call_observe_fake_quantize(const at::Tensor& x, const at::Tensor& observer_on,
                                      const at::Tensor& fake_quant_on,
                                      const at::Tensor& running_min,
                                      const at::Tensor& running_max, const at::Tensor& scale,
                                      const at::Tensor& zero_point, double averaging_const,
                                      int64_t quant_min, int64_t quant_max, int64_t ch_axis,
                                      bool per_row_fake_quant, bool symmetric_quant);

void call_update_minmax(const at::Tensor& x, const at::Tensor& running_min,
                        const at::Tensor& running_max, const at::Tensor& enabled,
                        std::optional<double> averaging_constant, int64_t axis,
                        std::optional<int64_t> group_size);

std::tuple<at::Tensor, at::Tensor> call_choose_qparams(const at::Tensor& min, const at::Tensor& max,
                                                       int64_t quant_min, int64_t quant_max,
                                                       bool symmetric);

at::Tensor call_mse_errors(const at::Tensor& x, const at::Tensor& min, const at::Tensor& max,
                           const at::Tensor& ratios, int64_t quant_min, int64_t quant_max,
                           bool symmetric, int64_t axis, std::optional<int64_t> group_size);

}  // namespace qat::ops
