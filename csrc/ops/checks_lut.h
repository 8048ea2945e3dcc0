// Argument checks of the palettization ops, shared by the CPU and CUDA registrations.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/fake_quant.h"

namespace qat::ops {

// x viewed as [groups, n]: groups split dim 0 (a 0-dim x is one group of one element).
struct LutPlan {
  kernels::DType dtype;
  int64_t groups;
  int64_t n;
  int k;
};

// x: float32 / float16 / bfloat16; lut: 2-D [groups, k] float32 / float16 / bfloat16 on x's
// device, 1 <= k <= 256, groups dividing x.size(0).
LutPlan check_lut(const at::Tensor& x, const at::Tensor& lut, const char* op);

// grad: x's shape and device.
void check_lut_grad(const at::Tensor& grad, const at::Tensor& x, const char* op);

// kmeans_1d's arguments: x as for check_lut, 1 <= num_centroids <= 256, groups >= 1 dividing
// x.size(0), max_iters >= 0.
LutPlan check_kmeans(const at::Tensor& x, int64_t num_centroids, int64_t groups,
                     int64_t max_iters, const char* op);

// The LUT as the kernels read it: float32, contiguous, on its device.
at::Tensor lut_float(const at::Tensor& lut);

}  // namespace qat::ops
