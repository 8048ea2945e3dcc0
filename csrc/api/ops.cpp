#include "qat/qat.h"

#include "ops/dispatch.h"

namespace qat {

at::Tensor fake_quantize(const at::Tensor& x, const at::Tensor& scale,
                         const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max,
                         int64_t axis, std::optional<int64_t> group_size, double grad_factor) {
  return ops::call_fake_quantize(x, scale, zero_point, quant_min, quant_max, axis, group_size,
                                 grad_factor);
}

at::Tensor fake_cast(const at::Tensor& x, std::string_view fmt) {
  return ops::call_fake_cast(x, c10::string_view(fmt.data(), fmt.size()));
}

}  // namespace qat
