// Google Benchmark of the torch-free palettization kernels on one thread, outputs preallocated:
// nearest-centroid fake quantization, indices and LUT gradient over 16M fp32 elements (4096 rows,
// one LUT per tensor or per 16 rows), and the one-time k-means of a 4096x4096 weight. Compare
// with BM_LutCopy (memcpy) in the same run.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/lut.h"

namespace k = qat::kernels;

namespace {

constexpr int64_t kRows = 4096, kN = kRows * 4096;

struct Data {
  std::vector<float> x, dy, out;
  std::vector<uint8_t> idx;
  Data() : x(kN), dy(kN), out(kN), idx(kN) {
    std::mt19937 rng(0);
    std::normal_distribution<float> n01;
    for (auto& v : x) v = n01(rng);
    for (auto& v : dy) v = n01(rng);
  }
};

Data& data() {
  static Data d;
  return d;
}

// k-means LUTs of the data: [groups, centroids].
std::vector<float> lut_for(int centroids, int64_t groups) {
  Data& d = data();
  std::vector<float> lut(groups * centroids);
  k::cpu::KMeansWorkspace ws;
  for (int64_t g = 0; g < groups; ++g)
    k::cpu::kmeans_1d(k::DType::f32, d.x.data() + g * (kN / groups), kN / groups, centroids, 300,
                      lut.data() + g * centroids, ws);
  return lut;
}

void BM_LutCopy(benchmark::State& state) {
  Data& d = data();
  for (auto _ : state) {
    std::memcpy(d.out.data(), d.x.data(), kN * sizeof(float));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * kN * int64_t(sizeof(float)));
}

// range(0): centroids; range(1): groups (1 = per tensor, 256 = per 16 rows).
void BM_LutFakeQuant(benchmark::State& state) {
  Data& d = data();
  const int c = int(state.range(0));
  const int64_t groups = state.range(1);
  const std::vector<float> lut = lut_for(c, groups);
  for (auto _ : state) {
    k::cpu::lut_fake_quant(k::DType::f32, d.x.data(), d.out.data(), 0, kN, kN / groups, lut.data(), c);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * kN * int64_t(sizeof(float)));
}

void BM_LutIndices(benchmark::State& state) {
  Data& d = data();
  const int c = int(state.range(0));
  const int64_t groups = state.range(1);
  const std::vector<float> lut = lut_for(c, groups);
  for (auto _ : state) {
    k::cpu::lut_indices(k::DType::f32, d.x.data(), d.idx.data(), 0, kN, kN / groups, lut.data(), c);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 5 * kN);
}

void BM_LutGrad(benchmark::State& state) {
  Data& d = data();
  const int c = int(state.range(0));
  const int64_t groups = state.range(1);
  const std::vector<float> lut = lut_for(c, groups);
  std::vector<double> acc(groups * c);
  for (auto _ : state) {
    std::fill(acc.begin(), acc.end(), 0.0);
    k::cpu::lut_grad(k::DType::f32, d.x.data(), d.dy.data(), 0, kN, kN / groups, lut.data(), c, acc.data());
    benchmark::DoNotOptimize(acc.data());
  }
  state.SetBytesProcessed(state.iterations() * 2 * kN * int64_t(sizeof(float)));
}

void BM_KMeans(benchmark::State& state) {
  Data& d = data();
  const int c = int(state.range(0));
  const int64_t groups = state.range(1);
  std::vector<float> lut(groups * c);
  k::cpu::KMeansWorkspace ws;
  for (auto _ : state) {
    for (int64_t g = 0; g < groups; ++g)
      k::cpu::kmeans_1d(k::DType::f32, d.x.data() + g * (kN / groups), kN / groups, c, 300,
                        lut.data() + g * c, ws);
    benchmark::DoNotOptimize(lut.data());
  }
}

}  // namespace

BENCHMARK(BM_LutCopy)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LutFakeQuant)->ArgsProduct({{16, 256}, {1, 256}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LutIndices)->Args({16, 1})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LutGrad)->ArgsProduct({{16, 256}, {1, 256}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_KMeans)->ArgsProduct({{16, 256}, {1, 256}})->Unit(benchmark::kMillisecond)->Iterations(2);

BENCHMARK_MAIN();
