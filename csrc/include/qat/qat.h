// Public LibTorch API of qat: the same operators Python sees as torch.ops.qat.*, called
// through the dispatcher so autograd, CPU and CUDA all apply.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string_view>

namespace qat {

// Affine fake quantization. scale / zero_point are float32 tensors whose shape picks the
// granularity: one element = per tensor, [x.size(axis)] = per channel along axis,
// [..., x.size(-1) / group_size] = per group along the last dim. Differentiable in x
// (clipped straight-through) and, when they require grad, in scale and zero_point (LSQ).
at::Tensor fake_quantize(const at::Tensor& x, const at::Tensor& scale,
                         const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                         int64_t axis = 0, std::optional<int64_t> group_size = std::nullopt,
                         double grad_factor = 1.0);

// Round to "fp16", "bf16", "fp8_e4m3" or "fp8_e5m2" (nearest even, saturating) and back to
// x's dtype, with a straight-through gradient.
at::Tensor fake_cast(const at::Tensor& x, std::string_view fmt);

}  // namespace qat

// Modules: qat::FakeQuantizer, qat::nn::QuantLinear / QuantConv2d, state dicts that Python's
// torch.load reads, and training controls (freeze observers, fake quantization on / off).
#include "qat/fake_quantizer.h"
#include "qat/nn.h"
#include "qat/state_dict.h"
#include "qat/training.h"
