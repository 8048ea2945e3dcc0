"""qat.observers modules: torch.ao equality, odd input, state_dict round trips, MSE and LSQ."""

import math

import pytest
import torch
from torch.ao.quantization import observer as ao

import qat.observers as Q
from qat import ops

RANGES = {  # torch.ao dtype -> (quant_min, quant_max) of its default range
    torch.quint8: (0, 255),
    torch.qint8: (-128, 127),
}


def batches(n=5, shape=(16, 30)):
    return [torch.randn(shape) * (1 + 2 * i) + (i - 2) for i in range(n)]


@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(
    "kind",
    ["minmax", "moving_average", "per_channel", "moving_average_per_channel"],
)
def test_equals_torch_ao(kind, dtype, symmetric):
    qmin, qmax = RANGES[dtype]
    per_channel = "per_channel" in kind
    scheme = {(False, False): torch.per_tensor_affine, (False, True): torch.per_tensor_symmetric,
              (True, False): torch.per_channel_affine, (True, True): torch.per_channel_symmetric}[
        (per_channel, symmetric)]
    if kind == "minmax":
        ref, ours = ao.MinMaxObserver(dtype=dtype, qscheme=scheme), Q.MinMaxObserver(qmin, qmax, symmetric)
    elif kind == "moving_average":
        ref = ao.MovingAverageMinMaxObserver(averaging_constant=0.2, dtype=dtype, qscheme=scheme)
        ours = Q.MovingAverageMinMaxObserver(qmin, qmax, symmetric, averaging_constant=0.2)
    elif kind == "per_channel":
        ref = ao.PerChannelMinMaxObserver(ch_axis=1, dtype=dtype, qscheme=scheme)
        ours = Q.PerChannelMinMaxObserver(qmin, qmax, symmetric, axis=1)
    else:
        ref = ao.MovingAveragePerChannelMinMaxObserver(averaging_constant=0.2, ch_axis=0, dtype=dtype,
                                                       qscheme=scheme)
        ours = Q.PerChannelMinMaxObserver(qmin, qmax, symmetric, axis=0, averaging_constant=0.2)
    for x in batches():
        assert ours(x) is x
        ref(x)
        scale, zp = ref.calculate_qparams()
        our_scale, our_zp = ours.calculate_qparams()
        assert torch.equal(our_scale, scale.float().reshape(our_scale.shape))
        assert torch.equal(our_zp, zp.float().reshape(our_zp.shape))


def test_custom_signed_range_equals_torch_ao():
    ref = ao.MinMaxObserver(dtype=torch.qint8, quant_min=-8, quant_max=7, qscheme=torch.per_tensor_symmetric)
    ours = Q.MinMaxObserver(-8, 7, symmetric=True)
    x = torch.randn(100) * 3
    ref(x)
    ours(x)
    assert all(torch.equal(a.float(), b) for a, b in zip(ref.calculate_qparams(), ours.calculate_qparams()))


OBSERVERS = [
    lambda: Q.MinMaxObserver(),
    lambda: Q.MovingAverageMinMaxObserver(),
    lambda: Q.PerChannelMinMaxObserver(axis=0),
    lambda: Q.PerGroupMinMaxObserver(group_size=10),
    lambda: Q.HistogramObserver(),
    lambda: Q.PercentileObserver(percentile=99.0),
    lambda: Q.EntropyObserver(),
    lambda: Q.HistogramObserver(method="minmax", bins=64),
    lambda: Q.MSEObserver(axis=0),
    lambda: Q.MovingAverageFakeQuantize(axis=0),
]


@pytest.mark.parametrize("make", OBSERVERS)
def test_constant_input_gives_positive_scale(make):
    obs = make()
    obs(torch.full((16, 30), 0.75))
    scale, zp = obs.calculate_qparams()
    assert (scale > 0).all() and torch.isfinite(scale).all()
    assert ((zp >= obs.quant_min) & (zp <= obs.quant_max)).all()


@pytest.mark.parametrize("make", OBSERVERS)
def test_empty_batch_and_non_finite_leave_state_unchanged(make):
    obs = make()
    obs(torch.randn(16, 30))
    before = {k: v.clone() for k, v in obs.state_dict().items()}
    if isinstance(obs, Q.MSEObserver):
        pytest.skip("MSEObserver calibrates to its latest tensor by design")
    obs(torch.empty(0, 30))
    x = torch.full((16, 30), float("nan"))
    x[::2] = float("inf")
    obs(x)
    after = obs.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k


@pytest.mark.parametrize("make", OBSERVERS)
def test_state_dict_round_trip(make):
    obs = make()
    for x in batches(3):
        obs(x)
    fresh = make()
    fresh.load_state_dict(obs.state_dict())
    for a, b in zip(obs.calculate_qparams(), fresh.calculate_qparams()):
        assert torch.equal(a, b)


def test_disabled_observer_does_not_move():
    obs = Q.MinMaxObserver()
    obs(torch.randn(10))
    obs.enable(False)
    before = obs.calculate_qparams()
    obs(torch.randn(10) * 100)
    assert all(torch.equal(a, b) for a, b in zip(before, obs.calculate_qparams()))


def test_mse_observer_picks_the_brute_force_best():
    w = torch.randn(8, 64) * torch.rand(8, 1) + torch.randn(8, 64).pow(3) * 0.1  # heavy tails
    obs = Q.MSEObserver(-8, 7, symmetric=True, axis=0, num_candidates=50)
    obs(w)
    scale, zp = obs.calculate_qparams()
    lo, hi = w.amin(1), w.amax(1)
    ratios = Q.candidate_ratios(50)
    best = []
    for c in range(8):
        errs = []
        for r in ratios:
            s, z = ops.choose_qparams(lo[c:c + 1] * r, hi[c:c + 1] * r, -8, 7, True)
            y = torch.fake_quantize_per_tensor_affine(w[c], s.item(), int(z.item()), -8, 7)
            errs.append(((y.double() - w[c].double()) ** 2).sum().item())
        best.append(min(range(50), key=lambda k: (errs[k], k)))
    expected, _ = ops.choose_qparams(lo * ratios[best], hi * ratios[best], -8, 7, True)
    assert torch.equal(scale, expected)
    # The MSE choice is never worse than plain min/max.
    mm_scale, mm_zp = ops.choose_qparams(lo, hi, -8, 7, True)
    err = lambda s, z: ((ops.fake_quantize(w, s, z, -8, 7, 0) - w) ** 2).sum()
    assert err(scale, zp) <= err(mm_scale, mm_zp)


def test_mse_qparams_4096_square_per_channel_runs():
    w = torch.randn(256, 512)
    scale, zp = Q.mse_qparams(w, -8, 7, True, axis=0, num_candidates=100)
    assert scale.shape == (256,) and (scale > 0).all()


def test_learnable_fake_quantize_initializes_from_mse_and_stays_positive():
    x = torch.randn(32, 64)
    lsq = Q.LearnableFakeQuantize(-8, 7, symmetric=True, axis=0)
    y = lsq(x)
    expected_scale, _ = Q.mse_qparams(x, -8, 7, True, axis=0)
    assert torch.equal(lsq.scale.detach(), expected_scale)
    assert torch.equal(y, ops.fake_quantize(x, expected_scale, torch.zeros(32), -8, 7, 0))
    # A wild optimizer step drives the stored scale negative; the next use is clamped positive.
    opt = torch.optim.SGD(lsq.parameters(), lr=1e6)
    lsq(x).pow(2).sum().backward()
    with torch.no_grad():
        lsq.scale.sub_(lsq.scale.abs() * 10)
    y = lsq(x)
    assert (lsq.scale > 0).all() and torch.isfinite(y).all()
    opt.zero_grad()


def test_learnable_fake_quantize_gradient_factor():
    x = torch.randn(16, 32)
    g = torch.randn(16, 32)
    default = Q.LearnableFakeQuantize(-8, 7, symmetric=False)
    explicit = Q.LearnableFakeQuantize(-8, 7, symmetric=False, grad_factor=1.0)
    (default(x) * g).sum().backward()
    (explicit(x) * g).sum().backward()
    factor = 1.0 / math.sqrt(x.numel() * 7)
    torch.testing.assert_close(default.scale.grad, explicit.scale.grad * factor, rtol=1e-6, atol=0)
    torch.testing.assert_close(default.zero_point.grad, explicit.zero_point.grad * factor, rtol=1e-6, atol=0)


def test_learnable_fake_quantize_trains_toward_lower_error():
    torch.manual_seed(0)
    x = torch.randn(64, 128)
    lsq = Q.LearnableFakeQuantize(-2, 1, symmetric=True)  # 2 bits: plenty to gain
    lsq(x)
    lsq.scale.data.mul_(3.0)  # start from a poor range
    opt = torch.optim.Adam(lsq.parameters(), lr=0.01)
    first = None
    for _ in range(100):
        loss = (lsq(x) - x).pow(2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_modules_compile_fullgraph():
    fq = Q.MovingAverageFakeQuantize(-128, 127, symmetric=True)
    lsq = Q.LearnableFakeQuantize(-8, 7, symmetric=False)
    x = torch.randn(8, 16, requires_grad=True)
    lsq(x)  # initialize eagerly (creates the parameters)
    eager_fq, eager_lsq = Q.MovingAverageFakeQuantize(-128, 127, symmetric=True), Q.LearnableFakeQuantize(-8, 7, symmetric=False)
    eager_lsq.load_state_dict(lsq.state_dict())

    def step(fq_mod, lsq_mod, inp):
        return (fq_mod(inp) * lsq_mod(inp)).sum()

    compiled = torch.compile(step, fullgraph=True)
    for i in range(3):
        xi = (x * (i + 1)).detach().requires_grad_()
        xe = xi.detach().clone().requires_grad_()
        out = compiled(fq, lsq, xi)
        ref = step(eager_fq, eager_lsq, xe)
        torch.testing.assert_close(out, ref)
        out.backward()
        ref.backward()
        torch.testing.assert_close(xi.grad, xe.grad)
        assert torch.equal(fq.min_val, eager_fq.min_val) and torch.equal(fq.scale, eager_fq.scale)
