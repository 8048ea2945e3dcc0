// The ggml type table and the packed GGUF block layouts (shared/specs/formats.md §2).
//
// Torch-free. The type table is append-only: ids are ggml's `enum ggml_type` values and never
// change meaning; a type is added at the end, never renumbered. Every block struct is a plain
// packed layout with a static_assert on its size, so a layout mistake fails the build.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace qat_export {

constexpr int QK_K = 256;          // K-quant super-block
constexpr int K_SCALE_SIZE = 12;   // packed 6-bit scales/mins of Q4_K/Q5_K
constexpr int QK_LEGACY = 32;      // Q4_0 .. Q8_0, IQ4_NL

// ggml_type ids (formats.md §2.1). Append only.
enum class GGMLType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  // 4, 5: Q4_2, Q4_3 (removed from ggml)
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  // 31-33: Q4_0_4_4, Q4_0_4_8, Q4_0_8_8 (repacked, no longer in GGUF files)
  TQ1_0 = 34,
  TQ2_0 = 35,
  // 36-38: IQ4_NL_4_4, IQ4_NL_4_8, IQ4_NL_8_8 (repacked, no longer in GGUF files)
  MXFP4 = 39,
  NVFP4 = 40,
  Q1_0 = 41,
  Q2_0 = 42,
};

struct TypeTraits {
  GGMLType type;
  const char* name;
  int64_t block_size;   // elements per block
  int64_t type_size;    // bytes per block
  bool supported;       // this library quantizes and dequantizes it
};

// The whole table, in id order (only ids that GGUF files may carry).
const TypeTraits* type_table(size_t* count);
// nullptr when `id` is not a ggml type id that GGUF files may carry.
const TypeTraits* find_type(uint32_t id);
// Case-sensitive ggml name ("Q4_K", "F32", ...); nullptr when unknown.
const TypeTraits* find_type(std::string_view name);
// Throws std::invalid_argument naming the supported types when unknown.
const TypeTraits& type_traits(GGMLType type);

// Bytes of `n_elements` of `type` laid out as whole blocks; throws std::invalid_argument when
// n_elements is not a multiple of the block size.
size_t row_size(GGMLType type, int64_t n_elements);

// ---- packed block layouts -----------------------------------------------------------------
// ggml_half is an IEEE binary16 bit pattern, little-endian like every field below.
using half_bits = uint16_t;

#pragma pack(push, 1)
struct block_q4_0 {
  half_bits d;
  uint8_t qs[QK_LEGACY / 2];  // element j: low nibble of qs[j]; element j+16: high nibble
};
static_assert(sizeof(block_q4_0) == 18, "block_q4_0 size");

struct block_q4_1 {
  half_bits d;
  half_bits m;
  uint8_t qs[QK_LEGACY / 2];
};
static_assert(sizeof(block_q4_1) == 20, "block_q4_1 size");

struct block_q5_0 {
  half_bits d;
  uint8_t qh[4];  // bit j = bit 4 of element j (little-endian u32)
  uint8_t qs[QK_LEGACY / 2];
};
static_assert(sizeof(block_q5_0) == 22, "block_q5_0 size");

struct block_q5_1 {
  half_bits d;
  half_bits m;
  uint8_t qh[4];
  uint8_t qs[QK_LEGACY / 2];
};
static_assert(sizeof(block_q5_1) == 24, "block_q5_1 size");

struct block_q8_0 {
  half_bits d;
  int8_t qs[QK_LEGACY];
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 size");

struct block_iq4_nl {
  half_bits d;
  uint8_t qs[QK_LEGACY / 2];  // nibble = index into kvalues_iq4nl, packed like Q4_0
};
static_assert(sizeof(block_iq4_nl) == 18, "block_iq4_nl size");

struct block_q2_K {
  uint8_t scales[QK_K / 16];  // low nibble: scale, high nibble: min
  uint8_t qs[QK_K / 4];       // 2-bit planes
  half_bits d;
  half_bits dmin;
};
static_assert(sizeof(block_q2_K) == 84, "block_q2_K size");

struct block_q3_K {
  uint8_t hmask[QK_K / 8];  // high bit of the 3-bit quant
  uint8_t qs[QK_K / 4];     // low 2 bits
  uint8_t scales[12];       // 16 signed 6-bit scales, biased by 32
  half_bits d;
};
static_assert(sizeof(block_q3_K) == 110, "block_q3_K size");

struct block_q4_K {
  half_bits d;
  half_bits dmin;
  uint8_t scales[K_SCALE_SIZE];  // 8 6-bit scales and 8 6-bit mins
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "block_q4_K size");

struct block_q5_K {
  half_bits d;
  half_bits dmin;
  uint8_t scales[K_SCALE_SIZE];
  uint8_t qh[QK_K / 8];
  uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "block_q5_K size");

struct block_q6_K {
  uint8_t ql[QK_K / 2];     // low 4 bits
  uint8_t qh[QK_K / 4];     // high 2 bits
  int8_t scales[QK_K / 16]; // signed 8-bit sub-block scales
  half_bits d;
};
static_assert(sizeof(block_q6_K) == 210, "block_q6_K size");
#pragma pack(pop)

// The IQ4_NL codebook (ggml-common.h kvalues_iq4nl).
inline constexpr int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                             1,    13,   25,  38,  53,  69,  89,  113};

}  // namespace qat_export
