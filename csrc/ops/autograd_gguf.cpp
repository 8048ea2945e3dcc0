// Autograd of the GGUF lattice op, in C++ like the other ops: the forward redispatches below the
// autograd key, the backward calls the registered backward op (one pass over w for the weight
// gradient and, when any parameter needs one, the parameter gradients).
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "dispatch_gguf.h"

namespace qat::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class GGUFFakeQuantizeFunction : public torch::autograd::Function<GGUFFakeQuantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& w, const at::Tensor& d,
                            const std::optional<at::Tensor>& dmin,
                            const std::optional<at::Tensor>& sub_scales,
                            const std::optional<at::Tensor>& sub_mins, c10::string_view type) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({w, d, dmin.value_or(at::Tensor()), sub_scales.value_or(at::Tensor()),
                            sub_mins.value_or(at::Tensor())});
    ctx->saved_data["type"] = std::string(type.data(), type.size());
    return call_gguf_fake_quantize(w, d, dmin, sub_scales, sub_mins, type);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto s = ctx->get_saved_variables();
    // needs_input_grad counts only the tensors that were passed (an absent optional has no
    // edge), while the returned list has one entry per argument.
    auto needs = [&](size_t i) {
      if (!s[i].defined()) return false;
      size_t edge = 0;
      for (size_t k = 0; k < i; ++k) edge += s[k].defined() ? 1 : 0;
      return ctx->needs_input_grad(edge);
    };
    const bool param_grads = needs(1) || needs(2) || needs(3) || needs(4);
    const std::string type = ctx->saved_data["type"].toStringRef();
    auto [dw, dd, ddmin, dscales, dmins] = call_gguf_fake_quantize_backward(
        grad_outputs[0], s[0], s[1], opt(s[2]), opt(s[3]), opt(s[4]), type, param_grads);
    auto pick = [&](size_t i, at::Tensor& g) { return needs(i) ? g : at::Tensor(); };
    return {pick(0, dw), pick(1, dd), pick(2, ddmin), pick(3, dscales), pick(4, dmins), at::Tensor()};
  }
};

at::Tensor gguf_fake_quantize_autograd(const at::Tensor& w, const at::Tensor& d,
                                       const std::optional<at::Tensor>& dmin,
                                       const std::optional<at::Tensor>& sub_scales,
                                       const std::optional<at::Tensor>& sub_mins,
                                       c10::string_view type) {
  return GGUFFakeQuantizeFunction::apply(w, d, dmin, sub_scales, sub_mins, type);
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, Autograd, m) {
  m.impl("gguf_fake_quantize", &gguf_fake_quantize_autograd);
  // Integer codes are not differentiable.
  m.impl("gguf_codes", torch::CppFunction::makeFallthrough());
}

}  // namespace qat::ops
