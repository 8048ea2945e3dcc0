// CPU registrations of the GGUF lattice ops: contiguous copies in, at::parallel_for over whole
// blocks of the torch-free kernels (kernels/cpu/gguf_lattice.cpp).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "checks_gguf.h"

namespace qat::ops {
namespace {

constexpr int64_t kGrainElements = 32768;

int64_t grain(const GGUFPlan& plan) { return std::max<int64_t>(1, kGrainElements / plan.lattice.block); }

at::Tensor gguf_fake_quantize_cpu(const at::Tensor& w, const at::Tensor& d,
                                  const std::optional<at::Tensor>& dmin,
                                  const std::optional<at::Tensor>& sub_scales,
                                  const std::optional<at::Tensor>& sub_mins,
                                  c10::string_view type) {
  const GGUFPlan plan = check_gguf(w, d, dmin, sub_scales, sub_mins, type, "qat::gguf_fake_quantize");
  const at::Tensor wc = w.contiguous();
  const GGUFParamTensors p = contiguous_params(d, dmin, sub_scales, sub_mins);
  at::Tensor y = at::empty(w.sizes(), wc.options());
  at::parallel_for(0, plan.n_blocks, grain(plan), [&](int64_t b0, int64_t b1) {
    kernels::cpu::gguf_forward(plan.type, plan.dtype, wc.const_data_ptr(), y.mutable_data_ptr(),
                               nullptr, b0, b1, p.raw());
  });
  return y;
}

at::Tensor gguf_codes_cpu(const at::Tensor& w, const at::Tensor& d,
                          const std::optional<at::Tensor>& dmin,
                          const std::optional<at::Tensor>& sub_scales,
                          const std::optional<at::Tensor>& sub_mins, c10::string_view type) {
  const GGUFPlan plan = check_gguf(w, d, dmin, sub_scales, sub_mins, type, "qat::gguf_codes");
  const at::Tensor wc = w.contiguous();
  const GGUFParamTensors p = contiguous_params(d, dmin, sub_scales, sub_mins);
  at::Tensor codes = at::empty(w.sizes(), wc.options().dtype(at::kChar));
  at::parallel_for(0, plan.n_blocks, grain(plan), [&](int64_t b0, int64_t b1) {
    kernels::cpu::gguf_forward(plan.type, plan.dtype, wc.const_data_ptr(), nullptr,
                               codes.mutable_data_ptr<int8_t>(), b0, b1, p.raw());
  });
  return codes;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gguf_fake_quantize_backward_cpu(
    const at::Tensor& grad, const at::Tensor& w, const at::Tensor& d,
    const std::optional<at::Tensor>& dmin, const std::optional<at::Tensor>& sub_scales,
    const std::optional<at::Tensor>& sub_mins, c10::string_view type, bool param_grads) {
  constexpr const char* op = "qat::gguf_fake_quantize_backward";
  const GGUFPlan plan = check_gguf(w, d, dmin, sub_scales, sub_mins, type, op);
  check_gguf_grad(grad, w, op);
  const at::Tensor wc = w.contiguous();
  const at::Tensor g = grad.to(w.scalar_type()).contiguous();
  const GGUFParamTensors p = contiguous_params(d, dmin, sub_scales, sub_mins);
  at::Tensor dw = at::empty(w.sizes(), wc.options());
  GGUFGradTensors grads = empty_param_grads(p, param_grads, w);
  const kernels::GGUFParamGrads raw = grads.raw();
  at::parallel_for(0, plan.n_blocks, grain(plan), [&](int64_t b0, int64_t b1) {
    kernels::cpu::gguf_backward(plan.type, plan.dtype, wc.const_data_ptr(), g.const_data_ptr(),
                                dw.mutable_data_ptr(), b0, b1, p.raw(), raw);
  });
  return {dw, grads.d, grads.dmin, grads.scales, grads.mins};
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, CPU, m) {
  m.impl("gguf_fake_quantize", &gguf_fake_quantize_cpu);
  m.impl("gguf_fake_quantize_backward", &gguf_fake_quantize_backward_cpu);
  m.impl("gguf_codes", &gguf_codes_cpu);
}

}  // namespace qat::ops
