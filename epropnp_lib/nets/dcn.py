"""Modulated deformable convolution (DCNv2, Zhu et al. CVPR 2019) on
:func:`torchvision.ops.deform_conv2d`, as a drop-in for the 3x3 convolutions of ResNet stages.

:class:`DeformConv2d` keeps the ``weight`` parameter of the convolution it replaces (same name
and shape), so a torchvision/ImageNet ``state_dict`` still loads into the converted backbone;
the offset/mask predictor is zero-initialised, so a converted network starts out computing
exactly what the plain convolution computed (offsets 0, masks ``2 * sigmoid(0) = 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import deform_conv2d

from epropnp_lib.errors import ConfigError


class DeformConv2d(nn.Module):
    """3x3-style modulated deformable convolution.

    Args:
        conv: the convolution to replace (its weight, bias, stride, padding and dilation are
            taken over; ``groups`` must be 1).

    Forward: ``x: (B, C_in, H, W) -> (B, C_out, H', W')`` with the same output size as ``conv``.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or isinstance(conv.padding, str):
            raise ConfigError("DeformConv2d replaces convolutions with groups=1, numeric padding")
        stride = (int(conv.stride[0]), int(conv.stride[-1]))
        padding = (int(conv.padding[0]), int(conv.padding[-1]))
        dilation = (int(conv.dilation[0]), int(conv.dilation[-1]))
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = conv.weight
        self.bias = conv.bias
        kh, kw = conv.kernel_size
        # 2 offsets + 1 mask per kernel tap, predicted by a conv of the same geometry.
        self.offset = nn.Conv2d(conv.in_channels, 3 * kh * kw, (kh, kw), stride=stride,
                                padding=padding, dilation=dilation)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)  # type: ignore[arg-type]
        self._taps = kh * kw
        # In a frozen stage the offsets stay frozen too (the convolution stays exactly plain).
        self.offset.requires_grad_(conv.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.offset(x)
        offset, mask = out[:, : 2 * self._taps], out[:, 2 * self._taps:]
        return deform_conv2d(
            x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, mask=2.0 * torch.sigmoid(mask),
        )


def convert_to_deformable(model: nn.Module, stages: Sequence[int]) -> int:
    """Replace the 3x3 ``conv2`` of every residual block of ResNet ``layer{k}`` for ``k`` in
    ``stages`` (1..4) by :class:`DeformConv2d` (the DCN placement of ResNet-101-DCN: stages 3
    and 4).  Returns the number of convolutions replaced."""
    count = 0
    for stage in stages:
        if stage not in (1, 2, 3, 4):
            raise ConfigError(f"DCN stages must be in 1..4, got {stage}")
        layer = getattr(model, f"layer{stage}", None)
        if not isinstance(layer, nn.Sequential):
            raise ConfigError(f"{type(model).__name__} has no ResNet stage layer{stage}")
        for block in layer:
            conv = getattr(block, "conv2", None)
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                block.conv2 = DeformConv2d(conv)
                count += 1
    return count
