"""qat.gguf / GGUFSpec, GGUFFakeQuantize and GGUFWeight: the spec contract, reference
initialization, learning, and convert's promise: the GGUF bytes decode (exporter core and
gguf-py) to exactly the weight the QAT forward used, for every type, after training."""

import numpy as np
import pytest
import torch
from torch import nn

import qat
from qat.export import gguf as G
from qat.formats.gguf import GGUF_TYPES, GGUFFakeQuantize, GGUFSpec, GGUFWeight

LATTICE = qat.ops.GGUF_LATTICE_TYPES


def weight(t, rows=4, blocks=2, dtype=torch.float32):
    block = G.type_info(t).block_size if t in LATTICE else 32
    w = torch.randn(rows, blocks * max(block, 32)) * torch.logspace(-2, 0, rows).unsqueeze(1)
    w[0, :8] = 0.0
    w[1, 3] = 9.0
    return w.to(dtype)


def bits(t):
    return t.float().view(torch.int32)


# ---- spec ------------------------------------------------------------------------------------

def test_spec_basics():
    s = qat.gguf("q4_k")
    assert s == GGUFSpec("Q4_K") and s.type == "Q4_K" and s.kind == "gguf" and s.learnable
    assert qat.spec_from_dict(s.to_dict()) == s
    assert qat.spec_from_dict({"kind": "gguf", "type": "Q8_0", "learnable": False}) == qat.gguf("Q8_0", learnable=False)
    for t in GGUF_TYPES:
        info = G.type_info(t)
        assert GGUFSpec(t).bits_per_weight() == info.bits_per_weight
        assert GGUFSpec(t).storage_bytes((8, 512)) == G.quantized_nbytes((8, 512), t)
    assert GGUFSpec("Q4_K").bits_per_weight() == 4.5 and GGUFSpec("Q6_K").bits_per_weight() == 6.5625
    assert GGUFSpec("Q5_0").describe() == "Q5_0"
    with pytest.raises(ValueError, match="unknown or unsupported GGUF type 'Q9_K'.*Q4_K"):
        qat.gguf("Q9_K")
    with pytest.raises(ValueError, match="unsupported"):
        qat.gguf("IQ4_XS")  # a real type, but no lattice here
    with pytest.raises(TypeError):
        qat.gguf(4)
    with pytest.raises(ValueError, match="unknown GGUFSpec key"):
        qat.spec_from_dict({"kind": "gguf", "type": "Q4_K", "bits": 4})
    with pytest.raises(ValueError, match="GGUF types store weights"):
        s.make_quantizer("input")
    with pytest.raises(ValueError, match="role"):
        s.make_quantizer("bias")
    assert isinstance(s.make_quantizer("weight"), GGUFFakeQuantize)


# ---- quantizer -------------------------------------------------------------------------------

@pytest.mark.parametrize("t", LATTICE)
def test_initialized_from_reference_quantizer(t):
    w = weight(t)
    q = GGUFFakeQuantize(t)
    y = q(w)  # lazily initialized
    ref = G.unpack_params(G.quantize(w, t), t, w.shape)
    assert torch.equal(q.d, ref.d)
    for mine, theirs in ((q.dmin, ref.dmin), (q.sub_scales, ref.scales), (q.sub_mins, ref.mins)):
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert torch.equal(mine, theirs.float()) and mine.dtype == torch.float32
    assert torch.equal(y, qat.ops.gguf_fake_quantize(w, q.d, q.dmin, q.sub_scales, q.sub_mins, t))
    assert all(p.requires_grad for p in q.parameters())


def _train(q, w, steps=3, lr=1e-3):
    """A few steps on weight and parameters toward a perturbed target."""
    w = w.clone().requires_grad_()
    q.initialize(w.detach())
    target = w.detach() + 0.01 * torch.randn_like(w)
    opt = torch.optim.Adam([w, *q.parameters()], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        ((q(w) - target) ** 2).mean().backward()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("t", GGUF_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_converted_bytes_decode_to_forward(t, dtype):
    """After training, quantize_weight's bytes decode to exactly the eval-mode forward: through
    GGUFWeight.dequantize (the exporter core, llama.cpp's decoder) and through gguf-py."""
    gguf_py = pytest.importorskip("gguf")
    q = GGUFFakeQuantize(t)
    w = _train(q, weight(t, dtype=dtype))
    q.eval()
    y = q(w)
    gw = q.quantize_weight(w)
    assert isinstance(gw, GGUFWeight) and gw.data.dtype == torch.uint8
    assert gw.type_name == t and gw.shape == w.shape and gw.dtype == dtype
    assert gw.nbytes == G.quantized_nbytes(w.shape, t)
    assert torch.equal(bits(gw.dequantize()), bits(y)) and gw.dequantize().dtype == dtype
    raw = gw.data.numpy().reshape(w.shape[0], -1)
    decoded = gguf_py.quants.dequantize(raw, getattr(gguf_py.GGMLQuantizationType, t))
    assert torch.equal(bits(torch.from_numpy(np.ascontiguousarray(decoded, dtype=np.float32)).to(dtype)), bits(y))


@pytest.mark.parametrize("t", ["Q4_0", "Q3_K", "Q4_K"])
def test_qat_training_fits_a_teacher(t):
    """A linear student with a GGUF weight, started from a perturbed teacher, learns the
    teacher through the lattice (weights with the straight-through gradient, block parameters
    with LSQ): the task loss at least halves."""
    torch.manual_seed(0)
    teacher = torch.randn(16, 256) / 16
    x = torch.randn(512, 256)
    target = x @ teacher.t()
    w = (teacher + 0.05 * torch.randn_like(teacher)).requires_grad_()
    q = GGUFFakeQuantize(t)
    q.initialize(w.detach())
    opt = torch.optim.Adam([{"params": [w], "lr": 2e-3}, {"params": list(q.parameters()), "lr": 1e-5}])

    def loss():
        return ((x @ q(w).t() - target) ** 2).mean()

    start = loss().item()
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * start


def test_state_dict_round_trip():
    t = "Q5_K"
    q = GGUFFakeQuantize(t)
    w = _train(q, weight(t))
    fresh = GGUFFakeQuantize(t)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(w), q(w))
    gw = q.quantize_weight(w)
    again = GGUFWeight(torch.zeros_like(gw.data), t, w.shape)
    again.load_state_dict(gw.state_dict())
    assert torch.equal(again.dequantize(), gw.dequantize())
    with pytest.raises(RuntimeError, match="takes"):
        GGUFWeight(torch.zeros(G.quantized_nbytes((2, 256), t), dtype=torch.uint8), t, (2, 256)).load_state_dict(gw.state_dict())


def test_switches_and_errors():
    q = GGUFFakeQuantize("Q4_K", learnable=False)
    w = weight("Q4_K")
    y = q(w)
    assert not any(p.requires_grad for p in q.parameters())
    q.set_learnable(True)
    assert all(p.requires_grad for p in q.parameters())
    q.enable_fake_quant(False)
    assert q(w) is w
    with pytest.raises(ValueError, match="disabled"):
        q.quantize_weight(w)
    q.enable_fake_quant(True)
    assert torch.equal(q(w), y)
    with pytest.raises(ValueError, match="blocks of 256 along the weight's last dim, which is 96"):
        GGUFFakeQuantize("Q4_K").initialize(torch.randn(2, 96))
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        q.quantize_weight(bad)
    with pytest.raises(ValueError, match="NaN"):
        GGUFFakeQuantize("Q8_0").initialize(bad)
    with pytest.raises(RuntimeError, match="d must have shape"):
        q(torch.randn(3, 256))  # sized for another weight
    with pytest.raises(TypeError):
        GGUFWeight(torch.zeros(10), "Q4_K", (1, 256))
    with pytest.raises(ValueError, match="144 bytes"):
        GGUFWeight(torch.zeros(10, dtype=torch.uint8), "Q4_K", (1, 256))
    assert "Q4_K" in repr(q) and "Q4_K" in repr(q.quantize_weight(w))


@pytest.mark.parametrize("t", ["F32", "F16", "BF16"])
def test_float_types(t):
    q = qat.gguf(t).make_quantizer("weight")
    w = torch.randn(3, 40) * 1e3
    w[0, 0] = 1e6  # beyond fp16: saturates in the forward, so the stored value is finite
    y = q(w)
    assert list(q.parameters()) == []
    expected = {"F32": w, "F16": qat.ops.fake_cast(w, "fp16"), "BF16": qat.ops.fake_cast(w, "bf16")}[t]
    assert torch.equal(y, expected)
    gw = q.quantize_weight(w)
    assert torch.equal(gw.dequantize(), y)
    assert gw.data.numel() == G.quantized_nbytes(w.shape, t)


def test_prepare_convert_linear():
    """Through the QAT API: a plan of GGUF types, a training step, convert: the converted model
    computes exactly what the prepared one does, from the GGUF bytes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 32))
    plan = qat.Plan([qat.Rule(pattern="0", weight=qat.gguf("Q4_K")), qat.Rule(pattern="2", weight=qat.gguf("Q8_0"))])
    prepared = qat.prepare(model, plan)
    opt = torch.optim.Adam(prepared.parameters(), lr=1e-3)
    x = torch.randn(8, 256)
    prepared(x).pow(2).mean().backward()
    opt.step()
    prepared.eval()
    converted = qat.convert(prepared)
    assert isinstance(converted[0].quantized_weight, GGUFWeight)
    assert converted[0].quantized_weight.type_name == "Q4_K"
    assert torch.equal(converted(x), prepared(x))


def test_compile_module():
    t = "Q6_K"
    q = GGUFFakeQuantize(t)
    w = weight(t).requires_grad_()
    q.initialize(w.detach())
    f = torch.compile(lambda w: q(w).sum(), fullgraph=True, backend="aot_eager")
    f(w).backward()
    g = w.grad.clone()
    w.grad = None
    q(w).sum().backward()
    assert torch.equal(g, w.grad)
