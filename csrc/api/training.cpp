#include "qat/training.h"

#include "qat/fake_quantizer.h"

namespace qat {
namespace {

template <typename F>
void for_each_quantizer(torch::nn::Module& model, F&& f) {
  for (const auto& m : model.modules()) {
    if (auto* q = dynamic_cast<FakeQuantizerImpl*>(m.get())) f(*q);
  }
}

}  // namespace

void enable_observers(torch::nn::Module& model, bool on) {
  for_each_quantizer(model, [on](FakeQuantizerImpl& q) {
    if (q.options.mode() == RangeMode::kMovingAverage) q.enable(on);
  });
}

void set_learnable_ranges(torch::nn::Module& model, bool on) {
  for_each_quantizer(model, [on](FakeQuantizerImpl& q) {
    if (q.options.mode() != RangeMode::kLearnable) return;
    q.scale.requires_grad_(on);
    if (!q.options.symmetric()) q.zero_point.requires_grad_(on);
  });
}

void enable_fake_quant(torch::nn::Module& model, bool on) {
  for_each_quantizer(model, [on](FakeQuantizerImpl& q) {
    if (q.options.mode() == RangeMode::kLearnable) {
      q.enable(on);
    } else {
      q.enable_fake_quant(on);
    }
  });
}

}  // namespace qat
