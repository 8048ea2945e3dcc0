// Argument checks shared by every backend: they turn user arguments into the kernels' layout
// description or fail with a message naming the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

#include "kernels/fake_quant.h"

namespace qat::ops {

struct FakeQuantPlan {
  kernels::DType dtype;
  kernels::ChannelLayout layout;
  kernels::QuantRange range;
};

// Which parameter element each element of x uses, from the parameter's shape: one element is
// per tensor, [x.size(axis)] per channel, [..., x.size(-1) / group_size] per group.
kernels::ChannelLayout param_layout(const at::Tensor& x, const at::Tensor& param, int64_t axis,
                                    std::optional<int64_t> group_size, const char* op,
                                    const char* what);

FakeQuantPlan check_fake_quantize(const at::Tensor& x, const at::Tensor& scale,
                                  const at::Tensor& zero_point, int64_t quant_min,
                                  int64_t quant_max, int64_t axis,
                                  std::optional<int64_t> group_size, double grad_factor);

void check_grad(const at::Tensor& grad, const at::Tensor& x);

// (dx, grad_scale, grad_zero_point) from the kernels' [2, channels] float64 accumulators, or
// zeros when `acc` is undefined (no qparam gradients were asked for).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_outputs(at::Tensor dx, const at::Tensor& acc,
                                                                const at::Tensor& scale,
                                                                const at::Tensor& zero_point);

kernels::CastFormat parse_cast_format(std::string_view fmt);

kernels::DType kernel_dtype(const at::Tensor& x, const char* op);

}  // namespace qat::ops

namespace qat::ops {

// ---- observers ----

// running_min / running_max: float32, contiguous (they are updated in place), equal shapes, on
// x's device; returns the layout their shape selects (param_layout).
kernels::ChannelLayout check_running_minmax(const at::Tensor& x, const at::Tensor& running_min,
                                            const at::Tensor& running_max, int64_t axis,
                                            std::optional<int64_t> group_size, const char* op);

// An enable flag: one element of an integer or bool dtype on `device`.
void check_flag(const at::Tensor& flag, const c10::Device& device, const char* op,
                const char* name);

// histogram: int64 1-D contiguous with at least one bin; range: float32 [2] contiguous.
void check_histogram(const at::Tensor& histogram, const at::Tensor& range, const char* op);

void check_quant_range(int64_t quant_min, int64_t quant_max, const char* op);

void check_same_device(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name);

// A moving-average constant in [0, 1].
void check_averaging_constant(double c, const char* op, const char* name);

// min / max: float32, equal shapes, one device.
void check_minmax_pair(const at::Tensor& min, const at::Tensor& max, const char* op);

// mse_errors' arguments; returns the layout min's shape selects.
kernels::ChannelLayout check_mse_errors(const at::Tensor& x, const at::Tensor& min,
                                        const at::Tensor& max, const at::Tensor& ratios,
                                        int64_t axis, std::optional<int64_t> group_size,
                                        const char* op);

// observe_fake_quantize's arguments; returns the layout of its running statistics.
kernels::ChannelLayout check_observe_fake_quantize(
    const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
    const at::Tensor& running_min, const at::Tensor& running_max, const at::Tensor& scale,
    const at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
    int64_t ch_axis, bool per_row_fake_quant, const char* op);

}  // namespace qat::ops
