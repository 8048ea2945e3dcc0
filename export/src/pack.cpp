// Bit layout of the lattice types (pack.h): the same placements the reference quantizers in
// quants_legacy.cpp / quants_k.cpp write and the dequantizers read.
#include "qat_export/pack.h"

#include <cstring>
#include <stdexcept>
#include <string>

namespace qat_export {
namespace {

constexpr LatticeLayout kLayouts[] = {
    {GGMLType::Q4_0, 32, 0, false, false, 0, 15, 0, 0, 0},
    {GGMLType::Q4_1, 32, 0, true, false, 0, 15, 0, 0, 0},
    {GGMLType::Q5_0, 32, 0, false, false, 0, 31, 0, 0, 0},
    {GGMLType::Q5_1, 32, 0, true, false, 0, 31, 0, 0, 0},
    {GGMLType::Q8_0, 32, 0, false, false, -128, 127, 0, 0, 0},
    {GGMLType::Q2_K, 256, 16, true, true, 0, 3, 0, 15, 15},
    {GGMLType::Q3_K, 256, 16, false, false, 0, 7, -32, 31, 0},
    {GGMLType::Q4_K, 256, 8, true, true, 0, 15, 0, 63, 63},
    {GGMLType::Q5_K, 256, 8, true, true, 0, 31, 0, 63, 63},
    {GGMLType::Q6_K, 256, 16, false, false, 0, 63, -128, 127, 0},
    {GGMLType::IQ4_NL, 32, 0, false, false, 0, 15, 0, 0, 0},
};

[[noreturn]] void out_of_range(const LatticeLayout& l, const char* what, int64_t index, int value, int lo, int hi) {
  throw std::invalid_argument(std::string("pack ") + type_traits(l.type).name + ": " + what + "[" +
                              std::to_string(index) + "] = " + std::to_string(value) + " is outside [" +
                              std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

void check_fields(const LatticeLayout& l, const PackFields& f, int64_t n_blocks) {
  const char* name = type_traits(l.type).name;
  auto need = [&](const void* p, const char* what) {
    if (p == nullptr) throw std::invalid_argument(std::string("pack ") + name + ": missing " + what);
  };
  need(f.codes, "codes");
  need(f.d, "d");
  if (l.has_dmin) need(f.dmin, "dmin");
  if (l.n_sub > 0) need(f.scales, "scales");
  if (l.has_mins) need(f.mins, "mins");
  for (int64_t i = 0; i < n_blocks * l.block; ++i)
    if (f.codes[i] < l.code_min || f.codes[i] > l.code_max) out_of_range(l, "codes", i, f.codes[i], l.code_min, l.code_max);
  for (int64_t i = 0; i < n_blocks * l.n_sub; ++i) {
    if (f.scales[i] < l.scale_min || f.scales[i] > l.scale_max)
      out_of_range(l, "scales", i, f.scales[i], l.scale_min, l.scale_max);
    if (l.has_mins && (f.mins[i] < 0 || f.mins[i] > l.min_max)) out_of_range(l, "mins", i, f.mins[i], 0, l.min_max);
  }
}

inline uint8_t u8(int v) { return static_cast<uint8_t>(v); }

// ---- shared placements ----------------------------------------------------------------------
// 32-element types: element j -> low nibble of qs[j], element j + 16 -> high nibble.
void put_nibbles32(const int8_t* c, uint8_t* qs) {
  for (int j = 0; j < 16; ++j) qs[j] = u8((c[j] & 0xF) | ((c[j + 16] & 0xF) << 4));
}
int get_nibble32(const uint8_t* qs, int e) { return e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4); }

// Q5_0/Q5_1: bit 4 of element j -> bit j of the little-endian u32 qh.
void put_high32(const int8_t* c, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < 32; ++j) h |= static_cast<uint32_t>((c[j] >> 4) & 1) << j;
  for (int k = 0; k < 4; ++k) qh[k] = u8(h >> (8 * k));
}
int get_high32(const uint8_t* qh, int e) { return (qh[e / 8] >> (e % 8)) & 1; }

// 2-bit planes (Q2_K, Q3_K low bits): element e -> qs[32*(e/128) + e%32], shift 2*((e%128)/32).
void put_planes2(const int8_t* c, uint8_t* qs) {
  for (int j = 0; j < 256; j += 128)
    for (int l = 0; l < 32; ++l)
      qs[j / 4 + l] = u8((c[j + l] & 3) | ((c[j + l + 32] & 3) << 2) | ((c[j + l + 64] & 3) << 4) |
                         ((c[j + l + 96] & 3) << 6));
}
int get_plane2(const uint8_t* qs, int e) { return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3; }

// One high bit per element (Q3_K hmask, Q5_K qh): element e -> byte e%32, bit e/32.
void put_bits256(const int8_t* c, int shift, uint8_t* h) {
  std::memset(h, 0, 32);
  for (int e = 0; e < 256; ++e) h[e % 32] = u8(h[e % 32] | (((c[e] >> shift) & 1) << (e / 32)));
}
int get_bit256(const uint8_t* h, int e) { return (h[e % 32] >> (e / 32)) & 1; }

// Q4_K/Q5_K nibbles: element e, p = e/64, r = e%64 -> qs[32p + r%32], low nibble if r < 32.
void put_nibbles256(const int8_t* c, uint8_t* qs) {
  for (int j = 0; j < 256; j += 64)
    for (int l = 0; l < 32; ++l) qs[j / 2 + l] = u8((c[j + l] & 0xF) | ((c[j + l + 32] & 0xF) << 4));
}
int get_nibble256(const uint8_t* qs, int e) {
  const int p = e / 64, r = e % 64;
  return r < 32 ? (qs[32 * p + r] & 0xF) : (qs[32 * p + r - 32] >> 4);
}

// Q4_K/Q5_K 6-bit scales and mins (get_scale_min_k4).
void put_scale_min_k4(const int8_t* sc, const int8_t* m, uint8_t* s) {
  std::memset(s, 0, K_SCALE_SIZE);
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      s[j] = u8(sc[j]);
      s[j + 4] = u8(m[j]);
    } else {
      s[j + 4] = u8((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
      s[j - 4] = u8(s[j - 4] | ((sc[j] >> 4) << 6));
      s[j] = u8(s[j] | ((m[j] >> 4) << 6));
    }
  }
}
void get_scale_min_k4(const uint8_t* s, int8_t* sc, int8_t* m) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      sc[j] = static_cast<int8_t>(s[j] & 63);
      m[j] = static_cast<int8_t>(s[j + 4] & 63);
    } else {
      sc[j] = static_cast<int8_t>((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
      m[j] = static_cast<int8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
  }
}

// Q3_K: 16 signed 6-bit scales biased by 32; low nibbles in bytes 0-7 (j >= 8 in the high
// nibble of byte j-8), the top 2 bits in byte 8 + j%4 at bit 2*(j/4).
void put_scales_q3(const int8_t* sc, uint8_t* s) {
  std::memset(s, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int l = sc[j] + 32;
    if (j < 8) s[j] = u8(l & 0xF);
    else s[j - 8] = u8(s[j - 8] | ((l & 0xF) << 4));
    s[8 + j % 4] = u8(s[8 + j % 4] | ((l >> 4) << (2 * (j / 4))));
  }
}
void get_scales_q3(const uint8_t* s, int8_t* sc) {
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
    sc[j] = static_cast<int8_t>((low | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
  }
}

// Q6_K: element e, h = e/128, r = e%128, k = r/32, l = r%32: the low nibble in
// ql[64h + l + 32*(k&1)] (low half for k < 2), the high 2 bits in qh[32h + l] at bit 2k.
void put_q6(const int8_t* c, uint8_t* ql, uint8_t* qh) {
  for (int h = 0; h < 2; ++h) {
    const int8_t* L = c + 128 * h;
    for (int l = 0; l < 32; ++l) {
      ql[64 * h + l] = u8((L[l] & 0xF) | ((L[l + 64] & 0xF) << 4));
      ql[64 * h + l + 32] = u8((L[l + 32] & 0xF) | ((L[l + 96] & 0xF) << 4));
      qh[32 * h + l] = u8((L[l] >> 4) | ((L[l + 32] >> 4) << 2) | ((L[l + 64] >> 4) << 4) | ((L[l + 96] >> 4) << 6));
    }
  }
}
int get_q6(const uint8_t* ql, const uint8_t* qh, int e) {
  const int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
  const uint8_t lo = ql[64 * h + l + 32 * (k & 1)];
  return (k < 2 ? (lo & 0xF) : (lo >> 4)) | (((qh[32 * h + l] >> (2 * k)) & 3) << 4);
}

}  // namespace

const LatticeLayout* lattice_layout(GGMLType type) {
  for (const LatticeLayout& l : kLayouts)
    if (l.type == type) return &l;
  return nullptr;
}

void pack(GGMLType type, const PackFields& f, int64_t n_blocks, void* dst) {
  const LatticeLayout* layout = lattice_layout(type);
  if (layout == nullptr)
    throw std::invalid_argument(std::string("pack: ") + type_traits(type).name + " is not a lattice type");
  check_fields(*layout, f, n_blocks);
  const int B = layout->block, S = layout->n_sub;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int8_t* c = f.codes + b * B;
    const int8_t* sc = S ? f.scales + b * S : nullptr;
    const int8_t* m = layout->has_mins ? f.mins + b * S : nullptr;
    switch (type) {
      case GGMLType::Q4_0: {
        auto& y = static_cast<block_q4_0*>(dst)[b];
        y.d = f.d[b];
        put_nibbles32(c, y.qs);
        break;
      }
      case GGMLType::IQ4_NL: {
        auto& y = static_cast<block_iq4_nl*>(dst)[b];
        y.d = f.d[b];
        put_nibbles32(c, y.qs);
        break;
      }
      case GGMLType::Q4_1: {
        auto& y = static_cast<block_q4_1*>(dst)[b];
        y.d = f.d[b];
        y.m = f.dmin[b];
        put_nibbles32(c, y.qs);
        break;
      }
      case GGMLType::Q5_0: {
        auto& y = static_cast<block_q5_0*>(dst)[b];
        y.d = f.d[b];
        put_high32(c, y.qh);
        put_nibbles32(c, y.qs);
        break;
      }
      case GGMLType::Q5_1: {
        auto& y = static_cast<block_q5_1*>(dst)[b];
        y.d = f.d[b];
        y.m = f.dmin[b];
        put_high32(c, y.qh);
        put_nibbles32(c, y.qs);
        break;
      }
      case GGMLType::Q8_0: {
        auto& y = static_cast<block_q8_0*>(dst)[b];
        y.d = f.d[b];
        std::memcpy(y.qs, c, 32);
        break;
      }
      case GGMLType::Q2_K: {
        auto& y = static_cast<block_q2_K*>(dst)[b];
        for (int j = 0; j < 16; ++j) y.scales[j] = u8(sc[j] | (m[j] << 4));
        put_planes2(c, y.qs);
        y.d = f.d[b];
        y.dmin = f.dmin[b];
        break;
      }
      case GGMLType::Q3_K: {
        auto& y = static_cast<block_q3_K*>(dst)[b];
        put_bits256(c, 2, y.hmask);
        put_planes2(c, y.qs);
        put_scales_q3(sc, y.scales);
        y.d = f.d[b];
        break;
      }
      case GGMLType::Q4_K: {
        auto& y = static_cast<block_q4_K*>(dst)[b];
        y.d = f.d[b];
        y.dmin = f.dmin[b];
        put_scale_min_k4(sc, m, y.scales);
        put_nibbles256(c, y.qs);
        break;
      }
      case GGMLType::Q5_K: {
        auto& y = static_cast<block_q5_K*>(dst)[b];
        y.d = f.d[b];
        y.dmin = f.dmin[b];
        put_scale_min_k4(sc, m, y.scales);
        put_bits256(c, 4, y.qh);
        put_nibbles256(c, y.qs);
        break;
      }
      case GGMLType::Q6_K: {
        auto& y = static_cast<block_q6_K*>(dst)[b];
        put_q6(c, y.ql, y.qh);
        std::memcpy(y.scales, sc, 16);
        y.d = f.d[b];
        break;
      }
      default: break;
    }
  }
}

void unpack(GGMLType type, const void* src, int64_t n_blocks, const UnpackFields& f) {
  const LatticeLayout* layout = lattice_layout(type);
  if (layout == nullptr)
    throw std::invalid_argument(std::string("unpack: ") + type_traits(type).name + " is not a lattice type");
  const int B = layout->block, S = layout->n_sub;
  for (int64_t b = 0; b < n_blocks; ++b) {
    int8_t* c = f.codes + b * B;
    int8_t* sc = S ? f.scales + b * S : nullptr;
    int8_t* m = layout->has_mins ? f.mins + b * S : nullptr;
    auto codes = [&](auto get) {
      for (int e = 0; e < B; ++e) c[e] = static_cast<int8_t>(get(e));
    };
    switch (type) {
      case GGMLType::Q4_0: {
        const auto& x = static_cast<const block_q4_0*>(src)[b];
        f.d[b] = x.d;
        codes([&](int e) { return get_nibble32(x.qs, e); });
        break;
      }
      case GGMLType::IQ4_NL: {
        const auto& x = static_cast<const block_iq4_nl*>(src)[b];
        f.d[b] = x.d;
        codes([&](int e) { return get_nibble32(x.qs, e); });
        break;
      }
      case GGMLType::Q4_1: {
        const auto& x = static_cast<const block_q4_1*>(src)[b];
        f.d[b] = x.d;
        f.dmin[b] = x.m;
        codes([&](int e) { return get_nibble32(x.qs, e); });
        break;
      }
      case GGMLType::Q5_0: {
        const auto& x = static_cast<const block_q5_0*>(src)[b];
        f.d[b] = x.d;
        codes([&](int e) { return get_nibble32(x.qs, e) | (get_high32(x.qh, e) << 4); });
        break;
      }
      case GGMLType::Q5_1: {
        const auto& x = static_cast<const block_q5_1*>(src)[b];
        f.d[b] = x.d;
        f.dmin[b] = x.m;
        codes([&](int e) { return get_nibble32(x.qs, e) | (get_high32(x.qh, e) << 4); });
        break;
      }
      case GGMLType::Q8_0: {
        const auto& x = static_cast<const block_q8_0*>(src)[b];
        f.d[b] = x.d;
        std::memcpy(c, x.qs, 32);
        break;
      }
      case GGMLType::Q2_K: {
        const auto& x = static_cast<const block_q2_K*>(src)[b];
        for (int j = 0; j < 16; ++j) {
          sc[j] = static_cast<int8_t>(x.scales[j] & 0xF);
          m[j] = static_cast<int8_t>(x.scales[j] >> 4);
        }
        codes([&](int e) { return get_plane2(x.qs, e); });
        f.d[b] = x.d;
        f.dmin[b] = x.dmin;
        break;
      }
      case GGMLType::Q3_K: {
        const auto& x = static_cast<const block_q3_K*>(src)[b];
        codes([&](int e) { return get_plane2(x.qs, e) | (get_bit256(x.hmask, e) << 2); });
        get_scales_q3(x.scales, sc);
        f.d[b] = x.d;
        break;
      }
      case GGMLType::Q4_K: {
        const auto& x = static_cast<const block_q4_K*>(src)[b];
        f.d[b] = x.d;
        f.dmin[b] = x.dmin;
        get_scale_min_k4(x.scales, sc, m);
        codes([&](int e) { return get_nibble256(x.qs, e); });
        break;
      }
      case GGMLType::Q5_K: {
        const auto& x = static_cast<const block_q5_K*>(src)[b];
        f.d[b] = x.d;
        f.dmin[b] = x.dmin;
        get_scale_min_k4(x.scales, sc, m);
        codes([&](int e) { return get_nibble256(x.qs, e) | (get_bit256(x.qh, e) << 4); });
        break;
      }
      case GGMLType::Q6_K: {
        const auto& x = static_cast<const block_q6_K*>(src)[b];
        codes([&](int e) { return get_q6(x.ql, x.qh, e); });
        std::memcpy(sc, x.scales, 16);
        f.d[b] = x.d;
        break;
      }
      default: break;
    }
  }
}

}  // namespace qat_export
