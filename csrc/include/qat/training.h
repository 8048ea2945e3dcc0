// Training controls over every qat::FakeQuantizer in a module tree, as Python's qat.training
// offers them for prepared models.
#pragma once

#include <torch/nn/module.h>

namespace qat {

// Let moving-average ranges follow the data (on) or freeze them where they are (off).
// Learnable ranges observe nothing and are left alone.
void enable_observers(torch::nn::Module& model, bool on = true);
inline void freeze_observers(torch::nn::Module& model) { enable_observers(model, false); }

// Turn gradient updates of learned scales (and learned zero points) on or off.
void set_learnable_ranges(torch::nn::Module& model, bool on = true);

// Fake quantization on or off everywhere (off: tensors pass through unchanged; moving-average
// ranges keep observing in training mode).
void enable_fake_quant(torch::nn::Module& model, bool on = true);

}  // namespace qat
