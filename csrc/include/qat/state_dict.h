// State dicts for LibTorch modules in the form Python's torch.load / load_state_dict use: a flat
// name -> tensor dict of parameters and buffers ("conv1.weight_quantizer.scale"), pickled in
// torch.save's zip format, so a C++ checkpoint loads into the Python module of the same layout.
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <string>

namespace qat {

using StateDict = c10::Dict<std::string, at::Tensor>;

// Parameters, then buffers, of `module` and its descendants (detached, not copied).
StateDict state_dict(const torch::nn::Module& module);

// Copies `state` into `module`'s parameters and buffers. Shapes must match, except for
// FakeQuantizer state, which resizes to the saved shape as Python's observers do (per-channel
// ranges are sized by the first tensor seen). strict: missing or unexpected names are errors.
void load_state_dict(torch::nn::Module& module, const StateDict& state, bool strict = true);

// Writes a file in torch.save's zip format holding a plain dict of tensors, which
// torch.load(path, weights_only=True) reads in Python (and read_state_dict here).
void save_state_dict(const torch::nn::Module& module, const std::string& path);
void save_state_dict(const StateDict& state, const std::string& path);
// Reads a dict of tensors written by save_state_dict, torch::pickle_save or torch.save; from
// Python, save a plain dict (torch.save(dict(model.state_dict()), path)): LibTorch cannot read
// the OrderedDict that state_dict() returns.
StateDict read_state_dict(const std::string& path);

}  // namespace qat
