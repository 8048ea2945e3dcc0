"""qat.prepare and the QAT modules: swaps, state_dict keys, ties, summary, training controls,
state_dict reload, autocast, learned ranges."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qat
from qat.plan import Rule
from nets import ResNet18, tiny_gpt2, tiny_llama

QS = qat.QuantSpec
W8 = QS.int8_per_channel()
A8 = QS.uint8_per_tensor()


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def cnn_plan(learnable=False):
    return qat.Plan([Rule(type=[nn.Conv2d, nn.Linear], weight=QS.int8_per_channel(learnable=learnable),
                          input=QS.int8_per_tensor())])


def test_swaps_keep_type_parameters_and_keys():
    model = nn.Sequential(nn.Linear(4, 6), nn.Conv1d(6, 6, 3), nn.Conv2d(2, 3, 3), nn.Embedding(7, 4), nn.LayerNorm(4))
    float_keys = set(model.state_dict())
    plan = qat.Plan.uniform(weight=W8, types=["Linear", "Conv1d", "Conv2d", "Embedding", "LayerNorm"])
    prepared = qat.prepare(model, plan, inplace=True)
    assert prepared is model
    expected = [qat.nn.QuantLinear, qat.nn.QuantConv1d, qat.nn.QuantConv2d, qat.nn.QuantEmbedding, nn.LayerNorm]
    for m, cls, base in zip(model, expected, [nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LayerNorm]):
        assert type(m) is cls and isinstance(m, base)
    keys = set(model.state_dict())
    assert float_keys <= keys
    assert all(".weight_quantizer." in k for k in keys - float_keys)


def test_not_inplace_leaves_the_model_alone():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = qat.prepare(model, qat.Plan.uniform(weight=W8, input=A8))
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)
    assert prepared[0].weight is not model[0].weight
    prepared(torch.randn(3, 16))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_same_parameter_objects_and_ties():
    model = tiny_llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    emb = model.model.embed_tokens.weight
    prepared = qat.prepare(model, qat.Plan([Rule(type=["Linear", "Embedding"], weight=W8)]), inplace=True)
    assert isinstance(prepared.lm_head, qat.nn.QuantLinear)
    assert prepared.lm_head.weight is emb and prepared.model.embed_tokens.weight is emb


def test_shared_module_becomes_one_qat_module():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    prepared = qat.prepare(model, qat.Plan.uniform(weight=W8))
    assert prepared[0] is prepared[2] and isinstance(prepared[0], qat.nn.QuantLinear)


def test_only_exact_types_are_swapped():
    class MyLinear(nn.Linear):
        pass

    model = nn.ModuleDict({"mha": nn.MultiheadAttention(8, 2), "mine": MyLinear(3, 3), "plain": nn.Linear(3, 3)})
    prepared = qat.prepare(model, qat.Plan([Rule("*", weight=W8)]))
    assert type(prepared["mha"].out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert type(prepared["mine"]) is MyLinear
    assert isinstance(prepared["plain"], qat.nn.QuantLinear)


def test_double_prepare_raises():
    prepared = qat.prepare(mlp(), qat.Plan.uniform(weight=W8))
    with pytest.raises(RuntimeError, match=r"already prepared \(module '0' is a QuantLinear\)"):
        qat.prepare(prepared, qat.Plan.uniform(weight=W8))
    nothing = qat.prepare(mlp(), qat.Plan([Rule("nope", weight=W8)]))
    with pytest.raises(RuntimeError, match="already prepared"):
        qat.prepare(nothing, qat.Plan.uniform(weight=W8))
    with pytest.raises(RuntimeError, match="already prepared"):
        qat.prepare(nn.Sequential(prepared), qat.Plan.uniform(weight=W8))


def test_errors_name_the_module():
    with pytest.raises(ValueError, match=r"module 'emb' \(Embedding, pattern 'emb'\): an Embedding's input is indices"):
        qat.prepare(nn.ModuleDict({"emb": nn.Embedding(4, 4)}), qat.Plan([Rule("emb", input=A8)]))
    with pytest.raises(ValueError, match=r"module '1' \(Linear, type Linear, Conv1d, Conv2d\): group_size 32 must divide the weight's 8 input"):
        qat.prepare(nn.Sequential(nn.Linear(64, 8), nn.Linear(8, 8)), qat.Plan.uniform(weight=QS.int4_per_group(32)))
    with pytest.raises(TypeError, match="nn.Module"):
        qat.prepare("model", qat.Plan())


def test_summary():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10, bias=False), nn.LayerNorm(10))
    plan = qat.Plan([Rule("0", weight=QS.int4_per_group(32)), Rule("2", weight=W8, input=A8)])
    s = qat.prepare(model, plan).qat_summary
    assert isinstance(s, qat.PrepareSummary)
    first, second = s.modules
    assert (first.name, first.type, first.params) == ("0", "QuantLinear", 64 * 32 + 32)
    assert first.bytes == 64 * 32 // 2 + (64 * 32 // 32) * 4 + 32 * 4
    assert first.bits_per_weight == pytest.approx(4 + 32 / 32)
    assert (second.params, second.bytes, second.input) == (320, 320 + 10 * 4, "uint8 asym tensor")
    params = sum(p.numel() for p in model.parameters())
    assert s.total_params == params and s.total_float_bytes == 4 * params
    assert s.total_bytes == first.bytes + second.bytes + 4 * 20  # LayerNorm stays float
    text = str(s)
    assert "int4 sym group32" in text and "bits/w" in text and "smaller" in text
    # after convert the same sizes are reported
    prepared = qat.prepare(model, plan)
    prepared(torch.randn(2, 64))
    converted = qat.summarize(qat.convert(prepared))
    assert converted.total_bytes == s.total_bytes and converted.total_params == s.total_params


def test_hf_conv1d_is_quantized_like_a_transposed_linear():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(12, 32)
    lin = nn.Linear(32, 12)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
    spec = QS.int4_per_group(16)
    qconv = qat.prepare(nn.Sequential(conv), qat.Plan.uniform(weight=spec, input=A8, types=["Conv1D"]))[0]
    qlin = qat.prepare(nn.Sequential(lin), qat.Plan.uniform(weight=spec, input=A8))[0]
    assert isinstance(qconv, Conv1D) and type(qconv).__name__ == "QuantHFConv1D"
    assert set(qconv.state_dict()) == set(qlin.state_dict())
    x = torch.randn(2, 5, 32)
    assert torch.allclose(qconv(x), qlin(x), atol=1e-6)
    assert torch.equal(qconv.quant_weight(), qlin.quant_weight().t())


def test_gpt2_prepares_its_conv1d_layers():
    prepared = qat.prepare(tiny_gpt2(), qat.Plan([Rule("*.h.*", weight=QS.int4_per_group(16, learnable=True))]))
    names = [n for n, m in prepared.named_modules() if isinstance(m, qat.nn.QuantModule)]
    assert len(names) == 8 and all(type(prepared.get_submodule(n)).__name__ == "QuantHFConv1D" for n in names)


def train_steps(model, batches, lr=0.05, autocast=False):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach().float())
    return losses


def image_batches(n, batch=8, size=16):
    return [(torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))) for _ in range(n)]


def test_state_dict_reloads_into_a_freshly_prepared_model():
    plan = qat.Plan([Rule("<first>", weight=W8, input=A8), Rule(type=nn.Conv2d, weight=QS.int4_per_channel(learnable=True),
                                                                input=QS.int8_per_tensor()),
                     Rule(type=nn.Linear, weight=QS.int4_per_group(16, symmetric=False), input=QS.int8_per_token())])
    model = qat.prepare(ResNet18(width=4), plan)
    train_steps(model, image_batches(3))
    qat.freeze_bn_stats(model)
    train_steps(model, image_batches(1))
    fresh = qat.prepare(ResNet18(width=4), plan)
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(4, 3, 16, 16)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    model.train(), fresh.train()  # flags (frozen BN stats) came along
    assert torch.equal(model(x), fresh(x))


def test_learnable_ranges_get_gradients_and_can_be_frozen():
    model = qat.prepare(mlp(), qat.Plan.uniform(weight=QS.int4_per_channel(learnable=True),
                                                input=QS(bits=8, learnable=True)))
    model(torch.randn(5, 16)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    names = {n for n, _ in model.named_parameters()}
    assert {"0.weight_quantizer.scale", "0.input_quantizer.scale"} <= names
    qat.set_learnable_ranges(model, False)
    assert not model[0].weight_quantizer.scale.requires_grad


def test_bf16_autocast_training_runs():
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, 10))
    model = qat.prepare(cnn, cnn_plan(learnable=True))
    losses = train_steps(model, image_batches(3), autocast=True)
    assert all(torch.isfinite(l) for l in losses)
    lm = qat.prepare(tiny_llama(), qat.Plan([Rule(type=nn.Linear, weight=QS.int4_per_group(16, learnable=True),
                                                  input=QS.int8_per_token())]))
    ids = torch.randint(0, 96, (2, 12))
    opt = torch.optim.SGD(lm.parameters(), lr=0.01)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lm(input_ids=ids, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        assert torch.isfinite(out.loss)
    assert lm.model.layers[0].mlp.up_proj.weight_quantizer.scale.grad is not None


def test_freeze_observers_and_scheduler():
    model = qat.prepare(mlp(), qat.Plan.uniform(weight=W8, input=A8))
    sched = qat.QATScheduler(model, freeze_observers_at=2)
    act = model[0].input_quantizer
    for step in range(4):
        before = act.min_val.clone()
        model(torch.randn(8, 16) * (step + 1) * 10)
        moved = not torch.equal(act.min_val, before)
        assert moved == (step < 2), step
        sched.step()
    assert sched.steps == 4
    qat.enable_observers(model)
    before = act.min_val.clone()
    model(torch.randn(8, 16) * 1000)
    assert act.min_val < before
    with pytest.raises(ValueError, match="freeze_bn_at"):
        qat.QATScheduler(model, freeze_bn_at=-1)


def test_disable_fake_quant_gives_the_float_model():
    model = mlp()
    prepared = qat.prepare(model, qat.Plan.uniform(weight=QS.int4_per_channel(learnable=True), input=A8,
                                                   output=qat.FloatSpec("fp8_e4m3")))
    x = torch.randn(4, 16)
    assert not torch.allclose(prepared(x), model(x), atol=1e-3)
    qat.disable_fake_quant(prepared)
    assert torch.equal(prepared(x), model(x))
    qat.enable_fake_quant(prepared)
    assert not torch.allclose(prepared(x), model(x), atol=1e-3)


def test_prepared_model_trains_down():
    torch.manual_seed(0)
    model = qat.prepare(mlp(), qat.Plan.uniform(weight=QS.int4_per_channel(learnable=True), input=A8))
    x = torch.randn(64, 16)
    y = (x[:, :8] > 0).long().argmax(1)
    losses = train_steps(model, [(x, y)] * 30, lr=0.1)
    assert losses[-1] < 0.7 * losses[0]
    assert math.isfinite(float(losses[-1]))
