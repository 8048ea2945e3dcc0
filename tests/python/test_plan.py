"""Plan: rule matching (globs, types, first match, skip, <first>/<last>), per-component plans
applied by prepare, YAML round trips and error messages."""

import pytest
import torch
from torch import nn

import qat
from qat.plan import Rule

QS = qat.QuantSpec
INT4 = QS.int4_per_group(16)
INT8 = QS.int8_per_channel()
FP16 = qat.FloatSpec("fp16")
ACT8 = QS.uint8_per_tensor()


class Block(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.attn = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return x + self.mlp(self.attn(x))


class MultiModal(nn.Module):
    """vision encoder (conv + blocks), text encoder (embedding + blocks), fusion, decoder."""

    def __init__(self, d=32):
        super().__init__()
        self.vision_encoder = nn.ModuleDict({"patch": nn.Conv2d(3, d, 4, 4), "blocks": nn.Sequential(Block(d), Block(d))})
        self.text_encoder = nn.ModuleDict({"embed": nn.Embedding(50, d), "blocks": nn.Sequential(Block(d))})
        self.fusion = nn.Linear(2 * d, d)
        self.decoder = nn.Sequential(Block(d), nn.Linear(d, 50))

    def forward(self, image, tokens):
        v = self.vision_encoder["patch"](image).flatten(2).mean(-1)
        v = self.vision_encoder["blocks"](v)
        t = self.text_encoder["blocks"](self.text_encoder["embed"](tokens).mean(1))
        return self.decoder(self.fusion(torch.cat([v, t], -1)))


def specs_by_name(model):
    return {name: (m.weight_spec, m.input_spec, m.output_spec) for name, m in model.named_modules()
            if isinstance(m, qat.nn.QuantModule)}


def test_per_component_plan():
    plan = qat.Plan([
        Rule("vision_encoder.*", weight=INT4),
        Rule("text_encoder.*", weight=INT8),
        Rule("fusion*", weight=FP16, input=FP16),
        Rule("decoder.*", weight=INT4, input=ACT8),
    ])
    model = MultiModal()
    prepared = qat.prepare(model, plan)
    got = specs_by_name(prepared)
    float_names = [n for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d, nn.Embedding)]
    assert sorted(got) == sorted(float_names)
    for name, (w, i, o) in got.items():
        component = name.split(".")[0]
        assert (w, i, o) == {"vision_encoder": (INT4, None, None), "text_encoder": (INT8, None, None),
                             "fusion": (FP16, FP16, None), "decoder": (INT4, ACT8, None)}[component], name
    prepared(torch.randn(2, 3, 8, 8), torch.randint(0, 50, (2, 5)))


def test_first_and_last_layers_int8_the_rest_int4():
    plan = qat.Plan([Rule(["<first>", "<last>"], weight=INT8), Rule(type=[nn.Linear, nn.Conv2d, nn.Embedding], weight=INT4)])
    prepared = qat.prepare(MultiModal(), plan)
    got = specs_by_name(prepared)
    assert got.pop("vision_encoder.patch")[0] == INT8
    assert got.pop("decoder.1")[0] == INT8
    assert got and all(w == INT4 for w, _, _ in got.values())


def test_first_match_wins_and_skip():
    plan = qat.Plan([
        Rule("decoder.1", skip=True),
        Rule("*.mlp.*", weight=INT4),
        Rule(type="Linear", weight=INT8),
        Rule("*", weight=FP16),  # never reached for Linears
    ])
    model = MultiModal()
    got = specs_by_name(qat.prepare(model, plan))
    assert "decoder.1" not in got
    assert got["decoder.0.mlp.0"][0] == INT4 and got["decoder.0.attn"][0] == INT8
    assert got["vision_encoder.patch"][0] == FP16 and got["text_encoder.embed"][0] == FP16


def test_type_matching_forms():
    lin, conv, emb = nn.Linear(2, 2), nn.Conv2d(1, 1, 1), nn.Embedding(3, 2)
    for t in (nn.Linear, "Linear", "nn.Linear", "torch.nn.Linear", "torch.nn.modules.linear.Linear", [nn.Conv2d, "Linear"]):
        assert Rule(type=t, weight=INT8).matches("x", lin), t
        assert not Rule(type=t, weight=INT8).matches("x", emb), t
    assert Rule(type="Conv2d", weight=INT8).matches("x", conv)
    # subclasses match (by MRO), both as classes and names
    assert Rule(type="Module", weight=INT8).matches("x", emb)
    # pattern and type: both must match
    rule = Rule("enc.*", type=nn.Linear, weight=INT8)
    assert rule.matches("enc.a", lin) and not rule.matches("dec.a", lin) and not rule.matches("enc.a", conv)


def test_glob_semantics():
    rule = Rule("model.layers.*.mlp.*", weight=INT4)
    m = nn.Linear(2, 2)
    assert rule.matches("model.layers.3.mlp.up_proj", m)
    assert rule.matches("model.layers.3.x.mlp.up_proj", m)  # '*' crosses dots (fnmatch)
    assert not rule.matches("model.layers.3.attn.q", m)
    assert not Rule("Model.*", weight=INT4).matches("model.x", m)  # case-sensitive
    assert Rule("enc.[ab]", weight=INT4).matches("enc.b", m)


@pytest.mark.parametrize("plan", [
    qat.Plan([Rule("vision_encoder.*", weight=INT4, input=ACT8), Rule(type=[nn.Linear, "Conv2d"], weight=INT8),
              Rule(["<first>", "fusion"], skip=True), Rule("decoder.*", type="Embedding", output=FP16)]),
    qat.Plan([]),
    qat.Plan.uniform(weight=QS(bits=2, signed=False, symmetric=False, granularity="channel", learnable=True),
                     input=QS.int8_per_token(), output=qat.FloatSpec("fp8_e5m2")),
])
def test_yaml_round_trip_is_exact(plan, tmp_path):
    text = plan.to_yaml()
    again = qat.Plan.from_yaml(text)
    assert again == plan and again.to_yaml() == text
    path = tmp_path / "plan.yaml"
    plan.save(path)
    assert qat.Plan.load(path) == plan
    assert qat.Plan.from_dict(plan.to_dict()) == plan


def test_hand_written_yaml():
    text = """
rules:
  - pattern: "lm_head"
    skip: true
  - pattern: ["model.layers.0.*", "model.layers.1.*"]
    type: Linear
    weight: {kind: int, bits: 8, granularity: channel}
    input: {kind: int, bits: 8, granularity: token, dynamic: true}
  - type: [Linear, Embedding]
    weight: {kind: int, bits: 4, granularity: group, group_size: 32, learnable: true}
"""
    plan = qat.Plan.from_yaml(text)
    assert plan.rules[0] == Rule("lm_head", skip=True)
    assert plan.rules[1].weight == INT8 and plan.rules[1].input == QS.int8_per_token()
    assert plan.rules[1].pattern == ("model.layers.0.*", "model.layers.1.*")
    assert plan.rules[2].type == ("Linear", "Embedding") and plan.rules[2].weight == QS.int4_per_group(32, learnable=True)
    assert qat.Plan.from_yaml(plan.to_yaml()) == plan


@pytest.mark.parametrize("text, message", [
    ("rules:\n- {pattern: a, wieght: {kind: int}}", r"plan rule 0: unknown key\(s\) \['wieght'\]"),
    ("rules:\n- {pattern: a, skip: true}\n- {pattern: b, weight: {kind: int, bits: 12}}",
     r"plan rule 1, key 'weight': QuantSpec.bits must lie in \[1, 8\]"),
    ("rules:\n- {pattern: a, weight: {kind: lattice}}", r"plan rule 0, key 'weight': unknown spec kind 'lattice'"),
    ("rules:\n- {pattern: a, input: {bits: 8}}", r"plan rule 0, key 'input': a spec is a mapping with a 'kind'"),
    ("rules:\n- {weight: {kind: int}}", "plan rule 0: a rule needs a pattern, a type or both"),
    ("rules:\n- {pattern: a}", "plan rule 0: a rule must assign"),
    ("rules:\n- {pattern: a, skip: true, weight: {kind: int}}", "plan rule 0: a rule either skips"),
    ("rules:\n- {pattern: a, skip: yes please}", "plan rule 0: a rule's skip must be a bool"),
    ("rules:\n- pattern: a\n  weight: {kind: int, bits: 8, group_size: 4}", "plan rule 0, key 'weight'"),
    ("rule:\n- {pattern: a, skip: true}", r"unknown plan key\(s\) \['rule'\]"),
    ("rules: {pattern: a}", "plan 'rules' must be a list"),
    ("rules: [a, b]", "plan rule 0: a rule is a mapping"),
    ("rules: [", "plan YAML does not parse"),
])
def test_yaml_errors_name_the_rule_and_key(text, message):
    with pytest.raises(ValueError, match=message):
        qat.Plan.from_yaml(text)


def test_python_errors():
    with pytest.raises(TypeError, match="must be a qat Spec"):
        Rule("a", weight={"kind": "int"})
    with pytest.raises(TypeError, match="nn.Module subclass or its name"):
        Rule(type=int, weight=INT8)
    with pytest.raises(TypeError, match="plan rule 1"):
        qat.Plan([Rule("a", skip=True), {"pattern": "b", "weight": 8}])
    with pytest.raises(TypeError, match="qat.Plan"):
        qat.prepare(nn.Linear(2, 2), [Rule("a", skip=True)])
