"""A batched, z-buffered triangle rasteriser in plain PyTorch (CPU or CUDA, not differentiable).

It renders meshes seen by pinhole cameras for the synthetic data generators: depth, coverage
mask, index of the visible face and perspective-correct interpolated vertex attributes.

Conventions (those of :mod:`epropnp_lib.conventions` and :mod:`epropnp_lib.geometry.camera`):
pose ``(B, 7)`` = ``(t, q_wxyz)`` maps object to camera (OpenCV optical frame); vertices are
projected with :func:`~epropnp_lib.geometry.camera.project`, the function the PnP solver uses;
pixel ``(u, v)`` has its centre at integer coordinates and is covered by a triangle when the
centre lies inside it or on its boundary.

Rules: a triangle with a vertex at depth ``<= znear`` (or not finite) is dropped whole, not
clipped (callers pad a batch with vertices at ``z = 0``); no back-face culling; degenerate
triangles are dropped; the smallest depth wins, exact ties go to the larger face index;
attributes are interpolated perspective-correctly, so an attribute affine in the 3D position
(object coordinates) is exactly the 3D point seen through the pixel centre.

Algorithm: scanline spans per (triangle, row) of the clipped bounding box, barycentrics and
depth at the candidate pixel centres, a scatter-min z-buffer; spans and pixels are processed in
chunks of at most ``max_chunk`` so memory stays bounded for large images.

Example::

    >>> import torch
    >>> verts = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [0.0, 1.0, 0.0]])
    >>> faces = torch.tensor([[0, 1, 2]])
    >>> pose = torch.tensor([[0.0, 0.0, 4.0, 1.0, 0.0, 0.0, 0.0]])
    >>> cam = torch.tensor([[[10.0, 0.0, 7.0], [0.0, 10.0, 7.0], [0.0, 0.0, 1.0]]])
    >>> r = rasterize(verts, faces, verts, pose, cam, 15, 15)
    >>> r.mask.shape, float(r.depth[0, 7, 7])
    (torch.Size([1, 15, 15]), 4.0)
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from epropnp_lib.checks import check_float_tensors, check_shape
from epropnp_lib.conventions import MIN_DEPTH
from epropnp_lib.errors import EProPnPError
from epropnp_lib.geometry.camera import project, transform_points
from epropnp_lib.geometry.rotations import quat_normalize, quat_to_matrix

logger = logging.getLogger(__name__)

#: Default number of (triangle, pixel) candidate pairs (and of (triangle, row) spans)
#: evaluated at once (~100 bytes each).
DEFAULT_MAX_CHUNK = 1 << 20

# Per-triangle coefficient layout (see _triangle_coefficients).
_AX, _AY, _L1X, _L1Y, _L2X, _L2Y, _IZA, _IZB, _IZC, _DX, _DY = range(11)


class RasterizeError(EProPnPError, ValueError):
    """Invalid rasteriser input (face indices out of range, bad image size or znear)."""


class Raster(NamedTuple):
    """Result of :func:`rasterize`.

    Attributes:
        depth: ``(B, H, W)`` camera-frame depth ``z`` of the visible surface; ``+inf`` where
            no triangle covers the pixel centre.
        mask: ``(B, H, W)`` bool coverage.
        attributes: ``(B, C, H, W)`` perspective-correct interpolated vertex attributes of the
            visible face; 0 where empty.
        face_index: ``(B, H, W)`` int64 index into ``faces`` of the visible face; -1 where empty.
    """

    depth: torch.Tensor
    mask: torch.Tensor
    attributes: torch.Tensor
    face_index: torch.Tensor


def _triangle_coefficients(
    uv: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine screen-space coefficients of each triangle.

    Args:
        uv: ``(T, 3, 2)`` projected vertices a, b, c.
        z: ``(T, 3)`` their depths (positive).

    Returns:
        ``coef: (T, 11)`` = (a_u, a_v, dl1/du, dl1/dv, dl2/du, dl2/dv, 1/z_a, 1/z_b, 1/z_c,
        d(1/z)/du, d(1/z)/dv), where for ``d = (u - a_u, v - a_v)`` the barycentrics of b and c
        are ``l1 = d . (dl1/du, dl1/dv)``, ``l2 = d . (dl2/du, dl2/dv)``, ``l0 = 1 - l1 - l2``
        and ``1/z = 1/z_a + d . (d(1/z)/du, d(1/z)/dv)``; and the doubled signed area ``(T,)``.
    """
    a, b, c = uv.unbind(-2)
    e1 = b - a
    e2 = c - a
    area2 = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    inv = 1.0 / torch.where(area2 == 0, torch.ones_like(area2), area2)
    # l1 = cross(d, e2) / area2, l2 = cross(e1, d) / area2 (cross(x, y) = x_u y_v - x_v y_u).
    l1u, l1v = e2[:, 1] * inv, -e2[:, 0] * inv
    l2u, l2v = -e1[:, 1] * inv, e1[:, 0] * inv
    iz = 1.0 / z
    dzb, dzc = iz[:, 1] - iz[:, 0], iz[:, 2] - iz[:, 0]
    coef = torch.stack(
        (a[:, 0], a[:, 1], l1u, l1v, l2u, l2v, iz[:, 0], iz[:, 1], iz[:, 2],
         l1u * dzb + l2u * dzc, l1v * dzb + l2v * dzc),
        dim=-1,
    )
    return coef, area2


def _evaluate(
    coef: torch.Tensor, px: torch.Tensor, py: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Barycentrics ``(l1, l2)`` and inverse depth at pixel centres.

    Args:
        coef: ``(n, 11)`` coefficients of each pair's triangle.
        px, py: ``(n,)`` pixel centre coordinates (same dtype as ``coef``).

    Returns:
        ``l1, l2, inv_z``, each ``(n,)``.
    """
    du = px - coef[:, _AX]
    dv = py - coef[:, _AY]
    l1 = du * coef[:, _L1X] + dv * coef[:, _L1Y]
    l2 = du * coef[:, _L2X] + dv * coef[:, _L2Y]
    inv_z = coef[:, _IZA] + du * coef[:, _DX] + dv * coef[:, _DY]
    return l1, l2, inv_z


class _TriangleData(NamedTuple):
    """Per-triangle screen data (``T = B * F`` triangles, image-major)."""

    coef: torch.Tensor  # (T, 11) see _triangle_coefficients
    x0: torch.Tensor  # (T,) clipped bounding box, int64
    y0: torch.Tensor
    x1: torch.Tensor
    rows: torch.Tensor  # (T,) rows of the bounding box (0 for dropped triangles)
    first_row: torch.Tensor  # (T,) exclusive cumulative sum of rows
    num_faces: int
    height: int
    width: int


class _Spans(NamedTuple):
    """Horizontal runs of candidate pixel centres, one per (triangle, row).

    All ``(S,)``: ``length`` pixels starting at buffer index ``base`` (image, row, column
    ``xs``); barycentrics ``l1, l2`` and inverse depth at ``xs`` and their steps per pixel.
    """

    length: torch.Tensor
    base: torch.Tensor
    face: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    inv_z: torch.Tensor
    dl1: torch.Tensor
    dl2: torch.Tensor
    dinv_z: torch.Tensor


#: Pixels within this distance (px) outside a triangle's scanline interval are still tested
#: (the barycentric test decides; this only absorbs the rounding of the interval ends).
_SPAN_MARGIN = 1e-3


def _ranges(cum: torch.Tensor, limit: int) -> list[tuple[int, int]]:
    """Split items ``0..n`` with inclusive cumulative sizes ``cum: (n,)`` into contiguous
    ranges ``[lo, hi)`` whose total size is at most ``limit`` (or a single item)."""
    out: list[tuple[int, int]] = []
    n = cum.shape[0]
    lo, before = 0, 0
    while lo < n:
        hi = int(torch.searchsorted(cum, torch.tensor(before + limit, device=cum.device),
                                    right=True))
        hi = min(max(hi, lo + 1), n)
        out.append((lo, hi))
        before = int(cum[hi - 1])
        lo = hi
    return out


def _spans(tri: _TriangleData, t0: int, t1: int) -> _Spans:
    """Scanline runs of the triangles ``t0..t1``: for each row of a triangle's bounding box,
    the interval of pixel centres where all three barycentrics are non-negative."""
    rows = tri.rows[t0:t1]
    total = int(rows.sum())
    device = rows.device
    t = torch.repeat_interleave(torch.arange(t0, t1, device=device), rows, output_size=total)
    r = torch.arange(total, device=device) - (tri.first_row[t] - tri.first_row[t0])
    c = tri.coef.index_select(0, t)
    ax, ay, l1u, l1v, l2u, l2v, iza, _, _, dzu, dzv = c.unbind(-1)
    v = tri.y0[t] + r
    dv = v.to(c.dtype) - ay
    # Edge functions along the row as functions of du = u - ax: l_k = a_k du + b_k.
    a = torch.stack((-(l1u + l2u), l1u, l2u), dim=-1)
    b1, b2 = l1v * dv, l2v * dv
    b = torch.stack((1.0 - b1 - b2, b1, b2), dim=-1)
    root = -b / torch.where(a == 0, torch.ones_like(a), a)
    inf = torch.full_like(root, torch.inf)
    lower = torch.where(a > 0, root, -inf).amax(-1)
    upper = torch.where(a < 0, root, inf).amin(-1)
    # An edge parallel to the row excludes the whole row when the row is on its outer side.
    outside = ((a == 0) & (b < 0)).any(-1)
    xs = torch.maximum((lower + ax - _SPAN_MARGIN).clamp(-1, tri.width).ceil().long(), tri.x0[t])
    xe = torch.minimum((upper + ax + _SPAN_MARGIN).clamp(-1, tri.width).floor().long(),
                       tri.x1[t])
    length = torch.where(outside, 0, (xe - xs + 1).clamp_min(0))
    keep = (length > 0).nonzero().squeeze(-1)
    t, v, xs, length = t[keep], v[keep], xs[keep], length[keep]
    l1u, l2u, dzu = l1u[keep], l2u[keep], dzu[keep]
    du = xs.to(c.dtype) - ax[keep]
    dv = dv[keep]
    b_idx = t // tri.num_faces
    return _Spans(
        length=length,
        base=(b_idx * tri.height + v) * tri.width + xs,
        face=t - b_idx * tri.num_faces,
        l1=l1u * du + l1v[keep] * dv,
        l2=l2u * du + l2v[keep] * dv,
        inv_z=iza[keep] + dzu * du + dzv[keep] * dv,
        dl1=l1u,
        dl2=l2u,
        dinv_z=dzu,
    )


def _zbuffer_spans(
    spans: _Spans, s0: int, s1: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest depth and face per buffer pixel over the candidate pixels of spans ``s0..s1``.

    Returns:
        ``depth: (size,)`` (+inf where none) and ``face: (size,)`` (-1 where none; the largest
        face index among exact depth ties).
    """
    length = spans.length[s0:s1]
    total = int(length.sum())
    device = length.device
    sid = torch.repeat_interleave(torch.arange(s0, s1, device=device), length,
                                  output_size=total)
    first = torch.cumsum(length, 0) - length
    off_i = torch.arange(total, device=device) - first.index_select(0, sid - s0)
    off = off_i.to(spans.l1.dtype)
    l1 = spans.l1.index_select(0, sid) + spans.dl1.index_select(0, sid) * off
    l2 = spans.l2.index_select(0, sid) + spans.dl2.index_select(0, sid) * off
    inv_z = spans.inv_z.index_select(0, sid) + spans.dinv_z.index_select(0, sid) * off
    inside = (l1 >= 0) & (l2 >= 0) & (l1 + l2 <= 1) & (inv_z > 0)
    depth = torch.where(inside, 1.0 / inv_z, torch.inf)
    pix = spans.base.index_select(0, sid) + off_i
    zbuf = torch.full((size,), torch.inf, dtype=depth.dtype, device=device)
    zbuf.scatter_reduce_(0, pix, depth, "amin")
    win = inside & (depth == zbuf.index_select(0, pix))
    face = torch.where(win, spans.face.index_select(0, sid), -1)
    fbuf = torch.full((size,), -1, dtype=torch.long, device=device)
    fbuf.scatter_reduce_(0, pix, face, "amax")
    return zbuf, fbuf


def _check_tensors(vertices: torch.Tensor, faces: torch.Tensor, attributes: torch.Tensor,
                   pose: torch.Tensor, cam_mats: torch.Tensor) -> None:
    dims = check_shape(pose, ["B", 7], "pose")
    dims = check_shape(cam_mats, ["B", 3, 3], "cam_mats", dims)
    if vertices.dim() == 2:
        dims = check_shape(vertices, ["V", 3], "vertices", dims)
    else:
        dims = check_shape(vertices, ["B", "V", 3], "vertices", dims)
    if attributes.dim() == 2:
        check_shape(attributes, ["V", "C"], "attributes", dims)
    else:
        check_shape(attributes, ["B", "V", "C"], "attributes", dims)
    check_shape(faces, ["F", 3], "faces")
    check_float_tensors(vertices=vertices, attributes=attributes, pose=pose, cam_mats=cam_mats)
    if faces.dtype not in (torch.int32, torch.int64):
        raise RasterizeError(f"faces: expected an integer tensor, got {faces.dtype}")
    if faces.device != vertices.device:
        raise RasterizeError(f"faces is on {faces.device} but vertices on {vertices.device}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= dims["V"]):
        raise RasterizeError(f"faces: indices must lie in [0, {dims['V']}), got "
                             f"[{int(faces.min())}, {int(faces.max())}]")


def _check_settings(height: int, width: int, znear: float, max_chunk: int) -> None:
    if height < 1 or width < 1:
        raise RasterizeError(f"image size must be positive, got {height} x {width}")
    if not znear > 0:
        raise RasterizeError(f"znear must be positive, got {znear}")
    if max_chunk < 1:
        raise RasterizeError(f"max_chunk must be positive, got {max_chunk}")


@torch.no_grad()
def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    attributes: torch.Tensor,
    pose: torch.Tensor,
    cam_mats: torch.Tensor,
    height: int,
    width: int,
    znear: float = 1e-3,
    max_chunk: int = DEFAULT_MAX_CHUNK,
) -> Raster:
    """Rasterise a mesh under ``B`` poses and cameras (see the module docstring for the rules).

    Args:
        vertices: ``(B, V, 3)`` or ``(V, 3)`` object-frame vertices.
        faces: ``(F, 3)`` int vertex indices of the triangles (shared by the batch).
        attributes: ``(B, V, C)`` or ``(V, C)`` per-vertex attributes to interpolate (same
            dtype as ``vertices``).
        pose: ``(B, 7)`` object-to-camera poses ``(t, q_wxyz)`` (quaternions are normalised).
        cam_mats: ``(B, 3, 3)`` intrinsics (last row ``(0, 0, 1)``).
        height, width: image size ``H, W`` in pixels.
        znear: triangles with a vertex at depth ``<= max(znear, MIN_DEPTH)`` are dropped.
        max_chunk: most (triangle, pixel) candidate pairs evaluated at once (bounds memory).

    Returns:
        :class:`Raster` with ``depth (B, H, W)``, ``mask (B, H, W)``,
        ``attributes (B, C, H, W)`` and ``face_index (B, H, W)``.

    Raises:
        ShapeError, DTypeError, DeviceError: malformed inputs.
        RasterizeError: face indices out of range, non-positive size, znear or max_chunk.
    """
    _check_tensors(vertices, faces, attributes, pose, cam_mats)
    _check_settings(height, width, znear, max_chunk)
    batch = pose.shape[0]
    num_faces = faces.shape[0]
    faces = faces.long()
    hw = height * width
    rot = quat_to_matrix(quat_normalize(pose[:, 3:]))
    x_cam = transform_points(vertices, rot, pose[:, :3])  # (B, V, 3)
    uv = project(x_cam, cam_mats).x2d  # (B, V, 2)
    tri_uv = uv[:, faces].reshape(batch * num_faces, 3, 2)
    tri_z = x_cam[..., 2][:, faces].reshape(batch * num_faces, 3)
    tri = _screen_triangles(tri_uv, tri_z, num_faces, height, width, max(float(znear), MIN_DEPTH))
    zbuf, fbuf = _zbuffer(tri, batch * hw, max_chunk, vertices.dtype)
    return Raster(
        depth=zbuf.view(batch, height, width),
        mask=(fbuf >= 0).view(batch, height, width),
        attributes=_interpolate(tri, fbuf, faces, attributes).view(
            batch, height, width, attributes.shape[-1]).permute(0, 3, 1, 2).contiguous(),
        face_index=fbuf.view(batch, height, width),
    )


def _screen_triangles(tri_uv: torch.Tensor, tri_z: torch.Tensor, num_faces: int, height: int,
                      width: int, near: float) -> _TriangleData:
    """Coefficients and clipped integer bounding boxes of the projected triangles ``tri_uv:
    (T, 3, 2)`` with depths ``tri_z: (T, 3)``; dropped triangles get no rows."""
    coef, area2 = _triangle_coefficients(tri_uv, tri_z)
    valid = (
        (tri_z > near).all(-1)
        & torch.isfinite(tri_uv).flatten(1).all(-1)
        & torch.isfinite(coef).all(-1)
        & (area2 != 0)
    )
    lo = tri_uv.amin(-2)
    hi = tri_uv.amax(-2)
    x0 = lo[:, 0].clamp(-1, width).ceil().long().clamp_min(0)
    y0 = lo[:, 1].clamp(-1, height).ceil().long().clamp_min(0)
    x1 = hi[:, 0].clamp(-1, width).floor().long().clamp_max(width - 1)
    y1 = hi[:, 1].clamp(-1, height).floor().long().clamp_max(height - 1)
    rows = torch.where(valid & (x1 >= x0), (y1 - y0 + 1).clamp_min(0), 0)
    return _TriangleData(coef, x0, y0, x1, rows, torch.cumsum(rows, 0) - rows, num_faces,
                         height, width)


def _zbuffer(tri: _TriangleData, size: int, max_chunk: int,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest depth ``(size,)`` (+inf where none) and its face ``(size,)`` (-1 where none) over
    all triangles, in chunks of at most ``max_chunk`` spans / candidate pixels."""
    device = tri.coef.device
    zbuf = torch.full((size,), torch.inf, dtype=dtype, device=device)
    fbuf = torch.full((size,), -1, dtype=torch.long, device=device)
    num_pairs = 0
    # Triangles are processed in index order (image-major, then face), so ties between chunks
    # go to the later chunk, i.e. to the larger face index, as within a chunk.
    for t0, t1 in _ranges(tri.first_row + tri.rows, max_chunk):
        spans = _spans(tri, t0, t1)
        cum_len = torch.cumsum(spans.length, 0)
        for s0, s1 in _ranges(cum_len, max_chunk):
            num_pairs += int(cum_len[s1 - 1] - (cum_len[s0 - 1] if s0 else 0))
            chunk_z, chunk_f = _zbuffer_spans(spans, s0, s1, size)
            better = (chunk_f >= 0) & (chunk_z <= zbuf)
            zbuf = torch.where(better, chunk_z, zbuf)
            fbuf = torch.where(better, chunk_f, fbuf)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("rasterize: %d candidate pairs for %d covered pixels", num_pairs,
                     int((fbuf >= 0).sum()))
    return zbuf, fbuf


def _interpolate(tri: _TriangleData, fbuf: torch.Tensor, faces: torch.Tensor,
                 attributes: torch.Tensor) -> torch.Tensor:
    """``(B * H * W, C)`` perspective-correct attributes of the visible face of each pixel
    (``fbuf: (B * H * W,)``), 0 where empty."""
    hw = tri.height * tri.width
    out = torch.zeros(fbuf.shape[0], attributes.shape[-1], dtype=attributes.dtype,
                      device=fbuf.device)
    covered = (fbuf >= 0).nonzero().squeeze(-1)
    if not covered.numel():
        return out
    dtype = tri.coef.dtype
    b = covered // hw
    rem = covered % hw
    face = fbuf[covered]
    c = tri.coef.index_select(0, b * tri.num_faces + face)
    l1, l2, inv_z = _evaluate(c, (rem % tri.width).to(dtype), (rem // tri.width).to(dtype))
    w = torch.stack(((1.0 - l1 - l2) * c[:, _IZA], l1 * c[:, _IZB], l2 * c[:, _IZC]), -1)
    w = w / inv_z.unsqueeze(-1)  # (n, 3) perspective-correct weights
    vidx = faces[face]  # (n, 3)
    # (n, 3, C) attributes of the face corners
    corner = attributes[vidx] if attributes.dim() == 2 else attributes[b.unsqueeze(-1), vidx]
    out[covered] = (w.unsqueeze(-1).to(corner.dtype) * corner).sum(-2)
    return out
