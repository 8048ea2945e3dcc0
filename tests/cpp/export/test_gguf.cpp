// GGUF v3 writer and reader: round trips, layout, rejection of corrupt files, atomic writes.
#include <gtest/gtest.h>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "qat_export/gguf.h"
#include "qat_export/quantize.h"

using namespace qat_export;
using namespace qat_export::gguf;

namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/qat_gguf_test_XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    for (const auto& f : files()) ::unlink((path_ + "/" + f).c_str());
    ::rmdir(path_.c_str());
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    if (DIR* d = ::opendir(path_.c_str())) {
      while (dirent* e = ::readdir(d))
        if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) out.push_back(e->d_name);
      ::closedir(d);
    }
    return out;
  }

 private:
  std::string path_;
};

std::vector<uint8_t> slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// An independent little-endian GGUF encoder for hand-made (and broken) files.
struct Bytes {
  std::vector<uint8_t> b;
  Bytes& raw(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
    return *this;
  }
  Bytes& u8(uint8_t v) { return raw(&v, 1); }
  Bytes& u32(uint32_t v) {
    for (int k = 0; k < 4; ++k) b.push_back(static_cast<uint8_t>(v >> (8 * k)));
    return *this;
  }
  Bytes& u64(uint64_t v) {
    for (int k = 0; k < 8; ++k) b.push_back(static_cast<uint8_t>(v >> (8 * k)));
    return *this;
  }
  Bytes& str(const std::string& s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    raw("GGUF", 4);
    u32(version);
    u64(n_tensors);
    return u64(n_kv);
  }
  Bytes& pad(size_t a) {
    while (b.size() % a) b.push_back(0);
    return *this;
  }
};

// One F32 tensor "t" of ne = {n}, data 0..n-1.
Bytes one_tensor_file(int64_t n, uint32_t type_id = 0, uint64_t offset = 0) {
  Bytes f;
  f.header(1, 0).str("t").u32(1).u64(static_cast<uint64_t>(n)).u32(type_id).u64(offset).pad(32);
  for (int64_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(i);
    f.raw(&v, 4);
  }
  return f;
}

void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& needle) {
  TempDir dir;
  const std::string p = dir.file("bad.gguf");
  spit(p, bytes);
  try {
    Reader r(p);
    FAIL() << "accepted a corrupt file (expected an error mentioning '" << needle << "')";
  } catch (const GGUFError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

Value array_of_u(ValueType t, std::vector<uint64_t> v) {
  Value a;
  a.type = ValueType::ARRAY;
  a.elem_type = t;
  a.u_items = std::move(v);
  return a;
}

}  // namespace

TEST(GGUFWriter, RoundTripEveryValueTypeAndTensors) {
  TempDir dir;
  Writer w;
  w.set("general.architecture", Value::make_string("llama"));
  w.set("u8", Value::make_uint(ValueType::UINT8, 255));
  w.set("i8", Value::make_int(ValueType::INT8, -128));
  w.set("u16", Value::make_uint(ValueType::UINT16, 65535));
  w.set("i16", Value::make_int(ValueType::INT16, -32768));
  w.set("u32", Value::make_uint(ValueType::UINT32, 4294967295u));
  w.set("i32", Value::make_int(ValueType::INT32, -2147483647 - 1));
  w.set("f32", Value::make_float(ValueType::FLOAT32, 1e-5));
  w.set("bool", Value::make_bool(true));
  w.set("u64", Value::make_uint(ValueType::UINT64, ~uint64_t{0}));
  w.set("i64", Value::make_int(ValueType::INT64, INT64_MIN));
  w.set("f64", Value::make_float(ValueType::FLOAT64, M_PI));
  w.set("utf8", Value::make_string("h\xc3\xa9llo \xe2\x96\x81world"));
  w.set("empty", Value::make_string(""));
  Value strings;
  strings.type = ValueType::ARRAY;
  strings.elem_type = ValueType::STRING;
  strings.s_items = {"<s>", "</s>", "", "\xe2\x96\x81the"};
  w.set("tokenizer.ggml.tokens", strings);
  Value floats;
  floats.type = ValueType::ARRAY;
  floats.elem_type = ValueType::FLOAT32;
  floats.f_items = {0.0, -1.5, 3.25};
  w.set("tokenizer.ggml.scores", floats);
  Value ints;
  ints.type = ValueType::ARRAY;
  ints.elem_type = ValueType::INT32;
  ints.i_items = {1, 3, 6, -7};
  w.set("tokenizer.ggml.token_type", ints);
  w.set("bools", array_of_u(ValueType::BOOL, {1, 0, 1}));
  w.set("u8s", array_of_u(ValueType::UINT8, {}));

  std::vector<float> a(2 * 512), c(7);
  for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(static_cast<float>(i));
  for (size_t i = 0; i < c.size(); ++i) c[i] = static_cast<float>(i) - 3;
  w.add_tensor_f32("blk.0.attn_q.weight", {512, 2}, GGMLType::Q4_K, a.data());
  w.add_tensor_f32("blk.0.ffn_up.weight", {512, 2}, GGMLType::Q8_0, a.data());
  w.add_tensor_f32("output_norm.weight", {7}, GGMLType::F32, c.data());
  w.add_tensor_f32("x.3d", {32, 2, 2, 1}, GGMLType::F16, a.data());
  const std::string path = dir.file("model.gguf");
  w.write(path);

  Reader r(path);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.alignment(), 32u);
  EXPECT_EQ(r.data_offset() % 32, 0u);
  ASSERT_EQ(r.metadata().size(), w.n_kv());
  EXPECT_EQ(r.metadata()[0].first, "general.architecture");
  EXPECT_EQ(r.metadata()[0].second.s, "llama");
  EXPECT_EQ(r.metadata()[1].second.u, 255u);
  EXPECT_EQ(r.metadata()[2].second.i, -128);
  EXPECT_EQ(r.metadata()[7].second.f, static_cast<double>(1e-5f));  // stored as float32
  EXPECT_EQ(r.metadata()[10].second.i, INT64_MIN);
  EXPECT_EQ(r.metadata()[14].second, strings);
  EXPECT_EQ(r.metadata()[15].second, floats);
  EXPECT_EQ(r.metadata()[16].second, ints);
  EXPECT_EQ(r.metadata()[18].second.array_size(), 0u);

  ASSERT_EQ(r.tensors().size(), 4u);
  const auto& t0 = r.tensors()[0];
  EXPECT_EQ(t0.name, "blk.0.attn_q.weight");
  EXPECT_EQ(t0.ne, (std::vector<int64_t>{512, 2}));
  EXPECT_EQ(t0.type, GGMLType::Q4_K);
  EXPECT_EQ(t0.nbytes, 2u * 288u);
  EXPECT_EQ(r.tensors()[3].ne, (std::vector<int64_t>{32, 2, 2, 1}));
  uint64_t expected_offset = 0;
  for (const auto& t : r.tensors()) {
    EXPECT_EQ(t.offset, expected_offset) << t.name;
    expected_offset += (t.nbytes + 31) / 32 * 32;
  }
  EXPECT_EQ(r.file_size(), r.data_offset() + expected_offset);  // padded after the last tensor too

  std::vector<uint8_t> q(2 * 288);
  quantize(GGMLType::Q4_K, a.data(), q.data(), 2, 512);
  EXPECT_EQ(r.tensor_data(0), q);
  const auto f32 = r.tensor_data(2);
  EXPECT_EQ(0, std::memcmp(f32.data(), c.data(), 28));
  EXPECT_EQ(r.find_tensor("output_norm.weight"), 2);
  EXPECT_EQ(r.find_tensor("nope"), -1);
}

TEST(GGUFWriter, CustomAlignmentAndEmptyFile) {
  TempDir dir;
  Writer w;
  w.set("general.alignment", Value::make_uint(ValueType::UINT32, 64));
  std::vector<float> x(32, 1.0f);
  w.add_tensor_f32("a", {32}, GGMLType::Q8_0, x.data());
  w.add_tensor_f32("b", {32}, GGMLType::Q8_0, x.data());
  w.write(dir.file("a.gguf"));
  Reader r(dir.file("a.gguf"));
  EXPECT_EQ(r.alignment(), 64u);
  EXPECT_EQ(r.data_offset() % 64, 0u);
  EXPECT_EQ(r.tensors()[1].offset, 64u);

  Writer empty;
  empty.write(dir.file("empty.gguf"));
  Reader e(dir.file("empty.gguf"));
  EXPECT_EQ(e.tensors().size(), 0u);
  EXPECT_EQ(e.metadata().size(), 0u);
}

TEST(GGUFWriter, RejectsBadInput) {
  Writer w;
  std::vector<float> x(512, 1.0f);
  std::vector<uint8_t> q(1024);
  EXPECT_THROW(w.add_tensor_f32(std::string(64, 'n'), {32}, GGMLType::F32, x.data()), GGUFError);
  EXPECT_NO_THROW(w.add_tensor_f32(std::string(63, 'n'), {32}, GGMLType::F32, x.data()));
  EXPECT_THROW(w.add_tensor_f32(std::string(63, 'n'), {32}, GGMLType::F32, x.data()), GGUFError);  // duplicate
  EXPECT_THROW(w.add_tensor_f32("k", {100, 2}, GGMLType::Q4_K, x.data()), GGUFError);           // 100 % 256
  EXPECT_THROW(w.add_tensor_f32("k", {}, GGMLType::F32, x.data()), GGUFError);
  EXPECT_THROW(w.add_tensor_f32("k", {1, 1, 1, 1, 1}, GGMLType::F32, x.data()), GGUFError);
  EXPECT_THROW(w.add_tensor("k", {32}, GGMLType::Q8_0, q.data(), 35), GGUFError);                 // 34 needed
  EXPECT_THROW(w.add_tensor("k", {32}, GGMLType::IQ2_XXS, q.data(), 66), GGUFError);              // ne0 % 256
  EXPECT_NO_THROW(w.add_tensor("iq2", {256}, GGMLType::IQ2_XXS, q.data(), 66));                   // raw bytes are fine
  std::vector<float> nan(32, 0.0f);
  nan[3] = NAN;
  EXPECT_THROW(w.add_tensor_f32("nan", {32}, GGMLType::Q8_0, nan.data()), GGUFError);

  w.set("a", Value::make_uint(ValueType::UINT8, 1));
  EXPECT_THROW(w.set("a", Value::make_uint(ValueType::UINT8, 1)), GGUFError);
  EXPECT_THROW(w.set("", Value::make_uint(ValueType::UINT8, 1)), GGUFError);
  EXPECT_THROW(w.set("b", Value::make_uint(ValueType::UINT8, 256)), GGUFError);
  EXPECT_THROW(w.set("b", Value::make_int(ValueType::INT16, 40000)), GGUFError);
  EXPECT_THROW(w.set("b", Value::make_uint(ValueType::BOOL, 2)), GGUFError);
  EXPECT_THROW(w.set("b", Value::make_float(ValueType::FLOAT32, 1e300)), GGUFError);
  EXPECT_THROW(w.set("general.alignment", Value::make_uint(ValueType::UINT32, 48)), GGUFError);
  EXPECT_THROW(w.set("general.alignment", Value::make_uint(ValueType::UINT64, 64)), GGUFError);
  Value nested;
  nested.type = ValueType::ARRAY;
  nested.elem_type = ValueType::ARRAY;
  EXPECT_THROW(w.set("nested", nested), GGUFError);
  EXPECT_THROW(w.set("arr", array_of_u(ValueType::UINT8, {1, 300})), GGUFError);
}

TEST(GGUFWriter, AtomicWriteLeavesNothingBehindOnFailure) {
  TempDir dir;
  std::vector<float> x(4096, 0.5f);
  Writer w;
  w.set("general.architecture", Value::make_string("llama"));
  w.add_tensor_f32("w", {256, 16}, GGMLType::Q4_K, x.data());
  const std::string path = dir.file("out.gguf");
  for (int64_t cut : {0, 10, 100, 1000, 2000}) {
    w.fail_after_bytes_for_testing(cut);
    EXPECT_THROW(w.write(path), IOError);
    EXPECT_FALSE(exists(path)) << cut;
    EXPECT_TRUE(dir.files().empty()) << "temporary file left behind at cut " << cut;
  }
  // A failed overwrite leaves the previous file intact.
  Writer good;
  good.set("k", Value::make_string("previous"));
  good.write(path);
  const auto before = slurp(path);
  w.fail_after_bytes_for_testing(500);
  EXPECT_THROW(w.write(path), IOError);
  EXPECT_EQ(slurp(path), before);
  EXPECT_EQ(dir.files().size(), 1u);
  w.fail_after_bytes_for_testing(-1);
  w.write(path);
  EXPECT_EQ(Reader(path).tensors().size(), 1u);
  EXPECT_THROW(w.write(dir.file("no/such/dir/x.gguf")), IOError);
}

TEST(GGUFReader, ReadsAHandWrittenFile) {
  TempDir dir;
  Bytes f = one_tensor_file(8);
  spit(dir.file("h.gguf"), f.b);
  Reader r(dir.file("h.gguf"));
  ASSERT_EQ(r.tensors().size(), 1u);
  const auto d = r.tensor_data(0);
  float v[8];
  std::memcpy(v, d.data(), 32);
  EXPECT_EQ(v[7], 7.0f);
  // Version 2 has the same layout.
  f.b[4] = 2;
  spit(dir.file("v2.gguf"), f.b);
  EXPECT_EQ(Reader(dir.file("v2.gguf")).version(), 2u);
}

TEST(GGUFReader, RejectsCorruptFiles) {
  {
    Bytes f = one_tensor_file(8);
    f.b[0] = 'X';
    expect_rejected(f.b, "magic");
  }
  for (uint32_t v : {0u, 1u, 4u}) {
    Bytes f = one_tensor_file(8);
    f.b[4] = static_cast<uint8_t>(v);
    expect_rejected(f.b, "version");
  }
  {
    Bytes f = one_tensor_file(8);
    f.b[4] = 0;
    f.b[7] = 3;  // 0x03000000: a big-endian v3
    expect_rejected(f.b, "byte order");
  }
  expect_rejected(one_tensor_file(8, /*type*/ 4).b, "unknown ggml type 4");
  expect_rejected(one_tensor_file(8, /*type*/ 99).b, "unknown ggml type 99");
  expect_rejected(one_tensor_file(8, /*Q8_0*/ 8).b, "not a multiple of the block size");
  expect_rejected(one_tensor_file(8, 0, /*offset*/ 32).b, "offset");
  {
    Bytes f;
    f.header(0, 1).str("k").u32(13).u8(0);
    expect_rejected(f.b, "unknown value type 13");
  }
  {
    Bytes f;
    f.header(0, 2).str("k").u32(0).u8(1).str("k").u32(0).u8(2);
    expect_rejected(f.b, "duplicate metadata key 'k'");
  }
  {
    Bytes f;
    f.header(0, 1).str("").u32(0).u8(1);
    expect_rejected(f.b, "empty");
  }
  {
    Bytes f;
    f.header(0, 1).str("b").u32(7).u8(2);
    expect_rejected(f.b, "BOOL");
  }
  {
    Bytes f;
    f.header(0, 1).str("a").u32(9).u32(9).u64(1);
    expect_rejected(f.b, "nested arrays");
  }
  {
    Bytes f;
    f.header(0, 1).str("general.alignment").u32(10).u64(64);
    expect_rejected(f.b, "must be UINT32");
  }
  {
    Bytes f;
    f.header(0, 1).str("general.alignment").u32(4).u32(24);
    expect_rejected(f.b, "power of two");
  }
  {
    Bytes f;
    f.header(2, 0);
    for (int k = 0; k < 2; ++k) f.str("same").u32(1).u64(8).u32(0).u64(k * 32);
    f.pad(32);
    for (int k = 0; k < 16; ++k) f.u32(0);
    expect_rejected(f.b, "duplicate tensor name 'same'");
  }
  {
    Bytes f;
    f.header(1, 0).str(std::string(64, 'x')).u32(1).u64(8).u32(0).u64(0).pad(32);
    for (int k = 0; k < 8; ++k) f.u32(0);
    expect_rejected(f.b, "at most 63");
  }
  {
    Bytes f;
    f.header(1, 0).str("t").u32(5);
    for (int k = 0; k < 5; ++k) f.u64(1);
    f.u32(0).u64(0).pad(32).u32(0);
    expect_rejected(f.b, "at most 4");
  }
  {
    Bytes f;
    f.header(0, 1).str("s").u32(8).u64(1ull << 40);
    expect_rejected(f.b, "exceeds");
  }
  {
    Bytes f;
    f.header(1000000, 0);
    expect_rejected(f.b, "cannot fit");
  }
  {
    Bytes f;
    f.header(0, 1).str("a").u32(9).u32(4).u64(1000);  // 1000 UINT32 in 0 bytes
    expect_rejected(f.b, "truncated");
  }
}

TEST(GGUFReader, EveryTruncationIsAnError) {
  TempDir dir;
  Writer w;
  w.set("general.architecture", Value::make_string("llama"));
  Value toks;
  toks.type = ValueType::ARRAY;
  toks.elem_type = ValueType::STRING;
  toks.s_items = {"a", "bb", "ccc"};
  w.set("tokenizer.ggml.tokens", toks);
  std::vector<float> x(512, 0.25f);
  w.add_tensor_f32("a", {256}, GGMLType::Q6_K, x.data());
  w.add_tensor_f32("b", {64}, GGMLType::F32, x.data());  // 256 bytes: no padding after it
  const std::string full = dir.file("full.gguf");
  w.write(full);
  const auto bytes = slurp(full);
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string p = dir.file("cut.gguf");
    spit(p, cut);
    try {
      Reader r(p);
      ADD_FAILURE() << "accepted a file truncated to " << n << " of " << bytes.size() << " bytes";
    } catch (const GGUFError& e) {
      if (n >= 4) EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << n << ": " << e.what();
    }
  }
}

TEST(GGUFReader, MissingFileIsAnIOError) {
  try {
    Reader r("/nonexistent/file.gguf");
    FAIL();
  } catch (const IOError& e) {
    EXPECT_EQ(e.err, ENOENT);
  }
}
