// Type-generic quantize / dequantize over whole rows.
#include <cmath>
#include <stdexcept>
#include <string>

#include "qat_export/quantize.h"

namespace qat_export {
namespace {

[[noreturn]] void unsupported(const TypeTraits& t) {
  std::string names;
  size_t n = 0;
  const TypeTraits* table = type_table(&n);
  for (size_t i = 0; i < n; ++i)
    if (table[i].supported) names += (names.empty() ? "" : ", ") + std::string(table[i].name);
  throw std::invalid_argument(std::string("ggml type ") + t.name + " is not supported (supported: " + names + ")");
}

void quantize_row(GGMLType type, const float* x, void* y, int64_t k) {
  switch (type) {
    case GGMLType::F32: return quantize_row_f32(x, static_cast<float*>(y), k);
    case GGMLType::F16: return quantize_row_f16(x, static_cast<uint16_t*>(y), k);
    case GGMLType::BF16: return quantize_row_bf16(x, static_cast<uint16_t*>(y), k);
    case GGMLType::Q4_0: return quantize_row_q4_0_ref(x, static_cast<block_q4_0*>(y), k);
    case GGMLType::Q4_1: return quantize_row_q4_1_ref(x, static_cast<block_q4_1*>(y), k);
    case GGMLType::Q5_0: return quantize_row_q5_0_ref(x, static_cast<block_q5_0*>(y), k);
    case GGMLType::Q5_1: return quantize_row_q5_1_ref(x, static_cast<block_q5_1*>(y), k);
    case GGMLType::Q8_0: return quantize_row_q8_0_ref(x, static_cast<block_q8_0*>(y), k);
    case GGMLType::Q2_K: return quantize_row_q2_K_ref(x, static_cast<block_q2_K*>(y), k);
    case GGMLType::Q3_K: return quantize_row_q3_K_ref(x, static_cast<block_q3_K*>(y), k);
    case GGMLType::Q4_K: return quantize_row_q4_K_ref(x, static_cast<block_q4_K*>(y), k);
    case GGMLType::Q5_K: return quantize_row_q5_K_ref(x, static_cast<block_q5_K*>(y), k);
    case GGMLType::Q6_K: return quantize_row_q6_K_ref(x, static_cast<block_q6_K*>(y), k);
    case GGMLType::IQ4_NL: return quantize_iq4_nl(x, static_cast<block_iq4_nl*>(y), k);
    default: unsupported(type_traits(type));
  }
}

}  // namespace

size_t quantize(GGMLType type, const float* src, void* dst, int64_t nrows, int64_t n_per_row) {
  const TypeTraits& t = type_traits(type);
  if (!t.supported) unsupported(t);
  if (nrows < 0) throw std::invalid_argument("negative row count");
  const size_t row_bytes = row_size(type, n_per_row);  // checks the block multiple
  if (t.block_size > 1) {
    const int64_t n = nrows * n_per_row;
    for (int64_t i = 0; i < n; ++i) {
      if (!std::isfinite(src[i]))
        throw std::invalid_argument(std::string(t.name) + ": input element " + std::to_string(i) + " (row " +
                                    std::to_string(i / n_per_row) + ") is " + (std::isnan(src[i]) ? "NaN" : "inf") +
                                    "; block types cannot encode non-finite values");
    }
  }
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t r = 0; r < nrows; ++r) quantize_row(type, src + r * n_per_row, out + r * row_bytes, n_per_row);
  return static_cast<size_t>(nrows) * row_bytes;
}

void dequantize(GGMLType type, const void* src, float* dst, int64_t n) {
  const TypeTraits& t = type_traits(type);
  if (!t.supported) unsupported(t);
  row_size(type, n);  // checks the block multiple
  switch (type) {
    case GGMLType::F32: return dequantize_row_f32(static_cast<const float*>(src), dst, n);
    case GGMLType::F16: return dequantize_row_f16(static_cast<const uint16_t*>(src), dst, n);
    case GGMLType::BF16: return dequantize_row_bf16(static_cast<const uint16_t*>(src), dst, n);
    case GGMLType::Q4_0: return dequantize_row_q4_0(static_cast<const block_q4_0*>(src), dst, n);
    case GGMLType::Q4_1: return dequantize_row_q4_1(static_cast<const block_q4_1*>(src), dst, n);
    case GGMLType::Q5_0: return dequantize_row_q5_0(static_cast<const block_q5_0*>(src), dst, n);
    case GGMLType::Q5_1: return dequantize_row_q5_1(static_cast<const block_q5_1*>(src), dst, n);
    case GGMLType::Q8_0: return dequantize_row_q8_0(static_cast<const block_q8_0*>(src), dst, n);
    case GGMLType::Q2_K: return dequantize_row_q2_K(static_cast<const block_q2_K*>(src), dst, n);
    case GGMLType::Q3_K: return dequantize_row_q3_K(static_cast<const block_q3_K*>(src), dst, n);
    case GGMLType::Q4_K: return dequantize_row_q4_K(static_cast<const block_q4_K*>(src), dst, n);
    case GGMLType::Q5_K: return dequantize_row_q5_K(static_cast<const block_q5_K*>(src), dst, n);
    case GGMLType::Q6_K: return dequantize_row_q6_K(static_cast<const block_q6_K*>(src), dst, n);
    case GGMLType::IQ4_NL: return dequantize_row_iq4_nl(static_cast<const block_iq4_nl*>(src), dst, n);
    default: unsupported(t);
  }
}

}  // namespace qat_export
