"""torch.library.opcheck on every qat op: schema, autograd registration, fake tensors, AOT dispatch."""

import pytest
import torch

import qat  # noqa: F401


def fake_quantize_samples(device):
    def make(shape, scale_shape, axis=0, group_size=None, dtype=torch.float32, learn=False, xgrad=True):
        x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(xgrad)
        s = (torch.rand(scale_shape, device=device) * 0.1 + 0.01).requires_grad_(learn)
        z = torch.randint(-4, 4, scale_shape, device=device).float().requires_grad_(learn)
        return (x, s, z, -8, 7, axis, group_size, 0.5)

    return [
        make((8, 16), (1,)),
        make((8, 16), (1,), learn=True),
        make((8, 16), (1,), xgrad=False),
        make((8, 16), (16,), axis=1, learn=True),
        make((4, 6, 5), (6,), axis=-2, dtype=torch.float16),
        make((8, 64), (8, 4), group_size=16, learn=True),
        make((3, 32), (3, 2), group_size=16, dtype=torch.bfloat16, learn=True),
        make((0, 16), (1,), learn=True),
    ]


@pytest.mark.parametrize("idx", range(8))
def test_opcheck_fake_quantize(idx, device):
    torch.library.opcheck(torch.ops.qat.fake_quantize.default, fake_quantize_samples(device)[idx])


@pytest.mark.parametrize("qparam_grads", [False, True])
def test_opcheck_fake_quantize_backward(qparam_grads, device):
    for x, s, z, qmin, qmax, axis, group, gf in fake_quantize_samples(device):
        args = (torch.randn_like(x), x.detach(), s.detach(), z.detach(), qmin, qmax, axis, group, gf, qparam_grads)
        torch.library.opcheck(torch.ops.qat.fake_quantize_backward.default, args)


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_opcheck_fake_cast(fmt, device):
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(7, 9, device=device) * 100).to(dtype).requires_grad_()
        torch.library.opcheck(torch.ops.qat.fake_cast.default, (x, fmt))
