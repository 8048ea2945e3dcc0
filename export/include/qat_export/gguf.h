// GGUF v3 container: writer and reader (shared/specs/formats.md §1). Torch-free.
//
// The writer lays out header, metadata, tensor infos, padding and the tensor data contiguously in
// info order, each tensor padded to the alignment (what ggml's gguf.cpp requires), and writes
// atomically: a temporary file in the destination directory, fsync, then rename.
// The reader checks everything ggml's reader checks (and a bit more) and throws GGUFError with a
// message naming the offending key, tensor or offset.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "qat_export/types.h"

namespace qat_export::gguf {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kVersion = 3;
constexpr uint32_t kDefaultAlignment = 32;
constexpr size_t kMaxNameBytes = 63;     // ggml: strlen(name) < GGML_MAX_NAME (64)
constexpr uint32_t kMaxDims = 4;

// A malformed file or an invalid value handed to the writer.
struct GGUFError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An operating-system failure (open, read, write, rename), with errno and the path.
struct IOError : std::runtime_error {
  IOError(int err, std::string path, const std::string& what);
  int err;
  std::string path;
};

enum class ValueType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

const char* value_type_name(ValueType t);
bool value_type_from_name(std::string_view name, ValueType* out);
bool is_valid_value_type(uint32_t id);

// A metadata value. Scalars keep their value in the widest C++ type of their kind (unsigned and
// BOOL in `u`, signed in `i`, floats in `f`, STRING in `s`); ARRAY keeps `elem_type` and the
// elements in the vector of that kind. The writer checks that each value fits its type.
struct Value {
  ValueType type = ValueType::UINT8;
  ValueType elem_type = ValueType::UINT8;  // ARRAY only; never ARRAY (ggml rejects nested arrays)
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<uint64_t> u_items;
  std::vector<int64_t> i_items;
  std::vector<double> f_items;
  std::vector<std::string> s_items;

  size_t array_size() const;
  bool operator==(const Value& o) const;

  static Value make_uint(ValueType t, uint64_t v);
  static Value make_int(ValueType t, int64_t v);
  static Value make_float(ValueType t, double v);
  static Value make_bool(bool v);
  static Value make_string(std::string v);
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the row length (innermost dimension)
  GGMLType type = GGMLType::F32;
  uint64_t offset = 0;      // relative to the data section
  uint64_t nbytes = 0;

  int64_t n_elements() const;
};

// nbytes of a tensor: (ne0 / block) * type_size * ne1 * ne2 * ne3. Throws GGUFError for a row
// length that is not a multiple of the block size, negative dims or overflow.
uint64_t tensor_nbytes(const std::string& name, const std::vector<int64_t>& ne, GGMLType type);

class Writer {
 public:
  Writer() = default;

  // Adds a key (insertion order is file order). Throws GGUFError for an empty or duplicate key,
  // a value that does not fit its type, a nested array, or `general.alignment` that is not a
  // UINT32 power of two (it sets the alignment used for the file).
  void set(const std::string& key, Value value);
  // Adds a tensor whose data is already encoded in `type` (copied). Throws GGUFError for a name
  // longer than 63 bytes, a duplicate name, 0 or more than 4 dims, a row length that is not a
  // multiple of the block size, or a size mismatch.
  void add_tensor(const std::string& name, std::vector<int64_t> ne, GGMLType type, const void* data, size_t nbytes);
  // Quantizes fp32 data (laid out row-major with rows of ne[0]) into `type` and adds it.
  void add_tensor_f32(const std::string& name, std::vector<int64_t> ne, GGMLType type, const float* data);

  uint32_t alignment() const { return alignment_; }
  size_t n_tensors() const { return tensors_.size(); }
  size_t n_kv() const { return kv_.size(); }

  // Writes the file atomically (temp file in the same directory, fsync, rename, fsync of the
  // directory). On any failure the temp file is removed and the destination is left untouched.
  void write(const std::string& path) const;

  // Testing hook: make write() fail with IOError(EIO) after this many bytes (negative: never).
  void fail_after_bytes_for_testing(int64_t n) { fail_after_ = n; }

 private:
  std::vector<std::pair<std::string, Value>> kv_;
  std::map<std::string, size_t> kv_index_;
  struct Tensor {
    TensorInfo info;
    std::vector<uint8_t> data;
  };
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
  uint32_t alignment_ = kDefaultAlignment;
  int64_t fail_after_ = -1;
};

class Reader {
 public:
  // Parses and validates the header, metadata and tensor infos; checks that every tensor's data
  // lies inside the file. Tensor data is read on demand.
  explicit Reader(const std::string& path);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return file_size_; }
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Index of a tensor by name, or -1.
  int64_t find_tensor(const std::string& name) const;

  // Reads tensor i's bytes (tensors()[i].nbytes) into dst.
  void read_tensor(size_t i, void* dst) const;
  std::vector<uint8_t> tensor_data(size_t i) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint32_t version_ = 0;
  uint32_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  uint64_t file_size_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace qat_export::gguf
