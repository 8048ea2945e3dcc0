// Reader of the idx files MNIST-style data sets ship in (gzip-compressed or plain).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace fmnist {

// An idx file of unsigned bytes as a uint8 tensor of the dims its header gives.
at::Tensor read_idx(const std::string& path);

struct Split {
  at::Tensor images;  // float32 [N, 1, 28, 28], pixel / 255
  at::Tensor labels;  // int64 [N]
};

// "<dir>/<name>-images-idx3-ubyte[.gz]" and "<dir>/<name>-labels-idx1-ubyte[.gz]", name being
// "train" or "t10k".
Split load_split(const std::string& dir, const std::string& name);

}  // namespace fmnist
