// CPU registrations of the palettization ops: k-means in parallel over groups, the lookups in
// parallel over elements.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "checks_lut.h"
#include "kernels/lut.h"

namespace qat::ops {
namespace {

constexpr int64_t kGrain = 32768;

at::Tensor kmeans_1d_cpu(const at::Tensor& x, int64_t num_centroids, int64_t groups,
                         int64_t max_iters) {
  const LutPlan plan = check_kmeans(x, num_centroids, groups, max_iters, "qat::kmeans_1d");
  const at::Tensor xc = x.contiguous();
  at::Tensor centroids = at::empty({groups, num_centroids}, xc.options().dtype(at::kFloat));
  const char* base = static_cast<const char*>(xc.const_data_ptr());
  const int64_t row_bytes = plan.n * xc.element_size();
  float* out = centroids.mutable_data_ptr<float>();
  at::parallel_for(0, groups, 1, [&](int64_t g0, int64_t g1) {
    kernels::cpu::KMeansWorkspace ws;
    for (int64_t g = g0; g < g1; ++g)
      kernels::cpu::kmeans_1d(plan.dtype, base + g * row_bytes, plan.n, plan.k, int(max_iters),
                              out + g * plan.k, ws);
  });
  return centroids;
}

at::Tensor lut_fake_quantize_cpu(const at::Tensor& x, const at::Tensor& lut) {
  const LutPlan plan = check_lut(x, lut, "qat::lut_fake_quantize");
  const at::Tensor xc = x.contiguous(), l = lut_float(lut);
  at::Tensor y = at::empty(x.sizes(), xc.options());
  at::parallel_for(0, xc.numel(), kGrain, [&](int64_t b, int64_t e) {
    kernels::cpu::lut_fake_quant(plan.dtype, xc.const_data_ptr(), y.mutable_data_ptr(), b, e,
                                 plan.n, l.const_data_ptr<float>(), plan.k);
  });
  return y;
}

at::Tensor lut_indices_cpu(const at::Tensor& x, const at::Tensor& lut) {
  const LutPlan plan = check_lut(x, lut, "qat::lut_indices");
  const at::Tensor xc = x.contiguous(), l = lut_float(lut);
  at::Tensor indices = at::empty(x.sizes(), xc.options().dtype(at::kByte));
  at::parallel_for(0, xc.numel(), kGrain, [&](int64_t b, int64_t e) {
    kernels::cpu::lut_indices(plan.dtype, xc.const_data_ptr(), indices.mutable_data_ptr<uint8_t>(),
                              b, e, plan.n, l.const_data_ptr<float>(), plan.k);
  });
  return indices;
}

// grad_lut[g, j] = sum of grad over the elements of group g whose nearest centroid is j, summed
// in float64. Many groups: each thread owns whole groups, so one accumulator is shared without
// races; few: each thread fills its own copy, summed afterwards.
at::Tensor lut_fake_quantize_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                          const at::Tensor& lut) {
  constexpr const char* op = "qat::lut_fake_quantize_backward";
  const LutPlan plan = check_lut(x, lut, op);
  check_lut_grad(grad, x, op);
  const at::Tensor xc = x.contiguous(), l = lut_float(lut);
  const at::Tensor g = grad.to(x.scalar_type()).contiguous();
  const int64_t numel = xc.numel(), groups = plan.groups, k = plan.k;
  const int64_t threads = at::get_num_threads();
  auto run = [&](int64_t b, int64_t e, double* acc) {
    kernels::cpu::lut_grad(plan.dtype, xc.const_data_ptr(), g.const_data_ptr(), b, e, plan.n,
                           l.const_data_ptr<float>(), plan.k, acc);
  };
  at::Tensor acc;
  if (numel == 0) {
    acc = at::zeros({groups, k}, xc.options().dtype(at::kDouble));
  } else if (groups >= 4 * threads) {
    acc = at::zeros({groups, k}, xc.options().dtype(at::kDouble));
    double* a = acc.mutable_data_ptr<double>();
    const int64_t grain = std::max<int64_t>(1, kGrain / plan.n);
    at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) { run(g0 * plan.n, g1 * plan.n, a); });
  } else {
    at::Tensor copies = at::zeros({threads, groups, k}, xc.options().dtype(at::kDouble));
    double* a = copies.mutable_data_ptr<double>();
    at::parallel_for(0, numel, kGrain, [&](int64_t b, int64_t e) {
      run(b, e, a + at::get_thread_num() * groups * k);
    });
    acc = copies.sum(0);
  }
  return acc.to(lut.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(qat, CPU, m) {
  m.impl("kmeans_1d", &kmeans_1d_cpu);
  m.impl("lut_fake_quantize", &lut_fake_quantize_cpu);
  m.impl("lut_fake_quantize_backward", &lut_fake_quantize_backward_cpu);
  m.impl("lut_indices", &lut_indices_cpu);
}

}  // namespace qat::ops
