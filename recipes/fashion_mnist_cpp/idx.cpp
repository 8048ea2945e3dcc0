#include "idx.h"

#include <torch/torch.h>
#include <zlib.h>

#include <array>
#include <filesystem>
#include <memory>
#include <vector>

namespace fmnist {
namespace {

struct GzClose {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<std::remove_pointer_t<gzFile>, GzClose>;

void read_exactly(gzFile f, void* dst, size_t n, const std::string& path) {
  auto* out = static_cast<unsigned char*>(dst);
  while (n > 0) {  // gzread takes an unsigned int count: read large payloads in chunks
    const unsigned chunk = unsigned(std::min<size_t>(n, size_t(1) << 30));
    const int got = gzread(f, out, chunk);
    TORCH_CHECK(got > 0, "idx: ", path, " is truncated or corrupt");
    out += got;
    n -= size_t(got);
  }
}

// The file as given, else with ".gz" appended.
std::string existing(const std::string& base) {
  for (const std::string& p : {base + ".gz", base}) {
    if (std::filesystem::exists(p)) return p;
  }
  TORCH_CHECK(false, "idx: neither ", base, ".gz nor ", base,
              " exists (Fashion-MNIST: Debian package dataset-fashion-mnist, or the files from "
              "github.com/zalandoresearch/fashion-mnist)");
  return {};
}

}  // namespace

at::Tensor read_idx(const std::string& path) {
  GzFile f(gzopen(path.c_str(), "rb"));  // reads plain files as they are
  TORCH_CHECK(f, "idx: cannot open ", path);
  std::array<unsigned char, 4> magic{};
  read_exactly(f.get(), magic.data(), 4, path);
  TORCH_CHECK(magic[0] == 0 && magic[1] == 0, "idx: ", path, " is not an idx file");
  TORCH_CHECK(magic[2] == 0x08, "idx: ", path, " holds type 0x", std::hex, int(magic[2]),
              ", only unsigned bytes (0x08) are supported");
  std::vector<int64_t> dims(magic[3]);
  int64_t numel = 1;
  for (int64_t& d : dims) {
    std::array<unsigned char, 4> b{};
    read_exactly(f.get(), b.data(), 4, path);
    d = int64_t(b[0]) << 24 | int64_t(b[1]) << 16 | int64_t(b[2]) << 8 | int64_t(b[3]);  // big endian
    numel *= d;
  }
  at::Tensor out = torch::empty(dims, torch::kUInt8);
  read_exactly(f.get(), out.data_ptr<uint8_t>(), size_t(numel), path);
  unsigned char extra;
  TORCH_CHECK(gzread(f.get(), &extra, 1) == 0, "idx: ", path, " has data past its ", numel, " bytes");
  return out;
}

Split load_split(const std::string& dir, const std::string& name) {
  const at::Tensor images = read_idx(existing(dir + "/" + name + "-images-idx3-ubyte"));
  const at::Tensor labels = read_idx(existing(dir + "/" + name + "-labels-idx1-ubyte"));
  TORCH_CHECK(images.dim() == 3 && labels.dim() == 1 && images.size(0) == labels.size(0),
              "idx: ", name, " images ", images.sizes(), " and labels ", labels.sizes(),
              " do not pair up");
  TORCH_CHECK(labels.max().item<int>() < 10, "idx: ", name, " labels exceed 9");
  return {images.unsqueeze(1).to(torch::kFloat32).div(255), labels.to(torch::kInt64)};
}

}  // namespace fmnist
