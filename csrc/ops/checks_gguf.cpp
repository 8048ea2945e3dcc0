#include "checks_gguf.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "checks.h"

namespace qat::ops {
namespace {

struct Named {
  const char* name;
  kernels::GGUFType type;
};
constexpr Named kTypes[] = {
    {"Q4_0", kernels::GGUFType::Q4_0}, {"Q4_1", kernels::GGUFType::Q4_1},
    {"Q5_0", kernels::GGUFType::Q5_0}, {"Q5_1", kernels::GGUFType::Q5_1},
    {"Q8_0", kernels::GGUFType::Q8_0}, {"Q2_K", kernels::GGUFType::Q2_K},
    {"Q3_K", kernels::GGUFType::Q3_K}, {"Q4_K", kernels::GGUFType::Q4_K},
    {"Q5_K", kernels::GGUFType::Q5_K}, {"Q6_K", kernels::GGUFType::Q6_K},
    {"IQ4_NL", kernels::GGUFType::IQ4_NL},
};

void check_param(const at::Tensor& p, const at::Tensor& w, at::IntArrayRef shape, const char* op,
                 const char* name, const char* type) {
  TORCH_CHECK(p.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
              p.scalar_type());
  TORCH_CHECK(p.device() == w.device(), op, ": ", name, " is on ", p.device(), " but w is on ",
              w.device());
  TORCH_CHECK(p.sizes() == shape, op, ": ", type, " ", name, " must have shape ", shape,
              " for w of shape ", w.sizes(), ", got ", p.sizes());
}

}  // namespace

kernels::GGUFType parse_gguf_type(c10::string_view name, const char* op) {
  for (const Named& t : kTypes)
    if (name == t.name) return t.type;
  std::string known;
  for (const Named& t : kTypes) known += (known.empty() ? "" : ", ") + std::string(t.name);
  TORCH_CHECK(false, op, ": unknown GGUF lattice type '", std::string(name.data(), name.size()),
              "'; supported: ", known);
}

GGUFPlan check_gguf(const at::Tensor& w, const at::Tensor& d, const std::optional<at::Tensor>& dmin,
                    const std::optional<at::Tensor>& sub_scales,
                    const std::optional<at::Tensor>& sub_mins, c10::string_view type,
                    const char* op) {
  GGUFPlan plan;
  plan.type = parse_gguf_type(type, op);
  plan.lattice = kernels::gguf_lattice(plan.type);
  const kernels::GGUFLattice& L = plan.lattice;
  const std::string tname(type.data(), type.size());
  const auto st = w.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, op,
              ": w must be float32, float16 or bfloat16, got ", st);
  plan.dtype = kernel_dtype(w, op);
  TORCH_CHECK(w.dim() >= 1, op, ": w must have at least one dim (blocks run along the last)");
  const int64_t cols = w.size(-1);
  TORCH_CHECK(cols % L.block == 0, op, ": ", tname, " quantizes blocks of ", L.block,
              " along the last dim of w, which is ", cols, " (not a multiple of ", L.block, ")");
  std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
  shape.back() = cols / L.block;
  check_param(d, w, shape, op, "d", tname.c_str());
  auto check_optional = [&](const std::optional<at::Tensor>& p, bool wanted, at::IntArrayRef s,
                            const char* name) {
    if (!wanted) {
      TORCH_CHECK(!p.has_value(), op, ": ", tname, " has no ", name, "; pass None");
      return;
    }
    TORCH_CHECK(p.has_value(), op, ": ", tname, " needs ", name);
    check_param(*p, w, s, op, name, tname.c_str());
  };
  check_optional(dmin, L.has_dmin, shape, "dmin");
  std::vector<int64_t> sub_shape = shape;
  sub_shape.push_back(L.block / L.sub);
  check_optional(sub_scales, L.has_scales, sub_shape, "sub_scales");
  check_optional(sub_mins, L.has_mins, sub_shape, "sub_mins");
  plan.n_blocks = w.numel() / L.block;
  return plan;
}

void check_gguf_grad(const at::Tensor& grad, const at::Tensor& w, const char* op) {
  TORCH_CHECK(grad.sizes() == w.sizes(), op, ": grad shape ", grad.sizes(), " must equal w shape ",
              w.sizes());
  TORCH_CHECK(grad.device() == w.device(), op, ": grad is on ", grad.device(), " but w is on ",
              w.device());
  TORCH_CHECK(grad.is_floating_point(), op, ": grad must be floating point, got ",
              grad.scalar_type());
}

kernels::GGUFParams GGUFParamTensors::raw() const {
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; };
  return {ptr(d), ptr(dmin), ptr(scales), ptr(mins)};
}

GGUFParamTensors contiguous_params(const at::Tensor& d, const std::optional<at::Tensor>& dmin,
                                   const std::optional<at::Tensor>& sub_scales,
                                   const std::optional<at::Tensor>& sub_mins) {
  auto c = [](const std::optional<at::Tensor>& t) { return t ? t->contiguous() : at::Tensor(); };
  return {d.contiguous(), c(dmin), c(sub_scales), c(sub_mins)};
}

kernels::GGUFParamGrads GGUFGradTensors::raw() {
  auto ptr = [](at::Tensor& t) { return t.numel() > 0 ? t.mutable_data_ptr<float>() : nullptr; };
  return {ptr(d), ptr(dmin), ptr(scales), ptr(mins)};
}

GGUFGradTensors empty_param_grads(const GGUFParamTensors& p, bool param_grads, const at::Tensor& w) {
  const auto opts = w.options().dtype(at::kFloat);
  auto like = [&](const at::Tensor& t) {
    return param_grads && t.defined() ? at::empty(t.sizes(), opts) : at::empty({0}, opts);
  };
  return {like(p.d), like(p.dmin), like(p.scales), like(p.mins)};
}

}  // namespace qat::ops
