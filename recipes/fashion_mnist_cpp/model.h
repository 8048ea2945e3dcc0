// The CNN of this recipe, built from qat's LibTorch modules. model.py builds the same network in
// Python (float layers + plan.yaml through qat.prepare); the submodule names here (conv1, conv2,
// fc) are that model's, so the two share one state dict.
#pragma once

#include <torch/torch.h>

#include "qat/qat.h"

namespace fmnist {

// plan.yaml's specs: int8 symmetric per-output-channel weights with learned (LSQ) scales, and
// uint8 affine moving-average ranges on every layer input.
inline qat::FakeQuantizerOptions weight_spec() {
  return qat::FakeQuantizerOptions::learnable(-128, 127).axis(0);
}
inline qat::FakeQuantizerOptions input_spec() {
  return qat::FakeQuantizerOptions::moving_average(0, 255).averaging_constant(0.01);
}

// [N, 1, 28, 28] -> conv 3x3 (16) -> relu -> pool 2 -> conv 3x3 (32) -> relu -> pool 2 -> linear
// (10 logits).
struct FashionCnnImpl : torch::nn::Module {
  FashionCnnImpl()
      : conv1(register_module(
            "conv1", qat::nn::QuantConv2d(qat::nn::QuantConv2dOptions(1, 16, 3)
                                              .padding(1)
                                              .weight_quantizer(weight_spec())
                                              .input_quantizer(input_spec())))),
        conv2(register_module(
            "conv2", qat::nn::QuantConv2d(qat::nn::QuantConv2dOptions(16, 32, 3)
                                              .padding(1)
                                              .weight_quantizer(weight_spec())
                                              .input_quantizer(input_spec())))),
        fc(register_module("fc", qat::nn::QuantLinear(qat::nn::QuantLinearOptions(32 * 7 * 7, 10)
                                                          .weight_quantizer(weight_spec())
                                                          .input_quantizer(input_spec())))) {}

  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = torch::max_pool2d(torch::relu(conv1(x)), 2);
    h = torch::max_pool2d(torch::relu(conv2(h)), 2);
    return fc(h.flatten(1));
  }

  qat::nn::QuantConv2d conv1;
  qat::nn::QuantConv2d conv2;
  qat::nn::QuantLinear fc;
};
TORCH_MODULE(FashionCnn);

}  // namespace fmnist
