"""qat.ops.fake_quantize against PyTorch's built-ins and the plain-PyTorch reference."""

import math

import pytest
import torch

import qat
import reference as ref

BITS = range(1, 9)


def int_range(bits, signed):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def bits_of(t):
    """Bit patterns, so -0.0 != 0.0 and results are compared exactly."""
    t = t.contiguous()
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


def assert_bitwise(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    differ = bits_of(actual) != bits_of(expected)
    if differ.any():
        bad = differ.nonzero()[:5]
        raise AssertionError(f"{int(differ.sum())} elements differ, e.g. at {bad.tolist()}: "
                             f"{[actual[tuple(i)].item() for i in bad]} vs {[expected[tuple(i)].item() for i in bad]}")


def sample_x(shape, scale, quant_min, quant_max, zero_point, device, dtype=torch.float32):
    """Random values covering the whole range, saturation on both sides and exact .5 ties."""
    n = math.prod(shape)
    span = (quant_max - quant_min + 4) * scale
    x = (torch.rand(n) - 0.5) * 2 * span
    k = torch.randint(quant_min - 3, quant_max + 3, (n,)).float() - zero_point
    ties = torch.rand(n) < 0.3
    x = torch.where(ties, (k + 0.5) * scale, x)
    return x.reshape(shape).to(device=device, dtype=dtype)


def pow2_scale(shape=(1,)):
    # Power-of-two scales make x * (1/scale) exact, so the ties in sample_x are exact ties.
    return torch.full(shape, 2.0 ** torch.randint(-8, 2, ()).item())


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_per_tensor_equals_builtin(bits, signed, dtype, device):
    qmin, qmax = int_range(bits, signed)
    for scale in (pow2_scale(), torch.rand(1) * 0.2 + 0.01):
        zp = int(torch.randint(qmin, qmax + 1, ()))
        x = sample_x((64, 257), scale.item(), qmin, qmax, zp, device, dtype)
        x.requires_grad_()
        ours = qat.ops.fake_quantize(x, scale.to(device), torch.tensor([float(zp)], device=device), qmin, qmax)
        xb = x.detach().clone().requires_grad_()
        theirs = torch.fake_quantize_per_tensor_affine(xb, scale.to(device), torch.tensor([zp], device=device, dtype=torch.int32), qmin, qmax)
        assert_bitwise(ours, theirs)
        dy = torch.randn_like(ours)
        ours.backward(dy)
        theirs.backward(dy)
        assert_bitwise(x.grad, xb.grad)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,axis", [((48, 33), 0), ((48, 33), 1), ((4, 6, 5, 7), 1), ((4, 6, 5, 7), -1), ((3, 5, 8), -2)])
def test_per_channel_equals_builtin(bits, signed, dtype, shape, axis, device):
    qmin, qmax = int_range(bits, signed)
    channels = shape[axis]
    scale = torch.rand(channels) * 0.2 + 0.005
    scale[::2] = pow2_scale().item()
    zp = torch.randint(qmin, qmax + 1, (channels,))
    x = sample_x(shape, scale.mean().item(), qmin, qmax, 0, device, dtype).requires_grad_()
    ours = qat.ops.fake_quantize(x, scale.to(device), zp.float().to(device), qmin, qmax, axis=axis)
    xb = x.detach().clone().requires_grad_()
    theirs = torch.fake_quantize_per_channel_affine(xb, scale.to(device), zp.int().to(device), axis % len(shape), qmin, qmax)
    assert_bitwise(ours, theirs)
    assert_bitwise(ours, ref.fake_quantize(x.detach(), scale.to(device), zp.float().to(device), qmin, qmax, axis % len(shape)))
    dy = torch.randn_like(ours)
    ours.backward(dy)
    theirs.backward(dy)
    assert_bitwise(x.grad, xb.grad)


def assert_sum_close(actual, terms_sum, abs_terms_sum):
    # Reductions differ from any other implementation only by summation order: both qat (float64
    # accumulators) and the float64 reference are within a few float32 ulps of the exact sum.
    tol = 4 * torch.finfo(torch.float32).eps * abs_terms_sum.float() + 1e-30
    err = (actual.double() - terms_sum.double()).abs()
    assert torch.all(err <= tol.double()), f"max error {err.max().item()} > tol"


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("grad_factor", [1.0, 0.37])
def test_learnable_per_tensor_equals_builtin(bits, grad_factor, device):
    # PyTorch's per-tensor learnable *backward* turns the zero point into trunc(zp + 0.5) (so a
    # negative zp becomes zp + 1) while its forward uses nearbyint(zp); qat uses the forward's
    # value in both. They agree for zero points >= 0, which is what this comparison uses.
    qmin, qmax = int_range(bits, signed=False)
    scale = torch.rand(1) * 0.1 + 0.01
    zp = torch.randint(qmin, qmax + 1, (1,)).float()
    x = sample_x((300, 129), scale.item(), qmin, qmax, zp.item(), device)
    dy = torch.randn_like(x)
    leaves = [t.clone().to(device).requires_grad_() for t in (x, scale, zp)]
    y = qat.ops.fake_quantize(*leaves, qmin, qmax, grad_factor=grad_factor)
    y.backward(dy)
    theirs_leaves = [t.clone().to(device).requires_grad_() for t in (x, scale, zp)]
    theirs = torch._fake_quantize_learnable_per_tensor_affine(*theirs_leaves, qmin, qmax, grad_factor)
    theirs.backward(dy)
    assert_bitwise(y, theirs)
    assert_bitwise(leaves[0].grad, theirs_leaves[0].grad)
    dx, ds, dz = ref.lsq_grads(x, dy, scale.to(device), zp.to(device), qmin, qmax, grad_factor=grad_factor)
    assert_bitwise(leaves[0].grad, dx)
    for ours, theirs_g, terms in ((leaves[1].grad, theirs_leaves[1].grad, ds), (leaves[2].grad, theirs_leaves[2].grad, dz)):
        assert_sum_close(ours, ref.reduce_terms(terms, ours), ref.reduce_terms(terms.abs(), ours))
        assert_sum_close(theirs_g, ref.reduce_terms(terms, ours), ref.reduce_terms(terms.abs(), ours) * 64)


@pytest.mark.parametrize("bits,signed", [(2, True), (4, True), (8, True), (8, False)])
@pytest.mark.parametrize("shape,axis", [((64, 96), 0), ((16, 12, 9, 9), 1), ((50, 24), 1)])
def test_learnable_per_channel_equals_builtin(bits, signed, shape, axis, device):
    qmin, qmax = int_range(bits, signed)
    c = shape[axis]
    scale = torch.rand(c) * 0.1 + 0.01
    zp = torch.randint(qmin, qmax + 1, (c,)).float()
    x = sample_x(shape, scale.mean().item(), qmin, qmax, 0, device)
    dy = torch.randn_like(x)
    gf = 1.0 / math.sqrt(x.numel() / c * qmax)
    leaves = [t.clone().to(device).requires_grad_() for t in (x, scale, zp)]
    y = qat.ops.fake_quantize(*leaves, qmin, qmax, axis=axis, grad_factor=gf)
    y.backward(dy)
    tl = [t.clone().to(device).requires_grad_() for t in (x, scale, zp)]
    theirs = torch._fake_quantize_learnable_per_channel_affine(*tl, axis, qmin, qmax, gf)
    theirs.backward(dy)
    assert_bitwise(y, theirs)
    assert_bitwise(leaves[0].grad, tl[0].grad)
    _, ds, dz = ref.lsq_grads(x, dy, scale.to(device), zp.to(device), qmin, qmax, axis, grad_factor=gf)
    for ours, theirs_g, terms in ((leaves[1].grad, tl[1].grad, ds), (leaves[2].grad, tl[2].grad, dz)):
        assert_sum_close(ours, ref.reduce_terms(terms, ours, axis), ref.reduce_terms(terms.abs(), ours, axis))
        assert_sum_close(theirs_g, ref.reduce_terms(terms, ours, axis), ref.reduce_terms(terms.abs(), ours, axis) * 64)


@pytest.mark.parametrize("group_size", [1, 8, 32, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("learnable", [False, True])
def test_per_group(group_size, dtype, learnable, device):
    qmin, qmax = -8, 7
    rows, cols = 37, 256
    scale = torch.rand(rows, cols // group_size) * 0.1 + 0.01
    zp = torch.randint(qmin, qmax + 1, scale.shape).float()
    x = sample_x((rows, cols), 0.05, qmin, qmax, 0, device, dtype)
    dy = torch.randn(rows, cols, device=device).to(dtype)
    leaves = [x.clone().requires_grad_(), scale.to(device).requires_grad_(learnable), zp.to(device).requires_grad_(learnable)]
    y = qat.ops.fake_quantize(*leaves, qmin, qmax, group_size=group_size, grad_factor=0.5)
    y.backward(dy)
    assert_bitwise(y, ref.fake_quantize(x, scale.to(device), zp.to(device), qmin, qmax, group_size=group_size))
    if not learnable:
        assert_bitwise(leaves[0].grad, ref.ste_grad(x, dy, scale.to(device), zp.to(device), qmin, qmax, group_size=group_size))
        return
    dx, ds, dz = ref.lsq_grads(x, dy, scale.to(device), zp.to(device), qmin, qmax, group_size=group_size, grad_factor=0.5)
    assert_bitwise(leaves[0].grad, dx)
    assert_sum_close(leaves[1].grad, ref.reduce_terms(ds, scale, group_size=group_size), ref.reduce_terms(ds.abs(), scale, group_size=group_size))
    assert_sum_close(leaves[2].grad, ref.reduce_terms(dz, scale, group_size=group_size), ref.reduce_terms(dz.abs(), scale, group_size=group_size))
    # Same thing through PyTorch's per-channel built-in: one "channel" per group.
    if dtype == torch.float32:
        tl = [x.reshape(-1, group_size).clone().requires_grad_(), scale.flatten().to(device).requires_grad_(), zp.flatten().to(device).requires_grad_()]
        theirs = torch._fake_quantize_learnable_per_channel_affine(*tl, 0, qmin, qmax, 0.5)
        theirs.backward(dy.reshape(-1, group_size))
        assert_bitwise(y.reshape(-1, group_size), theirs)
        assert_bitwise(leaves[0].grad.reshape(-1, group_size), tl[0].grad)


def test_large_per_tensor_reduction_uses_all_threads(device):
    # Big enough for every thread to take a share of the per-thread accumulators.
    x = torch.randn(3_000_017, device=device)
    dy = torch.randn_like(x)
    scale = torch.tensor([0.02], device=device, requires_grad=True)
    zp = torch.tensor([3.0], device=device, requires_grad=True)
    qat.ops.fake_quantize(x, scale, zp, -128, 127).backward(dy)
    _, ds, dz = ref.lsq_grads(x, dy, scale.detach(), zp.detach(), -128, 127)
    assert_sum_close(scale.grad, ds.double().sum().reshape(1), ds.abs().double().sum().reshape(1))
    assert_sum_close(zp.grad, dz.double().sum().reshape(1), dz.abs().double().sum().reshape(1))


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
def test_non_contiguous_and_empty(granularity, device):
    base = torch.randn(40, 64, device=device)
    kw = {}
    if granularity == "tensor":
        scale = torch.tensor([0.03], device=device)
    elif granularity == "channel":
        scale = torch.rand(32, device=device) * 0.05 + 0.01
        kw["axis"] = 1
    else:
        scale = torch.rand(40, 2, device=device) * 0.05 + 0.01
        kw["group_size"] = 16
    zp = torch.zeros_like(scale)
    x = base[:, ::2]  # strided
    assert not x.is_contiguous()
    y = qat.ops.fake_quantize(x, scale, zp, -8, 7, **kw)
    assert_bitwise(y, ref.fake_quantize(x, scale, zp, -8, 7, **kw))
    xt = base.t().contiguous().t()[:, :32]
    assert_bitwise(qat.ops.fake_quantize(xt, scale, zp, -8, 7, **kw), ref.fake_quantize(xt.contiguous(), scale, zp, -8, 7, **kw))

    empty = torch.empty(0, 32, device=device, requires_grad=True)
    s = scale[:0].reshape(0, 2) if granularity == "group" else scale.clone()
    s = s.detach().requires_grad_()
    z = torch.zeros_like(s, requires_grad=True)
    y = qat.ops.fake_quantize(empty, s, z, -8, 7, **kw)
    assert y.shape == (0, 32)
    y.sum().backward()
    assert empty.grad.shape == (0, 32)
    assert torch.all(s.grad == 0) and torch.all(z.grad == 0)


def test_nan_inf_and_bad_scales(device):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.5, -0.25, 3.0], device=device)
    y = qat.ops.fake_quantize(x, torch.tensor([0.1], device=device), torch.tensor([0.0], device=device), -128, 127)
    assert torch.isnan(y[0])
    assert y[1:].tolist() == pytest.approx([12.7, -12.8, 12.7, -12.8, 0.5, -0.2, 3.0], rel=1e-6)
    finite = torch.randn(1000, device=device) * 100
    for bad in (0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e-45):
        scale = torch.tensor([bad], device=device, requires_grad=True)
        zp = torch.tensor([float("nan") if bad == 0.0 else 2.0], device=device, requires_grad=True)
        xs = finite.clone().requires_grad_()
        y = qat.ops.fake_quantize(xs, scale, zp, -128, 127)
        y.backward(torch.randn_like(y))
        for t in (y, xs.grad, scale.grad, zp.grad):
            assert torch.isfinite(t).all(), f"scale={bad} produced non-finite values"
        assert_bitwise(y, ref.fake_quantize(finite, scale.detach(), zp.detach(), -128, 127))


def test_nan_does_not_poison_scale_gradient(device):
    x = torch.randn(1000, device=device)
    x[::7] = float("nan")
    scale = torch.tensor([0.05], device=device, requires_grad=True)
    zp = torch.tensor([0.0], device=device, requires_grad=True)
    y = qat.ops.fake_quantize(x.requires_grad_(), scale, zp, -8, 7)
    y.backward(torch.ones_like(y))
    assert torch.isfinite(scale.grad).all() and torch.isfinite(zp.grad).all()
    assert torch.all(x.grad[::7] == 0)
