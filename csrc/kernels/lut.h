// Torch-free palettization (look-up-table quantization) kernels: 1-D k-means per group, and the
// nearest-centroid fake quantization with its gradients. A tensor is viewed as [groups, n]
// (contiguous: group g is elements [g * n, (g + 1) * n)), with a LUT of k <= 256 float32
// centroids per group, lut[g * k + j].
//
// Nearest centroid, identical on CPU and CUDA: the smallest j minimizing fl(|x - lut[j]|) in
// float32, over the centroids that are not NaN. x = +inf / -inf takes the largest / smallest
// centroid (lowest index among equal ones); NaN x, or a group whose centroids are all NaN, takes
// index 0. Fake quantization outputs lut[j], except NaN x, which stays NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "fake_quant.h"

namespace qat::kernels {

constexpr int kMaxCentroids = 256;  // indices are stored as uint8

// One group's centroids prepared for search: its distinct non-NaN values ascending (`value`),
// each with the lowest index holding it (`index`); `size` entries.
struct LutTable {
  float value[kMaxCentroids];
  uint8_t index[kMaxCentroids];
  int size;
};

// Number of table values <= x. The loop trip count depends on size only, so it does not branch
// on data (the select compiles to a conditional move).
QAT_HD int lut_rank(const float* value, int size, float x) {
  int first = 0, len = size;
  while (len > 1) {
    int half = len >> 1;
    first += value[first + half] <= x ? half : 0;
    len -= half;
  }
  return first + (value[first] <= x ? 1 : 0);
}

// Nearest centroid of x (not NaN) in a search table of size >= 1, given p = lut_rank(x). The
// distance fl(|x - v|) never increases toward x from either side (rounding is monotone), so the
// minimum sits at the neighbours of p; equal distances form a run around them, scanned for the
// lowest index when it reaches past the neighbours (rare: only rounding makes distinct values
// tie there).
QAT_HD int lut_pick(const float* value, const uint8_t* index, int size, float x, int p) {
  if (x == INFINITY) return index[size - 1];
  if (x == -INFINITY) return index[0];
  // Neighbours below and above (the same entry at either end), and the entries past them.
  const int lo = p > 0 ? p - 1 : 0, hi = p < size ? p : size - 1;
  const float dl = fabsf(x - value[lo]), dr = fabsf(x - value[hi]);
  const float d = dl < dr ? dl : dr;  // not fminf: a libm call on the host
  const int il = index[lo], ir = index[hi];
  // Arithmetic rather than nested selects, which compilers turn into unpredictable branches.
  const int tie = il < ir ? il : ir;
  int best = tie + int(dl < dr) * (il - tie) + int(dr < dl) * (ir - tie);
  const int lo2 = lo > 0 ? lo - 1 : lo, hi2 = hi + 1 < size ? hi + 1 : hi;
  const bool run = ((lo2 < lo) & (fabsf(x - value[lo2]) == d)) | ((hi2 > hi) & (fabsf(x - value[hi2]) == d));
  if (run) {
    for (int i = lo2; i >= 0 && fabsf(x - value[i]) == d; --i) best = index[i] < best ? index[i] : best;
    for (int i = hi2; i < size && fabsf(x - value[i]) == d; ++i) best = index[i] < best ? index[i] : best;
  }
  return best;
}

QAT_HD int lut_nearest(const float* value, const uint8_t* index, int size, float x) {
  return lut_pick(value, index, size, x, lut_rank(value, size, x));
}

namespace cpu {

// The search table of lut[0..k).
void lut_table(const float* lut, int k, LutTable* table);

// Scratch reused across groups by one thread.
struct KMeansWorkspace {
  std::vector<float> values;       // the group's finite values, sorted, then made distinct
  std::vector<uint32_t> sort_keys;  // radix sort buffers
  std::vector<int64_t> cum_count;  // cum_count[i]: how many values lie below values[i]
  std::vector<double> cum_sum;     // cum_sum[i]: their sum
  std::vector<int64_t> bounds, prev_bounds;
};

// k-means centroids of the finite values of x[0..n) (dtype storage), written ascending to
// centroids[0..k), 1 <= k <= kMaxCentroids. Non-finite values are ignored.
//
//  - At most k distinct finite values: the centroids are those values (exact), then copies of
//    the largest one; no finite values at all: zeros.
//  - Otherwise Lloyd's algorithm in float64 on the sorted distinct values, with prefix counts
//    and sums: assignment is one boundary search per pair of neighbouring centroids (a value goes
//    to the centroid at the smaller float64 distance, the lower one on a tie), the update a
//    difference of prefix sums, so an iteration costs O(k log n).
//  - Initialization: quantiles, centroid j = sorted[(2j + 1) * m / (2k)] of the m finite values
//    sorted ascending, moved up (then down near the top) to the next distinct value wherever
//    two would coincide, so every initial cluster holds at least its centroid.
//  - A cluster left empty by an update takes the value farthest from its own cluster's new mean
//    (the smallest such value on a tie; each value once), then the centroids are re-sorted.
//  - Stops when an assignment repeats the previous one, or after max_iters updates.
// Returns the number of updates run.
int kmeans_1d(DType dtype, const void* x, int64_t n, int k, int max_iters, float* centroids,
              KMeansWorkspace& ws);

// Elements [begin, end) of x viewed as [groups, n] (n >= 1), lut [groups, k] float32.
// y = lut[g, nearest] (NaN x stays NaN), in x's dtype.
void lut_fake_quant(DType dtype, const void* x, void* y, int64_t begin, int64_t end, int64_t n,
                    const float* lut, int k);

// indices[i] = nearest centroid of x[i] (0 for NaN).
void lut_indices(DType dtype, const void* x, uint8_t* indices, int64_t begin, int64_t end,
                 int64_t n, const float* lut, int k);

// acc[g * k + nearest(x[i])] += dy[i] for the non-NaN x[i] (x and dy both of dtype).
void lut_grad(DType dtype, const void* x, const void* dy, int64_t begin, int64_t end, int64_t n,
              const float* lut, int k, double* acc);

}  // namespace cpu

namespace cuda {

// Device pointers; `stream` is a cudaStream_t; nothing synchronizes; n == 0 or groups == 0
// launches nothing. Same results as the CPU kernels; lut_grad's sums in another order (atomics).
void lut_fake_quant(DType dtype, const void* x, void* y, int64_t groups, int64_t n,
                    const float* lut, int k, void* stream);
void lut_indices(DType dtype, const void* x, uint8_t* indices, int64_t groups, int64_t n,
                 const float* lut, int k, void* stream);
// acc: zeroed float64 [groups, k].
void lut_grad(DType dtype, const void* x, const void* dy, int64_t groups, int64_t n,
              const float* lut, int k, double* acc, void* stream);

}  // namespace cuda

}  // namespace qat::kernels
