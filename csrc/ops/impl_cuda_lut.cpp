// CUDA registrations of the palettization ops (host compiler). The lookups launch on the current
// stream without waiting for the device. kmeans_1d is a one-time initialization that sorts every
// group: it copies x to the host, runs the CPU kernel there and copies the centroids back.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks_lut.h"
#include "kernels/lut.h"

namespace qat::ops {
namespace {

void* current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

at::Tensor kmeans_1d_cuda(const at::Tensor& x, int64_t num_centroids, int64_t groups,
                          int64_t max_iters) {
  check_kmeans(x, num_centroids, groups, max_iters, "qat::kmeans_1d");
  static auto cpu_op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("qat::kmeans_1d", "")
                           .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t)>();
  return cpu_op.call(x.cpu(), num_centroids, groups, max_iters).to(x.device());
}

at::Tensor lut_fake_quantize_cuda(const at::Tensor& x, const at::Tensor& lut) {
  const LutPlan plan = check_lut(x, lut, "qat::lut_fake_quantize");
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), l = lut_float(lut);
  at::Tensor y = at::empty(x.sizes(), xc.options());
  kernels::cuda::lut_fake_quant(plan.dtype, xc.const_data_ptr(), y.mutable_data_ptr(), plan.groups,
                                plan.n, l.const_data_ptr<float>(), plan.k, current_stream());
  return y;
}

at::Tensor lut_indices_cuda(const at::Tensor& x, const at::Tensor& lut) {
  const LutPlan plan = check_lut(x, lut, "qat::lut_indices");
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), l = lut_float(lut);
  at::Tensor indices = at::empty(x.sizes(), xc.options().dtype(at::kByte));
  kernels::cuda::lut_indices(plan.dtype, xc.const_data_ptr(), indices.mutable_data_ptr<uint8_t>(),
                             plan.groups, plan.n, l.const_data_ptr<float>(), plan.k,
                             current_stream());
  return indices;
}

at::Tensor lut_fake_quantize_backward_cuda(const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& lut) {
  constexpr const char* op = "qat::lut_fake_quantize_backward";
  const LutPlan plan = check_lut(x, lut, op);
  check_lut_grad(grad, x, op);
  c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), l = lut_float(lut);
  const at::Tensor g = grad.to(x.scalar_type()).contiguous();
  at::Tensor acc = at::zeros({plan.groups, plan.k}, xc.options().dtype(at::kDouble));
  kernels::cuda::lut_grad(plan.dtype, xc.const_data_ptr(), g.const_data_ptr(), plan.groups, plan.n,
                          l.const_data_ptr<float>(), plan.k, acc.mutable_data_ptr<double>(),
                          current_stream());
  return acc.to(lut.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, CUDA, m) {
  m.impl("kmeans_1d", &kmeans_1d_cuda);
  m.impl("lut_fake_quantize", &lut_fake_quantize_cuda);
  m.impl("lut_fake_quantize_backward", &lut_fake_quantize_backward_cuda);
  m.impl("lut_indices", &lut_indices_cuda);
}

}  // namespace qat::ops
