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
