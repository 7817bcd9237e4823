"""The dense FCOS head of the deformable correspondence network, shared by all pyramid levels:
class logits, offset to the projected 3D centre and object-query embedding per location.
Levels are concatenated row-major: ``L = sum_l H_l * W_l`` locations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from epropnp_lib.nets.deformable.config import DeformableNetConfig

__all__ = ["FCOSHead"]


def _tower(cin: int, channels: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Conv2d(cin if i == 0 else channels, channels, 3, padding=1, bias=False),
                   nn.GroupNorm(math.gcd(32, channels), channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Dense head shared by all levels: a classification tower (class logits) and a query tower
    (offset to the projected centre, in strides, and the query embedding plus a learned level
    embedding).

    Forward: list of ``(B, C_in, H_l, W_l)`` -> (logits ``(B, L, C)``, offset ``(B, L, 2)``,
    embed ``(B, L, E)``), levels concatenated row-major.
    """

    def __init__(self, cfg: DeformableNetConfig) -> None:
        super().__init__()
        cin = cfg.fpn_channels
        ch = cfg.head_channels if cfg.head_convs > 0 else cin
        self.cls_tower = _tower(cin, ch, cfg.head_convs)
        self.query_tower = _tower(cin, ch, cfg.head_convs)
        self.cls_out = nn.Conv2d(ch, cfg.num_classes, 3, padding=1)
        self.offset_out = nn.Conv2d(ch, 2, 3, padding=1)
        self.embed_out = nn.Conv2d(ch, cfg.embed_dim, 1)
        self.level_embed = nn.Parameter(torch.zeros(len(cfg.fpn_levels), cfg.embed_dim))
        self.offset_scale = nn.Parameter(torch.ones(len(cfg.fpn_levels)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.level_embed, std=0.02)
        nn.init.normal_(self.embed_out.weight, std=math.sqrt(1.0 / ch))
        prior = 0.01  # FCOS: initial foreground probability
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))  # type: ignore[arg-type]

    def forward(
        self, feats: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, offsets, embeds = [], [], []
        for k, f in enumerate(feats):
            c = self.cls_tower(f)
            q = self.query_tower(f)
            logits.append(self.cls_out(c).flatten(2).transpose(1, 2))
            offsets.append((self.offset_out(q) * self.offset_scale[k]).flatten(2).transpose(1, 2))
            emb = self.embed_out(q).flatten(2).transpose(1, 2) + self.level_embed[k]
            embeds.append(emb)
        return torch.cat(logits, 1), torch.cat(offsets, 1), torch.cat(embeds, 1)
