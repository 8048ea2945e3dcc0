"""The quantizers QuantSpec builds, against torch.ao observers and PyTorch's built-in fake
quantization on fresh random tensors."""

import pytest
import torch
from torch.ao.quantization import observer as ao

import qat
from qat.float_spec import FORMAT_DTYPES

QS = qat.QuantSpec


def ao_per_channel(x2d, quant_min, quant_max, symmetric, signed=True):
    """torch.ao's per-row qparams of a 2-D tensor and its built-in fake quantization."""
    obs = ao.PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8 if signed else torch.quint8,
        qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine,
        quant_min=quant_min, quant_max=quant_max)
    obs(x2d)
    scale, zp = obs.calculate_qparams()
    return torch.fake_quantize_per_channel_affine(x2d, scale.float(), zp.int(), 0, quant_min, quant_max)


def ao_per_tensor(x, quant_min, quant_max, symmetric, signed=True):
    obs = ao.MinMaxObserver(dtype=torch.qint8 if signed else torch.quint8,
                            qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
                            quant_min=quant_min, quant_max=quant_max)
    obs(x)
    scale, zp = obs.calculate_qparams()
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), quant_min, quant_max)


@pytest.mark.parametrize("bits, signed, symmetric", [(8, True, True), (8, False, False), (4, True, True),
                                                     (4, True, False), (3, False, False)])
def test_weight_minmax_per_channel_and_group_equal_torch_ao(bits, signed, symmetric):
    # (Not unsigned symmetric: torch.ao's midpoint zero point is 128 per tensor but 127 per
    # channel for uint8, and rounded down for other widths; qat uses (qmin + qmax + 1) // 2.)
    w = torch.randn(12, 64) * torch.rand(12, 1) * 3
    spec = QS(bits=bits, signed=signed, symmetric=symmetric, granularity="channel")
    q = spec.make_quantizer("weight")
    assert torch.equal(q(w), ao_per_channel(w, spec.quant_min, spec.quant_max, symmetric, signed))
    spec = QS(bits=bits, signed=signed, symmetric=symmetric, granularity="group", group_size=16)
    q = spec.make_quantizer("weight")
    ref = ao_per_channel(w.reshape(-1, 16), spec.quant_min, spec.quant_max, symmetric, signed).reshape(w.shape)
    assert torch.equal(q(w), ref)
    spec = QS(bits=bits, signed=signed, symmetric=symmetric)
    q = spec.make_quantizer("weight")
    assert torch.equal(q(w), ao_per_tensor(w, spec.quant_min, spec.quant_max, symmetric, signed))


def test_weight_quantizer_follows_the_current_weight_until_frozen():
    q = QS.int8_per_channel().make_quantizer("weight")
    w1, w2 = torch.randn(4, 8), torch.randn(4, 8) * 5
    q(w1)
    s1 = q.scale.clone()
    assert torch.equal(q(w2), ao_per_channel(w2, -128, 127, True))
    qat.freeze_observers(q)
    s2 = q.scale.clone()
    assert not torch.equal(s1, s2)
    out = q(w1)  # frozen: w2's range applies to w1
    assert torch.equal(q.scale, s2)
    ref = torch.fake_quantize_per_channel_affine(w1, s2, torch.zeros(4, dtype=torch.int32), 0, -128, 127)
    assert torch.equal(out, ref)


def test_weight_moving_average_observer_moves_in_training_only():
    spec = QS(bits=8, granularity="channel", observer="moving_average", averaging_constant=0.5)
    q = spec.make_quantizer("weight")
    w = torch.randn(3, 8)
    q(w)
    lo1 = q.observer.min_val.clone()
    q(w * 4)
    assert torch.allclose(q.observer.min_val, lo1 + 0.5 * (4 * lo1 - lo1))
    q.eval()
    before = q.scale.clone()
    q(w * 100)
    assert torch.equal(q.scale, before)


@pytest.mark.parametrize("observer", ["mse", "percentile", "entropy", "histogram"])
def test_weight_observers_other_than_minmax_look_at_the_current_weight(observer):
    gran = "channel" if observer == "mse" else "tensor"
    q = QS(bits=4, granularity=gran, observer=observer).make_quantizer("weight")
    make = {"mse": lambda: qat.observers.MSEObserver(-8, 7, True, axis=0),
            "percentile": lambda: qat.observers.PercentileObserver(-8, 7, True),
            "histogram": lambda: qat.observers.PercentileObserver(-8, 7, True),
            "entropy": lambda: qat.observers.EntropyObserver(-8, 7, True)}[observer]
    for w in (torch.randn(8, 128), torch.randn(8, 128) * 3):  # the second call forgets the first
        w[0, 0] = 12.0
        obs = make()
        obs(w)
        scale, zero_point = obs.calculate_qparams()
        assert torch.equal(q(w), qat.ops.fake_quantize(w, scale, zero_point, -8, 7, 0))


def test_activation_moving_average_equals_torch_ao_fused_and_eval_is_frozen():
    spec = QS.uint8_per_tensor(averaging_constant=0.1)
    q = spec.make_quantizer("input")
    ref = torch.ao.quantization.FusedMovingAvgObsFakeQuantize(
        observer=ao.MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
        qscheme=torch.per_tensor_affine, averaging_constant=0.1)
    for step in range(4):
        x = torch.randn(16, 24) * (step + 1) + step
        assert torch.equal(q(x), ref(x))
    assert torch.equal(q.scale, ref.scale)
    q.eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    x = torch.randn(16, 24) * 50
    y = q(x)
    for k, v in q.state_dict().items():
        assert torch.equal(v, state[k]), k
    expected = torch.fake_quantize_per_tensor_affine(x, float(q.scale), int(q.zero_point), 0, 255)
    assert torch.equal(y, expected)


def test_activation_running_minmax_observer():
    spec = QS(bits=8, symmetric=False, signed=False, observer="minmax")
    q = spec.make_quantizer("output")
    xs = [torch.randn(8, 10) * (i + 1) for i in range(3)]
    for x in xs:
        y = q(x)
    everything = torch.cat(xs)
    lo, hi = everything.min(), everything.max()
    obs = ao.MinMaxObserver(dtype=torch.quint8)
    obs(everything)
    scale, zp = obs.calculate_qparams()
    assert torch.equal(q.scale, scale) and torch.equal(q.zero_point, zp.float())
    assert torch.equal(y, torch.fake_quantize_per_tensor_affine(xs[-1], float(scale), int(zp), 0, 255))
    assert lo < 0 < hi


@pytest.mark.parametrize("symmetric", [True, False])
def test_dynamic_per_token_equals_per_row_reference(symmetric):
    spec = QS(bits=8, granularity="token", dynamic=True, symmetric=symmetric)
    q = spec.make_quantizer("input")
    x = torch.randn(2, 5, 48) * torch.rand(2, 5, 1) * 4
    x.requires_grad_()
    y = q(x)
    x_ref = x.detach().reshape(-1, 48).requires_grad_()
    ref = ao_per_channel(x_ref, -128, 127, symmetric)
    assert torch.equal(y, ref.reshape(x.shape))
    dy = torch.randn_like(y)
    y.backward(dy)  # the clipped straight-through estimator of the built-in
    ref.backward(dy.reshape(-1, 48))
    assert torch.equal(x.grad, x_ref.grad.reshape(x.shape))
    assert list(q.state_dict()) == []


def test_dynamic_per_tensor():
    q = QS(bits=4, dynamic=True, symmetric=False, signed=False).make_quantizer("output")
    x = torch.randn(7, 9)
    assert torch.equal(q(x), ao_per_tensor(x, 0, 15, False, False))


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_float_spec_quantizer_equals_a_round_trip_cast(fmt):
    q = qat.FloatSpec(fmt).make_quantizer("weight")
    x = torch.randn(64, 33) * 3  # within every format's range: the cast round trip is the reference
    assert torch.equal(q(x), x.to(FORMAT_DTYPES[fmt]).float())


def test_learnable_weight_initializes_and_gets_gradients():
    q = QS.int4_per_group(16, learnable=True, symmetric=False).make_quantizer("weight")
    w = torch.randn(6, 64, requires_grad=True)
    q.initialize(w.detach())
    assert q.scale.shape == (6, 4) and q.zero_point.requires_grad
    q(w).square().sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0
    assert q.zero_point.grad is not None and w.grad is not None
