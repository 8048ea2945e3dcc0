"""The observer ops against independent references: torch.aminmax, torch.ao's qparams,
torch.fused_moving_avg_obs_fake_quant, a float64 histogram written from the grid's definition,
torch.quantile, a numpy KL search, and PyTorch's fake-quantize built-ins for the MSE errors."""

import math

import numpy as np
import pytest
import torch
from torch.ao.quantization import observer as ao

import qat  # noqa: F401
from qat import ops

INF = float("inf")
ON = torch.ones(1, dtype=torch.long)
OFF = torch.zeros(1, dtype=torch.long)


def fresh(shape, device="cpu"):
    return torch.full(shape, INF, device=device), torch.full(shape, -INF, device=device)


def reference_minmax(x, axis=None, group_size=None):
    """Finite min / max per tensor, channel or group with plain torch ops."""
    x = x.float()
    finite = torch.isfinite(x)
    lo_src = torch.where(finite, x, torch.full_like(x, INF))
    hi_src = torch.where(finite, x, torch.full_like(x, -INF))
    if group_size is not None:
        shape = (*x.shape[:-1], x.shape[-1] // group_size, group_size)
        return lo_src.reshape(shape).amin(-1), hi_src.reshape(shape).amax(-1)
    if axis is None:
        return lo_src.amin().reshape(1), hi_src.amax().reshape(1)
    dims = [d for d in range(x.dim()) if d != axis % x.dim()]
    return lo_src.amin(dim=dims), hi_src.amax(dim=dims)


# ---- update_minmax ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("granularity", [(None, None), (0, None), (1, None), (-1, None), (None, 8)])
def test_update_minmax_equals_aminmax(dtype, granularity, device):
    axis, group = granularity
    x = (torch.randn(6, 40, 16, device=device) * 5).to(dtype)
    x[0, 0, 0], x[1, 2, 3], x[2, 5, 7] = float("nan"), INF, -INF
    lo, hi = reference_minmax(x, axis, group)
    rmin, rmax = fresh(lo.shape, device)
    ops.update_minmax(x, rmin, rmax, ON.to(device), None, 0 if axis is None else axis, group)
    assert torch.equal(rmin, lo) and torch.equal(rmax, hi)
    # A second batch folds in as a running min / max.
    x2 = (torch.randn(6, 40, 16, device=device) * 8).to(dtype)
    lo2, hi2 = reference_minmax(x2, axis, group)
    ops.update_minmax(x2, rmin, rmax, ON.to(device), None, 0 if axis is None else axis, group)
    assert torch.equal(rmin, torch.minimum(lo, lo2)) and torch.equal(rmax, torch.maximum(hi, hi2))


def test_update_minmax_non_contiguous_and_large(device):
    x = torch.randn(300, 1000, device=device).t()  # non-contiguous, several threads' worth
    for axis in (0, 1):
        lo, hi = reference_minmax(x, axis)
        rmin, rmax = fresh(lo.shape, device)
        ops.update_minmax(x, rmin, rmax, ON.to(device), None, axis)
        assert torch.equal(rmin, lo) and torch.equal(rmax, hi)


def test_update_minmax_skips_disabled_empty_and_non_finite(device):
    rmin, rmax = torch.tensor([-1.0], device=device), torch.tensor([2.0], device=device)
    ops.update_minmax(torch.randn(100, device=device) * 100, rmin, rmax, OFF.to(device))
    ops.update_minmax(torch.empty(0, 5, device=device), rmin, rmax, ON.to(device))
    ops.update_minmax(torch.tensor([float("nan"), INF, -INF], device=device), rmin, rmax, ON.to(device),
                      0.5)
    assert rmin.item() == -1.0 and rmax.item() == 2.0
    # Per channel: a channel with no finite element keeps its state, the others move.
    pmin, pmax = torch.zeros(2, device=device), torch.ones(2, device=device)
    x = torch.tensor([[float("nan"), INF], [-5.0, 7.0]], device=device)
    ops.update_minmax(x, pmin, pmax, ON.to(device), None, 0)
    assert pmin.tolist() == [0.0, -5.0] and pmax.tolist() == [1.0, 7.0]


def test_moving_average_update_matches_torch_ao():
    observer = ao.MovingAverageMinMaxObserver(averaging_constant=0.3)
    rmin, rmax = fresh((1,))
    for _ in range(5):
        x = torch.randn(50) * torch.rand(1) * 10
        observer(x)
        ops.update_minmax(x, rmin, rmax, ON, 0.3)
        assert rmin.item() == observer.min_val.item() and rmax.item() == observer.max_val.item()


# ---- choose_qparams against torch.ao ----

AO_CASES = [  # (dtype, quant_min, quant_max) as torch.ao spells them; None = its default range
    (torch.quint8, None, None),
    (torch.qint8, None, None),
    (torch.qint8, -8, 7),
    (torch.quint8, 0, 15),
    (torch.qint32, None, None),
]


def ao_range(dtype, qmin, qmax):
    if qmin is not None:
        return qmin, qmax
    return {torch.quint8: (0, 255), torch.qint8: (-128, 127), torch.qint32: (-(2**31), 2**31 - 1)}[dtype]


@pytest.mark.parametrize("case", AO_CASES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("shift", [0.0, 3.0, -3.0])
def test_choose_qparams_equals_torch_ao(case, symmetric, shift):
    dtype, qmin, qmax = case
    lo_q, hi_q = ao_range(dtype, qmin, qmax)
    if hi_q - lo_q > 65535:
        pytest.skip("qat ranges are at most 16 bits")
    if symmetric and dtype == torch.quint8 and qmin is not None:
        pytest.skip("custom unsigned symmetric ranges: torch.ao rounds the midpoint down, qat up (documented)")
    kwargs = {} if qmin is None else {"quant_min": qmin, "quant_max": qmax}
    for per_channel in (False, True):
        x = torch.randn(16, 40) * torch.rand(16, 1) * 4 + shift
        x[3] = 0.25  # a constant channel: zero range when all of x's channel is one value
        if per_channel:
            scheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
            obs = ao.PerChannelMinMaxObserver(ch_axis=0, dtype=dtype, qscheme=scheme, **kwargs)
            rmin, rmax = fresh((16,))
            ops.update_minmax(x, rmin, rmax, ON, None, 0)
        else:
            scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
            obs = ao.MinMaxObserver(dtype=dtype, qscheme=scheme, **kwargs)
            rmin, rmax = fresh((1,))
            ops.update_minmax(x, rmin, rmax, ON)
        obs(x)
        scale, zp = obs.calculate_qparams()
        our_scale, our_zp = ops.choose_qparams(rmin, rmax, lo_q, hi_q, symmetric)
        assert torch.equal(our_scale, scale.float()), (our_scale, scale)
        assert torch.equal(our_zp, zp.float()), (our_zp, zp)


def test_choose_qparams_zero_range_and_empty():
    scale, zp = ops.choose_qparams(torch.tensor([0.0, 5.0, -2.0, INF]), torch.tensor([0.0, 5.0, -2.0, -INF]),
                                   0, 255, False)
    assert (scale > 0).all() and torch.isfinite(scale).all()
    assert scale[3].item() == 1.0 and zp[3].item() == 0.0  # nothing observed: torch.ao's (1, 0)


# ---- fused observe + fake-quantize against torch.fused_moving_avg_obs_fake_quant ----

@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("qrange", [(0, 255), (-128, 127), (0, 15)])
def test_observe_fake_quantize_equals_builtin(per_channel, symmetric, qrange):
    qmin, qmax = qrange
    channels = 12 if per_channel else 1
    t_min, t_max = fresh((channels,))
    t_scale, t_zp = torch.ones(channels), torch.zeros(channels, dtype=torch.int32)
    q_min, q_max = fresh((channels,))
    q_scale, q_zp = torch.ones(channels), torch.zeros(channels)
    for step in range(6):
        x = (torch.randn(12, 50) * (step + 1) + step - 2).requires_grad_()
        if step == 2:
            x.data[:, :] = 0.5  # zero range in every channel
        observe = OFF if step == 4 else ON
        fq = OFF if step == 5 else ON
        y_ref = torch.fused_moving_avg_obs_fake_quant(x, observe, fq, t_min, t_max, t_scale, t_zp, 0.25,
                                                      qmin, qmax, 0, per_channel, symmetric)
        y = ops.observe_fake_quantize(x, observe, fq, q_min, q_max, q_scale, q_zp, 0.25, qmin, qmax, 0,
                                      per_channel, symmetric)
        assert torch.equal(y, y_ref), step
        assert torch.equal(q_min, t_min) and torch.equal(q_max, t_max)
        assert torch.equal(q_scale, t_scale) and torch.equal(q_zp, t_zp.float())
        g = torch.randn_like(x)
        (dx_ref,) = torch.autograd.grad(y_ref, x, g)
        (dx,) = torch.autograd.grad(y, x, g)
        assert torch.equal(dx, dx_ref), step


def test_observe_fake_quantize_any_axis_and_dtype():
    x = torch.randn(4, 6, 8, dtype=torch.bfloat16)
    rmin, rmax = fresh((6,))
    scale, zp = torch.ones(6), torch.zeros(6)
    y = ops.observe_fake_quantize(x, ON, ON, rmin, rmax, scale, zp, 0.1, -8, 7, 1, True, True)
    lo, hi = reference_minmax(x, 1)
    assert torch.equal(rmin, lo) and torch.equal(rmax, hi)
    ref = torch.fake_quantize_per_channel_affine(x.float(), scale, zp.int(), 1, -8, 7).to(x.dtype)
    assert y.dtype == x.dtype and torch.equal(y, ref)


# ---- histograms ----

def reference_grid(lo, hi, bins):
    """The canonical grid from its definition, in Python floats (exact for powers of two)."""
    m = max(abs(lo), abs(hi))
    e = max(math.frexp(m)[1] - 1 - 23, -149) if m > 0 else -149
    while math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) > bins - 1:
        e += 1
    return e, math.floor(math.ldexp(lo, -e))


def reference_histogram(x, bins):
    v = x.double().flatten()
    v = v[torch.isfinite(v)]
    lo, hi = v.min().item(), v.max().item()
    e, first = reference_grid(lo, hi, bins)
    idx = torch.floor(v * 2.0 ** (-e)).long() - first
    return torch.bincount(idx, minlength=bins), (lo, hi), e


@pytest.mark.parametrize("bins", [2048, 100, 1])
def test_histogram_is_exact_and_order_independent(bins, device):
    parts = [torch.randn(1000, device=device) * 0.01, torch.randn(500, device=device) * 30 + 7,
             torch.rand(300, device=device) - 50, torch.tensor([float("nan"), INF, -INF], device=device)]
    expected, (lo, hi), _ = reference_histogram(torch.cat(parts).cpu(), bins)
    for order in ([0, 1, 2, 3], [2, 3, 1, 0], [1, 0, 3, 2]):
        h = torch.zeros(bins, dtype=torch.long, device=device)
        r = torch.tensor([INF, -INF], device=device)
        for i in order:
            ops.update_histogram(parts[i], h, r, ON.to(device))
        assert torch.equal(h.cpu(), expected), order
        assert r.tolist() == [np.float32(lo), np.float32(hi)]
    # One call on everything gives the same.
    h = torch.zeros(bins, dtype=torch.long, device=device)
    r = torch.tensor([INF, -INF], device=device)
    ops.update_histogram(torch.cat(parts), h, r, ON.to(device))
    assert torch.equal(h.cpu(), expected)


@pytest.mark.parametrize("values", [[3.0] * 10, [0.0] * 4, [-1e-40, 1e-40], [1e30, 1e30 * (1 + 2**-20)], [1000.0, 1000.001]])
def test_histogram_degenerate_ranges(values):
    x = torch.tensor(values)
    expected, _, _ = reference_histogram(x, 64)
    h, r = torch.zeros(64, dtype=torch.long), torch.tensor([INF, -INF])
    ops.update_histogram(x, h, r, ON)
    assert torch.equal(h, expected) and h.sum().item() == len(values)


def test_histogram_skips_disabled_empty_non_finite():
    h, r = torch.zeros(16, dtype=torch.long), torch.tensor([INF, -INF])
    ops.update_histogram(torch.randn(10), h, r, OFF)
    ops.update_histogram(torch.empty(0), h, r, ON)
    ops.update_histogram(torch.tensor([float("nan"), INF]), h, r, ON)
    assert h.sum().item() == 0 and r.tolist() == [INF, -INF]


def test_rebin_histogram_equals_binning_on_the_wider_range():
    a, b = torch.randn(2000), torch.randn(300) * 40
    h, r = torch.zeros(256, dtype=torch.long), torch.tensor([INF, -INF])
    ops.update_histogram(a, h, r, ON)
    wide = torch.tensor([min(r[0].item(), b.min().item()), max(r[1].item(), b.max().item())])
    moved = ops.rebin_histogram(h, r, wide)
    h2, r2 = torch.zeros(256, dtype=torch.long), torch.tensor([INF, -INF])
    ops.update_histogram(torch.cat([a, b]), h2, r2, ON)
    hb, rb = torch.zeros(256, dtype=torch.long), r2.clone()
    # The batch b alone binned on the wide grid (seed its range with the wide one).
    ops.update_histogram(b, hb, rb, ON)
    assert torch.equal(moved + ops.rebin_histogram(hb, rb, wide), h2)
    with pytest.raises(RuntimeError, match="must contain range"):
        ops.rebin_histogram(h, r, torch.tensor([0.0, 1.0]))


def test_percentile_matches_quantile_within_a_bin():
    x = torch.randn(200_000) * 3 + 1
    h, r = torch.zeros(2048, dtype=torch.long), torch.tensor([INF, -INF])
    ops.update_histogram(x, h, r, ON)
    _, _, e = reference_histogram(x, 2048)
    width = 2.0**e

    def close_in_mass(values, v, target):
        # The share of values below v misses the target by at most the mass of v's neighbourhood.
        below = (values <= v).double().mean().item()
        near = ((values - v).abs() <= width).double().mean().item()
        return abs(below - target) <= near

    for p in (99.0, 99.9, 50.0):
        sym = ops.histogram_clip_range(h, r, "percentile", p, 128, True)
        assert sym[0].item() == -sym[1].item()
        assert close_in_mass(x.abs(), sym[1].item(), p / 100)
        aff = ops.histogram_clip_range(h, r, "percentile", p, 256, False)
        tail = (100 - p) / 200
        assert close_in_mass(x, aff[0].item(), tail) and close_in_mass(x, aff[1].item(), 1 - tail)
    full = ops.histogram_clip_range(h, r, "percentile", 100.0, 256, False)
    assert torch.equal(full, r)


def reference_entropy_amax(abs_counts, width, levels, eps=1e-4):
    """TensorRT's KL search with MXNet's smoothing of empty bins, written with numpy."""
    p_all = np.asarray(abs_counts, dtype=np.float64)
    n = len(p_all)
    if n <= levels:
        return n * width
    best, best_i = np.inf, n
    for i in range(levels, n + 1):
        kept = p_all[:i]
        if kept.sum() <= 0:
            continue
        p = kept.copy()
        p[i - 1] += p_all[i:].sum()
        level_of = (np.arange(i) * levels) // i
        mass = np.bincount(level_of, weights=kept, minlength=levels)
        nonzero = np.bincount(level_of, weights=(kept > 0).astype(np.float64), minlength=levels)
        empty = np.sum(kept == 0)
        q = np.where(kept > 0, mass[level_of] / np.maximum(nonzero[level_of], 1) - eps * empty / (i - empty), eps)
        q = np.maximum(q, eps) / kept.sum()
        p = p / p.sum()
        mask = p > 0
        kl = np.sum(p[mask] * np.log(p[mask] / q[mask]))
        if kl <= best:
            best, best_i = kl, i
    return best_i * width


@pytest.mark.parametrize("signed", [True, False])
def test_entropy_matches_numpy_reference(signed):
    x = torch.randn(50_000) if signed else torch.randn(50_000).abs()
    x = torch.cat([x, torch.tensor([25.0])])  # one outlier the KL search should clip
    h, r = torch.zeros(512, dtype=torch.long), torch.tensor([INF, -INF])
    ops.update_histogram(x, h, r, ON)
    expected_counts, _, e = reference_histogram(x, 512)
    _, first = reference_grid(r[0].item(), r[1].item(), 512)
    folded = {}
    for i, c in enumerate(expected_counts.tolist()):
        g = first + i
        j = g if g >= 0 else -g - 1
        folded[j] = folded.get(j, 0) + c
    abs_counts = [folded.get(j, 0) for j in range(max(folded) + 1)]
    levels = 128 if signed else 256
    amax = min(reference_entropy_amax(abs_counts, 2.0**e, levels), max(abs(r[0].item()), r[1].item()))
    clip = ops.histogram_clip_range(h, r, "entropy", 0.0, levels, True)
    assert clip[1].item() == pytest.approx(amax, rel=1e-6)
    assert clip[1].item() < 25.0  # the outlier is clipped
    assert clip[0].item() == max(-clip[1].item(), r[0].item())  # never below the data


# ---- MSE search ----

def reference_mse_errors(x, lo, hi, ratios, qmin, qmax, symmetric, axis):
    out = torch.zeros(lo.numel(), ratios.numel(), dtype=torch.float64)
    for k, ratio in enumerate(ratios):
        scale, zp = ops.choose_qparams(lo * ratio, hi * ratio, qmin, qmax, symmetric)
        if lo.numel() == 1:
            y = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zp.item()), qmin, qmax)
        else:
            y = torch.fake_quantize_per_channel_affine(x, scale, zp.int(), axis, qmin, qmax)
        err = (y.double() - x.double()) ** 2
        dims = [d for d in range(x.dim()) if d != axis] if lo.numel() > 1 else list(range(x.dim()))
        out[:, k] = err.sum(dim=dims).reshape(-1)
    return out


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_errors_match_builtin_fake_quant(axis, symmetric, device):
    x = torch.randn(24, 300, device=device) * torch.rand(24, 1, device=device) * 3 + 0.5
    lo, hi = reference_minmax(x, axis)
    ratios = torch.linspace(0.2, 1.0, 17, device=device)
    errors = ops.mse_errors(x, lo, hi, ratios, -8, 7, symmetric, 0 if axis is None else axis)
    expected = reference_mse_errors(x.cpu(), lo.cpu(), hi.cpu(), ratios.cpu(), -8, 7, symmetric,
                                    0 if axis is None else axis)
    assert errors.shape == (*lo.shape, 17) and errors.dtype == torch.float64
    torch.testing.assert_close(errors.cpu().reshape(expected.shape), expected, rtol=2e-5, atol=1e-9)


def test_mse_errors_per_group_and_non_finite():
    x = torch.randn(4, 64)
    lo, hi = reference_minmax(x, None, 16)
    ratios = torch.tensor([0.5, 1.0])
    errors = ops.mse_errors(x, lo, hi, ratios, -8, 7, True, 0, 16)
    grouped = x.reshape(16, 16)
    expected = reference_mse_errors(grouped, lo.reshape(-1), hi.reshape(-1), ratios, -8, 7, True, 0)
    torch.testing.assert_close(errors.reshape(16, 2), expected, rtol=2e-5, atol=1e-9)
    x_nan = x.clone()
    x_nan[0, 0] = float("nan")
    x_ref = x.clone()
    x_ref[0, 0] = 0.0  # a skipped element adds nothing, as an exact zero would
    assert torch.equal(ops.mse_errors(x_nan, lo, hi, ratios, -8, 7, True, 0, 16),
                       ops.mse_errors(x_ref, lo, hi, ratios, -8, 7, True, 0, 16))


# ---- errors ----

def test_observer_op_errors():
    x = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match="running_min must be float32"):
        ops.update_minmax(x, torch.zeros(1, dtype=torch.float64), torch.zeros(1), ON)
    with pytest.raises(RuntimeError, match="per-channel running_min must have shape"):
        ops.update_minmax(x, *fresh((3,)), ON, None, 0)
    with pytest.raises(RuntimeError, match="enabled must be an integer or bool"):
        ops.update_minmax(x, *fresh((1,)), torch.ones(1))
    with pytest.raises(RuntimeError, match="averaging_constant must lie in"):
        ops.update_minmax(x, *fresh((1,)), ON, 1.5)
    with pytest.raises(RuntimeError, match="histogram must be a contiguous 1-D int64"):
        ops.update_histogram(x, torch.zeros(8), torch.tensor([INF, -INF]), ON)
    with pytest.raises(RuntimeError, match="method must be"):
        ops.histogram_clip_range(torch.zeros(8, dtype=torch.long), torch.tensor([0.0, 1.0]), "kl", 0, 8, True)
    with pytest.raises(RuntimeError, match="percentile must lie in"):
        ops.histogram_clip_range(torch.zeros(8, dtype=torch.long), torch.tensor([0.0, 1.0]), "percentile", 0, 8, True)
    with pytest.raises(RuntimeError, match="quant_min .* must be less than quant_max"):
        ops.choose_qparams(torch.zeros(1), torch.ones(1), 5, 5, True)
    with pytest.raises(RuntimeError, match="ratios must be a non-empty 1-D float32"):
        ops.mse_errors(x, torch.zeros(1), torch.ones(1), torch.zeros(0), -8, 7, True)
    with pytest.raises(RuntimeError, match="per-tensor observation needs one-element"):
        ops.observe_fake_quantize(x, ON, ON, *fresh((4,)), torch.ones(4), torch.zeros(4), 0.1, 0, 255, 0)
    with pytest.raises(RuntimeError, match="zero_point must be a contiguous float32"):
        ops.observe_fake_quantize(x, ON, ON, *fresh((1,)), torch.ones(1), torch.zeros(1, dtype=torch.int32),
                                  0.1, 0, 255, 0)


# ---- opcheck ----

def observer_op_samples(device):
    x = torch.randn(8, 16, device=device, requires_grad=True)
    on = ON.to(device)
    hist, rng = torch.zeros(64, dtype=torch.long, device=device), torch.tensor([INF, -INF], device=device)
    ops.update_histogram(x.detach(), hist, rng, on)
    lo, hi = reference_minmax(x.detach(), 0)
    return [
        (torch.ops.qat.update_minmax.default, (x, *fresh((1,), device), on, None, 0, None)),
        (torch.ops.qat.update_minmax.default, (x, *fresh((8,), device), on, 0.1, 0, None)),
        (torch.ops.qat.update_minmax.default, (x.half(), *fresh((8, 2), device), on, None, 0, 8)),
        (torch.ops.qat.update_histogram.default, (x, hist.clone(), rng.clone(), on)),
        (torch.ops.qat.rebin_histogram.default, (hist, rng, rng * 4)),
        (torch.ops.qat.histogram_clip_range.default, (hist.cpu(), rng.cpu(), "entropy", 0.0, 16, True)),
        (torch.ops.qat.choose_qparams.default, (lo, hi, -8, 7, False)),
        (torch.ops.qat.mse_errors.default, (x, lo, hi, torch.linspace(0.5, 1, 5, device=device), -8, 7, True, 0, None)),
        (torch.ops.qat.observe_fake_quantize.default,
         (x, on, on, *fresh((1,), device), torch.ones(1, device=device), torch.zeros(1, device=device), 0.1, 0, 255, 0, False, False)),
        (torch.ops.qat.observe_fake_quantize.default,
         (x, on, on, *fresh((8,), device), torch.ones(8, device=device), torch.zeros(8, device=device), 0.1, -8, 7, 0, True, True)),
    ]


@pytest.mark.parametrize("idx", range(10))
def test_opcheck_observer_ops(idx, device):
    op, args = observer_op_samples(device)[idx]
    torch.library.opcheck(op, args)
