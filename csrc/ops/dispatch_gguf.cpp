#include "dispatch_gguf.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace qat::ops {

at::Tensor call_gguf_fake_quantize(const at::Tensor& w, const at::Tensor& d,
                                   const std::optional<at::Tensor>& dmin,
                                   const std::optional<at::Tensor>& sub_scales,
                                   const std::optional<at::Tensor>& sub_mins, c10::string_view type) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::gguf_fake_quantize", "")
                       .typed<decltype(call_gguf_fake_quantize)>();
  return op.call(w, d, dmin, sub_scales, sub_mins, type);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> call_gguf_fake_quantize_backward(
    const at::Tensor& grad, const at::Tensor& w, const at::Tensor& d,
    const std::optional<at::Tensor>& dmin, const std::optional<at::Tensor>& sub_scales,
    const std::optional<at::Tensor>& sub_mins, c10::string_view type, bool param_grads) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::gguf_fake_quantize_backward", "")
                       .typed<decltype(call_gguf_fake_quantize_backward)>();
  return op.call(grad, w, d, dmin, sub_scales, sub_mins, type, param_grads);
}

at::Tensor call_gguf_codes(const at::Tensor& w, const at::Tensor& d,
                           const std::optional<at::Tensor>& dmin,
                           const std::optional<at::Tensor>& sub_scales,
                           const std::optional<at::Tensor>& sub_mins, c10::string_view type) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::gguf_codes", "")
                       .typed<decltype(call_gguf_codes)>();
  return op.call(w, d, dmin, sub_scales, sub_mins, type);
}

}  // namespace qat::ops
