// Argument checks of the GGUF lattice ops, shared by the CPU and CUDA registrations.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "kernels/gguf_lattice.h"

namespace qat::ops {

struct GGUFPlan {
  kernels::GGUFType type;
  kernels::GGUFLattice lattice;
  kernels::DType dtype;
  int64_t n_blocks;
};

// The lattice type by ggml name ("Q4_K"); fails naming the supported ones.
kernels::GGUFType parse_gguf_type(c10::string_view name, const char* op);

// w: float32/16/bf16 with a last dim that is a multiple of the type's block; d (and dmin where the
// type has it): float32 [*w.shape[:-1], w.size(-1) / block]; sub_scales / sub_mins where the
// type has them: float32 [..., n_sub]; every parameter on w's device, and none the type lacks.
GGUFPlan check_gguf(const at::Tensor& w, const at::Tensor& d, const std::optional<at::Tensor>& dmin,
                    const std::optional<at::Tensor>& sub_scales,
                    const std::optional<at::Tensor>& sub_mins, c10::string_view type,
                    const char* op);

// grad: w's shape and device.
void check_gguf_grad(const at::Tensor& grad, const at::Tensor& w, const char* op);

// Contiguous float32 copies (or views) of the parameters, and the kernels' view of them.
struct GGUFParamTensors {
  at::Tensor d, dmin, scales, mins;
  kernels::GGUFParams raw() const;
};
GGUFParamTensors contiguous_params(const at::Tensor& d, const std::optional<at::Tensor>& dmin,
                                   const std::optional<at::Tensor>& sub_scales,
                                   const std::optional<at::Tensor>& sub_mins);

// Gradient outputs of gguf_fake_quantize_backward: shaped like each parameter when param_grads
// (empty [0] for a parameter the type lacks), all empty [0] otherwise.
struct GGUFGradTensors {
  at::Tensor d, dmin, scales, mins;
  kernels::GGUFParamGrads raw();
};
GGUFGradTensors empty_param_grads(const GGUFParamTensors& p, bool param_grads, const at::Tensor& w);

}  // namespace qat::ops
