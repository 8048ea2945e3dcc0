#include "checks.h"

#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace qat::ops {

kernels::DType kernel_dtype(const at::Tensor& x, const char* op) {
  switch (x.scalar_type()) {
    case at::kFloat: return kernels::DType::f32;
    case at::kHalf: return kernels::DType::f16;
    case at::kBFloat16: return kernels::DType::bf16;
    default:
      TORCH_CHECK(false, op, ": x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
}

kernels::ChannelLayout param_layout(const at::Tensor& x, const at::Tensor& param, int64_t axis,
                                    std::optional<int64_t> group_size, const char* op,
                                    const char* what) {
  const int64_t numel = x.numel();
  if (group_size.has_value()) {
    const int64_t g = *group_size;
    TORCH_CHECK(x.dim() >= 1, op, ": per-group quantization needs x with at least one dim");
    const int64_t last = x.size(-1);
    TORCH_CHECK(g > 0 && last % g == 0, op, ": group_size (", g,
                ") must be positive and divide the last dim of x (", last, ")");
    const int64_t groups = numel / g;
    TORCH_CHECK(param.dim() >= 1 && param.size(-1) == last / g && param.numel() == groups, op,
                ": per-group ", what, " must have shape [..., ", last / g, "] with ", groups,
                " elements for x of shape ", x.sizes(), " and group_size ", g, ", got ",
                param.sizes());
    return {g, groups};
  }
  if (param.numel() == 1) return {numel > 0 ? numel : 1, 1};
  TORCH_CHECK(x.dim() >= 1, op, ": x is 0-dim, so ", what, " must have one element, got ",
              param.numel());
  TORCH_CHECK(axis >= -x.dim() && axis < x.dim(), op, ": axis ", axis,
              " is out of range for x with ", x.dim(), " dims");
  const int64_t a = axis < 0 ? axis + x.dim() : axis;
  TORCH_CHECK(param.dim() == 1 && param.numel() == x.size(a), op, ": per-channel ", what,
              " must have shape [", x.size(a), "] (x.size(", a, ")), got ", param.sizes(),
              "; use one element for per-tensor or group_size for per-group");
  int64_t inner = 1;
  for (int64_t d = a + 1; d < x.dim(); ++d) inner *= x.size(d);
  return {inner > 0 ? inner : 1, x.size(a)};  // no elements when size(a) == 0
}

FakeQuantPlan check_fake_quantize(const at::Tensor& x, const at::Tensor& scale,
                                  const at::Tensor& zero_point, int64_t quant_min,
                                  int64_t quant_max, int64_t axis,
                                  std::optional<int64_t> group_size, double grad_factor) {
  constexpr const char* op = "qat::fake_quantize";
  FakeQuantPlan plan{kernel_dtype(x, op), {1, 1}, {float(quant_min), float(quant_max)}};
  check_quant_range(quant_min, quant_max, op);
  TORCH_CHECK(std::isfinite(grad_factor), op, ": grad_factor must be finite, got ", grad_factor);
  TORCH_CHECK(scale.scalar_type() == at::kFloat, op, ": scale must be float32, got ",
              scale.scalar_type());
  TORCH_CHECK(zero_point.scalar_type() == at::kFloat, op, ": zero_point must be float32, got ",
              zero_point.scalar_type(), " (pass integer zero points as float tensors)");
  TORCH_CHECK(scale.device() == x.device(), op, ": scale is on ", scale.device(),
              " but x is on ", x.device());
  TORCH_CHECK(zero_point.device() == x.device(), op, ": zero_point is on ",
              zero_point.device(), " but x is on ", x.device());
  TORCH_CHECK(zero_point.sizes() == scale.sizes(), op, ": zero_point shape ",
              zero_point.sizes(), " must equal scale shape ", scale.sizes());

  plan.layout = param_layout(x, scale, axis, group_size, op, "scale");
  return plan;
}

void check_grad(const at::Tensor& grad, const at::Tensor& x) {
  TORCH_CHECK(grad.sizes() == x.sizes(), "qat::fake_quantize_backward: grad shape ", grad.sizes(),
              " must equal x shape ", x.sizes());
  TORCH_CHECK(grad.device() == x.device(), "qat::fake_quantize_backward: grad is on ",
              grad.device(), " but x is on ", x.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_outputs(at::Tensor dx, const at::Tensor& acc,
                                                                const at::Tensor& scale,
                                                                const at::Tensor& zero_point) {
  if (!acc.defined()) return {std::move(dx), at::zeros_like(scale), at::zeros_like(zero_point)};
  const at::Tensor sums = acc.to(at::kFloat);
  return {std::move(dx), sums[0].view(scale.sizes()).clone(), sums[1].view(zero_point.sizes()).clone()};
}

kernels::CastFormat parse_cast_format(std::string_view fmt) {
  if (fmt == "fp16") return kernels::CastFormat::fp16;
  if (fmt == "bf16") return kernels::CastFormat::bf16;
  if (fmt == "fp8_e4m3") return kernels::CastFormat::fp8_e4m3;
  if (fmt == "fp8_e5m2") return kernels::CastFormat::fp8_e5m2;
  TORCH_CHECK(false, "qat::fake_cast: fmt must be one of fp16, bf16, fp8_e4m3, fp8_e5m2, got '",
              std::string(fmt), "'");
}

}  // namespace qat::ops

namespace qat::ops {

void check_quant_range(int64_t quant_min, int64_t quant_max, const char* op) {
  TORCH_CHECK(quant_min < quant_max, op, ": quant_min (", quant_min,
              ") must be less than quant_max (", quant_max, ")");
  TORCH_CHECK(quant_min >= -65536 && quant_max <= 65535, op,
              ": quant_min and quant_max must lie in [-65536, 65535] (at most 16-bit integers), got [",
              quant_min, ", ", quant_max, "]");
}

kernels::ChannelLayout check_running_minmax(const at::Tensor& x, const at::Tensor& running_min,
                                            const at::Tensor& running_max, int64_t axis,
                                            std::optional<int64_t> group_size, const char* op) {
  kernel_dtype(x, op);
  for (const at::Tensor* t : {&running_min, &running_max}) {
    const char* name = t == &running_min ? "running_min" : "running_max";
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                t->scalar_type());
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous (it is updated in place)");
    check_same_device(*t, x, op, name);
  }
  TORCH_CHECK(running_min.sizes() == running_max.sizes(), op, ": running_max shape ",
              running_max.sizes(), " must equal running_min shape ", running_min.sizes());
  return param_layout(x, running_min, axis, group_size, op, "running_min");
}

void check_flag(const at::Tensor& flag, const c10::Device& device, const char* op,
                const char* name) {
  TORCH_CHECK(flag.numel() == 1, op, ": ", name, " must have one element, got ", flag.numel());
  TORCH_CHECK(!at::isFloatingType(flag.scalar_type()) && !at::isComplexType(flag.scalar_type()),
              op, ": ", name, " must be an integer or bool tensor, got ", flag.scalar_type());
  TORCH_CHECK(flag.device() == device, op, ": ", name, " is on ", flag.device(),
              " but x is on ", device);
}

void check_histogram(const at::Tensor& histogram, const at::Tensor& range, const char* op) {
  TORCH_CHECK(histogram.scalar_type() == at::kLong && histogram.dim() == 1 &&
                  histogram.numel() >= 1 && histogram.is_contiguous(),
              op, ": histogram must be a contiguous 1-D int64 tensor with at least one bin, got ",
              histogram.scalar_type(), " of shape ", histogram.sizes());
  TORCH_CHECK(range.scalar_type() == at::kFloat && range.numel() == 2 && range.is_contiguous(),
              op, ": range must be a contiguous float32 tensor of 2 elements [min, max], got ",
              range.scalar_type(), " of shape ", range.sizes());
  TORCH_CHECK(range.device() == histogram.device(), op, ": range is on ", range.device(),
              " but histogram is on ", histogram.device());
}

void check_same_device(const at::Tensor& t, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              x.device());
}

void check_averaging_constant(double c, const char* op, const char* name) {
  TORCH_CHECK(c >= 0.0 && c <= 1.0, op, ": ", name, " must lie in [0, 1], got ", c);
}

void check_minmax_pair(const at::Tensor& min, const at::Tensor& max, const char* op) {
  TORCH_CHECK(min.scalar_type() == at::kFloat && max.scalar_type() == at::kFloat, op,
              ": min and max must be float32, got ", min.scalar_type(), " and ", max.scalar_type());
  TORCH_CHECK(min.sizes() == max.sizes(), op, ": max shape ", max.sizes(),
              " must equal min shape ", min.sizes());
  TORCH_CHECK(min.device() == max.device(), op, ": min is on ", min.device(), " but max is on ",
              max.device());
}

kernels::ChannelLayout check_mse_errors(const at::Tensor& x, const at::Tensor& min,
                                        const at::Tensor& max, const at::Tensor& ratios,
                                        int64_t axis, std::optional<int64_t> group_size,
                                        const char* op) {
  kernel_dtype(x, op);
  check_minmax_pair(min, max, op);
  check_same_device(min, x, op, "min");
  TORCH_CHECK(ratios.scalar_type() == at::kFloat && ratios.dim() == 1 && ratios.numel() >= 1, op,
              ": ratios must be a non-empty 1-D float32 tensor, got ", ratios.scalar_type(),
              " of shape ", ratios.sizes());
  check_same_device(ratios, x, op, "ratios");
  return param_layout(x, min, axis, group_size, op, "min");
}

kernels::ChannelLayout check_observe_fake_quantize(
    const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
    const at::Tensor& running_min, const at::Tensor& running_max, const at::Tensor& scale,
    const at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
    int64_t ch_axis, bool per_row_fake_quant, const char* op) {
  kernel_dtype(x, op);
  check_quant_range(quant_min, quant_max, op);
  check_flag(observer_on, x.device(), op, "observer_on");
  check_flag(fake_quant_on, x.device(), op, "fake_quant_on");
  const kernels::ChannelLayout layout =
      check_running_minmax(x, running_min, running_max, ch_axis, std::nullopt, op);
  TORCH_CHECK(per_row_fake_quant || running_min.numel() == 1, op,
              ": per-tensor observation needs one-element running_min / running_max, got ",
              running_min.sizes());
  for (const at::Tensor* t : {&scale, &zero_point}) {
    const char* name = t == &scale ? "scale" : "zero_point";
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), op, ": ", name,
                " must be a contiguous float32 tensor (it is updated in place), got ",
                t->scalar_type());
    TORCH_CHECK(t->sizes() == running_min.sizes(), op, ": ", name, " shape ", t->sizes(),
                " must equal running_min shape ", running_min.sizes());
    check_same_device(*t, x, op, name);
  }
  check_averaging_constant(averaging_const, op, "averaging_const");
  return layout;
}

}  // namespace qat::ops
