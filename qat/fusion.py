"""Finding the Conv2d -> BatchNorm2d pairs :func:`qat.prepare` folds.

Supported patterns (both must be exactly ``nn.Conv2d`` then ``nn.BatchNorm2d`` with running
statistics and as many features as the conv has output channels):

- consecutive children of an ``nn.Sequential``;
- anywhere in a forward that ``torch.fx.symbolic_trace`` can trace: a BatchNorm2d called on
  the output of a Conv2d that nothing else reads, each module called once (e.g. ResNet's
  ``self.bn1(self.conv1(x))``). When the model does not trace, its children are tried one by
  one, so traceable blocks inside an untraceable model are still found.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Tuple

from torch import fx, nn

__all__ = ["find_conv_bn_pairs"]


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.num_features == conv.out_channels)


def _traced_pairs(module: nn.Module) -> List[Tuple[str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = fx.symbolic_trace(module).graph
    modules = dict(module.named_modules())
    calls: Dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        if calls[src.target] == 1 and calls[node.target] == 1 and _foldable(modules.get(src.target),
                                                                             modules.get(node.target)):
            pairs.append((src.target, node.target))
    return pairs


def _sequential_pairs(seq: nn.Sequential) -> List[Tuple[str, str]]:
    names = list(seq._modules)
    return [(a, b) for a, b in zip(names, names[1:]) if _foldable(seq._modules[a], seq._modules[b])]


def find_conv_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """Qualified names ``(conv, bn)`` of the foldable pairs in ``model``, in model order."""
    found: List[Tuple[str, str]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        try:
            local = _traced_pairs(module)
        except Exception:  # noqa: BLE001  (any tracing failure: fall back to the children)
            local = None
        if local is not None:
            found.extend((prefix + a, prefix + b) for a, b in local)
            return
        if isinstance(module, nn.Sequential):
            found.extend((prefix + a, prefix + b) for a, b in _sequential_pairs(module))
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child)

    visit("", model)
    seen = set()
    unique = []
    for conv, bn in found:  # a module reachable by two paths is folded once
        if conv not in seen and bn not in seen:
            unique.append((conv, bn))
            seen.update((conv, bn))
    return unique
