#include "qat/nn.h"

#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/padding.h>
#include <torch/nn/init.h>
#include <torch/torch.h>

#include <cmath>
#include <variant>

namespace qat::nn {
namespace {

namespace F = torch::nn::functional;

// A quantizer submodule under `name` when options are given: absent ones leave no state.
FakeQuantizer make_quantizer(torch::nn::Module& m, const char* name,
                             const std::optional<FakeQuantizerOptions>& options) {
  if (!options) return FakeQuantizer(nullptr);
  return m.register_module(name, FakeQuantizer(*options));
}

void check_weight_axis(const FakeQuantizerOptions& o, const char* layer) {
  if (o.axis()) {
    TORCH_CHECK(-2 <= *o.axis() && *o.axis() < 2, layer,
                ": weight_quantizer axis ", *o.axis(),
                " is out of range for the weight's 2-D [out_channels, -1] view");
  }
}

// Weight quantizers see the weight as rows = output channels, columns = everything else (a
// conv's [out, in, kh, kw] as [out, in * kh * kw]), as qat.nn's modules do: axis 0 and
// group_size mean the same for every layer type.
at::Tensor quantized(FakeQuantizer q, const at::Tensor& weight) {
  return q->forward(weight.reshape({weight.size(0), -1})).reshape(weight.sizes());
}

// An absent (empty) quantizer is the identity.
at::Tensor quantize_if(FakeQuantizer q, const at::Tensor& x) { return q ? q->forward(x) : x; }

// torch::nn::Linear / Conv2d's reset_parameters: Kaiming uniform with a = sqrt(5), bias uniform
// in +-1/sqrt(fan_in).
void init_like_torch(at::Tensor& weight, at::Tensor& bias) {
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const auto [fan_in, fan_out] = torch::nn::init::_calculate_fan_in_and_fan_out(weight);
    const double bound = fan_in > 0 ? 1.0 / std::sqrt(double(fan_in)) : 0.0;
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

// F::pad's amounts (last dim first, left then right) for the conv's padding, as
// torch::nn::Conv2d computes them.
std::vector<int64_t> reversed_padding(const QuantConv2dOptions& o) {
  std::vector<int64_t> out(4, 0);
  std::visit(c10::overloaded(
                 [&](torch::enumtype::kValid) {},
                 [&](torch::enumtype::kSame) {
                   for (int i = 0; i < 2; ++i) {
                     const int64_t total = (*o.dilation())[i] * ((*o.kernel_size())[i] - 1);
                     out[2 * (1 - i)] = total / 2;
                     out[2 * (1 - i) + 1] = total - total / 2;
                   }
                 },
                 [&](const torch::ExpandingArray<2>& p) {
                   for (int i = 0; i < 2; ++i) out[2 * (1 - i)] = out[2 * (1 - i) + 1] = (*p)[i];
                 }),
             o.padding());
  return out;
}

void print_quantizers(std::ostream& stream, const FakeQuantizer& input,
                      const FakeQuantizer& output) {
  stream << ", input_quantizer=" << (input ? "yes" : "no")
         << ", output_quantizer=" << (output ? "yes" : "no") << ")";
}

}  // namespace

// ---- QuantLinear ------------------------------------------------------------------------------

QuantLinearImpl::QuantLinearImpl(QuantLinearOptions options_) : options(std::move(options_)) {
  reset();
}

void QuantLinearImpl::reset() {
  TORCH_CHECK(options.in_features() > 0 && options.out_features() > 0,
              "qat::nn::QuantLinear: in_features and out_features must be positive, got ",
              options.in_features(), " and ", options.out_features());
  check_weight_axis(options.weight_quantizer(), "qat::nn::QuantLinear");
  weight = register_parameter("weight",
                              torch::empty({options.out_features(), options.in_features()}));
  if (options.bias()) {
    bias = register_parameter("bias", torch::empty({options.out_features()}));
  } else {
    bias = at::Tensor();
  }
  weight_quantizer = register_module("weight_quantizer", FakeQuantizer(options.weight_quantizer()));
  input_quantizer = make_quantizer(*this, "input_quantizer", options.input_quantizer());
  output_quantizer = make_quantizer(*this, "output_quantizer", options.output_quantizer());
  reset_parameters();
}

void QuantLinearImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  init_like_torch(weight, bias);
}

at::Tensor QuantLinearImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == options.in_features(),
              "qat::nn::QuantLinear: expected input with last dim ", options.in_features(),
              ", got shape ", x.sizes());
  const at::Tensor y = torch::linear(quantize_if(input_quantizer, x), quantized(weight_quantizer, weight), bias);
  return quantize_if(output_quantizer, y);
}

at::Tensor QuantLinearImpl::quantized_weight() {
  torch::NoGradGuard no_grad;
  return quantized(weight_quantizer, weight);
}

void QuantLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "qat::nn::QuantLinear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features()
         << ", bias=" << (options.bias() ? "true" : "false");
  print_quantizers(stream, input_quantizer, output_quantizer);
}

// ---- QuantConv2d ------------------------------------------------------------------------------

torch::nn::Conv2dOptions QuantConv2dOptions::conv_options() const {
  return torch::nn::Conv2dOptions(in_channels(), out_channels(), kernel_size())
      .stride(stride())
      .padding(padding())
      .dilation(dilation())
      .groups(groups())
      .bias(bias())
      .padding_mode(padding_mode());
}

QuantConv2dImpl::QuantConv2dImpl(QuantConv2dOptions options_) : options(std::move(options_)) {
  reset();
}

void QuantConv2dImpl::reset() {
  const QuantConv2dOptions& o = options;
  constexpr const char* layer = "qat::nn::QuantConv2d";
  TORCH_CHECK(o.in_channels() > 0 && o.out_channels() > 0, layer,
              ": in_channels and out_channels must be positive, got ", o.in_channels(), " and ",
              o.out_channels());
  TORCH_CHECK(o.groups() > 0, layer, ": groups must be positive, got ", o.groups());
  TORCH_CHECK(o.in_channels() % o.groups() == 0 && o.out_channels() % o.groups() == 0, layer,
              ": in_channels (", o.in_channels(), ") and out_channels (", o.out_channels(),
              ") must be divisible by groups (", o.groups(), ")");
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK((*o.kernel_size())[i] > 0 && (*o.stride())[i] > 0 && (*o.dilation())[i] > 0,
                layer, ": kernel_size, stride and dilation must be positive, got ",
                o.kernel_size(), ", ", o.stride(), " and ", o.dilation());
  }
  if (std::holds_alternative<torch::enumtype::kSame>(o.padding())) {
    TORCH_CHECK((*o.stride())[0] == 1 && (*o.stride())[1] == 1, layer,
                ": padding='same' is not supported for strided convolutions");
  }
  check_weight_axis(o.weight_quantizer(), layer);

  const auto k = *o.kernel_size();
  weight = register_parameter(
      "weight", torch::empty({o.out_channels(), o.in_channels() / o.groups(), k[0], k[1]}));
  if (o.bias()) {
    bias = register_parameter("bias", torch::empty({o.out_channels()}));
  } else {
    bias = at::Tensor();
  }
  weight_quantizer = register_module("weight_quantizer", FakeQuantizer(o.weight_quantizer()));
  input_quantizer = make_quantizer(*this, "input_quantizer", o.input_quantizer());
  output_quantizer = make_quantizer(*this, "output_quantizer", o.output_quantizer());
  reset_parameters();
}

void QuantConv2dImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  init_like_torch(weight, bias);
}

at::Tensor QuantConv2dImpl::forward(const at::Tensor& x) {
  const QuantConv2dOptions& o = options;
  const at::Tensor xq = quantize_if(input_quantizer, x);
  const at::Tensor w = quantized(weight_quantizer, weight);
  at::Tensor y;
  if (std::holds_alternative<torch::enumtype::kZeros>(o.padding_mode())) {
    y = F::conv2d(xq, w, F::Conv2dFuncOptions()
                             .bias(bias)
                             .stride(o.stride())
                             .padding(o.padding())
                             .dilation(o.dilation())
                             .groups(o.groups()));
  } else {
    // Other padding modes pad explicitly first, as torch::nn::Conv2d does.
    F::PadFuncOptions pad(reversed_padding(o));
    std::visit(c10::overloaded([&](torch::enumtype::kReflect) { pad.mode(torch::kReflect); },
                               [&](torch::enumtype::kReplicate) { pad.mode(torch::kReplicate); },
                               [&](torch::enumtype::kCircular) { pad.mode(torch::kCircular); },
                               [&](torch::enumtype::kZeros) {}),
               o.padding_mode());
    y = F::conv2d(F::pad(xq, pad), w, F::Conv2dFuncOptions()
                                          .bias(bias)
                                          .stride(o.stride())
                                          .padding(0)
                                          .dilation(o.dilation())
                                          .groups(o.groups()));
  }
  return quantize_if(output_quantizer, y);
}

at::Tensor QuantConv2dImpl::quantized_weight() {
  torch::NoGradGuard no_grad;
  return quantized(weight_quantizer, weight);
}

void QuantConv2dImpl::pretty_print(std::ostream& stream) const {
  stream << "qat::nn::QuantConv2d(" << options.in_channels() << ", " << options.out_channels()
         << ", kernel_size=" << options.kernel_size() << ", stride=" << options.stride();
  std::visit(c10::overloaded([&](torch::enumtype::kValid) { stream << ", padding='valid'"; },
                             [&](torch::enumtype::kSame) { stream << ", padding='same'"; },
                             [&](const torch::ExpandingArray<2>& p) { stream << ", padding=" << p; }),
             options.padding());
  if (options.groups() != 1) stream << ", groups=" << options.groups();
  stream << ", bias=" << (options.bias() ? "true" : "false");
  print_quantizers(stream, input_quantizer, output_quantizer);
}

}  // namespace qat::nn
