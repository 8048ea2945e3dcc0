"""qat.palettize: LUTSpec (validation, dict / YAML round trip, sizes), LUTFakeQuantize
(k-means initialization, learned centroids, state_dict, compile) and the converted
PalettizedWeight, whose dequantize() must equal the eval-mode forward bit for bit."""

import math

import pytest
import torch
import yaml
from torch import nn

import qat
from qat import ops
from qat.palettize import LUT_DTYPES, LUTFakeQuantize, LUTSpec, PalettizedWeight
from qat.spec import spec_from_dict


# ---- LUTSpec ----

@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=0), r"bits must be an int in 1..8"),
        (dict(bits=9), r"bits must be an int in 1..8"),
        (dict(bits=True), r"bits must be an int in 1..8"),
        (dict(channels_per_lut=0), r"channels_per_lut must be a positive int"),
        (dict(channels_per_lut=2.0), r"channels_per_lut must be a positive int"),
        (dict(learnable="yes"), r"learnable must be a bool"),
        (dict(kmeans_iters=-1), r"kmeans_iters must be an int >= 0"),
        (dict(lut_dtype="fp8"), r"lut_dtype must be one of \['bf16', 'fp16', 'fp32'\]"),
    ],
)
def test_spec_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LUTSpec(**kwargs)


@pytest.mark.parametrize("spec", [LUTSpec(), LUTSpec(bits=2, channels_per_lut=8, learnable=False,
                                                     kmeans_iters=10, lut_dtype="bf16")])
def test_spec_round_trips(spec):
    d = spec.to_dict()
    assert d["kind"] == "lut"
    assert spec_from_dict(d) == spec
    assert spec_from_dict(yaml.safe_load(yaml.safe_dump(d))) == spec
    with pytest.raises(ValueError, match=r"unknown keys \['group_size'\]"):
        spec_from_dict({**d, "group_size": 4})


def test_spec_sizes_and_roles():
    spec = LUTSpec(bits=4)
    assert spec.num_centroids == 16 and spec.bits_per_weight() == 4.0
    assert spec.storage_bytes((256, 512)) == 256 * 512 // 2 + 16 * 2
    assert spec.bits_per_weight((256, 512)) == 8 * (256 * 512 // 2 + 32) / (256 * 512)
    grouped = LUTSpec(bits=3, channels_per_lut=16, lut_dtype="fp32")
    assert grouped.groups(64) == 4
    assert grouped.storage_bytes((64, 10)) == math.ceil(640 * 3 / 8) + 4 * 8 * 4
    assert grouped.describe() == "lut3 16ch fp32"
    with pytest.raises(ValueError, match=r"channels_per_lut 16 must divide the weight's 40 output channels"):
        grouped.groups(40)
    assert isinstance(spec.make_quantizer("weight"), LUTFakeQuantize)
    with pytest.raises(ValueError, match=r"palettizes weights only"):
        spec.make_quantizer("input")


# ---- LUTFakeQuantize ----

@pytest.mark.parametrize("lut_dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_per_lut", [None, 1, 8])
def test_initialize_is_kmeans_and_forward_uses_rounded_lut(lut_dtype, channels_per_lut, device):
    w = torch.randn(32, 40, device=device)
    spec = LUTSpec(bits=3, channels_per_lut=channels_per_lut, lut_dtype=lut_dtype)
    q = spec.make_quantizer("weight").to(device)
    y = q(w)  # initializes on the first weight
    groups = 1 if channels_per_lut is None else 32 // channels_per_lut
    c = ops.kmeans_1d(w, 8, groups, spec.kmeans_iters)
    assert torch.equal(q.centroids, c)
    lut = c.to(LUT_DTYPES[lut_dtype]).float()  # k-means centroids are finite: the cast is exact rounding
    assert torch.equal(q.lut(), lut)
    assert torch.equal(y, ops.lut_fake_quantize(w, lut))


def test_uninitialized_parameter_is_the_one_optimizers_hold():
    q = LUTFakeQuantize(LUTSpec(bits=2))
    opt = torch.optim.SGD(q.parameters(), lr=0.1)
    w = torch.randn(8, 8)
    loss = (q(w) - 1.0).square().sum()
    loss.backward()
    before = q.centroids.detach().clone()
    opt.step()
    assert q.centroids.shape == (1, 4) and not torch.equal(before, q.centroids)


def test_learned_centroids_reduce_a_task_loss():
    torch.manual_seed(0)
    x = torch.randn(256, 32)
    target = x @ torch.randn(32, 16)
    w = nn.Parameter(torch.randn(16, 32) * 0.1)
    q = LUTFakeQuantize(LUTSpec(bits=3, channels_per_lut=4, lut_dtype="fp32"))
    q.initialize(w.detach())
    start = q.centroids.detach().clone()
    opt = torch.optim.Adam([w, *q.parameters()], lr=0.02)
    losses = []
    for _ in range(60):
        loss = (x @ q(w).t() - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not torch.equal(start, q.centroids)


def test_frozen_centroids_get_no_gradient():
    q = LUTFakeQuantize(LUTSpec(bits=2, learnable=False))
    w = torch.randn(4, 16, requires_grad=True)
    q(w).sum().backward()
    assert not q.centroids.requires_grad and q.centroids.grad is None
    assert torch.equal(w.grad, torch.ones_like(w))  # straight through


def test_group_count_checked():
    q = LUTFakeQuantize(LUTSpec(bits=2, channels_per_lut=4))
    q(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"holds 2 LUTs but this weight \(\(12, 3\)\) needs 3"):
        q(torch.randn(12, 3))
    with pytest.raises(ValueError, match=r"channels_per_lut 4 must divide the weight's 6 output channels"):
        LUTFakeQuantize(LUTSpec(bits=2, channels_per_lut=4)).initialize(torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"needs at least one dim"):
        LUTFakeQuantize(LUTSpec()).initialize(torch.tensor(1.0))


def test_state_dict_loads_into_a_fresh_quantizer():
    spec = LUTSpec(bits=4, channels_per_lut=2)
    q = LUTFakeQuantize(spec)
    w = torch.randn(6, 20)
    q(w)
    with torch.no_grad():
        q.centroids.add_(0.01)
    fresh = LUTFakeQuantize(spec)
    fresh.load_state_dict(q.state_dict())
    assert fresh._initialized and torch.equal(fresh(w), q(w))
    assert set(q.state_dict()) == {"centroids", "initialized", "fake_quant_enabled"}
    q.enable_fake_quant(False)
    assert torch.equal(q(w), w)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(w), w)


def test_training_controls():
    model = qat.prepare(nn.Sequential(nn.Linear(8, 4)), qat.Plan.from_yaml(yaml.safe_dump(
        {"rules": [{"type": "Linear", "weight": {"kind": "lut", "bits": 2}}]})))
    q = model[0].weight_quantizer
    assert isinstance(q, LUTFakeQuantize) and q.centroids.requires_grad
    qat.set_learnable_ranges(model, False)
    assert not q.centroids.requires_grad
    qat.set_learnable_ranges(model, True)
    assert q.centroids.requires_grad
    x = torch.randn(3, 8)
    qat.disable_fake_quant(model)
    assert torch.equal(model(x), nn.functional.linear(x, model[0].weight, model[0].bias))
    qat.enable_fake_quant(model)
    assert not torch.equal(model(x), nn.functional.linear(x, model[0].weight, model[0].bias))
    frozen = LUTFakeQuantize(LUTSpec(learnable=False)).set_learnable(True)
    assert not frozen.centroids.requires_grad


def test_compiled_forward_matches_eager():
    q = LUTFakeQuantize(LUTSpec(bits=4, channels_per_lut=4))
    w = torch.randn(16, 24, requires_grad=True)
    q.initialize(w.detach())
    eager = q(w)
    compiled = torch.compile(q, fullgraph=True)(w)
    assert torch.equal(eager, compiled)


# ---- convert: PalettizedWeight ----

@pytest.mark.parametrize("w_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lut_dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_per_lut", [None, 4])
def test_dequantize_equals_eval_forward(w_dtype, lut_dtype, channels_per_lut, device):
    spec = LUTSpec(bits=4, channels_per_lut=channels_per_lut, lut_dtype=lut_dtype)
    q = LUTFakeQuantize(spec).to(device)
    w = (torch.randn(16, 3, 5, device=device) * 0.2).to(w_dtype).requires_grad_()
    opt = torch.optim.SGD([w, *q.parameters()], lr=0.05)
    for _ in range(3):  # move the centroids and the weight off their initial values
        loss = q(w).float().square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    q.eval()
    with torch.no_grad():
        expected = q(w)
        stored = q.quantize_weight(w.detach())
    assert isinstance(stored, PalettizedWeight)
    assert stored.indices.dtype == torch.uint8 and stored.indices.shape == w.shape
    assert stored.lut.dtype == LUT_DTYPES[lut_dtype] and stored.lut.shape == (q.centroids.shape[0], 16)
    got = stored.dequantize()
    assert got.dtype == w_dtype and torch.equal(got, expected)
    assert stored.spec == spec and stored.bits_per_weight() == spec.bits_per_weight(tuple(w.shape))


def test_palettized_weight_state_dict_and_checks():
    q = LUTFakeQuantize(LUTSpec(bits=2, channels_per_lut=2))
    w = torch.randn(4, 6)
    stored = q.quantize_weight(w)
    again = PalettizedWeight(torch.zeros_like(stored.indices), torch.zeros_like(stored.lut), w.dtype, stored.spec)
    again.load_state_dict(stored.state_dict())
    assert torch.equal(again.dequantize(), stored.dequantize())
    with pytest.raises(TypeError, match=r"indices must be uint8"):
        PalettizedWeight(stored.indices.long(), stored.lut, w.dtype, stored.spec)
    with pytest.raises(ValueError, match=r"lut has 1 groups; indices of shape \(4, 6\) need 2"):
        PalettizedWeight(stored.indices, stored.lut[:1], w.dtype, stored.spec)
    with pytest.raises(ValueError, match=r"weight containing NaN"):
        q.quantize_weight(torch.full((4, 6), float("nan")))


def test_inf_weights_convert_to_extreme_centroids():
    q = LUTFakeQuantize(LUTSpec(bits=2, lut_dtype="fp32"))
    w = torch.randn(4, 8)
    q.initialize(w)
    w[0, 0], w[1, 1] = float("inf"), float("-inf")
    stored = q.quantize_weight(w)
    assert torch.equal(stored.dequantize(), q(w))
    assert stored.dequantize()[0, 0] == q.centroids.max() and stored.dequantize()[1, 1] == q.centroids.min()


def test_prepare_train_convert_parity():
    """Through the QAT API: a LUT spec in a Plan, a few training steps, exact convert parity."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 8))
    plan = qat.Plan.from_yaml(yaml.safe_dump({"rules": [
        {"pattern": "0", "weight": {"kind": "lut", "bits": 3, "channels_per_lut": 8}},
        {"type": "Linear", "weight": LUTSpec(bits=2, lut_dtype="bf16").to_dict()},
    ]}))
    prepared = qat.prepare(model, plan)
    opt = torch.optim.Adam(prepared.parameters(), lr=1e-2)
    x = torch.randn(64, 24)
    for _ in range(5):
        loss = prepared(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    prepared.eval()
    with torch.no_grad():
        expected = prepared(x)
        converted = qat.convert(prepared)
        assert torch.equal(converted(x), expected)
    stored = [m for m in converted.modules() if isinstance(m, PalettizedWeight)]
    assert len(stored) == 2 and stored[0].lut.shape == (4, 8) and stored[1].lut.shape == (1, 4)
