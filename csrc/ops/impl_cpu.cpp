// CPU registrations: contiguous copies in, at::parallel_for over the torch-free kernels.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "checks.h"

namespace qat::ops {
namespace {

constexpr int64_t kGrain = 32768;

kernels::QParams qparams(const at::Tensor& scale, const at::Tensor& zero_point) {
  return {scale.const_data_ptr<float>(), zero_point.const_data_ptr<float>()};
}

at::Tensor fake_quantize_cpu(const at::Tensor& x, const at::Tensor& scale,
                             const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                             int64_t axis, std::optional<int64_t> group_size, double grad_factor) {
  const FakeQuantPlan plan = check_fake_quantize(x, scale, zero_point, quant_min, quant_max, axis,
                                                 group_size, grad_factor);
  const at::Tensor xc = x.contiguous(), s = scale.contiguous(), z = zero_point.contiguous();
  at::Tensor y = at::empty(x.sizes(), xc.options());
  at::parallel_for(0, xc.numel(), kGrain, [&](int64_t begin, int64_t end) {
    kernels::cpu::fake_quant_forward(plan.dtype, xc.const_data_ptr(), y.mutable_data_ptr(), begin,
                                     end, plan.layout, qparams(s, z), plan.range);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& scale,
    const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max, int64_t axis,
    std::optional<int64_t> group_size, double grad_factor, bool qparam_grads) {
  const FakeQuantPlan plan = check_fake_quantize(x, scale, zero_point, quant_min, quant_max, axis,
                                                 group_size, grad_factor);
  check_grad(grad, x);
  const at::Tensor xc = x.contiguous(), s = scale.contiguous(), z = zero_point.contiguous();
  const at::Tensor g = grad.to(x.scalar_type()).contiguous();
  at::Tensor dx = at::empty(x.sizes(), xc.options());
  const int64_t numel = xc.numel();
  const kernels::QParams qp = qparams(s, z);
  auto run = [&](int64_t begin, int64_t end, double* acc_s, double* acc_z) {
    kernels::cpu::fake_quant_backward(plan.dtype, xc.const_data_ptr(), g.const_data_ptr(),
                                      dx.mutable_data_ptr(), begin, end, plan.layout, qp,
                                      plan.range, float(grad_factor), acc_s, acc_z);
  };
  if (!qparam_grads) {
    at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) { run(b, e, nullptr, nullptr); });
    return backward_outputs(dx, at::Tensor(), scale, zero_point);
  }

  const int64_t channels = plan.layout.channels, inner = plan.layout.inner;
  const int64_t threads = at::get_num_threads();
  at::Tensor acc;  // [2, channels] double: scale sums then zero-point sums
  if (channels >= 4 * threads) {
    // Many channels: each thread owns a slice of channels across all outer rows, so the
    // accumulators are shared without races.
    acc = at::zeros({2, channels}, xc.options().dtype(at::kDouble));
    double* a = acc.mutable_data_ptr<double>();
    const int64_t row = channels * inner, outer = numel / row;
    const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, outer * inner));
    at::parallel_for(0, channels, grain, [&](int64_t c0, int64_t c1) {
      for (int64_t o = 0; o < outer; ++o) run(o * row + c0 * inner, o * row + c1 * inner, a, a + channels);
    });
  } else {
    // Few channels (per tensor): split the elements, one accumulator row per thread.
    at::Tensor per_thread = at::zeros({threads, 2, channels}, xc.options().dtype(at::kDouble));
    double* a = per_thread.mutable_data_ptr<double>();
    at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
      double* mine = a + at::get_thread_num() * 2 * channels;
      run(b, e, mine, mine + channels);
    });
    acc = per_thread.sum(0);
  }
  return backward_outputs(dx, acc, scale, zero_point);
}

at::Tensor fake_cast_cpu(const at::Tensor& x, c10::string_view fmt) {
  const kernels::DType dtype = kernel_dtype(x, "qat::fake_cast");
  const kernels::CastFormat format = parse_cast_format(std::string_view(fmt.data(), fmt.size()));
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty(x.sizes(), xc.options());
  at::parallel_for(0, xc.numel(), kGrain, [&](int64_t begin, int64_t end) {
    kernels::cpu::fake_cast(dtype, xc.const_data_ptr(), y.mutable_data_ptr(), begin, end, format);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, CPU, m) {
  m.impl("fake_quantize", &fake_quantize_cpu);
  m.impl("fake_quantize_backward", &fake_quantize_backward_cpu);
  m.impl("fake_cast", &fake_cast_cpu);
}

}  // namespace qat::ops
