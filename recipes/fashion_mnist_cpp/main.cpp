// Quantization-aware training of a small CNN on Fashion-MNIST in pure C++ (LibTorch + qat):
// int8 per-channel learned-scale weights, uint8 moving-average activations. Writes
//   <out>/checkpoint.pt  the model's state dict (torch.load reads it; model.py loads it into
//                        the same model built by qat.prepare and converts it),
//   <out>/eval.pt        test images, labels and this program's eval logits for the first
//                        --sample test images, and the test accuracy, for the Python check.
//
//   fashion_mnist_qat --out runs/fmnist [--epochs 2] [--max-steps N] [--threads N] ...
//
// --init starts from a state dict instead (a checkpoint, or a Python model's
// torch.save(model.state_dict(), path)); with --max-steps 0 the program only evaluates it.
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <string>

#include "idx.h"
#include "model.h"

namespace {

struct Args {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  std::string out;
  int64_t epochs = 1;
  int64_t max_steps = -1;  // -1: no limit; 0: evaluate only
  std::string init;        // a state dict to start from (torch.save'd in Python, or a checkpoint)
  int64_t batch_size = 64;
  std::string optimizer = "adam";
  double lr = 1e-3;
  double qparam_lr = 1e-5;  // learned scales: a much smaller step (Adam's step ignores LSQ's grad scale)
  int64_t threads = 0;      // 0: LibTorch's default
  int64_t seed = 0;
  int64_t eval_batch_size = 1000;
  int64_t sample = 256;
  int64_t log_every = 100;
  int64_t fake_quant = 1;  // 0: train and evaluate in float (the baseline QAT is compared to)
};

const char* kUsage =
    "usage: fashion_mnist_qat --out DIR [--data-dir DIR] [--init STATE_DICT] [--epochs N]\n"
    "         [--max-steps N] [--batch-size N] [--optimizer adam|sgd] [--lr X] [--qparam-lr X]\n"
    "         [--threads N] [--seed N] [--eval-batch-size N] [--sample N] [--log-every N]\n"
    "         [--fake-quant 0|1]\n";

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, std::string> kv;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i];
    if (key == "-h" || key == "--help") {
      std::cout << kUsage;
      std::exit(0);
    }
    TORCH_CHECK(key.rfind("--", 0) == 0, "unexpected argument '", key, "'\n", kUsage);
    key = key.substr(2);
    std::string value;
    if (const size_t eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else {
      TORCH_CHECK(i + 1 < argc, "--", key, " needs a value\n", kUsage);
      value = argv[++i];
    }
    kv[key] = value;
  }
  auto take_int = [&](const char* name, int64_t& dst, int64_t min) {
    if (auto it = kv.find(name); it != kv.end()) {
      size_t used = 0;
      try {
        dst = std::stoll(it->second, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      TORCH_CHECK(used == it->second.size() && dst >= min, "--", name, " must be an integer >= ",
                  min, ", got '", it->second, "'");
      kv.erase(it);
    }
  };
  auto take_double = [&](const char* name, double& dst) {
    if (auto it = kv.find(name); it != kv.end()) {
      size_t used = 0;
      try {
        dst = std::stod(it->second, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      TORCH_CHECK(used == it->second.size() && dst > 0, "--", name,
                  " must be a positive number, got '", it->second, "'");
      kv.erase(it);
    }
  };
  auto take_str = [&](const char* name, std::string& dst) {
    if (auto it = kv.find(name); it != kv.end()) {
      dst = it->second;
      kv.erase(it);
    }
  };
  take_str("data-dir", a.data_dir);
  take_str("out", a.out);
  take_str("optimizer", a.optimizer);
  take_str("init", a.init);
  take_int("epochs", a.epochs, 1);
  take_int("max-steps", a.max_steps, 0);
  take_int("batch-size", a.batch_size, 1);
  take_int("threads", a.threads, 0);
  take_int("seed", a.seed, 0);
  take_int("eval-batch-size", a.eval_batch_size, 1);
  take_int("sample", a.sample, 1);
  take_int("log-every", a.log_every, 1);
  take_int("fake-quant", a.fake_quant, 0);
  TORCH_CHECK(a.fake_quant <= 1, "--fake-quant must be 0 or 1, got ", a.fake_quant);
  take_double("lr", a.lr);
  take_double("qparam-lr", a.qparam_lr);
  TORCH_CHECK(kv.empty(), "unknown option --", kv.begin()->first, "\n", kUsage);
  TORCH_CHECK(!a.out.empty(), "--out DIR is required\n", kUsage);
  TORCH_CHECK(a.optimizer == "adam" || a.optimizer == "sgd", "--optimizer must be adam or sgd, got '",
              a.optimizer, "'");
  return a;
}

// Weights and biases at --lr, learned quantizer ranges at --qparam-lr.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(torch::nn::Module& model, const Args& a) {
  std::vector<at::Tensor> weights, qparams;
  for (const auto& p : model.named_parameters()) {
    (p.key().find("_quantizer.") != std::string::npos ? qparams : weights).push_back(p.value());
  }
  if (a.optimizer == "sgd") {
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(weights, std::make_unique<torch::optim::SGDOptions>(
                                     torch::optim::SGDOptions(a.lr).momentum(0.9)));
    groups.emplace_back(qparams, std::make_unique<torch::optim::SGDOptions>(
                                     torch::optim::SGDOptions(a.qparam_lr).momentum(0.9)));
    return std::make_unique<torch::optim::SGD>(std::move(groups), torch::optim::SGDOptions(a.lr));
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(weights, std::make_unique<torch::optim::AdamOptions>(a.lr));
  groups.emplace_back(qparams, std::make_unique<torch::optim::AdamOptions>(a.qparam_lr));
  return std::make_unique<torch::optim::Adam>(std::move(groups), torch::optim::AdamOptions(a.lr));
}

// Correct predictions on `split`, evaluated in batches of batch_size (eval mode, no grad).
int64_t count_correct(fmnist::FashionCnn& model, const fmnist::Split& split, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  const int64_t n = split.images.size(0);
  for (int64_t i = 0; i < n; i += batch_size) {
    const int64_t end = std::min(n, i + batch_size);
    const at::Tensor logits = model->forward(split.images.slice(0, i, end));
    correct += logits.argmax(1).eq(split.labels.slice(0, i, end)).sum().item<int64_t>();
  }
  return correct;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run(const Args& a) {
  if (a.threads > 0) torch::set_num_threads(int(a.threads));
  torch::manual_seed(uint64_t(a.seed));
  std::filesystem::create_directories(a.out);

  const auto t0 = std::chrono::steady_clock::now();
  const fmnist::Split train = fmnist::load_split(a.data_dir, "train");
  const fmnist::Split test = fmnist::load_split(a.data_dir, "t10k");
  std::cout << "data: " << train.images.size(0) << " train, " << test.images.size(0)
            << " test images (" << std::fixed << std::setprecision(2) << seconds_since(t0)
            << " s), " << torch::get_num_threads() << " threads\n";

  fmnist::FashionCnn model;
  if (!a.init.empty()) {
    qat::load_state_dict(*model, qat::read_state_dict(a.init));
    std::cout << "initialized from " << a.init << "\n";
  }
  if (!a.fake_quant) qat::enable_fake_quant(*model, false);
  std::cout << *model << "\n";
  auto optimizer = make_optimizer(*model, a);

  const int64_t n = train.images.size(0);
  const int64_t steps_per_epoch = (n + a.batch_size - 1) / a.batch_size;
  int64_t step = 0;
  double loss_sum = 0.0, last_loss = 0.0;
  int64_t loss_count = 0, seen = 0, seen_correct = 0;
  const auto t_train = std::chrono::steady_clock::now();
  model->train();
  for (int64_t epoch = 0; epoch < a.epochs && (a.max_steps < 0 || step < a.max_steps); ++epoch) {
    const at::Tensor order = torch::randperm(n, torch::kInt64);
    for (int64_t b = 0; b < steps_per_epoch && (a.max_steps < 0 || step < a.max_steps); ++b) {
      const at::Tensor idx = order.slice(0, b * a.batch_size, std::min(n, (b + 1) * a.batch_size));
      const at::Tensor x = train.images.index_select(0, idx);
      const at::Tensor y = train.labels.index_select(0, idx);
      const at::Tensor logits = model->forward(x);
      const at::Tensor loss = torch::cross_entropy_loss(logits, y);
      optimizer->zero_grad();
      loss.backward();
      optimizer->step();
      ++step;
      last_loss = loss.item<double>();
      loss_sum += last_loss;
      ++loss_count;
      seen += y.size(0);
      seen_correct += logits.argmax(1).eq(y).sum().item<int64_t>();
      if (step % a.log_every == 0) {
        std::cout << "epoch " << epoch + 1 << " step " << step << "  loss " << std::setprecision(4)
                  << loss_sum / double(loss_count) << "  train acc "
                  << double(seen_correct) / double(seen) << "  " << std::setprecision(1)
                  << seconds_since(t_train) << " s\n"
                  << std::flush;
        loss_sum = 0.0;
        loss_count = seen = seen_correct = 0;
      }
    }
  }
  const double train_s = seconds_since(t_train);

  model->eval();  // activation ranges stay as trained from here on
  const auto t_eval = std::chrono::steady_clock::now();
  const int64_t correct = count_correct(model, test, a.eval_batch_size);
  const double accuracy = double(correct) / double(test.images.size(0));
  std::cout << std::setprecision(4) << "trained " << step << " steps in " << std::setprecision(1)
            << train_s << " s; test accuracy " << std::setprecision(4) << accuracy << " (" << correct
            << "/" << test.images.size(0) << ", " << std::setprecision(1) << seconds_since(t_eval)
            << " s)\n";

  const std::string checkpoint = a.out + "/checkpoint.pt";
  qat::save_state_dict(*model, checkpoint);

  const int64_t k = std::min(a.sample, test.images.size(0));
  at::Tensor sample_logits;
  {
    torch::NoGradGuard no_grad;
    sample_logits = model->forward(test.images.slice(0, 0, k));
  }
  qat::StateDict eval;  // a plain dict of tensors, as torch.load(weights_only=True) reads
  eval.insert("images", test.images.slice(0, 0, k).contiguous());
  eval.insert("labels", test.labels.slice(0, 0, k).contiguous());
  eval.insert("logits", sample_logits);
  eval.insert("test_correct", torch::tensor(correct));
  eval.insert("test_total", torch::tensor(test.images.size(0)));
  eval.insert("eval_batch_size", torch::tensor(a.eval_batch_size));
  eval.insert("steps", torch::tensor(step));
  eval.insert("final_loss", torch::tensor(last_loss, torch::kFloat64));
  qat::save_state_dict(eval, a.out + "/eval.pt");
  std::cout << "wrote " << checkpoint << " and " << a.out << "/eval.pt\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const c10::Error& e) {
    std::cerr << "fashion_mnist_qat: " << e.what_without_backtrace() << "\n";
    return 2;
  }
}
