"""Conv2d + BatchNorm2d folded for QAT (Jacob et al. 2018; torch.ao's ConvBn2d).

The weight the quantizer sees is the folded one, ``weight * gamma / sqrt(running_var + eps)``,
so training fake-quantizes exactly the weight that is deployed. While the BN statistics train,
the convolution's output is unscaled again (the fake-quantized weight divided by the factor, per
output channel) and normalized with the batch's statistics (which also move the running ones),
as torch.ao's ConvBn2d does; once frozen (:meth:`QuantConvBn2d.freeze_bn_stats`), and in eval
mode, the forward is the folded convolution itself: ``conv(x, fq(w_folded)) + b_folded`` with
``b_folded = beta + (bias - running_mean) * gamma / sqrt(running_var + eps)``.
:func:`qat.convert` turns it into a plain :class:`QuantConv2d` with that weight and bias.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..spec import Spec
from .modules import QuantConv2d

__all__ = ["QuantConvBn2d"]


class QuantConvBn2d(QuantConv2d):
    """A :class:`QuantConv2d` that owns the BatchNorm2d following it (submodule ``bn``)."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d] = None, weight_spec: Optional[Spec] = None,
                   input_spec: Optional[Spec] = None, output_spec: Optional[Spec] = None) -> "QuantConvBn2d":
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"QuantConvBn2d.from_float needs the BatchNorm2d that follows the conv, got {bn!r}")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"BatchNorm2d has {bn.num_features} features, the conv {conv.out_channels} output channels")
        if not bn.track_running_stats:
            raise ValueError("a BatchNorm2d without running statistics cannot be folded")
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)
        for key, value in conv.__dict__.items():
            if isinstance(value, (dict, set)):
                new.__dict__[key] = type(value)(value)
        new.register_module("bn", bn)
        new.register_buffer("bn_frozen", torch.zeros(1, dtype=torch.uint8, device=conv.weight.device))
        new._bn_frozen = False
        new._init_quantizers(weight_spec, input_spec, output_spec)
        return new

    def freeze_bn_stats(self, frozen: bool = True) -> "QuantConvBn2d":
        """Stop (or restart) updating the BN statistics: training then uses the running ones,
        i.e. the folded forward eval mode uses."""
        self._bn_frozen = frozen
        self.bn_frozen.fill_(1 if frozen else 0)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._bn_frozen = bool(self.bn_frozen)

    def _fold_factor(self) -> Tensor:
        """gamma / sqrt(running_var + eps), per output channel."""
        bn = self.bn
        gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
        return gamma / torch.sqrt(bn.running_var + bn.eps)

    def _folded_bias(self, factor: Tensor) -> Tensor:
        bn = self.bn
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
        bias = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
        return beta + (bias - bn.running_mean) * factor

    def _bn_factors(self) -> Tuple[Tensor, Tensor]:
        """(fold factor, folded bias)."""
        factor = self._fold_factor()
        return factor, self._folded_bias(factor)

    def _batch_stats(self) -> bool:
        return self.training and not self._bn_frozen

    def _float_weight(self) -> Tensor:
        if self._batch_stats():
            with torch.no_grad():
                factor = self._fold_factor()
        else:
            factor = self._fold_factor()
        return self.weight * factor.reshape(-1, 1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self._quantize_input(x)
        if self._batch_stats():
            # With batch statistics the output does not depend on the fold factor (the BN
            # undoes any per-channel scale, up to the weight's rounding), so it carries no
            # gradient there: gamma learns through the BN's affine, as in the float model.
            with torch.no_grad():
                factor = self._fold_factor()
                # A channel whose gamma is 0 has an all-zero folded weight; unscale it by 1.
                inv = torch.where(factor == 0, torch.ones_like(factor), factor).reciprocal()
            w = self._fake_quant_weight(self.weight * factor.reshape(-1, 1, 1, 1))
            # conv(x, w) / factor, unscaled in weight space (the conv is linear in its weight,
            # per output channel): no extra pass over the activations.
            y = self.bn(self._conv_forward(x, w * inv.reshape(-1, 1, 1, 1), self.bias))
        else:
            factor = self._fold_factor()
            w = self._fake_quant_weight(self.weight * factor.reshape(-1, 1, 1, 1))
            y = self._conv_forward(x, w, self._folded_bias(factor))
        return self._quantize_output(y)

    @torch.no_grad()
    def to_converted(self) -> QuantConv2d:
        """The folded :class:`QuantConv2d`: quantized folded weight, folded bias, no BN."""
        factor, folded_bias = self._bn_factors()
        conv = QuantConv2d.__new__(QuantConv2d)
        conv.__dict__.update(self.__dict__)
        for key, value in self.__dict__.items():
            if isinstance(value, (dict, set)):
                conv.__dict__[key] = type(value)(value)
        del conv._modules["bn"]
        del conv._buffers["bn_frozen"]
        conv.__dict__.pop("_bn_frozen", None)
        folded_weight = self.weight * factor.reshape(-1, 1, 1, 1)
        conv.weight = nn.Parameter(folded_weight.detach().clone(), requires_grad=self.weight.requires_grad)
        conv.bias = nn.Parameter(folded_bias.detach().clone())
        return QuantConv2d.to_converted(conv)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", bn folded"
