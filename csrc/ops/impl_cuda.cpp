// CUDA registrations, compiled by the host compiler: the kernels (torch-free, nvcc) are launched
// on the current stream; nothing here waits for the device.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"

namespace qat::ops {
namespace {

void* current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

at::Tensor fake_quantize_cuda(const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                              int64_t axis, std::optional<int64_t> group_size, double grad_factor) {
  const FakeQuantPlan plan = check_fake_quantize(x, scale, zero_point, quant_min, quant_max, axis,
                                                 group_size, grad_factor);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), s = scale.contiguous(), z = zero_point.contiguous();
  at::Tensor y = at::empty(x.sizes(), xc.options());
  kernels::cuda::fake_quant_forward(plan.dtype, xc.const_data_ptr(), y.mutable_data_ptr(),
                                    xc.numel(), plan.layout,
                                    {s.const_data_ptr<float>(), z.const_data_ptr<float>()},
                                    plan.range, current_stream());
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, int64_t axis,
    std::optional<int64_t> group_size, double grad_factor, bool qparam_grads) {
  const FakeQuantPlan plan = check_fake_quantize(x, scale, zero_point, quant_min, quant_max, axis,
                                                 group_size, grad_factor);
  check_grad(grad, x);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), s = scale.contiguous(), z = zero_point.contiguous();
  const at::Tensor g = grad.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty(x.sizes(), xc.options());
  at::Tensor acc;
  double* acc_s = nullptr;
  double* acc_z = nullptr;
  if (qparam_grads) {
    acc = at::zeros({2, plan.layout.channels}, xc.options().dtype(at::kDouble));
    acc_s = acc.mutable_data_ptr<double>();
    acc_z = acc_s + plan.layout.channels;
  }
  kernels::cuda::fake_quant_backward(plan.dtype, xc.const_data_ptr(), g.const_data_ptr(),
                                     dx.mutable_data_ptr(), xc.numel(), plan.layout,
                                     {s.const_data_ptr<float>(), z.const_data_ptr<float>()},
                                     plan.range, float(grad_factor), acc_s, acc_z,
                                     current_stream());
  return backward_outputs(dx, acc, scale, zero_point);
}

at::Tensor fake_cast_cuda(const at::Tensor& x, c10::string_view fmt) {
  const kernels::DType dtype = kernel_dtype(x, "qat::fake_cast");
  const kernels::CastFormat format = parse_cast_format(std::string_view(fmt.data(), fmt.size()));
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty(x.sizes(), xc.options());
  kernels::cuda::fake_cast(dtype, xc.const_data_ptr(), y.mutable_data_ptr(), xc.numel(), format,
                           current_stream());
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, CUDA, m) {
  m.impl("fake_quantize", &fake_quantize_cuda);
  m.impl("fake_quantize_backward", &fake_quantize_backward_cuda);
  m.impl("fake_cast", &fake_cast_cuda);
}

}  // namespace qat::ops
