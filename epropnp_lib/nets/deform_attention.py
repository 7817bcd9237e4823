"""Multi-head deformable attention (after Deformable DETR, Zhu et al., ICLR 2021) that turns
object queries into the 2D points and features of their correspondences (EPro-PnP paper 4.2,
Fig. 5).  ``Q`` queries, ``N = heads * points`` points each, features of size ``E``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - torch convention
from torch import nn

from epropnp_lib.errors import ConfigError


class DeformableSampling(NamedTuple):
    """Output of :class:`DeformableAttention` for ``Q`` queries and ``N`` points each.

    Attributes:
        points: ``(Q, N, 2)`` sampled locations in input pixels (the correspondences' x2d).
        offsets: ``(Q, N, 2)`` the same locations relative to the reference point, in strides.
        point_features: ``(Q, N, E)`` point-wise features.
        object_features: ``(Q, E)`` object-level features.
    """

    points: torch.Tensor
    offsets: torch.Tensor
    point_features: torch.Tensor
    object_features: torch.Tensor


class DeformableAttention(nn.Module):
    """Multi-head, multi-level deformable sampling and attention.

    Each query (embedding ``e``, reference point ``r`` in input pixels, stride ``s`` of its
    pyramid level) samples ``N = heads * points`` locations ``x2d_hp = r + s * offset_hp(e)``
    bilinearly (:func:`torch.nn.functional.grid_sample`) from every pyramid level, mixes the
    levels with per-point softmax weights, and projects the result to the point-wise features
    ``(N, E)``.  The same locations are the 2D points of the correspondences.  Each head then
    aggregates its channel group of the point features with softmax attention weights over
    its points into the object-level feature (output projection, residual, LayerNorm,
    feed-forward, LayerNorm).  Sampling is linear, so the value projection is applied after
    sampling (``N`` vectors per query instead of whole feature maps); locations outside the
    image read zeros.

    Args:
        in_channels: channels of the pyramid maps.
        embed_dim: query / feature size ``E`` (divisible by ``num_heads``).
        num_heads: attention heads.
        num_points: sampling points per head.
        num_levels: pyramid levels sampled.
        init_radius: initial sampling radius (strides) of the outermost point of each head.
        ffn_dim: hidden size of the feed-forward block.
    """

    def __init__(self, in_channels: int, embed_dim: int, num_heads: int, num_points: int,
                 num_levels: int, init_radius: float = 2.0, ffn_dim: int | None = None) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if min(num_heads, num_points, num_levels) < 1 or not init_radius > 0:
            raise ConfigError("num_heads, num_points, num_levels and init_radius must be > 0")
        self.num_heads, self.num_points, self.num_levels = num_heads, num_points, num_levels
        n = num_heads * num_points
        self.sampling_offsets = nn.Linear(embed_dim, 2 * n)
        self.level_weights = nn.Linear(embed_dim, n * num_levels)
        self.attention_weights = nn.Linear(embed_dim, n)
        self.value_proj = nn.Linear(in_channels, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        ffn_dim = ffn_dim or 2 * embed_dim
        self.ffn = nn.Sequential(nn.Linear(embed_dim, ffn_dim), nn.ReLU(inplace=True),
                                 nn.Linear(ffn_dim, embed_dim))
        self.norm2 = nn.LayerNorm(embed_dim)
        self._init_weights(init_radius)

    def _init_weights(self, radius: float) -> None:
        # Deformable DETR: head h starts on a ray at angle 2 pi h / H, its points at growing
        # radii; the offsets start independent of the query.
        nn.init.zeros_(self.sampling_offsets.weight)
        angle = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        direction = torch.stack((angle.cos(), angle.sin()), dim=-1)  # (H, 2)
        step = torch.arange(1, self.num_points + 1, dtype=torch.float32) / self.num_points
        init = direction[:, None, :] * step[None, :, None] * radius  # (H, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(init.flatten())
        for lin in (self.level_weights, self.attention_weights):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        feats: Sequence[torch.Tensor],
        strides: Sequence[int],
        query: torch.Tensor,
        reference: torch.Tensor,
        query_stride: torch.Tensor,
        batch_index: torch.Tensor,
    ) -> DeformableSampling:
        """Sample and attend.

        Args:
            feats: ``num_levels`` maps ``(B, C, H_l, W_l)``; level ``l`` has stride
                ``strides[l]`` (a cell ``(i, j)`` covers input pixels ``[j s, (j + 1) s)``).
            strides: the stride of each map.
            query: ``(Q, E)`` query embeddings.
            reference: ``(Q, 2)`` reference points (input pixels, pixel centres at integers).
            query_stride: ``(Q,)`` stride of each query's own level (unit of its offsets).
            batch_index: ``(Q,)`` long image index of each query.

        Returns:
            :class:`DeformableSampling`.
        """
        q = query.shape[0]
        n = self.num_heads * self.num_points
        offsets = self.sampling_offsets(query).view(q, n, 2)
        points = reference[:, None, :] + offsets * query_stride[:, None, None]
        sampled = self._sample(feats, strides, points, batch_index)  # (Q, N, Lv, C)
        lw = self.level_weights(query).view(q, n, self.num_levels).softmax(-1)
        value = self.value_proj((sampled * lw[..., None]).sum(-2))  # (Q, N, E)
        e = value.shape[-1]
        attn = self.attention_weights(query).view(q, self.num_heads, self.num_points).softmax(-1)
        heads = value.view(q, self.num_heads, self.num_points, self.num_heads, e // self.num_heads)
        # Head h aggregates channel group h of its own points.
        idx = torch.arange(self.num_heads, device=query.device)
        own = heads[:, idx, :, idx, :].transpose(0, 1)  # (Q, H, P, E / H)
        agg = (attn[..., None] * own).sum(-2).reshape(q, e)
        obj = self.norm1(query + self.output_proj(agg))
        obj = self.norm2(obj + self.ffn(obj))
        return DeformableSampling(points, offsets, value, obj)

    def _sample(self, feats: Sequence[torch.Tensor], strides: Sequence[int],
                points: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """``(Q, N, Lv, C)`` bilinear samples of every level at ``points: (Q, N, 2)``."""
        q, n, _ = points.shape
        c = feats[0].shape[1]
        out = points.new_zeros(q, n, len(feats), c)
        for b in range(feats[0].shape[0]):
            sel = (batch_index == b).nonzero().squeeze(-1)
            if sel.numel() == 0:
                continue
            pts = points[sel].reshape(1, -1, 1, 2)
            per_level = []
            for fmap, s in zip(feats, strides, strict=True):
                h, w = fmap.shape[-2:]
                size = pts.new_tensor([w * s, h * s])
                grid = (pts + 0.5) / size * 2.0 - 1.0
                val = F.grid_sample(fmap[b: b + 1], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # (1, C, Qb N, 1)
                per_level.append(val[0, :, :, 0].T.reshape(-1, n, c))
            out = out.index_put((sel,), torch.stack(per_level, dim=-2))
        return out
