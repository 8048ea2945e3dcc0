"""Conv2d + BatchNorm2d folding: detection, numerics against the float conv -> BN, running
statistics, freezing, and convert."""

import copy

import pytest
import torch
from torch import nn

import qat
from qat.fusion import find_conv_bn_pairs
from qat.plan import Rule
from nets import ResNet18

QS = qat.QuantSpec
PLAN = qat.Plan.uniform(weight=QS.int8_per_channel(), input=QS.int8_per_tensor(), types=[nn.Conv2d])


def conv_bn(bias=False, affine=True):
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=bias)
    bn = nn.BatchNorm2d(6, affine=affine)
    with torch.no_grad():  # non-trivial statistics and affine parameters
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return nn.Sequential(conv, bn, nn.ReLU())


def test_resnet_pairs_found_by_tracing():
    model = ResNet18(width=4)
    pairs = find_conv_bn_pairs(model)
    assert len(pairs) == 1 + 8 * 2 + 3
    assert ("conv1", "bn1") in pairs and ("layer2.0.downsample.0", "layer2.0.downsample.1") in pairs
    assert ("layer4.1.conv2", "layer4.1.bn2") in pairs
    prepared = qat.prepare(model, PLAN)
    assert isinstance(prepared.layer3[0].conv1, qat.nn.QuantConvBn2d)
    assert isinstance(prepared.layer3[0].bn1, nn.Identity) and isinstance(prepared.layer3[0].downsample[1], nn.Identity)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in prepared.modules()) == 20  # all inside the folded convs


def test_unfoldable_patterns_are_left_alone():
    class ConvUsedTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent: fx cannot trace this module
                x = -x
            return self.bn(self.conv(self.seq(x)))

    assert find_conv_bn_pairs(ConvUsedTwice()) == []
    assert find_conv_bn_pairs(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))) == []
    assert find_conv_bn_pairs(nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU(), nn.BatchNorm2d(3))) == []
    # the Sequential inside an untraceable model is still found; the attribute pair is not
    assert find_conv_bn_pairs(Untraceable()) == [("seq.0", "seq.1")]
    prepared = qat.prepare(ConvUsedTwice(), PLAN)
    assert type(prepared.conv) is qat.nn.QuantConv2d and isinstance(prepared.bn, nn.BatchNorm2d)


@pytest.mark.parametrize("bias, affine", [(False, True), (True, True), (True, False)])
def test_matches_float_conv_bn_without_fake_quant(bias, affine):
    ref = conv_bn(bias, affine)
    model = qat.prepare(ref, PLAN)
    qat.disable_fake_quant(model)
    assert isinstance(model[0], qat.nn.QuantConvBn2d) and isinstance(model[1], nn.Identity)
    x = torch.randn(8, 4, 10, 10) * 2 + 0.5
    # training: batch statistics, running statistics move the same way
    for _ in range(3):
        assert torch.allclose(model(x), ref(x), atol=1e-5, rtol=1e-5)
    bn = model[0].bn
    assert torch.allclose(bn.running_mean, ref[1].running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref[1].running_var, atol=1e-6)
    assert int(bn.num_batches_tracked) == 3
    # eval: the folded convolution
    model.eval(), ref.eval()
    assert torch.allclose(model(x), ref(x), atol=1e-5, rtol=1e-5)


def test_gradients_match_float_conv_bn():
    ref = conv_bn(bias=True)
    model = qat.prepare(ref, PLAN)
    qat.disable_fake_quant(model)
    x = torch.randn(4, 4, 6, 6)
    model(x).square().sum().backward()
    ref(x).square().sum().backward()
    assert torch.allclose(model[0].weight.grad, ref[0].weight.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(model[0].bn.weight.grad, ref[1].weight.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(model[0].bn.bias.grad, ref[1].bias.grad, rtol=1e-4, atol=1e-4)


def test_weight_quantizer_sees_the_folded_weight():
    model = qat.prepare(conv_bn(), PLAN)
    m = model[0]
    bn = m.bn
    folded = m.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(-1, 1, 1, 1)
    expected = qat.observers.PerChannelMinMaxObserver(-128, 127, symmetric=True)
    expected(folded.detach().reshape(6, -1))
    assert torch.equal(m.weight_quantizer.scale, expected.calculate_qparams()[0])


def test_freeze_bn_stats():
    model = qat.prepare(conv_bn(), PLAN)
    x = torch.randn(8, 4, 10, 10)
    model(x)
    qat.freeze_bn_stats(model)
    bn = model[0].bn
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    model(x * 3 + 1)
    assert all(torch.equal(a, b) for a, b in zip(stats, (bn.running_mean, bn.running_var, bn.num_batches_tracked)))
    qat.freeze_observers(model)
    y_train = model(x)
    model.eval()
    assert torch.equal(model(x), y_train)  # frozen training forward is the eval (folded) forward
    # the frozen flag travels with the state_dict
    fresh = qat.prepare(conv_bn(), PLAN)
    fresh.load_state_dict(model.state_dict())
    assert fresh[0]._bn_frozen
    qat.freeze_bn_stats(model, False)
    model.train()
    model(x)
    assert not torch.equal(bn.running_mean, stats[0])


def test_zero_gamma_channel_stays_finite():
    ref = conv_bn()
    with torch.no_grad():
        ref[1].weight[2] = 0.0
    model = qat.prepare(ref, PLAN)
    y = model(torch.randn(4, 4, 5, 5))
    assert torch.isfinite(y).all()
    assert torch.allclose(y[:, 2], torch.relu(ref[1].bias[2]).expand_as(y[:, 2]))


def test_convert_folds_into_a_plain_quantized_conv():
    model = qat.prepare(ResNet18(width=4), qat.Plan([Rule(type=nn.Conv2d, weight=QS.int4_per_channel(learnable=True),
                                                          input=QS.int8_per_tensor()),
                                                     Rule(type=nn.Linear, weight=QS.int8_per_channel())]))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(2):
        loss = model(torch.randn(8, 3, 16, 16)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    converted = qat.convert(model)
    assert not any(isinstance(m, (qat.nn.QuantConvBn2d, nn.BatchNorm2d)) for m in converted.modules())
    conv = converted.layer1[0].conv1
    assert type(conv) is qat.nn.QuantConv2d and conv.bias is not None
    assert isinstance(conv.quantized_weight, qat.QuantizedWeight) and conv.quantized_weight.codes.dtype == torch.int8
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(converted(x), model(x))
    ref = copy.deepcopy(model.layer1[0].conv1)
    assert torch.equal(conv.bias, ref._bn_factors()[1])
