"""ResNet backbones (torchvision blocks) with a configurable width, for both networks.

``BackboneConfig(depth=34, base_width=64)`` is exactly torchvision's ResNet-34 (same module
names, so torchvision's ImageNet ``state_dict`` loads into it); smaller ``base_width`` values give
the same topology with fewer channels, for CPU training.  The classifier (``avgpool``/``fc``) is
not built: the forward pass returns the four stage outputs.

ImageNet weights are never downloaded at run time: download torchvision's file once, e.g.
``resnet34-b627a593.pth`` from ``https://download.pytorch.org/models/``, and point
``pretrained`` at it.  It is loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from epropnp_lib.errors import ConfigError

__all__ = ["BackboneConfig", "PretrainedWeightsError", "ResNetBackbone"]

#: Blocks per stage for each supported depth (He et al. 2016), and the block type.
_LAYOUTS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class PretrainedWeightsError(ConfigError):
    """The pretrained weight file is missing, unreadable or does not fit the backbone."""


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet backbone settings.

    Attributes:
        depth: 18, 34, 50 or 101.
        base_width: channels of the first stage (64 = torchvision); stages have
            ``base_width * (1, 2, 4, 8)`` planes (times 4 outputs for bottleneck blocks).
        pretrained: path of a local torchvision ImageNet ``state_dict`` (only with
            ``base_width == 64``), or None for random initialisation.
        frozen_stages: -1 trains everything; 0 freezes the stem; k >= 1 also freezes stages 1..k
            (their batch norms stay in eval mode).
    """

    depth: int = 34
    base_width: int = 64
    pretrained: str | None = None
    frozen_stages: int = -1

    def __post_init__(self) -> None:
        if self.depth not in _LAYOUTS:
            raise ConfigError(f"backbone depth must be one of {sorted(_LAYOUTS)}, got {self.depth}")
        if not 4 <= self.base_width <= 256:
            raise ConfigError(f"backbone base_width must be in [4, 256], got {self.base_width}")
        if not -1 <= self.frozen_stages <= 4:
            raise ConfigError(f"frozen_stages must be in [-1, 4], got {self.frozen_stages}")
        if self.pretrained is not None and self.base_width != 64:
            raise ConfigError("pretrained ImageNet weights need base_width=64")


class ResNetBackbone(nn.Module):
    """ResNet trunk returning the C2..C5 feature maps.

    Forward: ``x: (B, 3, H, W)`` (normalised image) → list of 4 tensors
    ``(B, out_channels[i], H / strides[i], W / strides[i])`` (sizes rounded up).
    """

    strides: tuple[int, int, int, int] = (4, 8, 16, 32)

    def __init__(self, config: BackboneConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or BackboneConfig()
        block, layers = _LAYOUTS[cfg.depth]
        width = cfg.base_width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        exp = block.expansion
        self.out_channels: tuple[int, int, int, int] = (
            width * exp,
            width * 2 * exp,
            width * 4 * exp,
            width * 8 * exp,
        )
        self._init_weights()
        if cfg.pretrained is not None:
            self.load_pretrained(cfg.pretrained)
        self._freeze()

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # torchvision's Bottleneck derives its inner width from base_width=64; keep it standard.
        mods: list[nn.Module] = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        mods += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero-init the last BN of each residual branch (as torchvision's zero_init_residual):
        # every block starts as the identity, which trains faster from scratch.
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def load_pretrained(self, path: str | Path) -> None:
        """Load a torchvision ImageNet ``state_dict`` (classifier keys ignored).

        Raises:
            PretrainedWeightsError: the file is missing or unreadable, or its tensors do not
                match this backbone (names and shapes), with the offending keys named.
        """
        path = Path(path)
        if not path.is_file():
            raise PretrainedWeightsError(f"pretrained weights not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupted zip / pickle: report the file, keep the cause
            raise PretrainedWeightsError(f"cannot read pretrained weights {path}: {exc}") from exc
        if not isinstance(state, dict):
            raise PretrainedWeightsError(f"{path}: expected a state_dict, got {type(state)}")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(
            k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)
        )
        if missing or unexpected or wrong:
            raise PretrainedWeightsError(
                f"{path} does not fit ResNet-{self.config.depth}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
            )
        self.load_state_dict(state)

    def _frozen_modules(self) -> list[nn.Module]:
        stages: list[nn.Module] = [nn.ModuleList([self.conv1, self.bn1])]
        stages += [self.layer1, self.layer2, self.layer3, self.layer4]
        return stages[: self.config.frozen_stages + 1]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]
