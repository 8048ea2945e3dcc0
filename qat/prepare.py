"""``qat.prepare``: swap the modules a plan matches for their QAT modules."""

from __future__ import annotations

import copy
import sys
from typing import Dict, List, Tuple, Type, Union

from torch import nn

from .fusion import find_conv_bn_pairs
from .nn.conv_bn import QuantConvBn2d
from .nn.modules import QuantConv1d, QuantConv2d, QuantEmbedding, QuantLinear, QuantModule, quant_hf_conv1d_class
from .plan import Plan
from .summary import summarize

__all__ = ["prepare", "quantizable_types"]


def quantizable_types() -> Dict[type, Type[QuantModule]]:
    """Float module type -> QAT module type. Exact types only: a subclass may use its weight
    outside ``forward`` (``MultiheadAttention``'s ``out_proj``), where fake quantization would
    not reach. Hugging Face's ``Conv1D`` is included once transformers is imported."""
    table: Dict[type, Type[QuantModule]] = {
        nn.Linear: QuantLinear,
        nn.Conv1d: QuantConv1d,
        nn.Conv2d: QuantConv2d,
        nn.Embedding: QuantEmbedding,
    }
    if "transformers.pytorch_utils" in sys.modules:
        cls = quant_hf_conv1d_class()
        table[cls._float_types[0]] = cls
    return table


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def prepare(model: nn.Module, plan: Union[Plan, dict], inplace: bool = False) -> nn.Module:
    """Make ``model`` quantization-aware as ``plan`` says; returns the prepared model (a deep
    copy unless ``inplace``) with its :class:`PrepareSummary` as ``model.qat_summary``.

    Every module of a quantizable type (:func:`quantizable_types`) that a non-skip rule matches
    becomes its QAT module, keeping its parameter objects (tied weights stay tied) and state_dict
    keys. A matched Conv2d directly followed by a BatchNorm2d (see :mod:`qat.fusion`) becomes a
    :class:`qat.nn.QuantConvBn2d` that owns the BN; the BN's place gets an ``nn.Identity``.
    Weight quantizers are initialized from the weights here, so build the optimizer after
    prepare. A model that is already prepared is refused.
    """
    if isinstance(plan, dict):
        plan = Plan.from_dict(plan)
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a qat.Plan (or its dict form), got {type(plan).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    quant = next(((n, m) for n, m in model.named_modules() if isinstance(m, QuantModule)), None)
    if quant is not None or any(getattr(m, "_qat_prepared", False) for m in model.modules()):
        what = f"module {quant[0]!r} is a {type(quant[1]).__name__}" if quant else "qat.prepare already ran on it"
        raise RuntimeError(f"qat.prepare: the model is already prepared ({what}); prepare the float model once")
    if not inplace:
        model = copy.deepcopy(model)

    table = quantizable_types()
    paths: Dict[int, List[str]] = {}
    modules: Dict[int, nn.Module] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if type(m) in table:
            paths.setdefault(id(m), []).append(name)
            modules[id(m)] = m
    order = list(paths)
    first = paths[order[0]][0] if order else None
    last = paths[order[-1]][0] if order else None

    matched: List[Tuple[int, object]] = []
    for key in order:
        rule = plan.match(paths[key][0], modules[key], first, last)
        if rule is not None and not rule.skip:
            matched.append((key, rule))

    pairs = {}
    if any(type(modules[k]) is nn.Conv2d for k, _ in matched) and any(
            type(m) is nn.BatchNorm2d for m in model.modules()):
        pairs = dict(find_conv_bn_pairs(model))

    replaced: List[Tuple[str, nn.Module]] = []
    for key, rule in matched:
        module, names = modules[key], paths[key]
        try:
            if names[0] in pairs and len(names) == 1:
                bn_name = pairs[names[0]]
                new = QuantConvBn2d.from_float(module, model.get_submodule(bn_name), rule.weight, rule.input,
                                               rule.output)
                replaced.append((bn_name, nn.Identity()))
            else:
                new = table[type(module)].from_float(module, rule.weight, rule.input, rule.output)
        except (ValueError, TypeError) as e:
            raise type(e)(f"qat.prepare: module {names[0]!r} ({type(module).__name__}, {rule.describe()}): {e}") from None
        replaced.extend((name, new) for name in names)

    for name, new in replaced:
        if name == "":
            model = new
        else:
            _set_module(model, name, new)
    model._qat_prepared = True
    model.qat_summary = summarize(model)
    return model
