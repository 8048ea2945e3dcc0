// Shared by the CPU kernel files: ISA clones, forced inlining, element storage types, and the
// walk over runs of elements that share a channel.
#pragma once

#include <cstdint>

#include "../fake_quant.h"

namespace qat::kernels::cpu {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QAT_CPU_CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define QAT_CPU_CLONES
#endif
#define QAT_INLINE inline __attribute__((always_inline))
// Lambdas too: an out-of-line lambda would be compiled for baseline x86-64, not the clone's ISA.
#define QAT_INLINE_LAMBDA __attribute__((always_inline))

struct F32 {
  using Storage = float;
  static QAT_INLINE float load(float v) { return v; }
  static QAT_INLINE float store(float v) { return v; }
};
struct F16 {
  using Storage = uint16_t;
  static QAT_INLINE float load(uint16_t v) { return half_bits_to_float(v); }
  static QAT_INLINE uint16_t store(float v) { return float_to_half_bits(v); }
};
struct BF16 {
  using Storage = uint16_t;
  static QAT_INLINE float load(uint16_t v) { return bf16_bits_to_float(v); }
  static QAT_INLINE uint16_t store(float v) { return float_to_bf16_bits(v); }
};

// Calls fn(channel, first, last) for each maximal run of [begin, end) sharing a channel.
template <class Fn>
QAT_INLINE void for_each_run(int64_t begin, int64_t end, ChannelLayout layout, Fn&& fn) {
  int64_t i = begin;
  while (i < end) {
    int64_t segment = i / layout.inner;
    int64_t stop = (segment + 1) * layout.inner;
    if (stop > end) stop = end;
    fn(segment % layout.channels, i, stop);
    i = stop;
  }
}

}  // namespace qat::kernels::cpu
