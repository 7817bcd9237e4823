"""Feature pyramid network (Lin et al., CVPR 2017) over the ResNet C2..C5 maps.

Level ``l`` of the pyramid has stride ``2**l``.  Levels 2..5 come from the backbone stage of the
same stride through a 1x1 lateral convolution, the top-down pathway (nearest upsampling and
sum) and a 3x3 output convolution; levels above 5 (FCOS uses P6, P7) come from stride-2 3x3
convolutions on the previous pyramid output, with a ReLU before all but the first (the
``on_output`` extra convolutions of FCOS/FCOS3D).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from epropnp_lib.errors import ConfigError

#: Backbone levels available as lateral inputs (C2..C5).
BACKBONE_LEVELS = (2, 3, 4, 5)


class FPN(nn.Module):
    """Feature pyramid.

    Args:
        in_channels: channels of the backbone maps C2..C5 (4 values).
        out_channels: channels of every pyramid level.
        levels: consecutive pyramid levels to output, e.g. ``(3, 4, 5, 6, 7)``; the lowest
            must be in 2..5.

    Forward: list of the 4 maps ``C_l: (B, in_channels[l - 2], H / 2**l, W / 2**l)`` ->
    list of ``P_l: (B, out_channels, H_l, W_l)`` for ``l`` in ``levels``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int,
                 levels: Sequence[int]) -> None:
        super().__init__()
        levels = tuple(levels)
        if len(in_channels) != len(BACKBONE_LEVELS):
            raise ConfigError(f"FPN needs the channels of C2..C5, got {tuple(in_channels)}")
        if not levels or levels[0] not in BACKBONE_LEVELS or any(
            b != a + 1 for a, b in zip(levels, levels[1:], strict=False)
        ):
            raise ConfigError(f"FPN levels must be consecutive and start in 2..5, got {levels}")
        if out_channels < 1:
            raise ConfigError(f"FPN out_channels must be positive, got {out_channels}")
        self.levels = levels
        self.strides = tuple(2**lv for lv in levels)
        self._inputs = tuple(lv for lv in BACKBONE_LEVELS if lv >= levels[0])
        self.lateral = nn.ModuleList(
            nn.Conv2d(in_channels[lv - 2], out_channels, 1) for lv in self._inputs
        )
        self.output = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in self._inputs
        )
        n_extra = max(0, levels[-1] - BACKBONE_LEVELS[-1])
        self.extra = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(n_extra)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)  # type: ignore[arg-type]

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        inputs = [feats[lv - 2] for lv in self._inputs]
        lat = [conv(x) for conv, x in zip(self.lateral, inputs, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:],
                                                    mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, lat, strict=True)]
        for k, conv in enumerate(self.extra):
            outs.append(conv(outs[-1] if k == 0 else F.relu(outs[-1])))
        first = self.levels[0] - self._inputs[0]
        return outs[first: first + len(self.levels)]
