// The one place every qat operator schema is defined. Implementations register per dispatch
// key in impl_cpu.cpp, impl_cuda.cpp and autograd.cpp; fake (meta) kernels live in qat/ops.py.
#include <torch/library.h>

TORCH_LIBRARY(qat, m) {
  m.def(
      "fake_quantize(Tensor x, Tensor scale, Tensor zero_point, int quant_min, int quant_max, "
      "int axis=0, int? group_size=None, float grad_factor=1.0) -> Tensor");
  // One pass over memory: grad_x and, when qparam_grads, the LSQ scale / zero-point reductions.
  m.def(
      "fake_quantize_backward(Tensor grad, Tensor x, Tensor scale, Tensor zero_point, "
      "int quant_min, int quant_max, int axis, int? group_size, float grad_factor, "
      "bool qparam_grads) -> (Tensor, Tensor, Tensor)");
  m.def("fake_cast(Tensor x, str fmt) -> Tensor");
}
