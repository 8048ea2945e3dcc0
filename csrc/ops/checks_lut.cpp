#include "checks_lut.h"

#include <c10/util/Exception.h>

#include "checks.h"
#include "kernels/lut.h"

namespace qat::ops {
namespace {

// n = elements per group; dim 0 (the output channels of a weight) is split into `groups`.
int64_t group_numel(const at::Tensor& x, int64_t groups, const char* op, const char* what) {
  if (x.dim() == 0) {
    TORCH_CHECK(groups == 1, op, ": x is 0-dim, so ", what, " must be 1, got ", groups);
    return 1;
  }
  TORCH_CHECK(x.size(0) % groups == 0, op, ": ", what, " (", groups, ") must divide x.size(0) (",
              x.size(0), "): x is split into groups along dim 0");
  return groups == 0 ? 0 : x.numel() / groups;
}

}  // namespace

LutPlan check_lut(const at::Tensor& x, const at::Tensor& lut, const char* op) {
  LutPlan plan{kernel_dtype(x, op), 0, 0, 0};
  TORCH_CHECK(lut.dim() == 2, op, ": lut must be 2-D [groups, num_centroids], got shape ",
              lut.sizes());
  const auto t = lut.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, op,
              ": lut must be float32, float16 or bfloat16, got ", t);
  check_same_device(lut, x, op, "lut");
  TORCH_CHECK(lut.size(0) >= 1, op, ": lut needs at least one group, got shape ", lut.sizes());
  TORCH_CHECK(lut.size(1) >= 1 && lut.size(1) <= kernels::kMaxCentroids, op,
              ": lut must have 1 to ", kernels::kMaxCentroids,
              " centroids per group (indices are uint8), got ", lut.size(1));
  plan.groups = lut.size(0);
  plan.k = static_cast<int>(lut.size(1));
  plan.n = group_numel(x, plan.groups, op, "lut.size(0), the number of groups");
  return plan;
}

void check_lut_grad(const at::Tensor& grad, const at::Tensor& x, const char* op) {
  TORCH_CHECK(grad.sizes() == x.sizes(), op, ": grad shape ", grad.sizes(),
              " must equal x shape ", x.sizes());
  check_same_device(grad, x, op, "grad");
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()), op, ": grad must be a floating tensor, got ",
              grad.scalar_type());
}

LutPlan check_kmeans(const at::Tensor& x, int64_t num_centroids, int64_t groups,
                     int64_t max_iters, const char* op) {
  LutPlan plan{kernel_dtype(x, op), groups, 0, 0};
  TORCH_CHECK(num_centroids >= 1 && num_centroids <= kernels::kMaxCentroids, op,
              ": num_centroids must lie in [1, ", kernels::kMaxCentroids, "], got ",
              num_centroids);
  TORCH_CHECK(groups >= 1, op, ": groups must be at least 1, got ", groups);
  TORCH_CHECK(max_iters >= 0 && max_iters <= (int64_t(1) << 30), op,
              ": max_iters must lie in [0, 2^30], got ", max_iters);
  plan.k = static_cast<int>(num_centroids);
  plan.n = group_numel(x, groups, op, "groups");
  return plan;
}

at::Tensor lut_float(const at::Tensor& lut) { return lut.to(at::kFloat).contiguous(); }

}  // namespace qat::ops
