// CPU kernels: plain loops over one channel's contiguous run, written so GCC vectorizes them,
// compiled for several x86 levels with target_clones and picked at load time.
#include "../fake_quant.h"
#include "cpu_common.h"

namespace qat::kernels::cpu {
namespace {

template <class T>
QAT_INLINE void forward_run(const typename T::Storage* x, typename T::Storage* y, int64_t n,
                            float scale, float zero_point, QuantRange r) {
  float s = effective_scale(scale);
  float inv = 1.0f / s;
  float zp = effective_zero_point(zero_point, r.quant_min, r.quant_max);
  for (int64_t i = 0; i < n; ++i)
    y[i] = T::store(fake_quant_value(T::load(x[i]), s, inv, zp, r.quant_min, r.quant_max));
}

// inner == 1: one row of channels (x, y point at the row's start), parameters read per element.
template <class T>
QAT_INLINE void forward_rows(const typename T::Storage* x, typename T::Storage* y, int64_t c_begin,
                             int64_t c_end, QParams qp, QuantRange r) {
  for (int64_t c = c_begin; c < c_end; ++c) {
    float s = effective_scale(qp.scale[c]);
    float zp = effective_zero_point(qp.zero_point[c], r.quant_min, r.quant_max);
    y[c] = T::store(fake_quant_value(T::load(x[c]), s, 1.0f / s, zp, r.quant_min, r.quant_max));
  }
}

template <class T>
QAT_INLINE void forward(const void* xv, void* yv, int64_t begin, int64_t end, ChannelLayout layout,
                        QParams qp, QuantRange r) {
  auto x = static_cast<const typename T::Storage*>(xv);
  auto y = static_cast<typename T::Storage*>(yv);
  if (layout.inner == 1 && layout.channels > 1) {
    // Whole rows of channels vectorize: walk row by row so c runs 0..channels-1.
    for_each_run(begin, end, ChannelLayout{layout.channels, 1}, [&](int64_t, int64_t a, int64_t b) QAT_INLINE_LAMBDA {
      int64_t c0 = a % layout.channels;
      forward_rows<T>(x + a - c0, y + a - c0, c0, c0 + (b - a), qp, r);
    });
    return;
  }
  for_each_run(begin, end, layout, [&](int64_t c, int64_t a, int64_t b) QAT_INLINE_LAMBDA {
    forward_run<T>(x + a, y + a, b - a, qp.scale[c], qp.zero_point[c], r);
  });
}

template <class T>
QAT_INLINE void backward_ste_run(const typename T::Storage* x, const typename T::Storage* dy,
                                 typename T::Storage* dx, int64_t n, float scale,
                                 float zero_point, QuantRange r) {
  float inv = 1.0f / effective_scale(scale);
  float zp = effective_zero_point(zero_point, r.quant_min, r.quant_max);
  for (int64_t i = 0; i < n; ++i) {
    float g = T::load(dy[i]);
    bool keep = fake_quant_in_range(T::load(x[i]), inv, zp, r.quant_min, r.quant_max);
    dx[i] = T::store(g * (keep ? 1.0f : 0.0f));
  }
}

// LSQ over one run: dx per element, the scale / zero-point terms summed into double lanes
// (a fixed lane layout lets the compiler vectorize the sum without reassociating it).
template <class T>
QAT_INLINE void backward_lsq_run(const typename T::Storage* x, const typename T::Storage* dy,
                                 typename T::Storage* dx, int64_t n, float scale,
                                 float zero_point, QuantRange r, float grad_factor,
                                 double* sum_scale, double* sum_zp) {
  constexpr int kLanes = 16;
  float s = effective_scale(scale);
  float inv = 1.0f / s;
  float zp = effective_zero_point(zero_point, r.quant_min, r.quant_max);
  double lane_s[kLanes] = {}, lane_z[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      LsqGrads g = lsq_grads(T::load(x[i + j]), T::load(dy[i + j]), s, inv, zp, r.quant_min,
                             r.quant_max, grad_factor);
      dx[i + j] = T::store(g.dx);
      lane_s[j] += double(g.dscale);
      lane_z[j] += double(g.dzero_point);
    }
  }
  for (; i < n; ++i) {
    LsqGrads g = lsq_grads(T::load(x[i]), T::load(dy[i]), s, inv, zp, r.quant_min, r.quant_max,
                           grad_factor);
    dx[i] = T::store(g.dx);
    lane_s[0] += double(g.dscale);
    lane_z[0] += double(g.dzero_point);
  }
  double ts = 0.0, tz = 0.0;
  for (int j = 0; j < kLanes; ++j) {
    ts += lane_s[j];
    tz += lane_z[j];
  }
  *sum_scale += ts;
  *sum_zp += tz;
}

// inner == 1: one row of channels, parameters and accumulators indexed per element.
template <class T>
QAT_INLINE void backward_rows(const typename T::Storage* x, const typename T::Storage* dy,
                              typename T::Storage* dx, int64_t c_begin, int64_t c_end, QParams qp,
                              QuantRange r, float grad_factor, double* acc_scale, double* acc_zp) {
  for (int64_t c = c_begin; c < c_end; ++c) {
    float s = effective_scale(qp.scale[c]);
    float inv = 1.0f / s;
    float zp = effective_zero_point(qp.zero_point[c], r.quant_min, r.quant_max);
    float xv = T::load(x[c]), g = T::load(dy[c]);
    if (acc_scale == nullptr) {
      dx[c] = T::store(g * (fake_quant_in_range(xv, inv, zp, r.quant_min, r.quant_max) ? 1.0f : 0.0f));
    } else {
      LsqGrads l = lsq_grads(xv, g, s, inv, zp, r.quant_min, r.quant_max, grad_factor);
      dx[c] = T::store(l.dx);
      acc_scale[c] += double(l.dscale);
      acc_zp[c] += double(l.dzero_point);
    }
  }
}

template <class T>
QAT_INLINE void backward(const void* xv, const void* dyv, void* dxv, int64_t begin, int64_t end,
                         ChannelLayout layout, QParams qp, QuantRange r, float grad_factor,
                         double* acc_scale, double* acc_zp) {
  auto x = static_cast<const typename T::Storage*>(xv);
  auto dy = static_cast<const typename T::Storage*>(dyv);
  auto dx = static_cast<typename T::Storage*>(dxv);
  if (layout.inner == 1 && layout.channels > 1) {
    for_each_run(begin, end, ChannelLayout{layout.channels, 1}, [&](int64_t, int64_t a, int64_t b) QAT_INLINE_LAMBDA {
      int64_t c0 = a % layout.channels;
      backward_rows<T>(x + a - c0, dy + a - c0, dx + a - c0, c0, c0 + (b - a), qp, r, grad_factor,
                       acc_scale, acc_zp);
    });
    return;
  }
  for_each_run(begin, end, layout, [&](int64_t c, int64_t a, int64_t b) QAT_INLINE_LAMBDA {
    if (acc_scale == nullptr) {
      backward_ste_run<T>(x + a, dy + a, dx + a, b - a, qp.scale[c], qp.zero_point[c], r);
    } else {
      backward_lsq_run<T>(x + a, dy + a, dx + a, b - a, qp.scale[c], qp.zero_point[c], r,
                          grad_factor, acc_scale + c, acc_zp + c);
    }
  });
}

template <class T>
QAT_INLINE void cast(const void* xv, void* yv, int64_t begin, int64_t end, CastFormat f) {
  auto x = static_cast<const typename T::Storage*>(xv);
  auto y = static_cast<typename T::Storage*>(yv);
  FloatFormat fmt = cast_format(f);
  for (int64_t i = begin; i < end; ++i) y[i] = T::store(fake_cast_value(T::load(x[i]), fmt));
}

}  // namespace

QAT_CPU_CLONES
void fake_quant_forward(DType dtype, const void* x, void* y, int64_t begin, int64_t end,
                        ChannelLayout layout, QParams qp, QuantRange range) {
  switch (dtype) {
    case DType::f32: return forward<F32>(x, y, begin, end, layout, qp, range);
    case DType::f16: return forward<F16>(x, y, begin, end, layout, qp, range);
    case DType::bf16: return forward<BF16>(x, y, begin, end, layout, qp, range);
  }
}

QAT_CPU_CLONES
void fake_quant_backward(DType dtype, const void* x, const void* dy, void* dx, int64_t begin,
                         int64_t end, ChannelLayout layout, QParams qp, QuantRange range,
                         float grad_factor, double* acc_scale, double* acc_zero_point) {
  switch (dtype) {
    case DType::f32:
      return backward<F32>(x, dy, dx, begin, end, layout, qp, range, grad_factor, acc_scale,
                           acc_zero_point);
    case DType::f16:
      return backward<F16>(x, dy, dx, begin, end, layout, qp, range, grad_factor, acc_scale,
                           acc_zero_point);
    case DType::bf16:
      return backward<BF16>(x, dy, dx, begin, end, layout, qp, range, grad_factor, acc_scale,
                            acc_zero_point);
  }
}

QAT_CPU_CLONES
void fake_cast(DType dtype, const void* x, void* y, int64_t begin, int64_t end, CastFormat fmt) {
  switch (dtype) {
    case DType::f32: return cast<F32>(x, y, begin, end, fmt);
    case DType::f16: return cast<F16>(x, y, begin, end, fmt);
    case DType::bf16: return cast<BF16>(x, y, begin, end, fmt);
  }
}

}  // namespace qat::kernels::cpu
