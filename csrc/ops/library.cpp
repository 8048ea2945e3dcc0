// The one place every qat operator schema is defined. Implementations register per dispatch
// key in impl_cpu.cpp, impl_cuda.cpp and autograd.cpp; fake (meta) kernels live in qat/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(qat, m) {
  // ---- fake quantization ----
  m.def(
      "fake_quantize(Tensor x, Tensor scale, Tensor zero_point, int quant_min, int quant_max, "
      "int axis=0, int? group_size=None, float grad_factor=1.0) -> Tensor");
  // One pass over memory: grad_x and, when qparam_grads, the LSQ scale / zero-point reductions.
  m.def(
      "fake_quantize_backward(Tensor grad, Tensor x, Tensor scale, Tensor zero_point, "
      "int quant_min, int quant_max, int axis, int? group_size, float grad_factor, "
      "bool qparam_grads) -> (Tensor, Tensor, Tensor)");
  m.def("fake_cast(Tensor x, str fmt) -> Tensor");

  // ---- observers ----
  // Folds x's finite elements into running_min / running_max (granularity from their shape, as
  // for fake_quantize's scale) when `enabled` is nonzero; averaging_constant=None keeps the
  // plain running min / max, a value gives torch.ao's moving average.
  m.def(
      "update_minmax(Tensor x, Tensor(a!) running_min, Tensor(b!) running_max, Tensor enabled, "
      "float? averaging_constant=None, int axis=0, int? group_size=None) -> ()");
  // Running histogram of x's finite elements over the canonical grid of range = [min, max].
  m.def("update_histogram(Tensor x, Tensor(a!) histogram, Tensor(b!) range, Tensor enabled) -> ()");
  // The histogram of `range` re-binned, exactly, onto the grid of the wider `new_range`.
  m.def("rebin_histogram(Tensor histogram, Tensor range, Tensor new_range) -> Tensor");
  // [min, max] clipping range from a histogram: method "percentile" (param: percent of the
  // mass kept) or "entropy" (TensorRT's KL search; param unused), symmetric or affine.
  m.def(
      "histogram_clip_range(Tensor histogram, Tensor range, str method, float param, "
      "int quant_levels, bool symmetric) -> Tensor");
  // torch.ao observers' scale / zero_point from min / max (float32 tensors of the same shape).
  m.def(
      "choose_qparams(Tensor min, Tensor max, int quant_min, int quant_max, bool symmetric) "
      "-> (Tensor, Tensor)");
  // Squared fake-quant error of x for each clipping candidate ratios[r] * [min, max], per
  // tensor / channel / group (min's shape), in one pass over x: shape min.shape + [R], float64.
  m.def(
      "mse_errors(Tensor x, Tensor min, Tensor max, Tensor ratios, int quant_min, int quant_max, "
      "bool symmetric, int axis=0, int? group_size=None) -> Tensor");
  // torch.fused_moving_avg_obs_fake_quant's semantics, any channel axis, float zero points.
  m.def(
      "observe_fake_quantize(Tensor x, Tensor observer_on, Tensor fake_quant_on, "
      "Tensor(a!) running_min, Tensor(b!) running_max, Tensor(c!) scale, Tensor(d!) zero_point, "
      "float averaging_const, int quant_min, int quant_max, int ch_axis, "
      "bool per_row_fake_quant=False, bool symmetric_quant=False) -> Tensor",
      // Any strides do (the kernels read contiguous copies). The default, needs_exact_strides,
      // trips torch 2.13 inductor's decomposition of a mutating op that also returns a tensor.
      {at::Tag::flexible_layout});

  // ---- palettization ----
  // x is split along dim 0 into `groups` equal parts (a LUT per tensor, or per group of output
  // channels). k-means centroids of each part, float32 [groups, num_centroids] ascending;
  // non-finite values are ignored. Runs on the host (CUDA input is copied there and back).
  m.def("kmeans_1d(Tensor x, int num_centroids, int groups=1, int max_iters=300) -> Tensor");
  // y = lut[g, nearest centroid of x] with groups = lut.size(0), ties to the lower index.
  // Gradients: straight-through for x; lut[g, j] gets the sum of grad over the elements mapped to j.
  m.def("lut_fake_quantize(Tensor x, Tensor lut) -> Tensor");
  m.def("lut_fake_quantize_backward(Tensor grad, Tensor x, Tensor lut) -> Tensor");
  // uint8 nearest-centroid indices, x's shape: what a palettized weight stores.
  m.def("lut_indices(Tensor x, Tensor lut) -> Tensor");

  // ---- GGUF lattices ----
  // The exact lattice of a GGUF type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K, IQ4_NL) along
  // w's last dim: d / dmin used as stored in fp16, sub-block scales / mins rounded to the format's
  // integers, codes by the format's rule, y decoded in ggml's fp32 order (kernels/gguf_lattice.h).
  // d, dmin: [*w.shape[:-1], blocks]; sub_scales, sub_mins: [..., blocks, sub-blocks].
  m.def(
      "gguf_fake_quantize(Tensor w, Tensor d, Tensor? dmin, Tensor? sub_scales, "
      "Tensor? sub_mins, str type) -> Tensor");
  // (grad_w, grad_d, grad_dmin, grad_sub_scales, grad_sub_mins); the parameter gradients are
  // empty [0] for parameters the type lacks, and all four when not param_grads.
  m.def(
      "gguf_fake_quantize_backward(Tensor grad, Tensor w, Tensor d, Tensor? dmin, "
      "Tensor? sub_scales, Tensor? sub_mins, str type, bool param_grads) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // int8 stored codes, w's shape: what the exported blocks hold.
  m.def(
      "gguf_codes(Tensor w, Tensor d, Tensor? dmin, Tensor? sub_scales, Tensor? sub_mins, "
      "str type) -> Tensor");
}
