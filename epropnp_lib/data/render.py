"""A batched, z-buffered triangle rasteriser in plain PyTorch (CPU or CUDA).

It renders meshes seen by pinhole cameras for the synthetic data generators: depth, coverage
mask, the index of the visible face and perspective-correct interpolated vertex attributes
(object coordinates, normals, colours) per pixel.

Conventions (those of :mod:`epropnp_lib.conventions` and :mod:`epropnp_lib.geometry.camera`):

* pose ``(B, 7)`` = ``(t, q_wxyz)`` maps object to camera, ``x_cam = R x_obj + t``; the camera
  is the OpenCV optical frame (x right, y down, z forward);
* vertices are projected with :func:`epropnp_lib.geometry.camera.project` (the same function
  the PnP solver uses), so a rendered attribute and the solver agree to rounding;
* the centre of pixel ``(u, v)`` (column ``u``, row ``v``) is at the integer coordinates
  ``(u, v)``: pixel column ``i`` covers ``[i - 0.5, i + 0.5)``.  A pixel is covered by a triangle
  when its **centre** lies inside the projected triangle or on its boundary (both triangles of a
  shared edge cover the edge pixels; the depth test picks one).

Rules:

* **znear**: a triangle with any vertex at depth ``<= znear`` (or a non-finite vertex) is
  **dropped** whole, not clipped.  Meshes are expected to be in front of the camera (the data
  generators place them there); dropping is also how callers pad a batch: put unused
  vertices at ``z = 0`` or NaN and their faces disappear.
* **Back faces** are rasterised like front faces (no culling); closed meshes come out right
  through the depth test.  Degenerate (zero-area on screen) triangles are dropped.
* **Depth test**: the smallest camera depth wins; exact ties go to the larger face index, so
  the result does not depend on the order in which faces are processed.
* **Interpolation** is perspective-correct: ``1/z`` is affine in the pixel coordinates and each
  attribute ``a`` is interpolated as ``(sum_i l_i a_i / z_i) / (sum_i l_i / z_i)`` with the
  screen-space barycentrics ``l_i``.  An attribute that is an affine function of the 3D
  position (e.g. object coordinates) is therefore exactly the 3D point seen through the pixel
  centre.

Algorithm: for every valid triangle the integer pixel centres inside its clipped screen
bounding box are enumerated (no dense pixels x faces product), barycentrics and depth are
evaluated for these candidate pairs, and a scatter-min z-buffer keeps the nearest.  Candidate
pairs are processed in chunks of at most ``max_chunk`` so memory stays bounded for big images
(e.g. 1600 x 900 with hundreds of large faces).  The rasteriser is not differentiable (it runs
under ``torch.no_grad``).

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

#: Default number of (triangle, pixel) candidate pairs evaluated at once (~100 bytes each).
DEFAULT_MAX_CHUNK = 1 << 20

# Per-triangle coefficient layout (see _triangle_coefficients).
_AX, _AY, _L1X, _L1Y, _L2X, _L2Y, _IZA, _IZB, _IZC, _DX, _DY = range(11)
_NUM_COEF = 11


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


def _check_inputs(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    attributes: torch.Tensor,
    pose: torch.Tensor,
    cam_mats: torch.Tensor,
    height: int,
    width: int,
    znear: float,
    max_chunk: int,
) -> None:
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
    _check_inputs(vertices, faces, attributes, pose, cam_mats, height, width, znear, max_chunk)
    batch = pose.shape[0]
    num_faces = faces.shape[0]
    chans = attributes.shape[-1]
    dtype, device = vertices.dtype, vertices.device
    faces = faces.long()
    hw = height * width

    rot = quat_to_matrix(quat_normalize(pose[:, 3:]))
    x_cam = transform_points(vertices, rot, pose[:, :3])  # (B, V, 3)
    uv = project(x_cam, cam_mats).x2d  # (B, V, 2)
    tri_uv = uv[:, faces].reshape(batch * num_faces, 3, 2)
    tri_z = x_cam[..., 2][:, faces].reshape(batch * num_faces, 3)
    coef, area2 = _triangle_coefficients(tri_uv, tri_z)
    near = max(float(znear), MIN_DEPTH)
    valid = (
        (tri_z > near).all(-1)
        & torch.isfinite(tri_uv).flatten(1).all(-1)
        & torch.isfinite(coef).all(-1)
        & (area2 != 0)
    )

    # Clipped integer bounding boxes of the pixel centres each triangle may cover.
    lo = tri_uv.amin(-2)
    hi = tri_uv.amax(-2)
    x0 = lo[:, 0].clamp(-1, width).ceil().long().clamp_min(0)
    y0 = lo[:, 1].clamp(-1, height).ceil().long().clamp_min(0)
    x1 = hi[:, 0].clamp(-1, width).floor().long().clamp_max(width - 1)
    y1 = hi[:, 1].clamp(-1, height).floor().long().clamp_max(height - 1)
    nx = (x1 - x0 + 1).clamp_min(0)
    ny = (y1 - y0 + 1).clamp_min(0)
    count = torch.where(valid, nx * ny, torch.zeros_like(nx))
    cum = torch.cumsum(count, 0)
    total = int(cum[-1]) if cum.numel() else 0

    zbuf = torch.full((batch * hw,), torch.inf, dtype=dtype, device=device)
    fbuf = torch.full((batch * hw,), -1, dtype=torch.long, device=device)
    for start in range(0, total, max_chunk):
        idx = torch.arange(start, min(start + max_chunk, total), device=device)
        tri = torch.searchsorted(cum, idx, right=True)
        off = idx - (cum[tri] - count[tri])
        nxt = nx[tri]
        px_i = x0[tri] + off % nxt
        py_i = y0[tri] + off // nxt
        l1, l2, inv_z = _evaluate(coef[tri], px_i.to(dtype), py_i.to(dtype))
        inside = (l1 >= 0) & (l2 >= 0) & (l1 + l2 <= 1) & (inv_z > 0)
        tri, px_i, py_i, inv_z = tri[inside], px_i[inside], py_i[inside], inv_z[inside]
        depth = 1.0 / inv_z
        b = tri // num_faces
        pix = b * hw + py_i * width + px_i
        chunk_z = torch.full_like(zbuf, torch.inf).scatter_reduce_(0, pix, depth, "amin")
        win = depth == chunk_z[pix]
        chunk_f = torch.full_like(fbuf, -1).scatter_reduce_(
            0, pix[win], (tri % num_faces)[win], "amax")
        # Later chunks hold larger face indices of the same image, so ties go to them.
        better = (chunk_f >= 0) & (chunk_z <= zbuf)
        zbuf = torch.where(better, chunk_z, zbuf)
        fbuf = torch.where(better, chunk_f, fbuf)
    if total > max_chunk:
        logger.debug("rasterize: %d candidate pairs in %d chunks", total,
                     -(-total // max_chunk))

    # Interpolate the attributes of the visible face at each covered pixel.
    out = torch.zeros(batch * hw, chans, dtype=attributes.dtype, device=device)
    covered = (fbuf >= 0).nonzero().squeeze(-1)
    if covered.numel():
        b = covered // hw
        rem = covered % hw
        face = fbuf[covered]
        tri = b * num_faces + face
        l1, l2, inv_z = _evaluate(coef[tri], (rem % width).to(dtype), (rem // width).to(dtype))
        c = coef[tri]
        w = torch.stack(((1.0 - l1 - l2) * c[:, _IZA], l1 * c[:, _IZB], l2 * c[:, _IZC]), -1)
        w = w / inv_z.unsqueeze(-1)  # (n, 3) perspective-correct weights
        vidx = faces[face]  # (n, 3)
        # (n, 3, C) attributes of the face corners
        corner = attributes[vidx] if attributes.dim() == 2 else attributes[b.unsqueeze(-1), vidx]
        out[covered] = (w.unsqueeze(-1).to(corner.dtype) * corner).sum(-2)
    return Raster(
        depth=zbuf.view(batch, height, width),
        mask=(fbuf >= 0).view(batch, height, width),
        attributes=out.view(batch, height, width, chans).permute(0, 3, 1, 2).contiguous(),
        face_index=fbuf.view(batch, height, width),
    )
