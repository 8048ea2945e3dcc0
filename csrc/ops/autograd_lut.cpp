// Autograd of the palettization ops. lut_fake_quantize: the straight-through estimator for x
// (the gradient passes unchanged) and, for the LUT, the gradient summed over the elements each
// centroid was chosen for (lut_fake_quantize_backward recomputes the choice from x and lut).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace qat::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_lut_fake_quantize(const at::Tensor& x, const at::Tensor& lut) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::lut_fake_quantize", "")
                       .typed<decltype(call_lut_fake_quantize)>();
  return op.call(x, lut);
}

at::Tensor call_lut_fake_quantize_backward(const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& lut) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("qat::lut_fake_quantize_backward", "")
                       .typed<decltype(call_lut_fake_quantize_backward)>();
  return op.call(grad, x, lut);
}

class LutFakeQuantizeFunction : public torch::autograd::Function<LutFakeQuantizeFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& lut) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x, lut});
    return call_lut_fake_quantize(x, lut);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grad_outputs[0];
    return {ctx->needs_input_grad(0) ? grad : at::Tensor(),
            ctx->needs_input_grad(1) ? call_lut_fake_quantize_backward(grad, saved[0], saved[1])
                                     : at::Tensor()};
  }
};

at::Tensor lut_fake_quantize_autograd(const at::Tensor& x, const at::Tensor& lut) {
  return LutFakeQuantizeFunction::apply(x, lut);
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, Autograd, m) {
  m.impl("lut_fake_quantize", &lut_fake_quantize_autograd);
  // k-means and the indices are not differentiable: their outputs never require grad.
  m.impl("kmeans_1d", torch::CppFunction::makeFallthrough());
  m.impl("lut_indices", torch::CppFunction::makeFallthrough());
}

}  // namespace qat::ops
