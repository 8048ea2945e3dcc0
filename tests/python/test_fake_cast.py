"""qat.ops.fake_cast against torch's own dtype conversions (round to nearest even)."""

import pytest
import torch

import qat
import reference as ref
from test_fake_quantize import assert_bitwise


def representable(fmt):
    """Every finite value of the format (fp8), or a dense sample of them (fp16, bf16)."""
    dtype = ref.FORMATS[fmt][0]
    if fmt.startswith("fp8"):
        v = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    else:
        v = torch.randint(-32768, 32768, (20000,), dtype=torch.int32).to(torch.int16).view(dtype).float()
    return v[torch.isfinite(v)].unique()


def cast_inputs(fmt, device, dtype):
    v = representable(fmt)
    mids = (v[1:] + v[:-1]) / 2  # exact ties between neighbours (fp32 holds them exactly)
    max_value = ref.FORMATS[fmt][1]
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), max_value * 1.01,
                            -max_value * 1.01, 1e38, -3e38, 1e-40, -1e-45, 2.0**-149])
    wide = torch.randn(5000) * torch.exp2(torch.randint(-40, 40, (5000,)).float())
    x = torch.cat([v, mids, torch.nextafter(mids, torch.tensor(float("inf"))), special, wide])
    return x.to(dtype).to(device)


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fake_cast_matches_torch_conversion(fmt, dtype, device):
    x = cast_inputs(fmt, device, dtype)
    y = qat.ops.fake_cast(x, fmt)
    expected = ref.fake_cast(x, fmt)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(y), nan)
    assert_bitwise(y[~nan], expected[~nan])


@pytest.mark.parametrize("fmt", ["fp16", "fp8_e4m3", "fp8_e5m2"])
def test_fake_cast_saturates(fmt, device):
    max_value = ref.FORMATS[fmt][1]
    y = qat.ops.fake_cast(torch.tensor([1e9, -1e9, float("inf")], device=device), fmt)
    expected_inf = float("inf") if ref.FORMATS[fmt][2] else max_value
    assert y.tolist() == [max_value, -max_value, expected_inf]


def test_fake_cast_straight_through_gradient(device):
    x = (torch.randn(4, 33, device=device) * 1000).requires_grad_()
    dy = torch.randn_like(x)
    qat.ops.fake_cast(x[:, ::2], "fp8_e4m3").backward(dy[:, ::2])
    expected = torch.zeros_like(dy)
    expected[:, ::2] = dy[:, ::2]
    assert torch.equal(x.grad, expected)
    empty = torch.empty(0, 3, device=device)
    assert qat.ops.fake_cast(empty, "bf16").shape == (0, 3)
