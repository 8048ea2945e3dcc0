// Google Benchmark of the torch-free CPU kernels on one thread, outputs preallocated (no page
// faults), bytes counted as the minimal traffic. Compare with BM_Copy (memcpy) in the same run.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "kernels/fake_quant.h"

namespace k = qat::kernels;

namespace {

constexpr int64_t kN = 16 << 20;

struct Data {
  std::vector<float> x, dy, out, scale, zp;
  Data() : x(kN), dy(kN), out(kN), scale(kN / 32), zp(kN / 32, 0.0f) {
    std::mt19937 rng(0);
    std::normal_distribution<float> n01;
    for (auto& v : x) v = n01(rng);
    for (auto& v : dy) v = n01(rng);
    for (auto& v : scale) v = 0.01f + 0.001f * float(rng() % 100);
  }
};

Data& data() {
  static Data d;
  return d;
}

k::ChannelLayout layout(int granularity) {
  switch (granularity) {
    case 0: return {kN, 1};          // per tensor
    case 1: return {kN / 4096, 4096};  // per channel, 4096 rows
    default: return {32, kN / 32};   // per group of 32
  }
}

const char* kNames[] = {"per_tensor", "per_channel", "per_group32"};

void BM_Copy(benchmark::State& state) {
  Data& d = data();
  for (auto _ : state) {
    std::memcpy(d.out.data(), d.x.data(), kN * sizeof(float));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * kN * int64_t(sizeof(float)));
}

void BM_Forward(benchmark::State& state) {
  Data& d = data();
  const int g = int(state.range(0));
  state.SetLabel(kNames[g]);
  for (auto _ : state) {
    k::cpu::fake_quant_forward(k::DType::f32, d.x.data(), d.out.data(), 0, kN, layout(g),
                               {d.scale.data(), d.zp.data()}, {-128.0f, 127.0f});
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * kN * int64_t(sizeof(float)));
}

void BM_Backward(benchmark::State& state) {
  Data& d = data();
  const int g = int(state.range(0));
  const bool lsq = state.range(1) != 0;
  state.SetLabel(std::string(kNames[g]) + (lsq ? " lsq" : " ste"));
  std::vector<double> acc_s(size_t(layout(g).channels)), acc_z(acc_s.size());
  for (auto _ : state) {
    k::cpu::fake_quant_backward(k::DType::f32, d.x.data(), d.dy.data(), d.out.data(), 0, kN,
                                layout(g), {d.scale.data(), d.zp.data()}, {-128.0f, 127.0f}, 1.0f,
                                lsq ? acc_s.data() : nullptr, lsq ? acc_z.data() : nullptr);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 3 * kN * int64_t(sizeof(float)));
}

void BM_FakeCast(benchmark::State& state) {
  Data& d = data();
  const auto fmt = k::CastFormat(state.range(0));
  for (auto _ : state) {
    k::cpu::fake_cast(k::DType::f32, d.x.data(), d.out.data(), 0, kN, fmt);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * 2 * kN * int64_t(sizeof(float)));
}

}  // namespace

BENCHMARK(BM_Copy)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Forward)->DenseRange(0, 2)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Backward)->ArgsProduct({{0, 1, 2}, {0, 1}})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FakeCast)->DenseRange(0, 3)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
