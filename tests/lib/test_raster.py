"""Property tests of the z-buffered rasteriser (epropnp_lib.geometry.raster)."""

from __future__ import annotations

import math

import pytest
import torch

from epropnp_lib.errors import ShapeError
from epropnp_lib.geometry.camera import project, transform_points
from epropnp_lib.geometry.raster import RasterizeError, rasterize
from epropnp_lib.geometry.rotations import quat_normalize, quat_to_matrix

IDENTITY = (1.0, 0.0, 0.0, 0.0)


def _pose(t: tuple[float, float, float], q: tuple[float, ...] = IDENTITY, *,
          dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor([[*t, *q]], dtype=dtype)


def _cam(f: float, cx: float, cy: float, *, batch: int = 1, skew: float = 0.0,
         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    k = torch.tensor([[f, skew, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype)
    return k.expand(batch, 3, 3).clone()


def _cube(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed box mesh ``(8, 3)`` vertices and ``(12, 3)`` faces, half-extents 0.1/0.07/0.05."""
    corners = torch.tensor(
        [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=dtype
    ) * torch.tensor([0.1, 0.07, 0.05], dtype=dtype)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [f for a, b, c, d in quads for f in ((a, b, c), (a, c, d))]
    return corners, torch.tensor(faces)


def _random_quats(n: int, g: torch.Generator) -> torch.Tensor:
    return quat_normalize(torch.randn(n, 4, generator=g, dtype=torch.float64))


def _inside_margin(uv: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Signed distance-like margin ``(H, W)`` of pixel centres to a triangle ``uv: (3, 2)``
    (positive inside), an independent half-plane implementation."""
    area2 = ((uv[1, 0] - uv[0, 0]) * (uv[2, 1] - uv[0, 1])
             - (uv[1, 1] - uv[0, 1]) * (uv[2, 0] - uv[0, 0]))
    sign = 1.0 if area2 > 0 else -1.0
    margins = []
    for i in range(3):
        a, b = uv[i], uv[(i + 1) % 3]
        edge = b - a
        cross = edge[0] * (py - a[1]) - edge[1] * (px - a[0])
        margins.append(sign * cross / edge.norm())
    return torch.stack(margins).amin(0)


def test_single_triangle_coverage_matches_area_and_half_planes() -> None:
    g = torch.Generator().manual_seed(0)
    h, w = 120, 160
    cam = _cam(100.0, 80.0, 60.0)
    py, px = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    for _ in range(10):
        uv = torch.rand(3, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h]) - 0.5
        depth = 2.0
        # Back-project the screen triangle onto the fronto-parallel plane z = depth.
        verts = torch.cat(((uv - torch.tensor([80.0, 60.0])) * depth / 100.0,
                           torch.full((3, 1), depth, dtype=torch.float64)), dim=-1)
        r = rasterize(verts, torch.tensor([[0, 1, 2]]), verts, _pose((0, 0, 0)), cam, h, w)
        count = int(r.mask.sum())
        e = uv.roll(-1, 0) - uv
        area = 0.5 * abs(float(e[0, 0] * e[1, 1] - e[0, 1] * e[1, 0]))
        perimeter = float(e.norm(dim=-1).sum())
        # Lattice points of a convex set: A - P/2 < N <= A + P/2 + 1.
        assert abs(count - area) <= 0.5 * perimeter + 1.0
        margin = _inside_margin(uv, px, py)
        assert bool(r.mask[0][margin > 1e-9].all())
        assert not bool(r.mask[0][margin < -1e-9].any())
        assert bool((r.face_index[0][r.mask[0]] == 0).all())
        assert bool((r.face_index[0][~r.mask[0]] == -1).all())
        assert bool(torch.isinf(r.depth[0][~r.mask[0]]).all())
        assert bool((r.attributes[0][:, ~r.mask[0]] == 0).all())


def test_coverage_agrees_with_project_under_random_poses() -> None:
    g = torch.Generator().manual_seed(1)
    verts, faces = _cube()
    cam = _cam(300.0, 31.5, 32.0, skew=2.0)
    py, px = torch.meshgrid(torch.arange(64, dtype=torch.float64),
                            torch.arange(64, dtype=torch.float64), indexing="ij")
    q = _random_quats(4, g)
    pose = torch.cat((torch.tensor([[0.01, -0.02, 1.0]]).expand(4, 3), q), dim=-1)
    r = rasterize(verts, faces, verts, pose, cam.expand(4, 3, 3), 64, 64)
    uv = project(transform_points(verts, quat_to_matrix(q), pose[:, :3]), cam).x2d  # (4, 8, 2)
    for b in range(4):
        margins = torch.stack([_inside_margin(uv[b, f], px, py) for f in faces])
        union = margins.amax(0)
        assert bool(r.mask[b][union > 1e-9].all())
        assert not bool(r.mask[b][union < -1e-9].any())
        assert r.mask[b].sum() > 100


def test_fronto_parallel_and_slanted_plane_depth() -> None:
    h, w = 48, 64
    cam = _cam(50.0, 31.0, 23.5)
    # A big quad in the object plane z = 0, seen fronto-parallel, then slanted by 50 degrees.
    quad = 3 * torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0],
                             [-1.0, 1.0, 0.0]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    r = rasterize(quad, faces, quad, _pose((0.0, 0.0, 3.0)), cam, h, w)
    assert r.mask.sum() > 0.9 * h * w
    assert torch.allclose(r.depth[r.mask], torch.full_like(r.depth[r.mask], 3.0), atol=1e-12)

    angle = math.radians(50.0)
    q = (math.cos(angle / 2), math.sin(angle / 2), 0.0, 0.0)  # about camera x
    t = torch.tensor([0.1, -0.2, 3.0], dtype=torch.float64)
    r = rasterize(quad, faces, quad, _pose(tuple(t.tolist()), q), cam, h, w)
    normal = quat_to_matrix(torch.tensor(q, dtype=torch.float64))[:, 2]
    py, px = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                            torch.arange(w, dtype=torch.float64), indexing="ij")
    rays = torch.stack(((px - 31.0) / 50.0, (py - 23.5) / 50.0, torch.ones_like(px)), dim=-1)
    analytic = float(normal @ t) / (rays @ normal)
    assert r.mask.sum() > 0.5 * h * w
    torch.testing.assert_close(r.depth[0][r.mask[0]], analytic[r.mask[0]], rtol=1e-12, atol=0)


def test_nearer_triangle_wins_regardless_of_face_order() -> None:
    cam = _cam(40.0, 20.0, 20.0)
    # Two triangles tilted oppositely about the camera y axis: they intersect along x = 0, so
    # the visible one switches there.  Attributes: one-hot per triangle.
    verts = torch.tensor(
        [[-1.0, -1.0, 1.8], [1.0, -1.0, 2.2], [0.0, 1.0, 2.0],
         [-1.0, -1.0, 2.2], [1.0, -1.0, 1.8], [0.0, 1.0, 2.0]], dtype=torch.float64)
    attrs = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3, dtype=torch.float64)
    results = []
    for faces in (torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[3, 4, 5], [0, 1, 2]])):
        r = rasterize(verts, faces, attrs, _pose((0, 0, 0)), cam, 40, 40)
        first = faces[r.face_index.clamp_min(0), 0]
        results.append((r, torch.where(r.mask, first, -1)))
    (ra, va), (rb, vb) = results
    assert torch.equal(ra.depth, rb.depth)
    # Away from the exact tie at x = 0 (which goes to the larger face index) the order of the
    # faces changes nothing.
    px = torch.arange(40, dtype=torch.float64).expand(40, 40)
    off_tie = px != 20
    assert torch.equal(ra.attributes[..., off_tie], rb.attributes[..., off_tie])
    left, right = ra.mask[0] & (px < 19.5), ra.mask[0] & (px > 20.5)
    # x < 0: triangle 0 is nearer (depth 1.8 at its left corner); x > 0: triangle 1.
    assert bool((va[0][left] == 0).all()) and bool((va[0][right] == 3).all())
    assert bool((vb[0][left] == 0).all()) and bool((vb[0][right] == 3).all())
    assert left.sum() > 50 and right.sum() > 50
    # The depth is the minimum of the two analytic plane depths where both cover a pixel.
    xn = (px - 20.0) / 40.0
    # Plane of triangle 0: z = 2 + 0.2 x, of triangle 1: z = 2 - 0.2 x, with x = xn z.
    planes = (2.0 / (1 - 0.2 * xn), 2.0 / (1 + 0.2 * xn))
    singles = []
    for k in range(2):
        single = rasterize(verts, torch.tensor([[3 * k, 3 * k + 1, 3 * k + 2]]), attrs,
                           _pose((0, 0, 0)), cam, 40, 40)
        torch.testing.assert_close(single.depth[single.mask], planes[k][single.mask[0]],
                                   rtol=1e-12, atol=0)
        singles.append(single.depth)
    assert torch.equal(ra.depth, torch.minimum(*singles))
    assert (singles[0].isfinite() & singles[1].isfinite()).sum() > 100


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_object_coordinates_project_onto_pixel_centres(dtype: torch.dtype) -> None:
    """The key property for PnP: interpolated object coordinates at a covered pixel, moved by
    the true pose and projected, land on that pixel's centre."""
    g = torch.Generator().manual_seed(2)
    verts, faces = _cube(dtype)
    batch, size = 8, 64
    q = _random_quats(batch, g)
    t = torch.cat((torch.rand(batch, 2, generator=g, dtype=torch.float64) * 0.1 - 0.05,
                   0.6 + 0.6 * torch.rand(batch, 1, generator=g, dtype=torch.float64)), dim=-1)
    pose = torch.cat((t, q), dim=-1).to(dtype)
    cam = _cam(120.0, 31.5, 32.5, batch=batch, skew=1.5, dtype=dtype)
    cam[:, 1, 1] = 125.0
    r = rasterize(verts, faces, verts, pose, cam, size, size)
    coords = r.attributes.permute(0, 2, 3, 1).reshape(batch, -1, 3)  # (B, H*W, 3)
    x_cam = transform_points(coords, quat_to_matrix(pose[:, 3:]), pose[:, :3])
    uv = project(x_cam, cam).x2d
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.stack((xs, ys), dim=-1).reshape(1, -1, 2).to(dtype)
    mask = r.mask.reshape(batch, -1)
    err = (uv - centres).norm(dim=-1)[mask]
    assert mask.sum(-1).min() > 100
    assert float(err.max()) < (1e-6 if dtype == torch.float64 else 2e-3)
    # The depth buffer is the depth of that same 3D point.
    torch.testing.assert_close(x_cam[..., 2][mask], r.depth.reshape(batch, -1)[mask],
                               rtol=1e-10 if dtype == torch.float64 else 1e-5, atol=0)


def test_batched_chunked_and_per_element_agree() -> None:
    g = torch.Generator().manual_seed(3)
    verts, faces = _cube()
    batch = 3
    pose = torch.cat((torch.tensor([[0.0, 0.0, 0.5]]).expand(batch, 3), _random_quats(batch, g)),
                     -1)
    cam = _cam(80.0, 20.0, 15.0, batch=batch)
    colours = torch.rand(batch, 8, 3, generator=g, dtype=torch.float64)
    full = rasterize(verts.expand(batch, 8, 3), faces, colours, pose, cam, 30, 40)
    chunked = rasterize(verts, faces, colours, pose, cam, 30, 40, max_chunk=37)
    for a, b in zip(full, chunked, strict=True):
        assert torch.equal(a, b)
    for i in range(batch):
        single = rasterize(verts, faces, colours[i], pose[i:i + 1], cam[i:i + 1], 30, 40)
        assert torch.equal(single.face_index[0], full.face_index[i])
        torch.testing.assert_close(single.attributes[0], full.attributes[i], rtol=0, atol=1e-12)


def test_large_image_bounded_chunks() -> None:
    verts, faces = _cube(torch.float32)
    cam = _cam(1000.0, 800.0, 450.0, dtype=torch.float32)
    pose = _pose((0.0, 0.0, 0.3), (0.9, 0.3, 0.2, 0.1), dtype=torch.float32)
    r = rasterize(verts, faces, verts, pose, cam, 900, 1600, max_chunk=1 << 18)
    assert r.attributes.shape == (1, 3, 900, 1600)
    assert r.mask.sum() > 100_000
    # Closed box: only the near side shows, so the depth is at most the centre depth + extent.
    assert float(r.depth[r.mask].max()) < 0.3 + 0.13


def test_triangles_crossing_znear_are_dropped() -> None:
    cam = _cam(50.0, 20.0, 20.0)
    verts = torch.tensor([[-1.0, -1.0, 0.5], [1.0, -1.0, 0.5], [0.0, 1.0, -0.1],
                          [-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 1.0, 1.0]],
                         dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    r = rasterize(verts, faces, verts, _pose((0, 0, 0)), cam, 40, 40)
    assert bool((r.face_index[r.mask] == 1).all()) and r.mask.any()
    nan_verts = verts.clone()
    nan_verts[3:] = torch.nan
    assert not rasterize(nan_verts, faces, verts, _pose((0, 0, 0)), cam, 40, 40).mask.any()


def test_empty_and_degenerate_meshes() -> None:
    cam = _cam(50.0, 20.0, 20.0)
    verts = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [0.0, 1.0, 1.0]],
                         dtype=torch.float64)
    empty = rasterize(verts, torch.zeros(0, 3, dtype=torch.long), verts, _pose((0, 0, 0)),
                      cam, 8, 8)
    assert not empty.mask.any() and bool((empty.face_index == -1).all())
    # A triangle seen edge-on (zero screen area) and one with repeated vertices cover nothing.
    edge_on = torch.tensor([[0.0, -1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 2.0]],
                           dtype=torch.float64)
    r = rasterize(edge_on, torch.tensor([[0, 1, 2], [0, 0, 1]]), edge_on, _pose((0, 0, 0)),
                  cam, 40, 40)
    assert not r.mask.any()


def test_invalid_inputs_raise_typed_errors() -> None:
    verts, faces = _cube()
    pose, cam = _pose((0, 0, 1)), _cam(50.0, 10.0, 10.0)
    with pytest.raises(RasterizeError, match="indices"):
        rasterize(verts, faces + 8, verts, pose, cam, 20, 20)
    with pytest.raises(RasterizeError, match="image size"):
        rasterize(verts, faces, verts, pose, cam, 0, 20)
    with pytest.raises(RasterizeError, match="znear"):
        rasterize(verts, faces, verts, pose, cam, 20, 20, znear=0.0)
    with pytest.raises(ShapeError, match="attributes"):
        rasterize(verts, faces, verts[:5], pose, cam, 20, 20)
    with pytest.raises(ShapeError, match="cam_mats"):
        rasterize(verts, faces, verts, pose, cam.expand(2, 3, 3), 20, 20)
