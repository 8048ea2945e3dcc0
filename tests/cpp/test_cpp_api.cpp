// The LibTorch modules (qat::FakeQuantizer, qat::nn::QuantLinear / QuantConv2d) against
// PyTorch's own built-ins: torch.ao's fake-quantize ops (forward, LSQ gradients, the fused
// moving-average observer), torch::nn::Linear / Conv2d, and a brute-force MSE search.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>

#include "qat/qat.h"

namespace {

using qat::FakeQuantizer;
using qat::FakeQuantizerOptions;
using qat::nn::QuantConv2d;
using qat::nn::QuantConv2dOptions;
using qat::nn::QuantLinear;
using qat::nn::QuantLinearOptions;

// Fresh random inputs each run; the seed is printed so a failure can be replayed.
class CppApi : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* env = std::getenv("QAT_TEST_SEED");
    const uint64_t seed = env ? std::stoull(env) : std::random_device{}();
    RecordProperty("seed", std::to_string(seed));
    std::cout << "QAT_TEST_SEED=" << seed << "\n";
    torch::manual_seed(seed);
  }
};

void expect_equal(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  EXPECT_TRUE(torch::equal(a, b)) << what << ": max |diff| " << (a - b).abs().max().item<double>();
}

std::set<std::string> keys(const qat::StateDict& state) {
  std::set<std::string> out;
  for (const auto& e : state) out.insert(e.key());
  return out;
}

// The squared fake-quant error of x under torch's per-channel built-in, per channel, in float64.
at::Tensor channel_errors(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zp,
                          int64_t qmin, int64_t qmax) {
  const at::Tensor y =
      at::fake_quantize_per_channel_affine(x, scale, zp.to(torch::kInt32), 0, qmin, qmax);
  return (y.to(torch::kDouble) - x.to(torch::kDouble)).pow(2).sum(1);
}

// ---- FakeQuantizer, learnable ----------------------------------------------------------------

TEST_F(CppApi, LearnablePerTensorForwardEqualsBuiltin) {
  FakeQuantizer q(FakeQuantizerOptions::learnable(-8, 7));
  const at::Tensor x = torch::randn({64, 33}) * 3;
  const at::Tensor y = q(x);
  ASSERT_TRUE(q->is_initialized());
  ASSERT_EQ(q->scale.sizes(), at::IntArrayRef({1}));
  EXPECT_GT(q->scale.item<float>(), 0.0f);
  expect_equal(y, at::fake_quantize_per_tensor_affine(x, q->scale.item<double>(), 0, -8, 7),
               "per-tensor forward");
  expect_equal(y, qat::fake_quantize(x, q->scale, q->zero_point, -8, 7), "qat::fake_quantize");
}

TEST_F(CppApi, LearnablePerChannelForwardEqualsBuiltin) {
  for (int64_t axis : {0, 1, -1}) {
    FakeQuantizer q(FakeQuantizerOptions::learnable(-128, 127).axis(axis));
    const at::Tensor x = torch::randn({12, 20, 5});
    const at::Tensor y = q(x);
    ASSERT_EQ(q->scale.sizes(), at::IntArrayRef({x.size(axis)}));
    const int64_t dim = axis < 0 ? axis + x.dim() : axis;
    expect_equal(y,
                 at::fake_quantize_per_channel_affine(x, q->scale.detach(),
                                                      q->zero_point.to(torch::kInt32), dim, -128, 127),
                 "per-channel forward, axis " + std::to_string(axis));
  }
}

TEST_F(CppApi, LearnableAsymmetricHasZeroPointParameter) {
  FakeQuantizer q(FakeQuantizerOptions::learnable(0, 15).symmetric(false).axis(0));
  const at::Tensor x = torch::rand({6, 40}) * 4 + 0.5;  // all positive: the zero point moves
  const at::Tensor y = q(x);
  EXPECT_TRUE(q->zero_point.requires_grad());
  std::set<std::string> params;
  for (const auto& p : q->named_parameters()) params.insert(p.key());
  EXPECT_EQ(params, (std::set<std::string>{"scale", "zero_point"}));
  expect_equal(y,
               at::fake_quantize_per_channel_affine(x, q->scale.detach(),
                                                    q->zero_point.detach().to(torch::kInt32), 0, 0, 15),
               "asymmetric forward");
}

TEST_F(CppApi, LearnableInitializationIsMseOptimal) {
  // Brute force: every clipping ratio's qparams (torch.ao's symmetric formula in float32) and
  // its squared error under the built-in; qat's choice must reach the smallest error.
  const int64_t n = 100, qmin = -8, qmax = 7;
  FakeQuantizer q(FakeQuantizerOptions::learnable(qmin, qmax).axis(0));
  const at::Tensor x = torch::randn({8, 256}) * torch::rand({8, 1}) * 4;
  q->initialize(x);
  const at::Tensor lo = std::get<0>(x.min(1)).clamp_max(0), hi = std::get<0>(x.max(1)).clamp_min(0);
  at::Tensor best = torch::full({8}, INFINITY, torch::kDouble);
  for (int64_t r = 1; r <= n; ++r) {
    const at::Tensor ratio = torch::full({}, float(r)) / float(n);
    const at::Tensor amax = torch::maximum(-(lo * ratio), hi * ratio);
    const at::Tensor scale = (amax / (float(qmax - qmin) / 2)).clamp_min(qat::kMinScale);
    best = torch::minimum(best, channel_errors(x, scale, torch::zeros({8}), qmin, qmax));
  }
  const at::Tensor chosen = channel_errors(x, q->scale.detach(), q->zero_point, qmin, qmax);
  EXPECT_TRUE(torch::all(chosen <= best * (1 + 1e-9)).item<bool>())
      << "qat's MSE error " << chosen << " brute force " << best;
  EXPECT_TRUE(torch::all(q->zero_point == 0).item<bool>());
}

TEST_F(CppApi, LearnableGradientsEqualBuiltinLsq) {
  const int64_t qmin = -128, qmax = 127;
  FakeQuantizer q(FakeQuantizerOptions::learnable(qmin, qmax).axis(0));
  const at::Tensor w0 = torch::randn({16, 48}) * 0.2;
  q->initialize(w0);
  {  // move the scale off the MSE optimum so both clipped and unclipped elements exist
    torch::NoGradGuard g;
    q->scale.mul_(0.7);
  }
  const at::Tensor w = w0.clone().requires_grad_();
  const at::Tensor upstream = torch::randn({16, 48});
  (q(w) * upstream).sum().backward();

  const at::Tensor w_ref = w0.clone().requires_grad_();
  const at::Tensor s_ref = q->scale.detach().clone().requires_grad_();
  const at::Tensor zp_ref = torch::zeros({16});
  const double grad_factor = 1.0 / std::sqrt(double(w0.numel() * qmax));
  const at::Tensor y_ref =
      at::_fake_quantize_learnable_per_channel_affine(w_ref, s_ref, zp_ref, 0, qmin, qmax, grad_factor);
  (y_ref * upstream).sum().backward();

  ASSERT_TRUE(w.grad().defined());
  ASSERT_TRUE(q->scale.grad().defined());
  expect_equal(w.grad(), w_ref.grad(), "weight gradient");
  EXPECT_GT(q->scale.grad().abs().sum().item<double>(), 0.0);
  // qat sums in float64, the built-in in float32: equal up to float32 rounding of the sums.
  EXPECT_TRUE(torch::allclose(q->scale.grad(), s_ref.grad(), 1e-4, 1e-7))
      << q->scale.grad() << s_ref.grad();
}

TEST_F(CppApi, LearnableScaleIsHeldAtTheFloor) {
  FakeQuantizer q(FakeQuantizerOptions::learnable(-8, 7));
  const at::Tensor x = torch::randn({100});
  q(x);
  {
    torch::NoGradGuard g;
    q->scale.fill_(-1.0);  // an optimizer step gone wrong
  }
  const at::Tensor y = q(x);
  EXPECT_EQ(q->scale.item<float>(), float(qat::kMinScale));
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
}

TEST_F(CppApi, DisabledLearnablePassesThrough) {
  FakeQuantizer q(FakeQuantizerOptions::learnable(-8, 7).axis(0));
  const at::Tensor x = torch::randn({4, 9});
  q->enable(false);
  expect_equal(q(x), x, "disabled");
  EXPECT_TRUE(q->is_initialized());  // initialized all the same, as Python's module does
  EXPECT_EQ(q->enabled.item<int>(), 0);
}

TEST_F(CppApi, OptimizerBuiltBeforeFirstForwardTrainsTheResizedScale) {
  QuantLinear layer(QuantLinearOptions(24, 8).weight_quantizer(
      FakeQuantizerOptions::learnable(-8, 7).axis(0)));
  torch::optim::SGD opt(layer->parameters(), torch::optim::SGDOptions(0.5));
  ASSERT_EQ(layer->weight_quantizer->scale.numel(), 0);
  const at::Tensor x = torch::randn({32, 24}), target = torch::randn({32, 8});
  at::Tensor first;
  for (int step = 0; step < 3; ++step) {
    const at::Tensor loss = torch::mse_loss(layer(x), target);
    if (step == 0) first = layer->weight_quantizer->scale.detach().clone();
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  ASSERT_EQ(layer->weight_quantizer->scale.sizes(), at::IntArrayRef({8}));
  EXPECT_FALSE(torch::equal(first, layer->weight_quantizer->scale.detach()))
      << "the optimizer did not update the scale it was built with";
}

// ---- FakeQuantizer, moving average -----------------------------------------------------------

TEST_F(CppApi, MovingAverageMatchesFusedBuiltin) {
  for (const bool per_channel : {false, true}) {
    for (const bool symmetric : {false, true}) {
      auto opts = FakeQuantizerOptions::moving_average(0, 255).symmetric(symmetric).averaging_constant(0.1);
      if (per_channel) opts.axis(1);
      FakeQuantizer q(opts);
      const int64_t channels = per_channel ? 6 : 1;
      at::Tensor rmin = torch::full({channels}, INFINITY), rmax = torch::full({channels}, -INFINITY);
      at::Tensor scale = torch::ones({channels});
      at::Tensor zp = torch::zeros({channels}, torch::kInt32);
      const at::Tensor on = torch::ones({1}, torch::kLong);
      for (int step = 0; step < 5; ++step) {
        const at::Tensor x = torch::randn({10, 6, 3}) * (1 + step) + step * 0.3;
        const at::Tensor y = q(x);
        // The built-in takes channels on axis 0 only: move them there and back.
        const at::Tensor y_ref = at::fused_moving_avg_obs_fake_quant(
            x.movedim(1, 0), on, on, rmin, rmax, scale, zp, 0.1, 0, 255, 0, per_channel, symmetric)
                                     .movedim(0, 1);
        const std::string what = std::string(per_channel ? "per-channel" : "per-tensor") +
                                 (symmetric ? " symmetric" : " affine") + " step " + std::to_string(step);
        expect_equal(y, y_ref, what + " output");
        expect_equal(q->min_val, rmin, what + " min_val");
        expect_equal(q->max_val, rmax, what + " max_val");
        expect_equal(q->scale, scale, what + " scale");
        expect_equal(q->zero_point, zp.to(torch::kFloat), what + " zero_point");
      }
    }
  }
}

TEST_F(CppApi, MovingAverageFreezesAndBypasses) {
  FakeQuantizer q(FakeQuantizerOptions::moving_average(0, 255));
  q(torch::rand({50}));
  const at::Tensor lo = q->min_val.clone(), hi = q->max_val.clone();
  q->enable(false);
  const at::Tensor x = torch::randn({50}) * 10;
  const at::Tensor y = q(x);
  expect_equal(q->min_val, lo, "frozen min_val");
  expect_equal(q->max_val, hi, "frozen max_val");
  expect_equal(y, at::fake_quantize_per_tensor_affine(x, q->scale.item<double>(),
                                                      q->zero_point.item<int64_t>(), 0, 255),
               "frozen range still quantizes");
  q->enable_fake_quant(false);
  expect_equal(q(x), x, "fake quant off");
}

TEST_F(CppApi, MovingAverageObservesInTrainingModeOnly) {
  FakeQuantizer q(FakeQuantizerOptions::moving_average(0, 255).axis(1));
  q->eval();
  const at::Tensor x = torch::randn({4, 3, 5});
  expect_equal(q(x), x, "eval before any observation");
  EXPECT_EQ(q->min_val.numel(), 0);
  q->train();
  q(x);
  const at::Tensor lo = q->min_val.clone(), hi = q->max_val.clone(), s = q->scale.clone();
  q->eval();
  const at::Tensor z = torch::randn({4, 3, 5}) * 5;
  const at::Tensor y = q(z);
  expect_equal(q->min_val, lo, "eval min_val");
  expect_equal(q->max_val, hi, "eval max_val");
  expect_equal(y, at::fake_quantize_per_channel_affine(z, s, q->zero_point.to(torch::kInt32), 1, 0, 255),
               "eval forward with the stored range");
}

TEST_F(CppApi, MovingAverageStraightThroughGradient) {
  FakeQuantizer q(FakeQuantizerOptions::moving_average(0, 255));
  q(torch::rand({200}));
  q->enable(false);
  const at::Tensor x = (torch::randn({200}) * 0.8 + 0.5).requires_grad_();
  q(x).sum().backward();
  const at::Tensor x_ref = x.detach().clone().requires_grad_();
  at::fake_quantize_per_tensor_affine(x_ref, q->scale.item<double>(), q->zero_point.item<int64_t>(), 0, 255)
      .sum()
      .backward();
  expect_equal(x.grad(), x_ref.grad(), "clipped straight-through gradient");
}

// ---- state names: the contract with Python's qat.nn / qat.observers --------------------------

TEST_F(CppApi, StateNamesShapesAndDtypesMatchTheContract) {
  QuantLinear layer(QuantLinearOptions(20, 4).input_quantizer(FakeQuantizerOptions::moving_average(0, 255)));
  layer(torch::rand({3, 20}));
  const qat::StateDict state = qat::state_dict(*layer);
  EXPECT_EQ(keys(state), (std::set<std::string>{
                             "weight", "bias",
                             "weight_quantizer.scale", "weight_quantizer.zero_point",
                             "weight_quantizer.enabled", "weight_quantizer.initialized",
                             "input_quantizer.enabled", "input_quantizer.fake_quant_enabled",
                             "input_quantizer.min_val", "input_quantizer.max_val",
                             "input_quantizer.scale", "input_quantizer.zero_point"}));
  std::set<std::string> params;
  for (const auto& p : layer->named_parameters()) params.insert(p.key());
  EXPECT_EQ(params, (std::set<std::string>{"weight", "bias", "weight_quantizer.scale"}));
  EXPECT_EQ(state.at("weight_quantizer.scale").sizes(), at::IntArrayRef({4}));
  EXPECT_EQ(state.at("weight_quantizer.zero_point").sizes(), at::IntArrayRef({4}));
  for (const char* flag : {"weight_quantizer.enabled", "weight_quantizer.initialized",
                           "input_quantizer.enabled", "input_quantizer.fake_quant_enabled"}) {
    EXPECT_EQ(state.at(flag).scalar_type(), torch::kUInt8) << flag;
    EXPECT_EQ(state.at(flag).sizes(), at::IntArrayRef({1})) << flag;
  }
  for (const char* stat : {"input_quantizer.min_val", "input_quantizer.max_val",
                           "input_quantizer.scale", "input_quantizer.zero_point",
                           "weight_quantizer.scale", "weight_quantizer.zero_point"}) {
    EXPECT_EQ(state.at(stat).scalar_type(), torch::kFloat) << stat;
  }

  QuantConv2d conv(QuantConv2dOptions(3, 5, 3).bias(false).output_quantizer(
      FakeQuantizerOptions::moving_average(-128, 127)));
  EXPECT_EQ(keys(qat::state_dict(*conv)),
            (std::set<std::string>{"weight", "weight_quantizer.scale", "weight_quantizer.zero_point",
                                   "weight_quantizer.enabled", "weight_quantizer.initialized",
                                   "output_quantizer.enabled", "output_quantizer.fake_quant_enabled",
                                   "output_quantizer.min_val", "output_quantizer.max_val",
                                   "output_quantizer.scale", "output_quantizer.zero_point"}));
}

// ---- QuantLinear / QuantConv2d ---------------------------------------------------------------

TEST_F(CppApi, QuantLinearEqualsLinearOnFakeQuantizedOperands) {
  QuantLinear layer(QuantLinearOptions(40, 12).input_quantizer(FakeQuantizerOptions::moving_average(0, 255)));
  const at::Tensor x = torch::randn({7, 40});
  const at::Tensor y = layer(x);
  const at::Tensor sw = layer->weight_quantizer->scale.detach();
  const at::Tensor wq = at::fake_quantize_per_channel_affine(layer->weight.detach(), sw,
                                                             torch::zeros({12}, torch::kInt32), 0, -128, 127);
  const auto& iq = layer->input_quantizer;
  const at::Tensor xq = at::fake_quantize_per_tensor_affine(x, iq->scale.item<double>(),
                                                            iq->zero_point.item<int64_t>(), 0, 255);
  expect_equal(y, torch::linear(xq, wq, layer->bias), "QuantLinear forward");
  expect_equal(layer->quantized_weight(), wq, "quantized_weight()");
}

TEST_F(CppApi, QuantLinearInitializesLikeTorchLinear) {
  torch::manual_seed(7);
  torch::nn::Linear ref(torch::nn::LinearOptions(30, 9));
  torch::manual_seed(7);
  QuantLinear layer(30, 9);
  expect_equal(layer->weight, ref->weight, "weight init");
  expect_equal(layer->bias, ref->bias, "bias init");
}

TEST_F(CppApi, QuantConv2dWithQuantizerOffEqualsTorchConv2d) {
  using torch::nn::Conv2dOptions;
  const std::vector<QuantConv2dOptions> cases = {
      QuantConv2dOptions(4, 6, 3),
      QuantConv2dOptions(4, 6, {3, 2}).stride({2, 1}).padding({1, 2}).dilation(2),
      QuantConv2dOptions(4, 6, 3).padding(torch::kSame).groups(2).bias(false),
      QuantConv2dOptions(4, 6, 3).padding(torch::kValid),
      QuantConv2dOptions(4, 6, 3).padding({1, 2}).padding_mode(torch::kReflect),
      QuantConv2dOptions(4, 6, 3).padding(1).padding_mode(torch::kCircular),
      QuantConv2dOptions(4, 6, 3).padding(torch::kSame).padding_mode(torch::kReplicate),
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    torch::manual_seed(int64_t(i));
    QuantConv2d conv(cases[i]);
    torch::manual_seed(int64_t(i));
    torch::nn::Conv2d ref(cases[i].conv_options());
    expect_equal(conv->weight, ref->weight, "init, case " + std::to_string(i));
    conv->weight_quantizer->enable(false);
    const at::Tensor x = torch::randn({2, 4, 11, 10});
    expect_equal(conv(x), ref(x), "forward, case " + std::to_string(i));
  }
}

TEST_F(CppApi, QuantConv2dEqualsConvOnFakeQuantizedWeight) {
  QuantConv2d conv(QuantConv2dOptions(3, 8, 3).padding(1).input_quantizer(
      FakeQuantizerOptions::moving_average(0, 255)));
  const at::Tensor x = torch::rand({2, 3, 9, 9});
  const at::Tensor y = conv(x);
  const at::Tensor wq = at::fake_quantize_per_channel_affine(
      conv->weight.detach(), conv->weight_quantizer->scale.detach(), torch::zeros({8}, torch::kInt32),
      0, -128, 127);
  const auto& iq = conv->input_quantizer;
  const at::Tensor xq = at::fake_quantize_per_tensor_affine(x, iq->scale.item<double>(),
                                                            iq->zero_point.item<int64_t>(), 0, 255);
  expect_equal(y, torch::conv2d(xq, wq, conv->bias, 1, 1), "QuantConv2d forward");

  y.sum().backward();
  EXPECT_GT(conv->weight.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(conv->weight_quantizer->scale.grad().abs().sum().item<double>(), 0.0);
  EXPECT_GT(conv->bias.grad().abs().sum().item<double>(), 0.0);
}

TEST_F(CppApi, ConvWeightIsQuantizedAsOutputChannelRows) {
  // Groups of 9 along in * kh * kw, as Python's qat.nn sees a conv weight.
  QuantConv2d conv(QuantConv2dOptions(2, 4, 3).weight_quantizer(
      FakeQuantizerOptions::learnable(-8, 7).group_size(9)));
  const at::Tensor w = conv->quantized_weight();
  const auto& q = conv->weight_quantizer;
  ASSERT_EQ(q->scale.sizes(), at::IntArrayRef({4, 2}));
  expect_equal(w, qat::fake_quantize(conv->weight.reshape({4, 18}), q->scale, q->zero_point, -8, 7, 0, 9)
                      .reshape({4, 2, 3, 3}),
               "per-group conv weight");
}

// ---- state dicts and copies ------------------------------------------------------------------

struct TinyNetImpl : torch::nn::Module {
  TinyNetImpl()
      : conv(register_module("conv", QuantConv2d(QuantConv2dOptions(1, 4, 3).input_quantizer(
                                           FakeQuantizerOptions::moving_average(0, 255))))),
        fc(register_module("fc", QuantLinear(QuantLinearOptions(4 * 6 * 6, 3).input_quantizer(
                                     FakeQuantizerOptions::moving_average(0, 255))))) {}
  at::Tensor forward(const at::Tensor& x) { return fc(torch::relu(conv(x)).flatten(1)); }
  QuantConv2d conv;
  QuantLinear fc;
};
TORCH_MODULE(TinyNet);

TEST_F(CppApi, StateDictRoundTripsIntoAFreshModel) {
  TinyNet a;
  for (int i = 0; i < 3; ++i) a(torch::rand({4, 1, 8, 8}));
  a->eval();
  for (const auto& m : a->modules()) {
    if (auto* q = dynamic_cast<qat::FakeQuantizerImpl*>(m.get())) q->enable(false);
  }
  const at::Tensor x = torch::rand({5, 1, 8, 8});
  const at::Tensor expected = a(x);

  const std::string path = (std::filesystem::temp_directory_path() /
                            ("qat_state_" + std::to_string(::getpid()) + ".pt")).string();
  qat::save_state_dict(*a, path);
  TinyNet b;  // per-channel quantizer state still unsized, flags on
  qat::load_state_dict(*b, qat::read_state_dict(path));
  std::filesystem::remove(path);
  b->eval();
  expect_equal(b(x), expected, "reloaded model output");
  EXPECT_FALSE(b->fc->input_quantizer->is_enabled());
  EXPECT_TRUE(b->conv->weight_quantizer->is_initialized());

  auto copy = std::dynamic_pointer_cast<qat::nn::QuantLinearImpl>(a->fc->clone());
  ASSERT_TRUE(copy);
  expect_equal(copy->weight_quantizer->scale, a->fc->weight_quantizer->scale, "cloned scale");
  EXPECT_NE(copy->weight.data_ptr(), a->fc->weight.data_ptr());
}

TEST_F(CppApi, CloneKeepsTheRangeState) {
  QuantLinear a(QuantLinearOptions(10, 3).input_quantizer(FakeQuantizerOptions::moving_average(0, 255)));
  a(torch::rand({4, 10}));
  {
    torch::NoGradGuard g;
    a->weight_quantizer->scale.mul_(2);  // as training would move it off its initialization
  }
  a->input_quantizer->enable(false);
  auto b = std::dynamic_pointer_cast<qat::nn::QuantLinearImpl>(a->clone());
  ASSERT_TRUE(b);
  EXPECT_TRUE(b->weight_quantizer->is_initialized());
  EXPECT_FALSE(b->input_quantizer->is_enabled());
  const at::Tensor x = torch::rand({5, 10}) * 3;
  expect_equal(b->forward(x), a(x), "clone output");
  expect_equal(b->weight_quantizer->scale, a->weight_quantizer->scale, "not re-initialized");
  expect_equal(b->input_quantizer->min_val, a->input_quantizer->min_val, "still frozen");
}

TEST_F(CppApi, ReadStateDictReadsTorchPickleSave) {
  qat::StateDict state;
  state.insert("a", torch::randn({3, 2}));
  state.insert("b", torch::arange(5));
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(state));  // a tagged dict
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("qat_pickle_" + std::to_string(::getpid()) + ".pt")).string();
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  const qat::StateDict back = qat::read_state_dict(path);
  std::filesystem::remove(path);
  expect_equal(back.at("a"), state.at("a"), "a");
  expect_equal(back.at("b"), state.at("b"), "b");
}

TEST_F(CppApi, TorchSaveLoadKeepsTheFlags) {
  QuantLinear a(QuantLinearOptions(6, 2).input_quantizer(FakeQuantizerOptions::moving_average(0, 255)));
  a(torch::rand({3, 6}));
  a->input_quantizer->enable(false);
  std::stringstream stream;
  torch::save(a, stream);
  QuantLinear b(QuantLinearOptions(6, 2).input_quantizer(FakeQuantizerOptions::moving_average(0, 255)));
  torch::load(b, stream);
  EXPECT_FALSE(b->input_quantizer->is_enabled());
  EXPECT_TRUE(b->weight_quantizer->is_initialized());
  const at::Tensor x = torch::rand({4, 6});
  expect_equal(b(x), a(x), "torch::load'ed output");
}

// ---- training controls -----------------------------------------------------------------------

TEST_F(CppApi, TrainingControlsReachEveryQuantizer) {
  TinyNet net;
  const at::Tensor x = torch::rand({2, 1, 8, 8});
  net(x);
  qat::enable_fake_quant(*net, false);
  const at::Tensor h = torch::relu(torch::conv2d(x, net->conv->weight, net->conv->bias)).flatten(1);
  expect_equal(net(x), torch::linear(h, net->fc->weight, net->fc->bias), "fake quantization off");
  qat::enable_fake_quant(*net, true);
  EXPECT_TRUE(net->conv->weight_quantizer->is_enabled());
  EXPECT_EQ(net->fc->input_quantizer->fake_quant_enabled.item<int>(), 1);

  qat::freeze_observers(*net);
  const at::Tensor lo = net->fc->input_quantizer->min_val.clone();
  net(torch::rand({2, 1, 8, 8}) * 9 - 4);
  expect_equal(net->fc->input_quantizer->min_val, lo, "frozen observer");
  EXPECT_TRUE(net->conv->weight_quantizer->is_enabled()) << "learnable ranges observe nothing";

  qat::set_learnable_ranges(*net, false);
  EXPECT_FALSE(net->conv->weight_quantizer->scale.requires_grad());
  net(x).sum().backward();
  EXPECT_FALSE(net->conv->weight_quantizer->scale.grad().defined());
  EXPECT_TRUE(net->conv->weight.grad().defined());
}

// ---- errors ----------------------------------------------------------------------------------

template <typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST_F(CppApi, BadOptionsAndInputsRaiseClearErrors) {
  using O = FakeQuantizerOptions;
  expect_error([] { FakeQuantizer(O::learnable(7, -8)); }, "must be less than quant_max");
  expect_error([] { FakeQuantizer(O::learnable(0, 70000)); }, "wider than 16 bits");
  expect_error([] { FakeQuantizer(O::moving_average(0, 255).averaging_constant(1.5)); },
               "averaging_constant must lie in [0, 1]");
  expect_error([] { FakeQuantizer(O::moving_average(0, 255).group_size(32)); }, "needs a learnable");
  expect_error([] { FakeQuantizer(O::learnable(-8, 7).axis(0).group_size(32)); }, "not both");
  expect_error([] { FakeQuantizer(O::learnable(-8, 7).group_size(0)); }, "group_size must be positive");
  expect_error([] { FakeQuantizer(O::learnable(-8, 7).grad_factor(-1.0)); }, "grad_factor");
  expect_error([] { FakeQuantizer(O::learnable(-8, 7).num_candidates(0)); }, "num_candidates");
  expect_error([] { FakeQuantizer(O::learnable(-8, 7))->enable_fake_quant(false); },
               "for moving-average ranges");
  expect_error([] { FakeQuantizer(O::learnable(-8, 7).axis(3))(torch::randn({2, 2})); },
               "out of range");
  expect_error([] { FakeQuantizer(O::learnable(-8, 7).group_size(5))(torch::randn({2, 8})); },
               "must divide the last dim");
  expect_error(
      [] {
        FakeQuantizer q(O::moving_average(0, 255).axis(0));
        q(torch::randn({3, 4}));
        q(torch::randn({5, 4}));
      },
      "channels");
  expect_error([] { QuantLinear(0, 4); }, "must be positive");
  expect_error([] { QuantLinear(QuantLinearOptions(4, 4).weight_quantizer(O::learnable(-8, 7).axis(2))); },
               "axis 2 is out of range");
  expect_error([] { QuantLinear(8, 4)(torch::randn({2, 5})); }, "expected input with last dim 8");
  expect_error([] { QuantConv2d(QuantConv2dOptions(3, 4, 3).groups(2)); }, "divisible by groups");
  expect_error([] { QuantConv2d(QuantConv2dOptions(4, 4, 3).stride(2).padding(torch::kSame)); },
               "strided convolutions");
  expect_error(
      [] {
        QuantLinear a(4, 2), b(4, 3);
        qat::load_state_dict(*b, qat::state_dict(*a));
      },
      "'weight' has shape");
  expect_error(
      [] {
        QuantLinear a(QuantLinearOptions(4, 2).input_quantizer(O::moving_average(0, 255))), b(4, 2);
        qat::load_state_dict(*b, qat::state_dict(*a));
      },
      "unexpected keys [input_quantizer.enabled");
  expect_error([] { qat::read_state_dict("/nonexistent/qat.pt"); }, "cannot open");
}

}  // namespace
