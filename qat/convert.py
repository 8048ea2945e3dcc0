"""``qat.convert``: replace fake-quantized weights by what deploys (integer codes and scales,
or each spec kind's own stored form), with activation quantizers frozen."""

from __future__ import annotations

import copy
import warnings

from torch import nn

from .nn.modules import QuantModule
from .observers import LearnableFakeQuantize, MovingAverageFakeQuantize
from .training import enable_observers, set_learnable_ranges

__all__ = ["convert"]


def _freeze_activation_quantizer(name: str, q: nn.Module) -> None:
    enable_observers(q, False)
    set_learnable_ranges(q, False)
    q.eval()
    if isinstance(q, MovingAverageFakeQuantize) and q.min_val.numel() and not bool(q.min_val.isfinite().all()):
        warnings.warn(f"qat.convert: {name} never observed a tensor; its range is meaningless", stacklevel=3)
    if isinstance(q, LearnableFakeQuantize) and not q._initialized:
        warnings.warn(f"qat.convert: {name} was never initialized; its range is meaningless", stacklevel=3)


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The deployable form of a prepared model (a deep copy unless ``inplace``).

    Every QAT module's weight becomes its weight quantizer's ``quantize_weight(w)`` (a
    :class:`qat.QuantizedWeight` for integer specs: int8/uint8 codes, scales, zero points),
    computed in eval mode, held as ``module.quantized_weight``; the float ``weight`` and the
    ``weight_quantizer`` are removed. Folded Conv+BN modules become plain quantized convs with
    the folded bias. Activation quantizers stay, frozen: observers off, learned ranges fixed,
    eval mode. In eval mode the converted model computes exactly (bit for bit) what the prepared
    model computes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, QuantModule) for m in model.modules()):
        raise ValueError("qat.convert: the model has no QAT module; run qat.prepare(model, plan) first")
    if not inplace:
        model = copy.deepcopy(model)
    done = {}
    for name, m in list(model.named_modules(remove_duplicate=False)):
        if not isinstance(m, QuantModule):
            continue
        if id(m) not in done:
            for role in ("input", "output"):
                q = getattr(m, f"{role}_quantizer")
                if q is not None:
                    _freeze_activation_quantizer(f"{name or '(root)'}.{role}_quantizer", q)
            try:
                done[id(m)] = m.to_converted()
            except (ValueError, TypeError) as e:
                raise type(e)(f"qat.convert: module {name!r}: {e}") from None
        new = done[id(m)]
        if new is not m:
            if name == "":
                model = new
            else:
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model
