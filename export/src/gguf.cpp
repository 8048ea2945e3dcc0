#include "qat_export/gguf.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "qat_export/quantize.h"

namespace qat_export::gguf {

IOError::IOError(int e, std::string p, const std::string& what)
    : std::runtime_error(what + " '" + p + "': " + std::strerror(e)), err(e), path(std::move(p)) {}

namespace {

constexpr uint64_t kMaxStringBytes = 1ull << 30;   // ggml GGUF_MAX_STRING_LENGTH
constexpr uint64_t kMaxArrayElements = 1ull << 30; // ggml GGUF_MAX_ARRAY_ELEMENTS

constexpr const char* kTypeNames[] = {"UINT8", "INT8",   "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
                                      "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64", "FLOAT64"};

enum class Kind { Unsigned, Signed, Float, Bool, String, Array };

Kind kind_of(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
    case ValueType::UINT16:
    case ValueType::UINT32:
    case ValueType::UINT64: return Kind::Unsigned;
    case ValueType::INT8:
    case ValueType::INT16:
    case ValueType::INT32:
    case ValueType::INT64: return Kind::Signed;
    case ValueType::FLOAT32:
    case ValueType::FLOAT64: return Kind::Float;
    case ValueType::BOOL: return Kind::Bool;
    case ValueType::STRING: return Kind::String;
    case ValueType::ARRAY: return Kind::Array;
  }
  return Kind::Array;
}

// Encoded size of a fixed-size scalar (0 for STRING and ARRAY).
size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8:
    case ValueType::INT8:
    case ValueType::BOOL: return 1;
    case ValueType::UINT16:
    case ValueType::INT16: return 2;
    case ValueType::UINT32:
    case ValueType::INT32:
    case ValueType::FLOAT32: return 4;
    case ValueType::UINT64:
    case ValueType::INT64:
    case ValueType::FLOAT64: return 8;
    default: return 0;
  }
}

uint64_t unsigned_max(ValueType t) {
  const size_t n = scalar_size(t);
  return n == 8 ? std::numeric_limits<uint64_t>::max() : (uint64_t{1} << (8 * n)) - 1;
}
int64_t signed_max(ValueType t) {
  const size_t n = scalar_size(t);
  return n == 8 ? std::numeric_limits<int64_t>::max() : (int64_t{1} << (8 * n - 1)) - 1;
}

std::string where_key(const std::string& key) { return "key '" + key + "'"; }

// Checks one scalar of type t held in v (elements of arrays are checked through the same path).
void check_unsigned(const std::string& key, ValueType t, uint64_t u) {
  if (t == ValueType::BOOL) {
    if (u > 1) throw GGUFError(where_key(key) + ": BOOL value " + std::to_string(u) + " is not 0 or 1");
  } else if (u > unsigned_max(t)) {
    throw GGUFError(where_key(key) + ": value " + std::to_string(u) + " does not fit " + value_type_name(t));
  }
}
void check_signed(const std::string& key, ValueType t, int64_t i) {
  const int64_t hi = signed_max(t), lo = -hi - 1;
  if (i < lo || i > hi)
    throw GGUFError(where_key(key) + ": value " + std::to_string(i) + " does not fit " + value_type_name(t));
}
void check_float(const std::string& key, ValueType t, double f) {
  if (t == ValueType::FLOAT32 && std::isfinite(f) && std::isinf(static_cast<float>(f)))
    throw GGUFError(where_key(key) + ": value " + std::to_string(f) + " overflows FLOAT32");
}
void check_string(const std::string& key, const std::string& s) {
  if (s.size() > kMaxStringBytes) throw GGUFError(where_key(key) + ": string longer than 2^30 bytes");
}

void check_value(const std::string& key, const Value& v) {
  if (!is_valid_value_type(static_cast<uint32_t>(v.type)))
    throw GGUFError(where_key(key) + ": invalid value type " + std::to_string(static_cast<uint32_t>(v.type)));
  if (v.type != ValueType::ARRAY) {
    switch (kind_of(v.type)) {
      case Kind::Unsigned:
      case Kind::Bool: return check_unsigned(key, v.type, v.u);
      case Kind::Signed: return check_signed(key, v.type, v.i);
      case Kind::Float: return check_float(key, v.type, v.f);
      case Kind::String: return check_string(key, v.s);
      default: return;
    }
  }
  if (!is_valid_value_type(static_cast<uint32_t>(v.elem_type)))
    throw GGUFError(where_key(key) + ": invalid array element type " + std::to_string(static_cast<uint32_t>(v.elem_type)));
  if (v.elem_type == ValueType::ARRAY)
    throw GGUFError(where_key(key) + ": nested arrays are not supported (ggml rejects them)");
  if (v.array_size() > kMaxArrayElements) throw GGUFError(where_key(key) + ": array longer than 2^30 elements");
  switch (kind_of(v.elem_type)) {
    case Kind::Unsigned:
    case Kind::Bool:
      for (uint64_t u : v.u_items) check_unsigned(key, v.elem_type, u);
      break;
    case Kind::Signed:
      for (int64_t i : v.i_items) check_signed(key, v.elem_type, i);
      break;
    case Kind::Float:
      for (double f : v.f_items) check_float(key, v.elem_type, f);
      break;
    case Kind::String:
      for (const auto& s : v.s_items) check_string(key, s);
      break;
    default: break;
  }
}

// ---- encoding ----------------------------------------------------------------------------------
struct Buffer {
  std::vector<uint8_t> bytes;
  void put(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), b, b + n);
  }
  void put_le(uint64_t v, size_t n) {
    for (size_t k = 0; k < n; ++k) bytes.push_back(static_cast<uint8_t>(v >> (8 * k)));
  }
  void u32(uint32_t v) { put_le(v, 4); }
  void u64(uint64_t v) { put_le(v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    put(s.data(), s.size());
  }
};

void put_scalar_unsigned(Buffer& b, ValueType t, uint64_t u) { b.put_le(u, scalar_size(t)); }
void put_scalar_signed(Buffer& b, ValueType t, int64_t i) { b.put_le(static_cast<uint64_t>(i), scalar_size(t)); }
void put_scalar_float(Buffer& b, ValueType t, double f) {
  if (t == ValueType::FLOAT32) {
    const float g = static_cast<float>(f);
    uint32_t bits;
    std::memcpy(&bits, &g, 4);
    b.put_le(bits, 4);
  } else {
    uint64_t bits;
    std::memcpy(&bits, &f, 8);
    b.put_le(bits, 8);
  }
}

void put_value(Buffer& b, const Value& v) {
  b.u32(static_cast<uint32_t>(v.type));
  if (v.type != ValueType::ARRAY) {
    switch (kind_of(v.type)) {
      case Kind::Unsigned:
      case Kind::Bool: return put_scalar_unsigned(b, v.type, v.u);
      case Kind::Signed: return put_scalar_signed(b, v.type, v.i);
      case Kind::Float: return put_scalar_float(b, v.type, v.f);
      case Kind::String: return b.str(v.s);
      default: return;
    }
  }
  b.u32(static_cast<uint32_t>(v.elem_type));
  b.u64(v.array_size());
  switch (kind_of(v.elem_type)) {
    case Kind::Unsigned:
    case Kind::Bool:
      for (uint64_t u : v.u_items) put_scalar_unsigned(b, v.elem_type, u);
      break;
    case Kind::Signed:
      for (int64_t i : v.i_items) put_scalar_signed(b, v.elem_type, i);
      break;
    case Kind::Float:
      for (double f : v.f_items) put_scalar_float(b, v.elem_type, f);
      break;
    case Kind::String:
      for (const auto& s : v.s_items) b.str(s);
      break;
    default: break;
  }
}

uint64_t pad_to(uint64_t n, uint64_t a) { return n + (a - n % a) % a; }

std::string dims_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t k = 0; k < ne.size(); ++k) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "]";
}

// ---- atomic file output ----------------------------------------------------------------------
class TempFile {
 public:
  explicit TempFile(const std::string& final_path, int64_t fail_after) : final_(final_path), fail_after_(fail_after) {
    const size_t slash = final_path.rfind('/');
    dir_ = slash == std::string::npos ? "." : (slash == 0 ? "/" : final_path.substr(0, slash));
    const std::string base = slash == std::string::npos ? final_path : final_path.substr(slash + 1);
    if (base.empty()) throw GGUFError("output path '" + final_path + "' names a directory");
    std::string tmpl = (dir_ == "/" ? "" : dir_) + "/." + base + ".tmp-XXXXXX";
    if (slash == std::string::npos) tmpl = "." + base + ".tmp-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    fd_ = ::mkstemp(buf.data());
    if (fd_ < 0) throw IOError(errno, final_path, "cannot create a temporary file next to");
    tmp_.assign(buf.data());
    // mkstemp creates 0600; give the result the usual 0666 & ~umask.
    const mode_t mask = ::umask(0);
    ::umask(mask);
    ::fchmod(fd_, 0666 & ~mask);
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(tmp_.c_str());
  }

  void write(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    while (n > 0) {
      size_t chunk = n < (size_t{1} << 26) ? n : (size_t{1} << 26);
      if (fail_after_ >= 0) {
        if (static_cast<uint64_t>(fail_after_) <= written_) throw IOError(EIO, tmp_, "simulated failure writing");
        const uint64_t left = static_cast<uint64_t>(fail_after_) - written_;
        if (chunk > left) chunk = static_cast<size_t>(left);
      }
      const ssize_t w = ::write(fd_, b, chunk);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw IOError(errno, tmp_, "cannot write");
      }
      b += w;
      n -= static_cast<size_t>(w);
      written_ += static_cast<uint64_t>(w);
    }
  }
  void zeros(size_t n) {
    static const uint8_t z[256] = {};
    while (n > 0) {
      const size_t c = n < sizeof(z) ? n : sizeof(z);
      write(z, c);
      n -= c;
    }
  }
  uint64_t written() const { return written_; }

  void commit() {
    if (::fsync(fd_) != 0) throw IOError(errno, tmp_, "cannot fsync");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw IOError(errno, tmp_, "cannot close");
    if (::rename(tmp_.c_str(), final_.c_str()) != 0) throw IOError(errno, final_, "cannot rename the temporary file to");
    committed_ = true;
    const int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {  // make the rename durable; best effort (some filesystems refuse)
      ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  std::string final_, dir_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
  int64_t fail_after_;
  uint64_t written_ = 0;
};

// ---- decoding ----------------------------------------------------------------------------------
class FileCursor {
 public:
  FileCursor(int fd, const std::string& path, uint64_t size) : fd_(fd), path_(path), size_(size) {}

  uint64_t tell() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  void read(void* dst, uint64_t n, const std::string& what) {
    if (n > remaining())
      throw GGUFError("truncated file: " + what + " needs " + std::to_string(n) + " bytes at offset " +
                      std::to_string(pos_) + " but the file ends at " + std::to_string(size_));
    auto* out = static_cast<uint8_t*>(dst);
    while (n > 0) {
      if (buf_pos_ == buf_.size()) fill();
      const uint64_t avail = buf_.size() - buf_pos_;
      const uint64_t c = n < avail ? n : avail;
      std::memcpy(out, buf_.data() + buf_pos_, c);
      out += c;
      buf_pos_ += c;
      pos_ += c;
      n -= c;
    }
  }
  uint64_t le(size_t n, const std::string& what) {
    uint8_t b[8];
    read(b, n, what);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(b[k]) << (8 * k);
    return v;
  }
  uint32_t u32(const std::string& what) { return static_cast<uint32_t>(le(4, what)); }
  uint64_t u64(const std::string& what) { return le(8, what); }
  std::string str(const std::string& what) {
    const uint64_t n = u64(what + " length");
    if (n > kMaxStringBytes) throw GGUFError(what + ": string length " + std::to_string(n) + " exceeds 2^30 bytes");
    if (n > remaining())
      throw GGUFError("truncated file: " + what + " has length " + std::to_string(n) + " at offset " +
                      std::to_string(pos_) + " but only " + std::to_string(remaining()) + " bytes remain");
    std::string s(static_cast<size_t>(n), '\0');
    read(s.data(), n, what);
    return s;
  }

 private:
  void fill() {
    buf_.resize(size_t{1} << 20);
    ssize_t r;
    do {
      r = ::pread(fd_, buf_.data(), buf_.size(), static_cast<off_t>(pos_));
    } while (r < 0 && errno == EINTR);
    if (r < 0) throw IOError(errno, path_, "cannot read");
    if (r == 0) throw GGUFError("file '" + path_ + "' shrank while being read");
    buf_.resize(static_cast<size_t>(r));
    buf_pos_ = 0;
  }

  int fd_;
  std::string path_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::vector<uint8_t> buf_;
  size_t buf_pos_ = 0;
};

uint64_t read_unsigned(FileCursor& c, ValueType t, const std::string& what) {
  const uint64_t v = c.le(scalar_size(t), what);
  if (t == ValueType::BOOL && v > 1) throw GGUFError(what + ": BOOL byte " + std::to_string(v) + " is not 0 or 1");
  return v;
}
int64_t read_signed(FileCursor& c, ValueType t, const std::string& what) {
  const size_t n = scalar_size(t);
  const uint64_t v = c.le(n, what);
  if (n == 8) return static_cast<int64_t>(v);
  const uint64_t sign = uint64_t{1} << (8 * n - 1);
  return static_cast<int64_t>((v ^ sign) - sign);  // sign-extend
}
double read_float(FileCursor& c, ValueType t, const std::string& what) {
  if (t == ValueType::FLOAT32) {
    const uint32_t bits = static_cast<uint32_t>(c.le(4, what));
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  const uint64_t bits = c.le(8, what);
  double d;
  std::memcpy(&d, &bits, 8);
  return d;
}

ValueType read_value_type(FileCursor& c, const std::string& what) {
  const uint32_t id = c.u32(what);
  if (!is_valid_value_type(id)) throw GGUFError(what + ": unknown value type " + std::to_string(id));
  return static_cast<ValueType>(id);
}

Value read_value(FileCursor& c, const std::string& key) {
  const std::string what = where_key(key);
  Value v;
  v.type = read_value_type(c, what + " value type");
  if (v.type != ValueType::ARRAY) {
    switch (kind_of(v.type)) {
      case Kind::Unsigned:
      case Kind::Bool: v.u = read_unsigned(c, v.type, what); break;
      case Kind::Signed: v.i = read_signed(c, v.type, what); break;
      case Kind::Float: v.f = read_float(c, v.type, what); break;
      case Kind::String: v.s = c.str(what); break;
      default: break;
    }
    return v;
  }
  v.elem_type = read_value_type(c, what + " array element type");
  if (v.elem_type == ValueType::ARRAY) throw GGUFError(what + ": nested arrays are not supported");
  const uint64_t n = c.u64(what + " array length");
  if (n > kMaxArrayElements) throw GGUFError(what + ": array length " + std::to_string(n) + " exceeds 2^30");
  // Each element takes at least its scalar size (strings at least their 8-byte length).
  const uint64_t min_each = v.elem_type == ValueType::STRING ? 8 : scalar_size(v.elem_type);
  if (n * min_each > c.remaining())
    throw GGUFError("truncated file: " + what + " declares " + std::to_string(n) + " elements at offset " +
                    std::to_string(c.tell()) + " but only " + std::to_string(c.remaining()) + " bytes remain");
  const std::string ewhat = what + " array element";
  switch (kind_of(v.elem_type)) {
    case Kind::Unsigned:
    case Kind::Bool:
      v.u_items.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.u_items.push_back(read_unsigned(c, v.elem_type, ewhat));
      break;
    case Kind::Signed:
      v.i_items.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.i_items.push_back(read_signed(c, v.elem_type, ewhat));
      break;
    case Kind::Float:
      v.f_items.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.f_items.push_back(read_float(c, v.elem_type, ewhat));
      break;
    case Kind::String:
      v.s_items.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.s_items.push_back(c.str(ewhat));
      break;
    default: break;
  }
  return v;
}

}  // namespace

// ---- Value ---------------------------------------------------------------------------------------
const char* value_type_name(ValueType t) {
  const auto id = static_cast<uint32_t>(t);
  return id < sizeof(kTypeNames) / sizeof(kTypeNames[0]) ? kTypeNames[id] : "INVALID";
}

bool value_type_from_name(std::string_view name, ValueType* out) {
  for (uint32_t id = 0; id < sizeof(kTypeNames) / sizeof(kTypeNames[0]); ++id) {
    if (name == kTypeNames[id]) {
      *out = static_cast<ValueType>(id);
      return true;
    }
  }
  return false;
}

bool is_valid_value_type(uint32_t id) { return id <= static_cast<uint32_t>(ValueType::FLOAT64); }

size_t Value::array_size() const {
  switch (kind_of(elem_type)) {
    case Kind::Unsigned:
    case Kind::Bool: return u_items.size();
    case Kind::Signed: return i_items.size();
    case Kind::Float: return f_items.size();
    case Kind::String: return s_items.size();
    default: return 0;
  }
}

bool Value::operator==(const Value& o) const {
  if (type != o.type) return false;
  if (type == ValueType::ARRAY)
    return elem_type == o.elem_type && u_items == o.u_items && i_items == o.i_items && s_items == o.s_items &&
           f_items.size() == o.f_items.size() &&
           std::memcmp(f_items.data(), o.f_items.data(), f_items.size() * sizeof(double)) == 0;
  switch (kind_of(type)) {
    case Kind::Unsigned:
    case Kind::Bool: return u == o.u;
    case Kind::Signed: return i == o.i;
    case Kind::Float: return std::memcmp(&f, &o.f, sizeof f) == 0;
    case Kind::String: return s == o.s;
    default: return false;
  }
}

Value Value::make_uint(ValueType t, uint64_t v) {
  Value r;
  r.type = t;
  r.u = v;
  return r;
}
Value Value::make_int(ValueType t, int64_t v) {
  Value r;
  r.type = t;
  r.i = v;
  return r;
}
Value Value::make_float(ValueType t, double v) {
  Value r;
  r.type = t;
  r.f = v;
  return r;
}
Value Value::make_bool(bool v) { return make_uint(ValueType::BOOL, v ? 1 : 0); }
Value Value::make_string(std::string v) {
  Value r;
  r.type = ValueType::STRING;
  r.s = std::move(v);
  return r;
}

// ---- tensors -----------------------------------------------------------------------------------
int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

uint64_t tensor_nbytes(const std::string& name, const std::vector<int64_t>& ne, GGMLType type) {
  const TypeTraits* t = find_type(static_cast<uint32_t>(type));
  if (!t) throw GGUFError("tensor '" + name + "': unknown ggml type " + std::to_string(static_cast<uint32_t>(type)));
  uint64_t rows = 1;
  for (size_t k = 0; k < ne.size(); ++k) {
    if (ne[k] < 0) throw GGUFError("tensor '" + name + "': dimension " + std::to_string(k) + " is negative");
    if (k > 0) {
      if (ne[k] != 0 && rows > static_cast<uint64_t>(INT64_MAX) / static_cast<uint64_t>(ne[k]))
        throw GGUFError("tensor '" + name + "': shape " + dims_str(ne) + " overflows");
      rows *= static_cast<uint64_t>(ne[k]);
    }
  }
  const int64_t ne0 = ne.empty() ? 1 : ne[0];
  if (ne0 % t->block_size != 0)
    throw GGUFError("tensor '" + name + "' of type " + t->name + ": row length ne[0] = " + std::to_string(ne0) +
                    " is not a multiple of the block size " + std::to_string(t->block_size));
  const uint64_t row_bytes = static_cast<uint64_t>(ne0 / t->block_size) * static_cast<uint64_t>(t->type_size);
  if (rows != 0 && row_bytes > static_cast<uint64_t>(INT64_MAX) / rows)
    throw GGUFError("tensor '" + name + "': shape " + dims_str(ne) + " overflows");
  return row_bytes * rows;
}

// ---- Writer ------------------------------------------------------------------------------------
void Writer::set(const std::string& key, Value value) {
  if (key.empty()) throw GGUFError("metadata keys must not be empty");
  if (kv_index_.count(key)) throw GGUFError("duplicate metadata " + where_key(key));
  check_value(key, value);
  if (key == "general.alignment") {
    if (value.type != ValueType::UINT32)
      throw GGUFError("key 'general.alignment' must be UINT32, not " + std::string(value_type_name(value.type)));
    if (value.u == 0 || (value.u & (value.u - 1)) != 0)
      throw GGUFError("general.alignment " + std::to_string(value.u) + " is not a power of two");
    alignment_ = static_cast<uint32_t>(value.u);
  }
  kv_index_[key] = kv_.size();
  kv_.emplace_back(key, std::move(value));
}

void Writer::add_tensor(const std::string& name, std::vector<int64_t> ne, GGMLType type, const void* data,
                        size_t nbytes) {
  if (name.empty()) throw GGUFError("tensor names must not be empty");
  if (name.size() > kMaxNameBytes)
    throw GGUFError("tensor name '" + name + "' is " + std::to_string(name.size()) +
                    " bytes; ggml allows at most 63");
  if (tensor_index_.count(name)) throw GGUFError("duplicate tensor name '" + name + "'");
  if (ne.empty() || ne.size() > kMaxDims)
    throw GGUFError("tensor '" + name + "' has " + std::to_string(ne.size()) + " dims; GGUF allows 1 to 4");
  const uint64_t expected = tensor_nbytes(name, ne, type);
  if (expected != nbytes)
    throw GGUFError("tensor '" + name + "' of type " + type_traits(type).name + " and shape " + dims_str(ne) +
                    " needs " + std::to_string(expected) + " bytes, got " + std::to_string(nbytes));
  Tensor t;
  t.info.name = name;
  t.info.ne = std::move(ne);
  t.info.type = type;
  t.info.nbytes = expected;
  const auto* b = static_cast<const uint8_t*>(data);
  t.data.assign(b, b + nbytes);
  tensor_index_[name] = tensors_.size();
  tensors_.push_back(std::move(t));
}

void Writer::add_tensor_f32(const std::string& name, std::vector<int64_t> ne, GGMLType type, const float* data) {
  if (ne.empty() || ne.size() > kMaxDims)
    throw GGUFError("tensor '" + name + "' has " + std::to_string(ne.size()) + " dims; GGUF allows 1 to 4");
  const uint64_t nbytes = tensor_nbytes(name, ne, type);
  const int64_t rows = ne[0] == 0 ? 0 : TensorInfo{name, ne, type, 0, 0}.n_elements() / ne[0];
  std::vector<uint8_t> buf(nbytes);
  try {
    quantize(type, data, buf.data(), rows, ne[0]);
  } catch (const std::invalid_argument& e) {
    throw GGUFError("tensor '" + name + "': " + e.what());
  }
  add_tensor(name, std::move(ne), type, buf.data(), buf.size());
}

void Writer::write(const std::string& path) const {
  Buffer head;
  head.u32(kMagic);
  head.u32(kVersion);
  head.u64(tensors_.size());
  head.u64(kv_.size());
  for (const auto& [key, value] : kv_) {
    head.str(key);
    put_value(head, value);
  }
  uint64_t offset = 0;
  for (const auto& t : tensors_) {
    head.str(t.info.name);
    head.u32(static_cast<uint32_t>(t.info.ne.size()));
    for (int64_t d : t.info.ne) head.u64(static_cast<uint64_t>(d));
    head.u32(static_cast<uint32_t>(t.info.type));
    head.u64(offset);
    offset += pad_to(t.data.size(), alignment_);
  }
  head.bytes.resize(pad_to(head.bytes.size(), alignment_), 0);

  TempFile out(path, fail_after_);
  out.write(head.bytes.data(), head.bytes.size());
  for (const auto& t : tensors_) {
    out.write(t.data.data(), t.data.size());
    out.zeros(pad_to(t.data.size(), alignment_) - t.data.size());
  }
  out.commit();
}

// ---- Reader ------------------------------------------------------------------------------------
Reader::Reader(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw IOError(errno, path, "cannot open");
  try {
    struct stat st;
    if (::fstat(fd_, &st) != 0) throw IOError(errno, path, "cannot stat");
    if (!S_ISREG(st.st_mode)) throw GGUFError("'" + path + "' is not a regular file");
    file_size_ = static_cast<uint64_t>(st.st_size);
    FileCursor c(fd_, path, file_size_);

    uint8_t magic[4];
    c.read(magic, 4, "magic");
    if (std::memcmp(magic, "GGUF", 4) != 0) {
      auto hex = [](uint8_t b) {
        const char* d = "0123456789abcdef";
        return std::string{'\\', 'x', d[b >> 4], d[b & 15]};
      };
      std::string got;
      for (uint8_t b : magic) got += (b >= 32 && b < 127) ? std::string(1, static_cast<char>(b)) : hex(b);
      throw GGUFError("not a GGUF file: magic is '" + got + "', expected 'GGUF'");
    }
    version_ = c.u32("version");
    if (version_ == 1) throw GGUFError("GGUF version 1 is not supported (only 2 and 3)");
    if (version_ == 0 || version_ > kVersion) {
      std::string msg = "unsupported GGUF version " + std::to_string(version_) + " (supported: 2, 3)";
      if ((version_ & 0xFFFF) == 0) msg += "; the file may have the other byte order";
      throw GGUFError(msg);
    }
    const uint64_t n_tensors = c.u64("tensor count");
    const uint64_t n_kv = c.u64("metadata count");
    // Each KV takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info at least 8 + 4 + 4 + 8.
    if (n_kv > c.remaining() / 13)
      throw GGUFError("truncated or corrupt file: " + std::to_string(n_kv) +
                      " metadata entries cannot fit in the remaining " + std::to_string(c.remaining()) + " bytes");
    if (n_tensors > c.remaining() / 24)
      throw GGUFError("truncated or corrupt file: " + std::to_string(n_tensors) +
                      " tensor infos cannot fit in the remaining " + std::to_string(c.remaining()) + " bytes");

    std::map<std::string, size_t> seen;
    for (uint64_t k = 0; k < n_kv; ++k) {
      std::string key = c.str("metadata key " + std::to_string(k));
      if (key.empty()) throw GGUFError("metadata key " + std::to_string(k) + " is empty");
      if (seen.count(key)) throw GGUFError("duplicate metadata " + where_key(key));
      Value v = read_value(c, key);
      seen[key] = kv_.size();
      kv_.emplace_back(std::move(key), std::move(v));
    }
    if (auto it = seen.find("general.alignment"); it != seen.end()) {
      const Value& v = kv_[it->second].second;
      if (v.type != ValueType::UINT32)
        throw GGUFError("key 'general.alignment' must be UINT32, not " + std::string(value_type_name(v.type)));
      if (v.u == 0 || (v.u & (v.u - 1)) != 0)
        throw GGUFError("general.alignment " + std::to_string(v.u) + " is not a power of two");
      alignment_ = static_cast<uint32_t>(v.u);
    }

    for (uint64_t k = 0; k < n_tensors; ++k) {
      TensorInfo info;
      info.name = c.str("tensor name " + std::to_string(k));
      if (info.name.size() > kMaxNameBytes)
        throw GGUFError("tensor " + std::to_string(k) + " name '" + info.name + "' is " +
                        std::to_string(info.name.size()) + " bytes; at most 63 are allowed");
      if (tensor_index_.count(info.name)) throw GGUFError("duplicate tensor name '" + info.name + "'");
      const std::string what = "tensor '" + info.name + "'";
      const uint32_t n_dims = c.u32(what + " dim count");
      if (n_dims > kMaxDims)
        throw GGUFError(what + " has " + std::to_string(n_dims) + " dims; at most 4 are allowed");
      for (uint32_t d = 0; d < n_dims; ++d) {
        const auto v = static_cast<int64_t>(c.u64(what + " dim " + std::to_string(d)));
        if (v < 0) throw GGUFError(what + ": dimension " + std::to_string(d) + " is negative");
        info.ne.push_back(v);
      }
      const uint32_t type_id = c.u32(what + " type");
      const TypeTraits* t = find_type(type_id);
      if (!t) throw GGUFError(what + " has unknown ggml type " + std::to_string(type_id));
      info.type = t->type;
      info.nbytes = tensor_nbytes(info.name, info.ne, info.type);
      info.offset = c.u64(what + " offset");
      tensor_index_[info.name] = tensors_.size();
      tensors_.push_back(std::move(info));
    }

    // ggml pads to the alignment only when there are tensors.
    data_offset_ = n_tensors > 0 ? pad_to(c.tell(), alignment_) : c.tell();
    if (data_offset_ > file_size_)
      throw GGUFError("truncated file: the data section starts at " + std::to_string(data_offset_) +
                      " but the file ends at " + std::to_string(file_size_));
    uint64_t expected = 0;
    for (const auto& t : tensors_) {
      if (t.offset != expected)
        throw GGUFError("tensor '" + t.name + "' has offset " + std::to_string(t.offset) + ", expected " +
                        std::to_string(expected) + " (data must be contiguous, in info order, padded to " +
                        std::to_string(alignment_) + ")");
      if (t.nbytes > file_size_ - data_offset_ || t.offset > file_size_ - data_offset_ - t.nbytes)
        throw GGUFError("truncated file: tensor '" + t.name + "' needs bytes up to offset " +
                        std::to_string(data_offset_ + t.offset + t.nbytes) + " but the file ends at " +
                        std::to_string(file_size_));
      expected += pad_to(t.nbytes, alignment_);
    }
  } catch (...) {
    ::close(fd_);
    fd_ = -1;
    throw;
  }
}

Reader::~Reader() {
  if (fd_ >= 0) ::close(fd_);
}

int64_t Reader::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? -1 : static_cast<int64_t>(it->second);
}

void Reader::read_tensor(size_t i, void* dst) const {
  if (i >= tensors_.size()) throw std::out_of_range("tensor index " + std::to_string(i) + " out of range");
  const TensorInfo& t = tensors_[i];
  auto* out = static_cast<uint8_t*>(dst);
  uint64_t pos = data_offset_ + t.offset, n = t.nbytes;
  while (n > 0) {
    const size_t chunk = n < (uint64_t{1} << 30) ? static_cast<size_t>(n) : (size_t{1} << 30);
    const ssize_t r = ::pread(fd_, out, chunk, static_cast<off_t>(pos));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IOError(errno, path_, "cannot read");
    }
    if (r == 0) throw GGUFError("truncated file: tensor '" + t.name + "' data ends early (file changed?)");
    out += r;
    pos += static_cast<uint64_t>(r);
    n -= static_cast<uint64_t>(r);
  }
}

std::vector<uint8_t> Reader::tensor_data(size_t i) const {
  if (i >= tensors_.size()) throw std::out_of_range("tensor index " + std::to_string(i) + " out of range");
  std::vector<uint8_t> buf(tensors_[i].nbytes);
  read_tensor(i, buf.data());
  return buf;
}

}  // namespace qat_export::gguf
