// Torch-free observer kernels on raw pointers: min/max statistics, histograms, the MSE search over
// clipping candidates, and the fused observe + fake-quantize. Non-finite elements are skipped
// everywhere: they never reach a running statistic. The ops layer (csrc/ops) checks arguments,
// makes tensors contiguous and splits work across threads or streams.
#pragma once

#include <cstdint>

#include "fake_quant.h"
#include "observe_math.h"

namespace qat::kernels {

// Candidate quantization parameters for the MSE search: candidate r of channel c is at
// [c * count + r]; scales are already effective (positive, finite).
struct Candidates {
  const float* scale;
  const float* zero_point;
  int64_t count;
};

namespace cpu {

// scale[i], zero_point[i] = qparams_minmax(min[i], max[i], ...) for i < n.
void choose_qparams(const float* min, const float* max, int64_t n, int32_t quant_min,
                    int32_t quant_max, bool symmetric, float* scale, float* zero_point);

// Folds the finite elements of x[begin, end) into min[c] / max[c], c = (i / inner) % channels.
// The caller initializes min / max (to +inf / -inf for a fresh batch).
void minmax(DType dtype, const void* x, int64_t begin, int64_t end, ChannelLayout layout,
            float* min, float* max);

// Adds the finite elements of x[begin, end) to counts[bins] on `grid` (indices clamped to the
// grid, which the caller made cover every element).
void histogram_add(DType dtype, const void* x, int64_t begin, int64_t end, HistogramGrid grid,
                   int64_t* counts);

// Re-bins counts on `from` into the zeroed `out` on `to` (to.exponent >= from.exponent and `to`
// covering from's occupied bins, as histogram_grid guarantees for a wider range).
void histogram_rebin(const int64_t* counts, HistogramGrid from, int64_t* out, HistogramGrid to);

// errors[c * count + r] += sum over the finite elements i of x[begin, end) in channel c of
// (fake_quant_value(x_i, candidate r of c) - x_i)^2.
void mse_errors(DType dtype, const void* x, int64_t begin, int64_t end, ChannelLayout layout,
                Candidates candidates, QuantRange range, double* errors);

}  // namespace cpu

namespace cuda {

// All pointers are device pointers; `stream` is a cudaStream_t. Nothing synchronizes with the
// host: enable flags are read on the device (`*flag != 0`; nullptr counts as enabled). Every
// function returns without launching anything when n <= 0. Results equal the CPU kernels bit for
// bit, except: min / max pick -0.0 over +0.0 (min) and +0.0 over -0.0 (max) whatever the order
// (the CPU keeps whichever came first), and mse_errors sums in another order (relative
// difference below 1e-5). Details in csrc/kernels/cuda/observe.cu.

// As cpu::choose_qparams.
void choose_qparams(const float* min, const float* max, int64_t n, int32_t quant_min,
                    int32_t quant_max, bool symmetric, float* scale, float* zero_point,
                    void* stream);

// As cpu::minmax over all n elements, min / max initialized by the caller (not NaN), when
// *enabled: the kernel does not even read x otherwise.
void minmax(DType dtype, const void* x, int64_t n, ChannelLayout layout, float* min, float* max,
            const int64_t* enabled, void* stream);

// For each channel c, when *enabled: update_running_minmax(&run_min[c], &run_max[c], cur_min[c],
// cur_max[c], moving_average, averaging_constant).
void update_running_minmax(const float* cur_min, const float* cur_max, float* run_min,
                           float* run_max, int64_t channels, const int64_t* enabled,
                           bool moving_average, float averaging_constant, void* stream);

// The whole running-histogram update, when *enabled: the batch's finite min / max, the union with
// range[0..1] (+inf / -inf while empty), re-binning counts to the new range's grid when it
// changed, then adding the batch; nothing when the batch has no finite element. `scratch`:
// histogram_update_scratch_int64(bins) int64 of device memory, any content.
void histogram_update(DType dtype, const void* x, int64_t n, int64_t* counts, int64_t bins,
                      float* range, const int64_t* enabled, int64_t* scratch, void* stream);

inline int64_t histogram_update_scratch_int64(int64_t bins) { return bins + 8; }

// As cpu::mse_errors over all n elements; errors zeroed by the caller.
void mse_errors(DType dtype, const void* x, int64_t n, ChannelLayout layout,
                Candidates candidates, QuantRange range, double* errors, void* stream);

// torch.fused_moving_avg_obs_fake_quant in one (cooperative) launch: when *observer_on, the
// batch's finite per-channel min / max move run_min / run_max (moving average); when
// *fake_quant_on, scale / zero_point become qparams_fbgemm of the running range and
// y = fake_quant(x) with them; otherwise y = x (bit copy). layout is per tensor {n, 1} or per
// channel; run_min ... zero_point have layout.channels elements. `scratch`:
// observe_fake_quant_scratch_bytes(layout.channels) bytes of device memory, 16-byte aligned and
// zeroed by the caller (at::zeros); the kernel leaves it dirty.
void observe_fake_quant(DType dtype, const void* x, void* y, int64_t n, ChannelLayout layout,
                        const int64_t* observer_on, const int64_t* fake_quant_on, float* run_min,
                        float* run_max, float* scale, float* zero_point,
                        float averaging_constant, int32_t quant_min, int32_t quant_max,
                        bool symmetric, void* scratch, void* stream);

// Two 32-bit min / max keys per channel, then 16 bytes of fake-quant parameters per channel.
inline int64_t observe_fake_quant_scratch_bytes(int64_t channels) {
  return (8 * channels + 15) / 16 * 16 + 16 * channels;
}

}  // namespace cuda

}  // namespace qat::kernels
