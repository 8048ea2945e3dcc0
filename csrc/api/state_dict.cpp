#include "qat/state_dict.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "qat/fake_quantizer.h"

namespace qat {
namespace {

std::string joined(const std::set<std::string>& names) {
  std::ostringstream out;
  for (const std::string& n : names) out << (out.tellp() > 0 ? ", " : "") << n;
  return out.str();
}

}  // namespace

StateDict state_dict(const torch::nn::Module& module) {
  StateDict out;
  for (const auto& p : module.named_parameters()) out.insert(p.key(), p.value().detach());
  for (const auto& b : module.named_buffers()) out.insert(b.key(), b.value().detach());
  return out;
}

void load_state_dict(torch::nn::Module& module, const StateDict& state, bool strict) {
  torch::NoGradGuard no_grad;
  std::set<std::string> missing, seen;
  for (const auto& item : module.named_modules()) {
    const std::string prefix = item.key().empty() ? "" : item.key() + ".";
    const bool resizable = dynamic_cast<FakeQuantizerImpl*>(item.value().get()) != nullptr;
    auto load_one = [&](const std::string& name, at::Tensor& t) {
      const std::string key = prefix + name;
      auto found = state.find(key);
      if (found == state.end()) {
        missing.insert(key);
        return;
      }
      seen.insert(key);
      const at::Tensor& saved = found->value();
      if (saved.sizes() == t.sizes()) {
        t.copy_(saved);
        return;
      }
      TORCH_CHECK(resizable, "qat::load_state_dict: '", key, "' has shape ", saved.sizes(),
                  " in the state dict but ", t.sizes(), " in the module");
      t.set_data(saved.to(t.options()).clone());
    };
    for (auto& p : item.value()->named_parameters(/*recurse=*/false)) load_one(p.key(), p.value());
    for (auto& b : item.value()->named_buffers(/*recurse=*/false)) load_one(b.key(), b.value());
  }
  if (strict) {
    std::set<std::string> unexpected;
    for (const auto& entry : state) {
      if (!seen.count(entry.key())) unexpected.insert(entry.key());
    }
    TORCH_CHECK(missing.empty() && unexpected.empty(),
                "qat::load_state_dict: missing keys [", joined(missing), "], unexpected keys [",
                joined(unexpected), "]");
  }
  for (const auto& m : module.modules()) {
    if (auto* q = dynamic_cast<FakeQuantizerImpl*>(m.get())) q->sync_flags();
  }
}

void save_state_dict(const StateDict& state, const std::string& path) {
  // torch::pickle_save, except that the dict goes out untagged: a tagged one needs
  // torch.jit._pickle.restore_type_tag, which torch.load(weights_only=True) refuses.
  std::vector<char> pickled;
  torch::jit::Pickler pickler(
      [&](const char* data, size_t n) { pickled.insert(pickled.end(), data, data + n); },
      /*tensor_table=*/nullptr, /*type_renamer=*/nullptr, /*memoized_class_types=*/nullptr,
      /*get_tensor_id=*/nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(state));
  pickler.stop();
  std::ofstream out(path, std::ios::binary);
  TORCH_CHECK(out, "qat::save_state_dict: cannot open '", path, "' for writing");
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
    out.write(static_cast<const char*>(data), std::streamsize(n));
    return out.good() ? n : size_t(0);
  });
  torch::jit::writeArchiveAndTensors("data", pickled.data(), pickled.size(), pickler.tensorData(),
                                     writer);
  writer.writeEndOfFile();
  TORCH_CHECK(out.good(), "qat::save_state_dict: writing '", path, "' failed");
}

void save_state_dict(const torch::nn::Module& module, const std::string& path) {
  save_state_dict(state_dict(module), path);
}

StateDict read_state_dict(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "qat::read_state_dict: cannot open '", path, "'");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue value;
  try {
    value = torch::pickle_load(bytes);
  } catch (const c10::Error& e) {
    // LibTorch's unpickler cannot rebuild the OrderedDict (with its _metadata) that
    // nn.Module.state_dict() returns.
    TORCH_CHECK(false, "qat::read_state_dict: cannot read '", path, "' (", e.what_without_backtrace(),
                "). Save a Python state dict as a plain dict: torch.save(dict(model.state_dict()), path)");
  }
  TORCH_CHECK(value.isGenericDict(), "qat::read_state_dict: '", path,
              "' does not hold a dict of tensors");
  StateDict out;
  for (const auto& entry : value.toGenericDict()) {
    TORCH_CHECK(entry.key().isString() && entry.value().isTensor(), "qat::read_state_dict: '", path,
                "' does not hold a dict of tensors");
    out.insert(entry.key().toStringRef(), entry.value().toTensor());
  }
  return out;
}

}  // namespace qat
