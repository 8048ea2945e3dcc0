// Typed dispatcher calls of the GGUF lattice ops (full dispatch: autograd, then the device key).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace qat::ops {

at::Tensor call_gguf_fake_quantize(const at::Tensor& w, const at::Tensor& d,
                                   const std::optional<at::Tensor>& dmin,
                                   const std::optional<at::Tensor>& sub_scales,
                                   const std::optional<at::Tensor>& sub_mins, c10::string_view type);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_gguf_fake_quantize_backward(
    const at::Tensor& grad, const at::Tensor& w, const at::Tensor& d,
    const std::optional<at::Tensor>& dmin, const std::optional<at::Tensor>& sub_scales,
    const std::optional<at::Tensor>& sub_mins, c10::string_view type, bool param_grads);

at::Tensor call_gguf_codes(const at::Tensor& w, const at::Tensor& d,
                           const std::optional<at::Tensor>& dmin,
                           const std::optional<at::Tensor>& sub_scales,
                           const std::optional<at::Tensor>& sub_mins, c10::string_view type);

}  // namespace qat::ops
