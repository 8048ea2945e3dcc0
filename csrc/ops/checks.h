// Argument checks shared by every backend: they turn user arguments into the kernels' layout
// description or fail with a message naming the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

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

kernels::CastFormat parse_cast_format(std::string_view fmt);

kernels::DType kernel_dtype(const at::Tensor& x, const char* op);

}  // namespace qat::ops
