// CUDA registrations of the GGUF lattice ops (host compiler): same checks as the CPU ones
// (checks_gguf.h), kernels launched on the current stream without waiting for the device.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks_gguf.h"

namespace qat::ops {
namespace {

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor gguf_fake_quantize_cuda(const at::Tensor& w, const at::Tensor& d,
                                   const std::optional<at::Tensor>& dmin,
                                   const std::optional<at::Tensor>& sub_scales,
                                   const std::optional<at::Tensor>& sub_mins,
                                   c10::string_view type) {
  const GGUFPlan plan = check_gguf(w, d, dmin, sub_scales, sub_mins, type, "qat::gguf_fake_quantize");
  c10::cuda::CUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  const GGUFParamTensors p = contiguous_params(d, dmin, sub_scales, sub_mins);
  at::Tensor y = at::empty(w.sizes(), wc.options());
  kernels::cuda::gguf_forward(plan.type, plan.dtype, wc.const_data_ptr(), y.mutable_data_ptr(), nullptr,
                              plan.n_blocks, p.raw(), current_stream());
  return y;
}

at::Tensor gguf_codes_cuda(const at::Tensor& w, const at::Tensor& d,
                           const std::optional<at::Tensor>& dmin,
                           const std::optional<at::Tensor>& sub_scales,
                           const std::optional<at::Tensor>& sub_mins, c10::string_view type) {
  const GGUFPlan plan = check_gguf(w, d, dmin, sub_scales, sub_mins, type, "qat::gguf_codes");
  c10::cuda::CUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  const GGUFParamTensors p = contiguous_params(d, dmin, sub_scales, sub_mins);
  at::Tensor codes = at::empty(w.sizes(), wc.options().dtype(at::kChar));
  kernels::cuda::gguf_forward(plan.type, plan.dtype, wc.const_data_ptr(), nullptr,
                              codes.mutable_data_ptr<int8_t>(), plan.n_blocks, p.raw(), current_stream());
  return codes;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gguf_fake_quantize_backward_cuda(
    const at::Tensor& grad, const at::Tensor& w, const at::Tensor& d,
    const std::optional<at::Tensor>& dmin, const std::optional<at::Tensor>& sub_scales,
    const std::optional<at::Tensor>& sub_mins, c10::string_view type, bool param_grads) {
  constexpr const char* op = "qat::gguf_fake_quantize_backward";
  const GGUFPlan plan = check_gguf(w, d, dmin, sub_scales, sub_mins, type, op);
  check_gguf_grad(grad, w, op);
  c10::cuda::CUDAGuard guard(w.device());
  const at::Tensor wc = w.contiguous();
  const at::Tensor g = grad.to(w.scalar_type()).contiguous();
  const GGUFParamTensors p = contiguous_params(d, dmin, sub_scales, sub_mins);
  at::Tensor dw = at::empty(w.sizes(), wc.options());
  GGUFGradTensors grads = empty_param_grads(p, param_grads, w);
  kernels::cuda::gguf_backward(plan.type, plan.dtype, wc.const_data_ptr(), g.const_data_ptr(),
                               dw.mutable_data_ptr(), plan.n_blocks, p.raw(), grads.raw(), current_stream());
  return {dw, grads.d, grads.dmin, grads.scales, grads.mins};
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, CUDA, m) {
  m.impl("gguf_fake_quantize", &gguf_fake_quantize_cuda);
  m.impl("gguf_fake_quantize_backward", &gguf_fake_quantize_backward_cuda);
  m.impl("gguf_codes", &gguf_codes_cuda);
}

}  // namespace qat::ops
