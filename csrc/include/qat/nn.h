// Quantized-training layers for LibTorch: torch::nn::Linear / Conv2d with a fake-quantized
// weight and optional fake-quantized input and output. Names match Python's qat.nn modules
// (parameters `weight`, `bias`; submodules `weight_quantizer`, `input_quantizer`,
// `output_quantizer`), so state dicts move between the two as they are. As there, the weight
// quantizer sees the weight as a 2-D [out_channels, -1] view (per-channel axis 0 = output
// channels; group_size counts along in_channels * kh * kw), and a learnable weight range
// initializes from the weight at the first forward (load or copy float weights before it).
#pragma once

#include <torch/nn/modules/conv.h>
#include <torch/nn/options/conv.h>

#include <optional>

#include "qat/fake_quantizer.h"

namespace qat::nn {

// int8 symmetric per-output-channel learnable weights: the default weight quantizer.
inline FakeQuantizerOptions default_weight_quantizer() {
  return FakeQuantizerOptions::learnable(-128, 127).axis(0);
}

struct QuantLinearOptions {
  QuantLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}

  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(FakeQuantizerOptions, weight_quantizer) = default_weight_quantizer();
  // Fake-quantize the layer's input / output; unset leaves it in floating point.
  TORCH_ARG(std::optional<FakeQuantizerOptions>, input_quantizer) = std::nullopt;
  TORCH_ARG(std::optional<FakeQuantizerOptions>, output_quantizer) = std::nullopt;
};

// y = output_quantizer(linear(input_quantizer(x), weight_quantizer(weight), bias)).
class QuantLinearImpl : public torch::nn::Cloneable<QuantLinearImpl> {
 public:
  QuantLinearImpl(int64_t in_features, int64_t out_features)
      : QuantLinearImpl(QuantLinearOptions(in_features, out_features)) {}
  explicit QuantLinearImpl(QuantLinearOptions options);

  void reset() override;
  // torch::nn::Linear's initialization (Kaiming uniform weight, fan-in uniform bias).
  void reset_parameters();
  at::Tensor forward(const at::Tensor& x);
  // The weight as the forward uses it (fake-quantized), without gradient.
  at::Tensor quantized_weight();
  void pretty_print(std::ostream& stream) const override;

  QuantLinearOptions options;
  at::Tensor weight;
  at::Tensor bias;  // undefined without bias
  FakeQuantizer weight_quantizer{nullptr};
  FakeQuantizer input_quantizer{nullptr};   // empty holder when not quantized
  FakeQuantizer output_quantizer{nullptr};
};

TORCH_MODULE(QuantLinear);

struct QuantConv2dOptions {
  using padding_t = torch::nn::detail::conv_padding_t<2>;
  using padding_mode_t = torch::nn::detail::conv_padding_mode_t;

  QuantConv2dOptions(int64_t in_channels, int64_t out_channels,
                     torch::ExpandingArray<2> kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}

  // As torch::nn::Conv2dOptions.
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, out_channels);
  TORCH_ARG(torch::ExpandingArray<2>, kernel_size);
  TORCH_ARG(torch::ExpandingArray<2>, stride) = 1;
  TORCH_ARG(padding_t, padding) = 0;

 public:
  auto& padding(std::initializer_list<int64_t> il) { return padding(at::IntArrayRef{il}); }

  TORCH_ARG(torch::ExpandingArray<2>, dilation) = 1;
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(bool, bias) = true;
  TORCH_ARG(padding_mode_t, padding_mode) = torch::kZeros;
  // As QuantLinearOptions.
  TORCH_ARG(FakeQuantizerOptions, weight_quantizer) = default_weight_quantizer();
  TORCH_ARG(std::optional<FakeQuantizerOptions>, input_quantizer) = std::nullopt;
  TORCH_ARG(std::optional<FakeQuantizerOptions>, output_quantizer) = std::nullopt;

 public:
  // The same convolution as a torch::nn::Conv2dOptions.
  torch::nn::Conv2dOptions conv_options() const;
};

// y = output_quantizer(conv2d(input_quantizer(x), weight_quantizer(weight), bias)).
class QuantConv2dImpl : public torch::nn::Cloneable<QuantConv2dImpl> {
 public:
  QuantConv2dImpl(int64_t in_channels, int64_t out_channels, torch::ExpandingArray<2> kernel_size)
      : QuantConv2dImpl(QuantConv2dOptions(in_channels, out_channels, kernel_size)) {}
  explicit QuantConv2dImpl(QuantConv2dOptions options);

  void reset() override;
  // torch::nn::Conv2d's initialization.
  void reset_parameters();
  at::Tensor forward(const at::Tensor& x);
  at::Tensor quantized_weight();
  void pretty_print(std::ostream& stream) const override;

  QuantConv2dOptions options;
  at::Tensor weight;
  at::Tensor bias;
  FakeQuantizer weight_quantizer{nullptr};
  FakeQuantizer input_quantizer{nullptr};
  FakeQuantizer output_quantizer{nullptr};
};

TORCH_MODULE(QuantConv2d);

}  // namespace qat::nn
