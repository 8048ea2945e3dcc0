"""Bad input gets an error that names the argument and what was expected."""

import pytest
import torch

import qat

X = torch.randn(4, 8)
S = torch.tensor([0.1])
Z = torch.tensor([0.0])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(quant_min=7, quant_max=7), r"quant_min \(7\) must be less than quant_max \(7\)"),
        (dict(quant_min=0, quant_max=1 << 20), r"at most 16-bit"),
        (dict(scale=torch.tensor([0.1], dtype=torch.float64)), r"scale must be float32"),
        (dict(zero_point=torch.tensor([0], dtype=torch.int32)), r"zero_point must be float32"),
        (dict(zero_point=torch.zeros(2)), r"zero_point shape \[2\] must equal scale shape \[1\]"),
        (dict(scale=torch.ones(3), zero_point=torch.zeros(3)), r"per-channel scale must have shape \[4\]"),
        (dict(scale=torch.ones(8), zero_point=torch.zeros(8), axis=2), r"axis 2 is out of range"),
        (dict(scale=torch.ones(4, 3), zero_point=torch.zeros(4, 3), group_size=3), r"group_size \(3\) must be positive and divide the last dim of x \(8\)"),
        (dict(scale=torch.ones(4, 3), zero_point=torch.zeros(4, 3), group_size=4), r"per-group scale must have shape \[\.\.\., 2\]"),
        (dict(x=torch.randint(0, 5, (4, 8))), r"x must be float32, float16 or bfloat16, got Long"),
        (dict(x=torch.randn(4, 8, dtype=torch.float64)), r"x must be float32, float16 or bfloat16, got Double"),
        (dict(grad_factor=float("nan")), r"grad_factor must be finite"),
    ],
)
def test_fake_quantize_rejects(kwargs, match):
    args = dict(x=X, scale=S, zero_point=Z, quant_min=-8, quant_max=7)
    args.update(kwargs)
    with pytest.raises(RuntimeError, match=match):
        qat.ops.fake_quantize(**args)


def test_fake_quantize_rejects_wrong_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    with pytest.raises(RuntimeError, match=r"scale is on cpu but x is on cuda"):
        qat.ops.fake_quantize(X.cuda(), S, Z.cuda(), -8, 7)


def test_fake_cast_rejects():
    with pytest.raises(RuntimeError, match=r"fmt must be one of fp16, bf16, fp8_e4m3, fp8_e5m2, got 'fp4'"):
        qat.ops.fake_cast(X, "fp4")
    with pytest.raises(RuntimeError, match=r"x must be float32, float16 or bfloat16, got Int"):
        qat.ops.fake_cast(torch.ones(3, dtype=torch.int32), "fp16")
