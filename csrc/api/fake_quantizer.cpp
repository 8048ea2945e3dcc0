#include "qat/fake_quantizer.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ops/dispatch.h"
#include "qat/qat.h"

namespace qat {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// One statistic per tensor, per channel along axis, or per group (qat.observers.stats_shape).
std::vector<int64_t> stats_shape(const at::Tensor& x, const FakeQuantizerOptions& o) {
  if (o.group_size()) {
    const int64_t g = *o.group_size();
    TORCH_CHECK(x.dim() > 0 && x.size(-1) % g == 0, "qat::FakeQuantizer: group_size ", g,
                " must divide the last dim of x (shape ", x.sizes(), ")");
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
    shape.push_back(x.size(-1) / g);
    return shape;
  }
  if (!o.axis()) return {1};
  const int64_t axis = *o.axis();
  TORCH_CHECK(-x.dim() <= axis && axis < x.dim(), "qat::FakeQuantizer: axis ", axis,
              " is out of range for x with ", x.dim(), " dims");
  return {x.size(axis)};
}

// (scale, zero_point) minimizing the squared fake-quant error over the clipping ratios
// 1/n, ..., 1 of x's range: qat.observers.mse_qparams, one pass over x for all candidates.
std::tuple<at::Tensor, at::Tensor> mse_qparams(const at::Tensor& x, const FakeQuantizerOptions& o) {
  const int64_t n = o.num_candidates();
  const at::Tensor ratios = torch::arange(1, n + 1, torch::dtype(torch::kFloat32).device(x.device())) / n;
  const std::vector<int64_t> shape = stats_shape(x, o);
  const auto opts = torch::dtype(torch::kFloat32).device(x.device());
  at::Tensor lo = torch::full(shape, kInf, opts), hi = torch::full(shape, -kInf, opts);
  const at::Tensor on = torch::ones({1}, torch::dtype(torch::kUInt8).device(x.device()));
  const int64_t axis = o.axis().value_or(0);
  ops::call_update_minmax(x, lo, hi, on, std::nullopt, axis, o.group_size());
  const at::Tensor errors = ops::call_mse_errors(x, lo, hi, ratios, o.quant_min(), o.quant_max(),
                                                 o.symmetric(), axis, o.group_size());
  const at::Tensor ratio = ratios.index({errors.argmin(-1)});  // first minimum: least clipping
  return ops::call_choose_qparams(lo * ratio, hi * ratio, o.quant_min(), o.quant_max(),
                                  o.symmetric());
}

void fill_flag(const at::Tensor& flag, bool on) {
  torch::NoGradGuard no_grad;
  flag.fill_(on ? 1 : 0);
}

const char* mode_name(RangeMode mode) {
  return mode == RangeMode::kLearnable ? "learnable" : "moving_average";
}

}  // namespace

FakeQuantizerImpl::FakeQuantizerImpl(FakeQuantizerOptions options_) : options(std::move(options_)) {
  reset();
}

void FakeQuantizerImpl::reset() {
  const FakeQuantizerOptions& o = options;
  TORCH_CHECK(o.quant_min() < o.quant_max(), "qat::FakeQuantizer: quant_min (", o.quant_min(),
              ") must be less than quant_max (", o.quant_max(), ")");
  TORCH_CHECK(o.quant_max() - o.quant_min() <= 65535, "qat::FakeQuantizer: [", o.quant_min(), ", ",
              o.quant_max(), "] is wider than 16 bits");
  TORCH_CHECK(!(o.axis() && o.group_size()),
              "qat::FakeQuantizer: give axis (per channel) or group_size (per group), not both");
  if (o.group_size()) {
    TORCH_CHECK(*o.group_size() > 0, "qat::FakeQuantizer: group_size must be positive, got ",
                *o.group_size());
  }
  const bool per_tensor = !o.axis() && !o.group_size();
  const int64_t size = per_tensor ? 1 : 0;  // channels are known only once x is seen
  const auto u8 = torch::dtype(torch::kUInt8);

  enabled = register_buffer("enabled", torch::ones({1}, u8));
  if (o.mode() == RangeMode::kLearnable) {
    TORCH_CHECK(o.num_candidates() >= 1, "qat::FakeQuantizer: num_candidates must be positive, got ",
                o.num_candidates());
    if (o.grad_factor()) {
      TORCH_CHECK(std::isfinite(*o.grad_factor()) && *o.grad_factor() > 0.0,
                  "qat::FakeQuantizer: grad_factor must be positive and finite, got ",
                  *o.grad_factor());
    }
    scale = register_parameter("scale", torch::ones({size}));
    // An asymmetric learned range learns its zero point too (LSQ+).
    if (o.symmetric()) {
      zero_point = register_buffer("zero_point", torch::zeros({size}));
    } else {
      zero_point = register_parameter("zero_point", torch::zeros({size}));
    }
    initialized = register_buffer("initialized", torch::zeros({1}, u8));
  } else {
    TORCH_CHECK(!o.group_size(),
                "qat::FakeQuantizer: a moving-average range is per tensor or per channel, "
                "group_size needs a learnable one");
    TORCH_CHECK(o.averaging_constant() >= 0.0 && o.averaging_constant() <= 1.0,
                "qat::FakeQuantizer: averaging_constant must lie in [0, 1], got ",
                o.averaging_constant());
    fake_quant_enabled = register_buffer("fake_quant_enabled", torch::ones({1}, u8));
    min_val = register_buffer("min_val", torch::full({size}, kInf));
    max_val = register_buffer("max_val", torch::full({size}, -kInf));
    scale = register_buffer("scale", torch::ones({size}));
    zero_point = register_buffer("zero_point", torch::zeros({size}));
  }
  sync_flags();
}

at::Tensor FakeQuantizerImpl::forward(const at::Tensor& x) {
  return options.mode() == RangeMode::kLearnable ? learned_forward(x) : moving_average_forward(x);
}

void FakeQuantizerImpl::initialize(const at::Tensor& x) {
  TORCH_CHECK(options.mode() == RangeMode::kLearnable,
              "qat::FakeQuantizer: initialize() is for learnable ranges; a moving-average range "
              "follows the data on every forward");
  TORCH_CHECK(x.numel() > 0, "qat::FakeQuantizer: cannot initialize a range from an empty tensor");
  torch::NoGradGuard no_grad;
  auto [s, zp] = mse_qparams(x.detach(), options);
  scale.set_data(s);
  zero_point.set_data(zp);
  initialized.fill_(1);
  initialized_on_ = true;
}

at::Tensor FakeQuantizerImpl::learned_forward(const at::Tensor& x) {
  if (x.numel() == 0) return x;
  if (!initialized_on_) initialize(x);
  if (!enabled_on_) return x;
  {
    // Whatever the optimizer did, the scale in use stays at or above the floor.
    torch::NoGradGuard no_grad;
    scale.clamp_min_(kMinScale);
  }
  const int64_t qmax = options.quant_max();
  const double grad_factor = options.grad_factor().value_or(
      1.0 / std::sqrt(double(std::max<int64_t>(x.numel(), 1) * std::max<int64_t>(qmax, 1))));
  return fake_quantize(x, scale, zero_point, options.quant_min(), qmax, options.axis().value_or(0),
                       options.group_size(), grad_factor);
}

at::Tensor FakeQuantizerImpl::moving_average_forward(const at::Tensor& x) {
  if (x.numel() == 0) return x;
  const std::vector<int64_t> shape = stats_shape(x, options);
  if (min_val.sizes() != at::IntArrayRef(shape)) {
    if (min_val.numel() == 0 && !is_training()) return x;  // per channel, nothing observed yet
    TORCH_CHECK(min_val.numel() == 0, "qat::FakeQuantizer: observed ", min_val.sizes(),
                " channels, x of shape ", x.sizes(), " needs ", at::IntArrayRef(shape));
    torch::NoGradGuard no_grad;
    const auto opts = torch::dtype(torch::kFloat32).device(x.device());
    min_val.set_data(torch::full(shape, kInf, opts));
    max_val.set_data(torch::full(shape, -kInf, opts));
    scale.set_data(torch::ones(shape, opts));
    zero_point.set_data(torch::zeros(shape, opts));
  }
  // Eval mode quantizes with the stored range: the op gets an observer flag that is off.
  if (!is_training() && (!never_.defined() || never_.device() != x.device())) {
    never_ = torch::zeros({1}, torch::dtype(torch::kUInt8).device(x.device()));
  }
  return ops::call_observe_fake_quantize(
      x, is_training() ? enabled : never_, fake_quant_enabled, min_val, max_val, scale, zero_point,
      options.averaging_constant(), options.quant_min(), options.quant_max(),
      options.axis().value_or(0), options.axis().has_value(), options.symmetric());
}

void FakeQuantizerImpl::enable(bool on) {
  fill_flag(enabled, on);
  enabled_on_ = on;
}

void FakeQuantizerImpl::enable_fake_quant(bool on) {
  TORCH_CHECK(options.mode() == RangeMode::kMovingAverage,
              "qat::FakeQuantizer: enable_fake_quant() is for moving-average ranges; use enable() "
              "to bypass a learnable one");
  fill_flag(fake_quant_enabled, on);
}

std::tuple<at::Tensor, at::Tensor> FakeQuantizerImpl::calculate_qparams() const {
  return {scale.detach().clone(), zero_point.detach().clone()};
}

void FakeQuantizerImpl::sync_flags() {
  enabled_on_ = enabled.item<uint8_t>() != 0;
  initialized_on_ = initialized.defined() && initialized.item<uint8_t>() != 0;
}

std::shared_ptr<torch::nn::Module> FakeQuantizerImpl::clone(
    const std::optional<torch::Device>& device) const {
  auto copy = torch::nn::Cloneable<FakeQuantizerImpl>::clone(device);
  static_cast<FakeQuantizerImpl&>(*copy).sync_flags();  // reset() left the copy's flags fresh
  return copy;
}

void FakeQuantizerImpl::load(torch::serialize::InputArchive& archive) {
  Module::load(archive);
  sync_flags();
}

void FakeQuantizerImpl::pretty_print(std::ostream& stream) const {
  const FakeQuantizerOptions& o = options;
  stream << "qat::FakeQuantizer(" << mode_name(o.mode()) << ", quant_min=" << o.quant_min()
         << ", quant_max=" << o.quant_max() << ", symmetric=" << (o.symmetric() ? "true" : "false");
  if (o.axis()) stream << ", axis=" << *o.axis();
  if (o.group_size()) stream << ", group_size=" << *o.group_size();
  if (o.mode() == RangeMode::kMovingAverage) {
    stream << ", averaging_constant=" << o.averaging_constant();
  }
  stream << ")";
}

}  // namespace qat
