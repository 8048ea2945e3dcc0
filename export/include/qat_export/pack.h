// The bit layout of the GGUF lattice types, with no rounding math: codes and stored parameters
// in, block bytes out (pack), and back (unpack). QAT writes what its fake-quant forward used
// through pack; unpack reads a reference quantizer's choice back as the starting parameters.
//
// Torch-free. Field meanings (shared/specs/formats.md §2.3, §2.4), per block:
//   codes   the stored code of every element: Q4_0/Q4_1/IQ4_NL/Q4_K [0, 15], Q5_0/Q5_1/Q5_K
//           [0, 31], Q2_K [0, 3], Q3_K [0, 7] (value - (-4)), Q6_K [0, 63] (value + 32),
//           Q8_0 the signed int8 itself
//   d       fp16 bits of the block / super-block scale
//   dmin    fp16 bits: Q4_1/Q5_1 the block minimum m, Q2_K/Q4_K/Q5_K the min scale
//   scales  K-quant sub-block scales as signed values: Q2_K [0, 15], Q3_K [-32, 31] (stored
//           biased by 32), Q4_K/Q5_K [0, 63], Q6_K [-128, 127]
//   mins    Q2_K [0, 15], Q4_K/Q5_K [0, 63]
#pragma once

#include <cstdint>

#include "qat_export/types.h"

namespace qat_export {

struct LatticeLayout {
  GGMLType type;
  int block;       // elements per block
  int n_sub;       // sub-blocks with their own scale (0 for the 32-element types)
  bool has_dmin;   // Q4_1/Q5_1 m, Q2_K/Q4_K/Q5_K dmin
  bool has_mins;   // Q2_K/Q4_K/Q5_K sub-block mins
  int code_min, code_max;
  int scale_min, scale_max;  // K-quants
  int min_max;               // Q2_K/Q4_K/Q5_K
};

// nullptr when `type` is not one of Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL.
const LatticeLayout* lattice_layout(GGMLType type);

// Read-only fields of n_blocks blocks; arrays the type lacks are ignored (may be nullptr).
struct PackFields {
  const int8_t* codes;     // [n_blocks * block]
  const uint16_t* d;       // [n_blocks]
  const uint16_t* dmin;    // [n_blocks]
  const int8_t* scales;    // [n_blocks * n_sub]
  const int8_t* mins;      // [n_blocks * n_sub]
};

struct UnpackFields {
  int8_t* codes;
  uint16_t* d;
  uint16_t* dmin;
  int8_t* scales;
  int8_t* mins;
};

// Writes n_blocks * type_size bytes. Throws std::invalid_argument for a type that is not a
// lattice type, a missing field, or a code / scale / min outside its range (naming the index).
void pack(GGMLType type, const PackFields& f, int64_t n_blocks, void* dst);

// The inverse of pack: every field the type has is written.
void unpack(GGMLType type, const void* src, int64_t n_blocks, const UnpackFields& f);

}  // namespace qat_export
