"""qat.convert: prepare -> train -> convert keeps eval outputs bit for bit (a ResNet-18-style CNN
and Hugging Face transformers), stores integer codes, freezes activation quantizers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qat
from qat.plan import Rule
from nets import ResNet18, hf_output, tiny_bert, tiny_gpt2, tiny_llama

QS = qat.QuantSpec

CNN_PLAN = qat.Plan([
    Rule(["<first>", "<last>"], weight=QS.int8_per_channel(), input=QS.uint8_per_tensor()),
    Rule("layer4.*", type=nn.Conv2d, weight=QS.int4_per_group(8, learnable=True, symmetric=False),
         input=QS(bits=8, observer="minmax")),
    Rule(type=nn.Conv2d, weight=QS.int4_per_channel(learnable=True), input=QS.int8_per_tensor()),
])

LM_PLAN = qat.Plan([
    Rule(["*embed*", "*wte", "*wpe"], weight=QS.int8_per_channel()),
    Rule("lm_head", weight=qat.FloatSpec("fp8_e4m3")),
    Rule("*mlp*", weight=QS.int4_per_group(16, learnable=True), input=QS.int8_per_token()),
    Rule(type=["Linear", "Conv1D"], weight=QS.int4_per_group(16), input=QS.uint8_per_tensor(averaging_constant=0.5),
         output=qat.FloatSpec("bf16")),
])


def sgd_steps(model, loss_fn, batches):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for batch in batches:
        loss = loss_fn(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resnet_prepare_train_convert_is_exact():
    model = qat.prepare(ResNet18(width=4), CNN_PLAN)
    batches = [(torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))) for _ in range(3)]
    sgd_steps(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), batches)
    qat.freeze_bn_stats(model)
    qat.freeze_observers(model)
    sgd_steps(model, lambda m, b: F.cross_entropy(m(b[0]), b[1]), batches[:1])
    model.eval()
    converted = qat.convert(model)
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(converted(x), model(x))
    fc = converted.fc
    assert "weight" not in dict(fc.named_parameters(recurse=False)) and fc.weight_quantizer is None
    assert isinstance(fc.quantized_weight, qat.QuantizedWeight)
    codes = converted.layer4[0].conv1.quantized_weight.codes  # signed int4, asymmetric: int8 codes
    assert codes.dtype == torch.int8 and -8 <= int(codes.min()) and int(codes.max()) <= 7


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama, tiny_gpt2], ids=["bert", "llama", "gpt2"])
def test_transformer_prepare_train_convert_is_exact(make):
    model = qat.prepare(make(), LM_PLAN)
    ids = [torch.randint(0, 96, (2, 12)) for _ in range(3)]
    sgd_steps(model, lambda m, b: hf_output(m(input_ids=b)).float().square().mean(), ids)
    model.eval()
    converted = qat.convert(model)
    probe = torch.randint(0, 96, (3, 10))
    with torch.no_grad():
        assert torch.equal(hf_output(converted(input_ids=probe)), hf_output(model(input_ids=probe)))
    stored = [type(m.quantized_weight).__name__ for m in converted.modules() if isinstance(m, qat.nn.QuantModule)]
    assert "QuantizedWeight" in stored


def test_learnable_asymmetric_codes_are_unsigned_when_the_range_is():
    spec = QS(bits=4, signed=False, symmetric=False, granularity="group", group_size=8, learnable=True)
    model = qat.prepare(nn.Sequential(nn.Linear(16, 4)), qat.Plan.uniform(weight=spec))
    converted = qat.convert(model)
    qw = converted[0].quantized_weight
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= 15
    assert qw.scale.shape == (4, 2) and qw.spec == spec and qw.group_size == 8


def test_converted_state_dict_reloads():
    plan = qat.Plan.uniform(weight=QS.int4_per_group(8, learnable=True), input=QS.uint8_per_tensor())
    model = qat.prepare(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)), plan)
    sgd_steps(model, lambda m, x: m(x).square().mean(), [torch.randn(8, 16) for _ in range(2)])
    converted = qat.convert(model)
    sd = converted.state_dict()
    assert sd["0.quantized_weight.codes"].dtype == torch.int8 and "0.weight" not in sd
    fresh = qat.prepare(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)), plan)
    fresh(torch.randn(2, 16))  # (convert warns about activation ranges that never saw data)
    fresh = qat.convert(fresh)
    fresh.load_state_dict(sd, strict=True)
    x = torch.randn(5, 16)
    assert torch.equal(fresh(x), converted(x))


def test_activation_quantizers_are_frozen():
    model = qat.prepare(nn.Sequential(nn.Linear(8, 8)), qat.Plan.uniform(weight=QS.int8_per_channel(),
                                                                        input=QS.uint8_per_tensor(),
                                                                        output=QS(bits=8, learnable=True)))
    model(torch.randn(4, 8))
    converted = qat.convert(model)
    q_in, q_out = converted[0].input_quantizer, converted[0].output_quantizer
    assert not q_in.training and int(q_in.enabled) == 0 and not q_out.scale.requires_grad
    state = {k: v.clone() for k, v in converted.state_dict().items()}
    converted.train()
    converted(torch.randn(4, 8) * 100)
    for k, v in converted.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_inplace_and_errors():
    model = qat.prepare(nn.Sequential(nn.Linear(8, 8)), qat.Plan.uniform(weight=QS.int8_per_channel()))
    copy_ = qat.convert(model)
    assert copy_ is not model and model[0].weight_quantizer is not None
    assert qat.convert(model, inplace=True) is model and model[0].quantized_weight is not None
    assert qat.convert(model)[0].quantized_weight is not None  # converting again changes nothing
    with pytest.raises(ValueError, match="run qat.prepare"):
        qat.convert(nn.Linear(2, 2))

    class NoStore(nn.Module):
        def forward(self, w):
            return w

    bad = qat.prepare(nn.Sequential(nn.Linear(4, 4)), qat.Plan.uniform(weight=QS.int8_per_channel()))
    bad[0].weight_quantizer = NoStore()
    with pytest.raises(TypeError, match="module '0': NoStore has no quantize_weight"):
        qat.convert(bad)
    never = qat.prepare(nn.Sequential(nn.Linear(4, 4)), qat.Plan.uniform(input=QS.uint8_per_tensor()))
    with pytest.warns(UserWarning, match="0.input_quantizer never observed"):
        qat.convert(never)
