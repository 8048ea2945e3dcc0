// qat::FakeQuantizer: a torch::nn module that fake-quantizes a tensor with a range it keeps
// itself, either learned (LSQ) or a moving-average min / max. Its parameters and buffers carry
// the names, shapes and dtypes of Python's qat.observers.LearnableFakeQuantize and
// MovingAverageFakeQuantize, so a state dict written here loads there and back.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace qat {

// The floor every learned scale is held at (2^-23, float32's epsilon), as in Python's
// qat.observers.MIN_SCALE.
constexpr double kMinScale = 1.0 / 8388608.0;

enum class RangeMode {
  // LSQ: `scale` (and, when asymmetric, `zero_point`) are parameters, initialized from the
  // MSE-optimal clipping of the first tensor seen (LearnableFakeQuantize).
  kLearnable,
  // torch.ao's fused moving-average observer: buffers `min_val`, `max_val`, `scale`,
  // `zero_point` (MovingAverageFakeQuantize's state), updated by every forward in training mode
  // while enabled; eval mode quantizes with the stored range and never changes it (as qat.nn's
  // activation quantizers, qat.quantizers.ActivationFakeQuantize, do).
  kMovingAverage,
};

struct FakeQuantizerOptions {
  // A learnable range, symmetric by default (weights).
  static FakeQuantizerOptions learnable(int64_t quant_min, int64_t quant_max) {
    return FakeQuantizerOptions(RangeMode::kLearnable, quant_min, quant_max);
  }
  // A moving-average range, affine by default (activations).
  static FakeQuantizerOptions moving_average(int64_t quant_min, int64_t quant_max) {
    return FakeQuantizerOptions(RangeMode::kMovingAverage, quant_min, quant_max);
  }

  FakeQuantizerOptions(RangeMode mode, int64_t quant_min, int64_t quant_max)
      : mode_(mode), quant_min_(quant_min), quant_max_(quant_max),
        symmetric_(mode == RangeMode::kLearnable) {}

  TORCH_ARG(RangeMode, mode);
  // Integer range, signed or unsigned, at most 16 bits wide.
  TORCH_ARG(int64_t, quant_min);
  TORCH_ARG(int64_t, quant_max);
  // Zero point 0 (signed range) or the range's midpoint (unsigned) instead of a fitted one.
  TORCH_ARG(bool, symmetric);
  // Per channel along `axis`; neither axis nor group_size is per tensor.
  TORCH_ARG(std::optional<int64_t>, axis) = std::nullopt;
  // Per group of `group_size` consecutive elements of the last dim (learned ranges only).
  TORCH_ARG(std::optional<int64_t>, group_size) = std::nullopt;
  // kMovingAverage: weight of the newest batch's min / max, in [0, 1].
  TORCH_ARG(double, averaging_constant) = 0.01;
  // kLearnable: LSQ gradient scale of scale / zero_point; unset means 1 / sqrt(numel * quant_max).
  TORCH_ARG(std::optional<double>, grad_factor) = std::nullopt;
  // kLearnable: clipping ratios 1/n, ..., n/n of the observed range tried by the MSE initialization.
  TORCH_ARG(int64_t, num_candidates) = 100;
};

class FakeQuantizerImpl : public torch::nn::Cloneable<FakeQuantizerImpl> {
 public:
  explicit FakeQuantizerImpl(FakeQuantizerOptions options);

  void reset() override;

  // Fake-quantized x (x itself while disabled). A learned range initializes on the first
  // non-empty x; a moving-average range sizes its per-channel statistics on it (until then an
  // eval-mode forward passes x through). Parameters are resized in place (Tensor::set_data), so
  // an optimizer built before the first forward keeps training the same tensors.
  at::Tensor forward(const at::Tensor& x);

  // kLearnable: set scale / zero_point from the MSE-optimal clipping of x (what the first
  // forward does), and mark the range initialized.
  void initialize(const at::Tensor& x);

  // Off: kLearnable passes input through; kMovingAverage freezes its range (still quantizing).
  void enable(bool on = true);
  // kMovingAverage only: off passes input through.
  void enable_fake_quant(bool on = true);

  bool is_enabled() const { return enabled_on_; }
  bool is_initialized() const { return initialized_on_; }

  // Copies of (scale, zero_point), detached.
  std::tuple<at::Tensor, at::Tensor> calculate_qparams() const;

  // Re-reads the host-side copies of the `enabled` / `initialized` buffers (kept so forward
  // never reads a device flag). qat::load_state_dict and torch::load call it; call it after
  // writing those buffers any other way.
  void sync_flags();

  // Cloneable's copy, with the host-side flags of the copied buffers.
  std::shared_ptr<torch::nn::Module> clone(
      const std::optional<torch::Device>& device = std::nullopt) const override;
  void load(torch::serialize::InputArchive& archive) override;
  void pretty_print(std::ostream& stream) const override;

  FakeQuantizerOptions options;

  at::Tensor scale;
  at::Tensor zero_point;
  at::Tensor enabled;              // uint8 [1]
  at::Tensor initialized;          // kLearnable: uint8 [1]
  at::Tensor fake_quant_enabled;   // kMovingAverage: uint8 [1]
  at::Tensor min_val;              // kMovingAverage
  at::Tensor max_val;              // kMovingAverage

 private:
  at::Tensor learned_forward(const at::Tensor& x);
  at::Tensor moving_average_forward(const at::Tensor& x);

  bool enabled_on_ = true;
  bool initialized_on_ = false;
  at::Tensor never_;  // an observer flag that is always off, for eval-mode forwards
};

TORCH_MODULE(FakeQuantizer);

}  // namespace qat
