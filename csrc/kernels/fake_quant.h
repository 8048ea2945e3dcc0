// Torch-free fake-quantization kernels on raw pointers. The ops layer (csrc/ops) checks
// arguments, makes tensors contiguous, and splits work across threads or streams.
#pragma once

#include <cstdint>

#include "quant_math.h"

namespace qat::kernels {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// Element i of a contiguous tensor uses quantization parameters (i / inner) % channels:
// per tensor {numel, 1}; per channel along axis {prod(sizes after axis), size(axis)};
// per group {group_size, numel / group_size}.
struct ChannelLayout {
  int64_t inner;
  int64_t channels;
};

// Raw fp32 scale and zero point, one per channel. Kernels apply effective_scale and
// effective_zero_point themselves, so nothing is precomputed on the host.
struct QParams {
  const float* scale;
  const float* zero_point;
};

struct QuantRange {
  float quant_min;
  float quant_max;
};

namespace cpu {

void fake_quant_forward(DType dtype, const void* x, void* y, int64_t begin, int64_t end,
                        ChannelLayout layout, QParams qp, QuantRange range);

// Writes dx over [begin, end). Without LSQ (acc_scale == nullptr) dx is the straight-through
// gradient masked by the forward's saturation. With LSQ, dx follows the learnable backward and
// each element's scale / zero-point gradient is added to acc_*[channel] in double.
void fake_quant_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t begin,
                         int64_t end, ChannelLayout layout, QParams qp, QuantRange range,
                         float grad_factor, double* acc_scale, double* acc_zero_point);

void fake_cast(DType dtype, const void* x, void* y, int64_t begin, int64_t end, CastFormat fmt);

}  // namespace cpu

namespace cuda {

// All pointers are device pointers; `stream` is a cudaStream_t. Nothing synchronizes.
void fake_quant_forward(DType dtype, const void* x, void* y, int64_t n, ChannelLayout layout,
                        QParams qp, QuantRange range, void* stream);

// acc_scale / acc_zero_point: zeroed double arrays of `layout.channels`, or nullptr for the
// plain straight-through backward.
void fake_quant_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t n,
                         ChannelLayout layout, QParams qp, QuantRange range, float grad_factor,
                         double* acc_scale, double* acc_zero_point, void* stream);

void fake_cast(DType dtype, const void* x, void* y, int64_t n, CastFormat fmt, void* stream);

}  // namespace cuda

}  // namespace qat::kernels
