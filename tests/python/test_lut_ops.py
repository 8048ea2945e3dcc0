"""The palettization ops against independent references: a float64 numpy Lloyd's algorithm from
the documented initialization, brute-force argmin over every centroid, a pure-torch
straight-through estimator and scatter-add for the LUT gradient; opcheck, torch.compile, errors."""

import numpy as np
import pytest
import torch

import qat  # noqa: F401
from qat import ops

INF = float("inf")
NAN = float("nan")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# ---- references ----

def kmeans_reference(values, k, max_iters):
    """Lloyd's algorithm in float64 on one group, from the initialization qat.ops.kmeans_1d
    documents. Assignment by brute-force argmin (ties to the lower centroid), means by numpy.
    Returns (centroids, number of emptied clusters that were re-seeded)."""
    v = np.asarray(values, dtype=np.float64)
    s = np.sort(v[np.isfinite(v)] + 0.0)
    if s.size == 0:
        return np.zeros(k), 0
    u = np.unique(s)
    if u.size <= k:
        return np.concatenate([u, np.full(k - u.size, u[-1])]), 0
    m = s.size
    q = s[((2 * np.arange(k) + 1) * m) // (2 * k)]
    r = np.minimum(np.searchsorted(u, q), u.size - k + np.arange(k))
    for j in range(k):
        r[j] = max(r[j], r[j - 1] + 1 if j else 0)
    c = u[r]
    prev, iters, reseeded = None, 0, 0
    while True:
        a = np.abs(s[:, None] - c[None, :]).argmin(1)
        if (prev is not None and np.array_equal(a, prev)) or iters >= max_iters:
            break
        new = c.copy()
        empty = []
        for j in range(k):
            if (a == j).any():
                new[j] = s[a == j].mean()
            else:
                empty.append(j)
        if empty:
            au = np.abs(u[:, None] - c[None, :]).argmin(1)
            dist = np.abs(u - new[au])
            for j in empty:
                i = int(np.argmax(dist))  # first maximum: the smallest value
                new[j] = u[i]
                dist[i] = -1.0
                reseeded += 1
        c = np.sort(new)
        prev, iters = a, iters + 1
    return c, reseeded


def nearest_reference(x, lut):
    """Brute-force nearest centroid per element: argmin over every centroid of |x - c| in
    float32 (torch.argmin takes the first minimum), NaN centroids skipped, +-inf x to the
    largest / smallest centroid, NaN x to 0."""
    groups, k = lut.shape
    xf = x.float().reshape(groups, -1)
    c = lut.float()
    d = (xf[:, :, None] - c[:, None, :]).abs()
    d = torch.where(torch.isnan(c)[:, None, :], torch.full_like(d, INF), d)
    idx = d.argmin(-1)
    masked_hi = torch.where(torch.isnan(c), torch.full_like(c, -INF), c)
    masked_lo = torch.where(torch.isnan(c), torch.full_like(c, INF), c)
    hi = masked_hi.argmax(1, keepdim=True).expand_as(idx)
    lo = masked_lo.argmin(1, keepdim=True).expand_as(idx)
    idx = torch.where(xf == INF, hi, torch.where(xf == -INF, lo, idx))
    idx = torch.where(torch.isnan(xf), torch.zeros_like(idx), idx)
    return idx.reshape(x.shape)


def fake_quantize_reference(x, lut):
    idx = nearest_reference(x, lut)
    groups = lut.shape[0]
    y = torch.gather(lut.float(), 1, idx.reshape(groups, -1)).reshape(x.shape)
    return torch.where(torch.isnan(x.float()), x.float(), y).to(x.dtype)


def lut_grad_reference(grad, x, lut):
    groups, k = lut.shape
    idx = nearest_reference(x, lut).reshape(groups, -1)
    g = grad.to(x.dtype).double().reshape(groups, -1)
    g = torch.where(torch.isnan(x.float()).reshape(groups, -1), torch.zeros_like(g), g)
    return torch.zeros(groups, k, dtype=torch.float64, device=x.device).scatter_add_(1, idx, g)


def random_lut(groups, k, device, dtype=torch.float32):
    """Unsorted centroids with duplicates, so ties and the lower-index rule are exercised."""
    lut = torch.randn(groups, k, device=device) * 1.5
    if k > 2:
        lut[:, 1] = lut[:, k - 1]  # a duplicate at a lower index
    return lut.to(dtype)


# ---- k-means ----

@pytest.mark.parametrize("k,groups", [(2, 1), (16, 1), (16, 3), (64, 2)])
def test_kmeans_matches_float64_lloyd(k, groups, device):
    x = torch.randn(groups * 24, 250, device=device)  # 6000 values per group, past the radix sort threshold
    x[0, :40] *= 6  # a heavier tail in one group
    c = ops.kmeans_1d(x, k, groups)
    assert c.shape == (groups, k) and c.dtype == torch.float32 and c.device.type == device
    for g, row in enumerate(x.reshape(groups, -1).cpu().double().numpy()):
        ref, _ = kmeans_reference(row, k, 300)
        torch.testing.assert_close(c[g].cpu(), torch.from_numpy(ref).float(), rtol=1e-6, atol=1e-7)
        assert (c[g][1:] > c[g][:-1]).all()


@pytest.mark.parametrize("max_iters", [0, 1, 3])
def test_kmeans_max_iters(max_iters):
    x = torch.randn(4000)
    ref, _ = kmeans_reference(x.double().numpy(), 8, max_iters)
    torch.testing.assert_close(ops.kmeans_1d(x, 8, 1, max_iters)[0], torch.from_numpy(ref).float(),
                               rtol=1e-6, atol=1e-7)


def test_kmeans_reseeds_empty_clusters():
    # In 1-D, Lloyd's iterations from quantiles rarely empty a cluster; this data set (found by
    # searching) does: {8, 9} takes the second centroid's values, which then gets reseeded.
    data = [8.0] * 5 + [9.0] * 4 + [18.0] + [21.0] * 4 + [27.0] * 4 + [29.0] * 4 + [38.0]
    ref, reseeded = kmeans_reference(np.array(data), 4, 300)
    assert reseeded > 0
    c = ops.kmeans_1d(torch.tensor(data), 4)[0]
    torch.testing.assert_close(c, torch.from_numpy(ref).float(), rtol=1e-6, atol=1e-7)
    assert (c[1:] > c[:-1]).all()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_beats_uniform_quantization(bits):
    w = torch.randn(256, 256)
    k = 1 << bits
    lut = ops.kmeans_1d(w, k)
    err_lut = (ops.lut_fake_quantize(w, lut) - w).pow(2).mean()
    lo, hi = w.min(), w.max()
    scale = ((hi - lo) / (k - 1)).reshape(1)
    zp = torch.round(-lo / scale).reshape(1)
    err_uniform = (torch.fake_quantize_per_tensor_affine(w, scale, zp.int(), 0, k - 1) - w).pow(2).mean()
    assert err_lut < err_uniform


def test_kmeans_few_distinct_values_constant_and_empty(device):
    x = torch.tensor([[3.0, 1.0, 3.0, 1.0, 2.0, 1.0], [5.0] * 6, [NAN, INF, -INF, NAN, 2.0, 2.0],
                      [NAN] * 6], device=device)
    c = ops.kmeans_1d(x, 4, 4).cpu()
    assert c.tolist() == [[1.0, 2.0, 3.0, 3.0], [5.0] * 4, [2.0] * 4, [0.0] * 4]
    # Duplicates are never chosen: the lower index wins, so palettizing is exact.
    assert torch.equal(ops.lut_fake_quantize(x[:2], c[:2].to(device)), x[:2])
    assert ops.kmeans_1d(torch.empty(0, 5, device=device), 8, 1).cpu().tolist() == [[0.0] * 8]
    assert ops.kmeans_1d(torch.tensor(2.5, device=device), 2).cpu().tolist() == [[2.5, 2.5]]
    # -0.0 and +0.0 are one value.
    assert ops.kmeans_1d(torch.tensor([-0.0, 0.0, 1.0]), 2)[0].tolist() == [0.0, 1.0]


def test_kmeans_ignores_non_finite_and_order():
    x = torch.randn(3000)
    c = ops.kmeans_1d(x, 16)
    noisy = torch.cat([x, torch.tensor([NAN, INF, -INF, NAN])])[torch.randperm(3004)]
    assert torch.equal(ops.kmeans_1d(noisy, 16), c)
    assert torch.equal(ops.kmeans_1d(x.flip(0), 16), c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kmeans_half_inputs(dtype, device):
    x = torch.randn(8, 300, device=device).to(dtype)
    assert torch.equal(ops.kmeans_1d(x, 16, 2), ops.kmeans_1d(x.float(), 16, 2))


def test_kmeans_non_contiguous(device):
    x = torch.randn(40, 64, device=device)
    xt = x.t()  # groups split the rows of the transposed (logical) tensor
    assert torch.equal(ops.kmeans_1d(xt, 8, 4), ops.kmeans_1d(xt.contiguous(), 8, 4))


# ---- nearest-centroid fake quantization ----

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,groups", [(1, 1), (2, 4), (16, 1), (16, 8), (256, 2)])
def test_lut_fake_quantize_matches_brute_force(dtype, k, groups, device):
    x = (torch.randn(16, 33, device=device) * 2).to(dtype)
    lut = random_lut(groups, k, device)
    y = ops.lut_fake_quantize(x, lut)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, fake_quantize_reference(x, lut))
    assert torch.equal(ops.lut_indices(x, lut).long(), nearest_reference(x, lut))


def test_ties_go_to_the_lower_index(device):
    lut = torch.tensor([[2.0, 0.0, 1.0, 1.0, -1.0]], device=device)
    x = torch.tensor([0.5, 1.5, -0.5, 1.0, 3.0, -7.0, 0.0], device=device)
    assert ops.lut_indices(x, lut).tolist() == [1, 0, 1, 2, 0, 4, 1]
    assert ops.lut_fake_quantize(x, lut).tolist() == [0.0, 2.0, 0.0, 1.0, 2.0, -1.0, 0.0]
    # Distances that tie only after float32 rounding: the brute-force argmin rule still holds.
    lut = torch.tensor([[1e-8, 0.0, 3.0e-8, 2.0e-8]], device=device)
    x = torch.tensor([1.0, -1.0, 1.5e-8], device=device)
    assert torch.equal(ops.lut_indices(x, lut).long(), nearest_reference(x, lut))


def test_non_finite_inputs_and_centroids(device):
    lut = torch.tensor([[0.5, NAN, -2.0, 3.0, 3.0], [NAN, NAN, NAN, NAN, NAN]], device=device)
    x = torch.tensor([[NAN, INF, -INF, 2.9, 0.0], [1.0, NAN, INF, -1.0, 0.0]], device=device)
    idx = ops.lut_indices(x, lut)
    assert idx.tolist() == [[0, 3, 2, 3, 0], [0, 0, 0, 0, 0]]
    y = ops.lut_fake_quantize(x, lut)
    assert torch.isnan(y[0, 0]) and y[0, 1:].tolist() == [3.0, -2.0, 3.0, 0.5]
    assert torch.isnan(y[1]).all()  # no valid centroid: lut[0] is NaN
    assert torch.equal(idx.long(), nearest_reference(x, lut))


@pytest.mark.parametrize("lut_dtype", DTYPES)
def test_lut_dtypes(lut_dtype, device):
    x = torch.randn(4, 50, device=device)
    lut = random_lut(2, 8, device, lut_dtype)
    assert torch.equal(ops.lut_fake_quantize(x, lut), fake_quantize_reference(x, lut))


def test_non_contiguous_and_empty(device):
    x = torch.randn(30, 8, device=device).t()
    lut = random_lut(4, 8, device)
    assert torch.equal(ops.lut_fake_quantize(x, lut), ops.lut_fake_quantize(x.contiguous(), lut))
    assert torch.equal(ops.lut_indices(x[:, ::2], lut), ops.lut_indices(x[:, ::2].contiguous(), lut))
    e = torch.empty(0, 5, device=device, requires_grad=True)
    lut = random_lut(1, 4, device).requires_grad_()
    y = ops.lut_fake_quantize(e, lut)
    assert y.shape == (0, 5) and ops.lut_indices(e, lut).shape == (0, 5)
    y.sum().backward()
    assert e.grad.shape == (0, 5) and torch.equal(lut.grad, torch.zeros_like(lut))
    # A 0-dim x is one group of one element.
    assert ops.lut_fake_quantize(torch.tensor(0.7, device=device), lut.detach()).shape == ()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 16])
def test_gradients_straight_through_and_scatter_add(dtype, groups, device):
    x = (torch.randn(16, 70, device=device) * 2).to(dtype)
    x[3, 4] = NAN
    x = x.requires_grad_()
    lut = random_lut(groups, 16, device).requires_grad_()
    grad = torch.randn(16, 70, device=device).to(dtype)
    ops.lut_fake_quantize(x, lut).backward(grad)
    assert torch.equal(x.grad, grad)  # straight through, NaN elements included
    ref = lut_grad_reference(grad, x.detach(), lut.detach())
    torch.testing.assert_close(lut.grad, ref.float(), rtol=1e-6, atol=1e-9)
    # The backward op directly, with a LUT of another dtype: the gradient has the LUT's dtype.
    lut16 = lut.detach().to(torch.bfloat16)
    g16 = torch.ops.qat.lut_fake_quantize_backward(grad, x.detach(), lut16)
    assert g16.dtype == torch.bfloat16
    torch.testing.assert_close(g16, lut_grad_reference(grad, x.detach(), lut16).to(torch.bfloat16))


def test_gradients_through_torch_reference_composition(device):
    """lut gradient equals autograd of a pure-torch gather at the same indices."""
    x = torch.randn(8, 40, device=device, requires_grad=True)
    lut = random_lut(4, 8, device).requires_grad_()
    idx = ops.lut_indices(x.detach(), lut.detach()).reshape(4, -1).long()
    lut_ref = lut.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(8, 40, device=device)
    q = torch.gather(lut_ref, 1, idx).reshape(x.shape)
    (x_ref + (q - q.detach())).backward(grad)  # identity for x, gather's backward for the LUT
    ops.lut_fake_quantize(x, lut).backward(grad)
    assert torch.equal(x.grad, x_ref.grad)
    torch.testing.assert_close(lut.grad, lut_ref.grad, rtol=1e-6, atol=1e-7)


# ---- torch.compile, opcheck ----

def test_torch_compile_matches_eager(device):
    def step(x, lut):
        return ops.lut_fake_quantize(x, lut).square().sum()

    x = torch.randn(32, 48, device=device)
    lut = ops.kmeans_1d(x, 16, 4)
    grads = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        xr, lr = x.clone().requires_grad_(), lut.clone().requires_grad_()
        loss = fn(xr, lr)
        loss.backward()
        grads.append((loss.detach(), xr.grad, lr.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])  # inductor sums in another order
    assert torch.equal(grads[0][1], grads[1][1])
    torch.testing.assert_close(grads[0][2], grads[1][2], rtol=1e-6, atol=1e-7)
    compiled = torch.compile(lambda t: ops.lut_indices(t, ops.kmeans_1d(t, 4, 2)), fullgraph=True)
    assert torch.equal(compiled(x), ops.lut_indices(x, ops.kmeans_1d(x, 4, 2)))


def lut_samples(device):
    def make(shape, groups, k, dtype=torch.float32, lut_dtype=torch.float32, xgrad=True, lgrad=True):
        x = torch.randn(shape, device=device).to(dtype).requires_grad_(xgrad)
        return x, random_lut(groups, k, device, lut_dtype).requires_grad_(lgrad)

    return [
        make((8, 16), 1, 16),
        make((8, 16), 4, 4, xgrad=False),
        make((8, 16), 2, 8, lgrad=False),
        make((6, 5, 3), 3, 16, dtype=torch.float16),
        make((4, 32), 2, 256, dtype=torch.bfloat16, lut_dtype=torch.bfloat16),
        make((0, 16), 1, 4),
    ]


@pytest.mark.parametrize("idx", range(6))
def test_opcheck_lut_ops(idx, device):
    x, lut = lut_samples(device)[idx]
    torch.library.opcheck(torch.ops.qat.lut_fake_quantize.default, (x, lut))
    torch.library.opcheck(torch.ops.qat.lut_indices.default, (x.detach(), lut.detach()))
    grad = torch.randn_like(x)
    torch.library.opcheck(torch.ops.qat.lut_fake_quantize_backward.default, (grad, x.detach(), lut.detach()))


@pytest.mark.parametrize("args", [((8, 16), 16, 1, 300), ((8, 16), 4, 4, 5), ((0, 3), 2, 1, 300)])
def test_opcheck_kmeans(args, device):
    shape, k, groups, iters = args
    x = torch.randn(shape, device=device)
    torch.library.opcheck(torch.ops.qat.kmeans_1d.default, (x, k, groups, iters))
    torch.library.opcheck(torch.ops.qat.kmeans_1d.default, (x.half().requires_grad_(), k, groups, iters))


# ---- errors ----

@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.randn(4, 4), torch.randn(8)), r"lut must be 2-D \[groups, num_centroids\], got shape \[8\]"),
        ((torch.randn(4, 4), torch.randn(3, 8)), r"lut.size\(0\), the number of groups \(3\) must divide x.size\(0\) \(4\)"),
        ((torch.randn(4, 4), torch.randn(1, 257)), r"1 to 256 centroids per group"),
        ((torch.randn(4, 4), torch.randn(1, 0)), r"1 to 256 centroids per group"),
        ((torch.randn(4, 4), torch.randn(0, 4)), r"at least one group"),
        ((torch.randn(4, 4), torch.randn(1, 4, dtype=torch.float64)), r"lut must be float32, float16 or bfloat16, got Double"),
        ((torch.randint(0, 3, (4, 4)), torch.randn(1, 4)), r"x must be float32, float16 or bfloat16, got Long"),
        ((torch.tensor(1.0), torch.randn(2, 4)), r"x is 0-dim, so lut.size\(0\), the number of groups must be 1, got 2"),
    ],
)
def test_lut_ops_reject(args, match):
    for op in (ops.lut_fake_quantize, ops.lut_indices):
        with pytest.raises(RuntimeError, match=match):
            op(*args)


def test_lut_backward_rejects_bad_grad():
    with pytest.raises(RuntimeError, match=r"grad shape \[4, 3\] must equal x shape \[4, 4\]"):
        torch.ops.qat.lut_fake_quantize_backward(torch.randn(4, 3), torch.randn(4, 4), torch.randn(1, 4))
    with pytest.raises(RuntimeError, match=r"grad must be a floating tensor, got Long"):
        torch.ops.qat.lut_fake_quantize_backward(torch.ones(4, 4, dtype=torch.long), torch.randn(4, 4), torch.randn(1, 4))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_centroids=0), r"num_centroids must lie in \[1, 256\], got 0"),
        (dict(num_centroids=512), r"num_centroids must lie in \[1, 256\], got 512"),
        (dict(groups=0), r"groups must be at least 1, got 0"),
        (dict(groups=3), r"groups \(3\) must divide x.size\(0\) \(4\)"),
        (dict(max_iters=-1), r"max_iters must lie in \[0, 2\^30\], got -1"),
        (dict(x=torch.ones(4, 4, dtype=torch.float64)), r"x must be float32, float16 or bfloat16, got Double"),
    ],
)
def test_kmeans_rejects(kwargs, match):
    args = dict(x=torch.randn(4, 4), num_centroids=4, groups=1, max_iters=10)
    args.update(kwargs)
    with pytest.raises(RuntimeError, match=match):
        ops.kmeans_1d(**args)


def test_rejects_wrong_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(RuntimeError, match=r"lut is on cpu but x is on cuda"):
        ops.lut_fake_quantize(torch.randn(4, 4, device="cuda"), torch.randn(1, 4))
