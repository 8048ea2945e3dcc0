// Torch-free calibrators that turn a running histogram (observe.h's canonical grid) into a
// clipping range. They read a few thousand bins, so they run on the host only.
#pragma once

#include <cstdint>

#include "observe_math.h"

namespace qat::kernels {

struct ClipRange {
  float min, max;
};

// Keeps `percentile` percent of the mass: symmetric clips |x| at that quantile and returns
// [-amax, amax]; affine cuts (100 - percentile) / 2 percent from each tail. Quantiles interpolate
// linearly inside a bin and never leave the observed [data_min, data_max].
ClipRange histogram_percentile(const int64_t* counts, HistogramGrid grid, float data_min,
                               float data_max, double percentile, bool symmetric);

// TensorRT's entropy calibration on the |x| histogram: for every candidate clip of i bins, the
// KL divergence between the clipped distribution (outliers folded into the last kept bin) and
// its `levels`-level quantization (each level's mass spread over its non-empty bins, empty bins
// smoothed to 1e-4 counts as MXNet's and TVM's calibrators do); the last minimum wins. Returns [-amax, amax] intersected with the observed range.
ClipRange histogram_entropy(const int64_t* counts, HistogramGrid grid, float data_min,
                            float data_max, int64_t levels);

}  // namespace qat::kernels
