#include "qat_export/types.h"

#include <stdexcept>
#include <string>

namespace qat_export {
namespace {

// formats.md §2.1 and ggml's type traits (ggml.c), in id order. Append only.
constexpr TypeTraits kTypes[] = {
    {GGMLType::F32, "F32", 1, 4, true},
    {GGMLType::F16, "F16", 1, 2, true},
    {GGMLType::Q4_0, "Q4_0", 32, 18, true},
    {GGMLType::Q4_1, "Q4_1", 32, 20, true},
    {GGMLType::Q5_0, "Q5_0", 32, 22, true},
    {GGMLType::Q5_1, "Q5_1", 32, 24, true},
    {GGMLType::Q8_0, "Q8_0", 32, 34, true},
    {GGMLType::Q8_1, "Q8_1", 32, 36, false},
    {GGMLType::Q2_K, "Q2_K", 256, 84, true},
    {GGMLType::Q3_K, "Q3_K", 256, 110, true},
    {GGMLType::Q4_K, "Q4_K", 256, 144, true},
    {GGMLType::Q5_K, "Q5_K", 256, 176, true},
    {GGMLType::Q6_K, "Q6_K", 256, 210, true},
    {GGMLType::Q8_K, "Q8_K", 256, 292, false},
    {GGMLType::IQ2_XXS, "IQ2_XXS", 256, 66, false},
    {GGMLType::IQ2_XS, "IQ2_XS", 256, 74, false},
    {GGMLType::IQ3_XXS, "IQ3_XXS", 256, 98, false},
    {GGMLType::IQ1_S, "IQ1_S", 256, 50, false},
    {GGMLType::IQ4_NL, "IQ4_NL", 32, 18, true},
    {GGMLType::IQ3_S, "IQ3_S", 256, 110, false},
    {GGMLType::IQ2_S, "IQ2_S", 256, 82, false},
    {GGMLType::IQ4_XS, "IQ4_XS", 256, 136, false},
    {GGMLType::I8, "I8", 1, 1, false},
    {GGMLType::I16, "I16", 1, 2, false},
    {GGMLType::I32, "I32", 1, 4, false},
    {GGMLType::I64, "I64", 1, 8, false},
    {GGMLType::F64, "F64", 1, 8, false},
    {GGMLType::IQ1_M, "IQ1_M", 256, 56, false},
    {GGMLType::BF16, "BF16", 1, 2, true},
    {GGMLType::TQ1_0, "TQ1_0", 256, 54, false},
    {GGMLType::TQ2_0, "TQ2_0", 256, 66, false},
    {GGMLType::MXFP4, "MXFP4", 32, 17, false},
    {GGMLType::NVFP4, "NVFP4", 64, 36, false},
    {GGMLType::Q1_0, "Q1_0", 128, 18, false},
    {GGMLType::Q2_0, "Q2_0", 64, 18, false},
};

constexpr bool ids_increase() {
  for (size_t i = 1; i < sizeof(kTypes) / sizeof(kTypes[0]); ++i)
    if (static_cast<uint32_t>(kTypes[i].type) <= static_cast<uint32_t>(kTypes[i - 1].type)) return false;
  return true;
}
static_assert(ids_increase(), "the type table is kept in id order");

}  // namespace

const TypeTraits* type_table(size_t* count) {
  *count = sizeof(kTypes) / sizeof(kTypes[0]);
  return kTypes;
}

const TypeTraits* find_type(uint32_t id) {
  for (const auto& t : kTypes)
    if (static_cast<uint32_t>(t.type) == id) return &t;
  return nullptr;
}

const TypeTraits* find_type(std::string_view name) {
  for (const auto& t : kTypes)
    if (name == t.name) return &t;
  return nullptr;
}

const TypeTraits& type_traits(GGMLType type) {
  const TypeTraits* t = find_type(static_cast<uint32_t>(type));
  if (!t) throw std::invalid_argument("unknown ggml type id " + std::to_string(static_cast<uint32_t>(type)));
  return *t;
}

size_t row_size(GGMLType type, int64_t n_elements) {
  const TypeTraits& t = type_traits(type);
  if (n_elements < 0 || n_elements % t.block_size != 0)
    throw std::invalid_argument(std::string(t.name) + ": row length " + std::to_string(n_elements) +
                                " is not a multiple of the block size " + std::to_string(t.block_size));
  return static_cast<size_t>(n_elements / t.block_size) * static_cast<size_t>(t.type_size);
}

}  // namespace qat_export
