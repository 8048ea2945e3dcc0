// A pure LibTorch QAT loop: a linear layer with a fake-quantized int4 weight and a learned
// per-channel scale. Its loss must fall; with QAT_CPP_LOOP_OUT set it also saves its inputs and
// trajectory so tests/python/test_cpp_loop.py can check Python computes the same gradients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>

#include "qat/qat.h"

TEST(TrainingLoop, LearnsWithFakeQuantizedWeightAndLearnedScale) {
  torch::manual_seed(0);
  const int64_t d_in = 32, d_out = 16, steps = 60;
  const torch::Tensor x = torch::randn({256, d_in});
  const torch::Tensor target = x.matmul(torch::randn({d_out, d_in}).t()) * 0.3;
  torch::Tensor weight = (torch::randn({d_out, d_in}) * 0.1).requires_grad_();
  torch::Tensor scale = (weight.detach().abs().amax(1) / 7).requires_grad_();
  const torch::Tensor zero_point = torch::zeros({d_out});
  const torch::Tensor init_weight = weight.detach().clone(), init_scale = scale.detach().clone();
  const double grad_factor = 1.0 / std::sqrt(double(d_in) * 7);

  torch::optim::SGD opt({weight, scale}, torch::optim::SGDOptions(0.05));
  std::vector<torch::Tensor> losses, first_grads;
  for (int64_t step = 0; step < steps; ++step) {
    torch::Tensor w = qat::fake_quantize(weight, scale, zero_point, -8, 7, 0, std::nullopt, grad_factor);
    torch::Tensor loss = torch::mse_loss(x.matmul(w.t()), target);
    opt.zero_grad();
    loss.backward();
    if (step == 0) first_grads = {weight.grad().clone(), scale.grad().clone()};
    opt.step();
    losses.push_back(loss.detach());
  }
  const double first = losses.front().item<double>(), last = losses.back().item<double>();
  EXPECT_LT(last, 0.5 * first) << "loss " << first << " -> " << last;
  EXPECT_GT(first_grads[1].abs().sum().item<double>(), 0.0) << "scale received no gradient";
  EXPECT_TRUE(torch::all(scale > 0).item<bool>());

  if (const char* out = std::getenv("QAT_CPP_LOOP_OUT")) {
    c10::List<torch::Tensor> saved({x, target, init_weight, init_scale, zero_point,
                                    torch::stack(losses), first_grads[0], first_grads[1],
                                    weight.detach(), scale.detach()});
    std::vector<char> bytes = torch::pickle_save(c10::IValue(saved));
    std::ofstream(out, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  }
}
