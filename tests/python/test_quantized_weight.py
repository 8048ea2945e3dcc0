"""QuantizedWeight: codes and dequantize() are exactly what qat.ops.fake_quantize computes."""

import pytest
import torch

import qat
from qat.quantized_weight import effective_qparams

QS = qat.QuantSpec


def qparams(w, axis, group_size, quant_min, quant_max, symmetric):
    """Random but plausible qparams of fake_quantize's shapes (fractional zero points
    included: a learned LSQ+ zero point is a float)."""
    if group_size is not None:
        shape = (*w.shape[:-1], w.shape[-1] // group_size)
    elif axis is None:
        shape = (1,)
    else:
        shape = (w.shape[axis],)
    scale = (torch.rand(shape) + 0.05) * w.abs().max() / (quant_max - quant_min) * 2
    if symmetric:
        zero_point = torch.full(shape, 0.0 if quant_min < 0 else float((quant_min + quant_max + 1) // 2))
    else:
        zero_point = torch.rand(shape) * (quant_max - quant_min) + quant_min
    return scale, zero_point


CASES = [  # (axis, group_size, quant_min, quant_max, symmetric)
    (None, None, -128, 127, True),
    (None, None, 0, 255, False),
    (0, None, -128, 127, True),
    (1, None, -8, 7, False),
    (0, None, 0, 15, False),
    (None, 16, -8, 7, True),
    (None, 32, 0, 3, False),
    (None, 8, -1, 0, False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("axis, group_size, quant_min, quant_max, symmetric", CASES)
def test_dequantize_is_bitwise_the_fake_quantized_weight(dtype, axis, group_size, quant_min, quant_max, symmetric):
    w = (torch.randn(24, 64) * torch.rand(24, 1) * 2).to(dtype)
    w[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30], dtype=dtype)
    scale, zero_point = qparams(w.float(), axis, group_size, quant_min, quant_max, symmetric)
    expected = qat.ops.fake_quantize(w, scale, zero_point, quant_min, quant_max, axis or 0, group_size)
    qw = qat.QuantizedWeight.quantize(w, scale, zero_point, quant_min, quant_max, axis, group_size)
    assert qw.codes.dtype == (torch.int8 if quant_min < 0 else torch.uint8)
    assert qw.codes.shape == w.shape
    assert int(qw.codes.min()) >= quant_min and int(qw.codes.max()) <= quant_max
    out = qw.dequantize()
    assert out.dtype == dtype
    assert torch.equal(out.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       expected.view(torch.int16 if dtype != torch.float32 else torch.int32))


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_codes_equal_torch_quantize_per_channel():
    """An independent reference for the codes themselves: torch's quantized tensors."""
    w = torch.randn(16, 40)
    scale = w.abs().amax(1) / 127.5
    zero_point = torch.zeros(16)
    qw = qat.QuantizedWeight.quantize(w, scale, zero_point, -128, 127, axis=0)
    ref = torch.quantize_per_channel(w, scale.double(), zero_point.long(), 0, torch.qint8).int_repr()
    assert torch.equal(qw.codes, ref)
    w = torch.randn(16, 40) + 1
    s, z = torch.tensor([0.013]), torch.tensor([37.0])
    qw = qat.QuantizedWeight.quantize(w, s, z, 0, 255)
    assert torch.equal(qw.codes, torch.quantize_per_tensor(w, 0.013, 37, torch.quint8).int_repr())


def test_degenerate_qparams_follow_fake_quantize():
    """Scales at or below 0, NaN scales and out-of-range zero points are clamped as the op clamps them."""
    w = torch.randn(6, 8)
    w[1, 2], w[2, 3] = float("inf"), float("-inf")
    scale = torch.tensor([0.0, -1.0, float("nan"), 1e-30, 0.05, 1e35])
    zero_point = torch.tensor([3.5, 2.5, -400.0, float("nan"), 0.0, 1.0])
    expected = qat.ops.fake_quantize(w, scale, zero_point, -8, 7, 0)
    qw = qat.QuantizedWeight.quantize(w, scale, zero_point, -8, 7, axis=0)
    assert torch.equal(qw.dequantize(), expected)
    s, z = effective_qparams(scale, zero_point, -8, 7)
    assert bool((s >= 2.0**-23).all()) and torch.equal(z, torch.tensor([4.0, 2.0, -8.0, -8.0, 0.0, 1.0]))


def test_errors():
    with pytest.raises(ValueError, match="NaN"):
        qat.QuantizedWeight.quantize(torch.tensor([[float("nan")]]), torch.ones(1), torch.zeros(1), -8, 7)
    with pytest.raises(ValueError, match="int8 or uint8"):
        qat.QuantizedWeight.quantize(torch.randn(2, 2), torch.ones(1), torch.zeros(1), -512, 511)
    with pytest.raises(ValueError, match="must divide"):
        qat.QuantizedWeight.quantize(torch.randn(2, 10), torch.ones(2, 3), torch.zeros(2, 3), -8, 7, group_size=3)
    with pytest.raises(TypeError, match="int8 or uint8"):
        qat.QuantizedWeight(torch.zeros(2, dtype=torch.int32), torch.ones(1), torch.zeros(1), -8, 7)


@pytest.mark.parametrize("spec", [QS.int8_per_channel(), QS.int4_per_group(16, symmetric=False),
                                  QS.int4_per_channel(learnable=True), QS(bits=5, signed=False, symmetric=False),
                                  QS(bits=3, observer="mse", granularity="channel"),
                                  QS(bits=8, granularity="channel", observer="moving_average")],
                         ids=lambda s: s.describe())
def test_quantize_weight_of_every_int_weight_quantizer(spec):
    q = spec.make_quantizer("weight")
    w = torch.randn(10, 48)
    q.initialize(w)
    q.eval()
    assert torch.equal(q.quantize_weight(w).dequantize(), q(w))


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_float_weight_is_bitwise_the_fake_cast(fmt, dtype):
    w = (torch.randn(8, 64) * 100).to(dtype)
    w[0, 0] = 1e6 if dtype != torch.float16 else 6e4  # saturates in the fp8 formats
    q = qat.FloatSpec(fmt).make_quantizer("weight")
    stored = q.quantize_weight(w)
    assert stored.data.dtype == qat.float_spec.FORMAT_DTYPES[fmt]
    assert torch.equal(stored.dequantize(), q(w))
