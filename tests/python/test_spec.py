"""QuantSpec / FloatSpec: validation, integer ranges, sizes, dict / YAML round trips, quantizer kinds."""

import math

import pytest
import torch

import qat
from qat.float_spec import FakeCast
from qat.quantizers import (
    ActivationFakeQuantize,
    DynamicFakeQuantize,
    LearnableWeightFakeQuantize,
    ObserverFakeQuantize,
    WeightFakeQuantize,
)
from qat.observers import LearnableFakeQuantize, MovingAverageFakeQuantize
from qat.spec import SPEC_KINDS, spec_from_dict

QS = qat.QuantSpec

SPECS = [
    QS(),
    QS.int8_per_channel(),
    QS.int4_per_channel(learnable=True),
    QS.int4_per_group(64),
    QS.int4_per_group(32, learnable=True, symmetric=False),
    QS.int8_per_tensor(),
    QS.uint8_per_tensor(averaging_constant=0.25),
    QS.int8_per_token(),
    QS(bits=3, signed=False, symmetric=False, granularity="channel", axis=1, observer="mse"),
    QS(bits=8, narrow_range=True, granularity="channel"),
    QS(bits=8, observer="entropy"),
    QS(bits=2, dynamic=True, symmetric=False),
    qat.FloatSpec("fp16"),
    qat.FloatSpec("fp8_e4m3"),
]


@pytest.mark.parametrize("bits, signed, narrow, lo, hi", [
    (8, True, False, -128, 127), (8, False, False, 0, 255), (8, True, True, -127, 127),
    (4, True, False, -8, 7), (4, False, False, 0, 15), (1, True, False, -1, 0), (1, False, False, 0, 1),
    (2, True, True, -1, 1),
])
def test_integer_ranges(bits, signed, narrow, lo, hi):
    spec = QS(bits=bits, signed=signed, narrow_range=narrow)
    assert (spec.quant_min, spec.quant_max) == (lo, hi)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_dict_round_trip_through_the_registry(spec):
    d = spec.to_dict()
    assert d["kind"] == spec.kind and SPEC_KINDS[spec.kind] is type(spec)
    assert spec_from_dict(d) == spec
    assert spec_from_dict(dict(d)).to_dict() == d


def test_yaml_safe_dicts():
    yaml = pytest.importorskip("yaml")
    for spec in SPECS:
        assert spec_from_dict(yaml.safe_load(yaml.safe_dump(spec.to_dict()))) == spec


@pytest.mark.parametrize("kwargs, message", [
    (dict(bits=0), "bits must lie in"),
    (dict(bits=9), "bits must lie in"),
    (dict(bits=8.0), "bits must be an int"),
    (dict(bits=True), "bits must be an int"),
    (dict(symmetric="yes"), "symmetric must be a bool"),
    (dict(granularity="row"), "granularity must be one of"),
    (dict(granularity="group"), "needs a group_size"),
    (dict(granularity="group", group_size=0), "group_size must be positive"),
    (dict(group_size=32), "only meaningful with granularity 'group'"),
    (dict(axis=1), "only meaningful with granularity 'channel'"),
    (dict(granularity="token"), "set dynamic=True"),
    (dict(dynamic=True, granularity="channel"), "per 'token' or per 'tensor'"),
    (dict(dynamic=True, learnable=True), "cannot be learnable"),
    (dict(dynamic=True, observer="minmax"), "takes no observer"),
    (dict(learnable=True, observer="entropy"), "initialized by MSE"),
    (dict(observer="kl"), "observer must be one of"),
    (dict(observer="percentile", granularity="channel"), "per tensor only"),
    (dict(averaging_constant=0.0), "averaging_constant must lie in"),
    (dict(narrow_range=True, signed=False), "narrow_range needs a signed range"),
])
def test_bad_specs_raise(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        QS(**kwargs)


def test_bad_dicts_raise():
    with pytest.raises(ValueError, match=r"unknown QuantSpec key\(s\) \['bit'\]"):
        spec_from_dict({"kind": "int", "bit": 4})
    with pytest.raises(ValueError, match="unknown spec kind 'intt'"):
        spec_from_dict({"kind": "intt", "bits": 4})
    with pytest.raises(ValueError, match="'kind' key"):
        spec_from_dict({"bits": 4})
    with pytest.raises(ValueError, match="FloatSpec.format must be one of"):
        qat.FloatSpec("fp4")
    with pytest.raises(ValueError, match=r"unknown FloatSpec key\(s\) \['bits'\]"):
        spec_from_dict({"kind": "float", "format": "bf16", "bits": 16})


def test_specs_are_frozen_and_hashable():
    spec = QS.int8_per_channel()
    with pytest.raises(Exception):
        spec.bits = 4
    assert len({QS.int8_per_channel(), QS(bits=8, granularity="channel")}) == 1


def test_sizes():
    shape = (64, 256)
    n = math.prod(shape)
    assert QS(bits=4).storage_bytes(shape) == n // 2 + 4
    assert QS(bits=4, symmetric=False).storage_bytes(shape) == n // 2 + 5
    assert QS.int8_per_channel().storage_bytes(shape) == n + 64 * 4
    assert QS(bits=8, granularity="channel", axis=1).storage_bytes(shape) == n + 256 * 4
    assert QS.int4_per_group(32).storage_bytes(shape) == n // 2 + (n // 32) * 4
    assert QS.int4_per_group(32).bits_per_weight() == 4 + 32 / 32
    assert QS.int4_per_group(32, symmetric=False).bits_per_weight() == 4 + 40 / 32
    assert QS(bits=3).storage_bytes((3, 3)) == math.ceil(27 / 8) + 4
    assert qat.FloatSpec("bf16").storage_bytes(shape) == 2 * n
    assert qat.FloatSpec("fp8_e5m2").bits_per_weight() == 8


def test_quantizer_kinds_per_role():
    assert isinstance(QS.int8_per_channel().make_quantizer("weight"), WeightFakeQuantize)
    lsq = QS.int4_per_group(32, learnable=True).make_quantizer("weight")
    assert isinstance(lsq, LearnableWeightFakeQuantize) and isinstance(lsq, LearnableFakeQuantize)
    act = QS.uint8_per_tensor().make_quantizer("input")
    assert isinstance(act, ActivationFakeQuantize) and isinstance(act, MovingAverageFakeQuantize)
    assert isinstance(QS(observer="percentile").make_quantizer("output"), ObserverFakeQuantize)
    assert isinstance(QS.int8_per_token().make_quantizer("input"), DynamicFakeQuantize)
    assert type(QS(learnable=True).make_quantizer("input")) is LearnableFakeQuantize
    assert isinstance(qat.FloatSpec("bf16").make_quantizer("weight"), FakeCast)
    with pytest.raises(ValueError, match="role must be one of"):
        QS().make_quantizer("bias")
    with pytest.raises(ValueError, match="dynamic QuantSpec quantizes activations"):
        QS.int8_per_token().make_quantizer("weight")
    with pytest.raises(ValueError, match="cannot be quantized per group"):
        QS.int4_per_group(32).make_quantizer("input")
    with pytest.raises(ValueError, match="needs an explicit axis"):
        QS.int8_per_channel().make_quantizer("output")


def test_learnable_and_moving_average_state_dict_contract():
    """The C++ modules mirror these keys (and dtypes)."""
    lsq = QS.int8_per_channel(learnable=True).make_quantizer("weight")
    lsq.initialize(torch.randn(6, 10))
    assert {k: (tuple(v.shape), v.dtype) for k, v in lsq.state_dict().items()} == {
        "scale": ((6,), torch.float32), "zero_point": ((6,), torch.float32),
        "enabled": ((1,), torch.uint8), "initialized": ((1,), torch.uint8)}
    act = QS.uint8_per_tensor().make_quantizer("input")
    assert {k: (tuple(v.shape), v.dtype) for k, v in act.state_dict().items()} == {
        "enabled": ((1,), torch.uint8), "fake_quant_enabled": ((1,), torch.uint8),
        "min_val": ((1,), torch.float32), "max_val": ((1,), torch.float32),
        "scale": ((1,), torch.float32), "zero_point": ((1,), torch.float32)}


def test_describe():
    assert QS.int4_per_group(32, learnable=True).describe() == "int4 sym group32 lsq"
    assert QS.uint8_per_tensor().describe() == "uint8 asym tensor"
    assert QS.int8_per_token().describe() == "int8 sym token dynamic"
    assert qat.FloatSpec("fp8_e4m3").describe() == "fp8_e4m3"
