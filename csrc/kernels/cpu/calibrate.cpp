#include "../calibrate.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace qat::kernels {
namespace {

constexpr double kEps = 1e-4;  // smoothing of the entropy search's candidate distribution, in counts

// The |x| histogram: signed global bin g covers [g w, (g + 1) w), so |x| lies in bin g for g >= 0
// and in bin -g - 1 for g < 0 (bin edges fold onto bin edges). Data far from zero would need
// many empty bins below it, so bins merge in powers of two (edges stay edges) until at most
// 4 * grid.bins remain; *exponent receives the folded bin width's exponent.
std::vector<double> fold_abs(const int64_t* counts, HistogramGrid grid, int32_t* exponent) {
  int64_t top = 0;
  for (int64_t i = 0; i < grid.bins; ++i) {
    const int64_t g = grid.first + i;
    if (counts[i] != 0) top = std::max(top, g >= 0 ? g : -g - 1);
  }
  int32_t shift = 0;
  while ((top >> shift) >= 4 * grid.bins) ++shift;
  std::vector<double> out(size_t((top >> shift) + 1), 0.0);
  for (int64_t i = 0; i < grid.bins; ++i) {
    const int64_t g = grid.first + i;
    out[size_t((g >= 0 ? g : -g - 1) >> shift)] += double(counts[i]);
  }
  *exponent = grid.exponent + shift;
  return out;
}

// Position (in bins, from the histogram's start) below which `mass` of the counts lie.
double quantile_position(const std::vector<double>& counts, double mass) {
  double below = 0.0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] > 0.0 && below + counts[i] >= mass) return double(i) + (mass - below) / counts[i];
    below += counts[i];
  }
  return double(counts.size());
}

float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace

ClipRange histogram_percentile(const int64_t* counts, HistogramGrid grid, float data_min,
                               float data_max, double percentile, bool symmetric) {
  if (!(data_min <= data_max)) return {0.0f, 0.0f};
  const double width = std::ldexp(1.0, grid.exponent);
  const float amax_data = std::fmax(std::fabs(data_min), std::fabs(data_max));
  if (symmetric) {
    if (percentile >= 100.0) return {-amax_data, amax_data};
    int32_t exponent = 0;
    const std::vector<double> abs_counts = fold_abs(counts, grid, &exponent);
    double total = 0.0;
    for (double c : abs_counts) total += c;
    const double position = quantile_position(abs_counts, total * percentile / 100.0);
    const float amax = clampf(float(std::ldexp(position, exponent)),
                              0.0f, amax_data);
    return {-amax, amax};
  }
  if (percentile >= 100.0) return {data_min, data_max};
  const std::vector<double> c(counts, counts + grid.bins);
  double total = 0.0;
  for (double v : c) total += v;
  const double tail = total * (100.0 - percentile) / 200.0;
  const double origin = double(grid.first) * width;
  const float lo = float(origin + quantile_position(c, tail) * width);
  const float hi = float(origin + quantile_position(c, total - tail) * width);
  return {clampf(lo, data_min, data_max), clampf(hi, data_min, data_max)};
}

ClipRange histogram_entropy(const int64_t* counts, HistogramGrid grid, float data_min,
                            float data_max, int64_t levels) {
  if (!(data_min <= data_max)) return {0.0f, 0.0f};
  int32_t exponent = 0;
  const std::vector<double> p_all = fold_abs(counts, grid, &exponent);
  const int64_t nbins = int64_t(p_all.size());
  const float amax_data = std::fmax(std::fabs(data_min), std::fabs(data_max));
  float amax = amax_data;
  if (levels >= 1 && nbins > levels) {
    std::vector<double> suffix(size_t(nbins) + 1, 0.0);  // suffix[i] = sum of bins >= i
    for (int64_t j = nbins - 1; j >= 0; --j) suffix[j] = suffix[j + 1] + p_all[j];
    const double total = suffix[0];
    std::vector<double> level_mass(static_cast<size_t>(levels));
    std::vector<double> level_nonzero(static_cast<size_t>(levels));
    double best = INFINITY;
    int64_t best_i = nbins;
    for (int64_t i = levels; i <= nbins; ++i) {
      // Quantize bins [0, i) to `levels` levels: bin j belongs to level floor(j * levels / i).
      std::fill(level_mass.begin(), level_mass.end(), 0.0);
      std::fill(level_nonzero.begin(), level_nonzero.end(), 0.0);
      for (int64_t j = 0; j < i; ++j) {
        const int64_t k = j * levels / i;
        level_mass[k] += p_all[j];
        level_nonzero[k] += p_all[j] > 0.0 ? 1.0 : 0.0;
      }
      const double kept = total - suffix[i];  // Q's mass: the clipped bins without outliers
      if (kept <= 0.0) continue;
      // Q is 0 on empty bins, where P may still hold folded outliers: smooth it as MXNet's and
      // TVM's KL calibrators do (kEps counts on each empty bin, taken evenly from the others),
      // so the divergence stays finite.
      double empty = 0.0;
      for (int64_t j = 0; j < i; ++j) empty += p_all[j] > 0.0 ? 0.0 : 1.0;
      const double taken = kEps * empty / (double(i) - empty);
      double kl = 0.0;
      for (int64_t j = 0; j < i; ++j) {
        const double p = (p_all[j] + (j == i - 1 ? suffix[i] : 0.0)) / total;
        if (p <= 0.0) continue;
        const int64_t k = j * levels / i;
        const double q_count = p_all[j] > 0.0 ? level_mass[k] / level_nonzero[k] - taken : kEps;
        kl += p * std::log(p / (std::max(q_count, kEps) / kept));
      }
      if (kl <= best) {  // the last minimum, as TensorRT picks it
        best = kl;
        best_i = i;
      }
    }
    amax = std::fmin(float(std::ldexp(double(best_i), exponent)), amax_data);
  }
  return {std::fmax(-amax, data_min), std::fmin(amax, data_max)};
}

}  // namespace qat::kernels
