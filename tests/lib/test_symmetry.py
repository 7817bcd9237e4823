"""Object symmetries (epropnp_lib.geometry.symmetry): the transform set of a models_info entry
and the canonical pose (property tests: group closure, identity first, invariance of the
canonical pose under the symmetries, the generator's symmetric models mapped onto themselves)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_lib.generators.bop import _symmetry_entries
from epropnp_lib.generators.object_meshes import OBJECT_NAMES, make_object
from epropnp_lib.geometry.rotations import quat_exp, quat_normalize, quat_to_matrix
from epropnp_lib.geometry.symmetry import (
    DEFAULT_CONTINUOUS_STEPS,
    Symmetries,
    canonical_pose,
    symmetry_transforms,
)

EYE = torch.eye(3, dtype=torch.float64)


def _rot(axis: tuple[float, float, float], angle: float) -> torch.Tensor:
    return quat_to_matrix(quat_exp(torch.tensor(axis, dtype=torch.float64) * angle))


def _random_rotations(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return quat_to_matrix(quat_normalize(torch.randn(n, 4, generator=g, dtype=torch.float64)))


def _mat4(rot: torch.Tensor, t: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot.numpy()
    m[:3, 3] = t
    return m


def _member(sym: Symmetries, rot: torch.Tensor, t: torch.Tensor, tol: float = 1e-9) -> bool:
    d = ((sym.rotations - rot).abs().amax((-1, -2))
         + (sym.translations - t).abs().amax(-1))
    return bool((d < tol).any())


def _assert_closed(sym: Symmetries) -> None:
    for i in range(sym.num):
        for j in range(sym.num):
            rot = sym.rotations[i] @ sym.rotations[j]
            t = sym.rotations[i] @ sym.translations[j] + sym.translations[i]
            assert _member(sym, rot, t), (i, j)


# Discrete groups as BOP lists them (identity left out): a 4-fold symmetry about z through the
# point (0, 0.01, 0) (so with translations), and the dihedral group D2 (180 deg about x, y, z).
C4_OFFSET = (0.0, 0.01, 0.0)
C4 = [_mat4(_rot((0, 0, 1), k * math.pi / 2),
            tuple((torch.tensor(C4_OFFSET, dtype=torch.float64)
                   - _rot((0, 0, 1), k * math.pi / 2) @ torch.tensor(C4_OFFSET,
                                                                     dtype=torch.float64)
                   ).tolist()))
      for k in (1, 2, 3)]
D2 = [_mat4(_rot(a, math.pi), (0.0, 0.0, 0.0)) for a in ((1, 0, 0), (0, 1, 0), (0, 0, 1))]


def test_no_symmetry_is_the_identity() -> None:
    sym = symmetry_transforms()
    assert sym.rotations.shape == (1, 3, 3) and sym.translations.shape == (1, 3)
    torch.testing.assert_close(sym.rotations[0], EYE)
    torch.testing.assert_close(sym.translations[0], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("group", [C4, D2], ids=["C4_offset", "D2"])
def test_discrete_groups_are_closed_and_start_with_the_identity(group: list[np.ndarray]
                                                                ) -> None:
    sym = symmetry_transforms(np.stack(group))
    assert sym.num == len(group) + 1
    torch.testing.assert_close(sym.rotations[0], EYE)
    _assert_closed(sym)
    # an identity listed in the file is not repeated
    assert symmetry_transforms(np.stack([np.eye(4), *group])).num == len(group) + 1


def test_continuous_symmetry_is_discretised_with_its_offset() -> None:
    offset = (0.02, -0.01, 0.005)
    sym = symmetry_transforms(continuous=[((0.0, 0.0, 2.0), offset)], num_continuous=8)
    assert sym.num == 8
    _assert_closed(sym)
    # every element is a rotation about z by a multiple of 45 deg that fixes the axis line
    o = torch.tensor(offset, dtype=torch.float64)
    for k in range(8):
        torch.testing.assert_close(sym.rotations[k], _rot((0, 0, 1), k * math.pi / 4))
        torch.testing.assert_close(sym.rotations[k] @ o + sym.translations[k], o)
    # with a 2-fold discrete symmetry about x: all products, still a group
    both = symmetry_transforms([_mat4(_rot((1, 0, 0), math.pi), (0, 0, 0))],
                               [((0, 0, 1), (0, 0, 0))], num_continuous=6)
    assert both.num == 12
    _assert_closed(both)
    assert symmetry_transforms(continuous=[((0, 1, 0), (0, 0, 0))]).num == \
        DEFAULT_CONTINUOUS_STEPS


def test_bad_entries_raise_typed_errors() -> None:
    with pytest.raises(ShapeError):
        symmetry_transforms(np.zeros((2, 3, 4)))
    with pytest.raises(ConfigError, match="not a rotation"):
        symmetry_transforms([np.diag([1.0, 1.0, -1.0, 1.0])])
    with pytest.raises(ConfigError, match="axis is zero"):
        symmetry_transforms(continuous=[((0, 0, 0), (0, 0, 0))])
    with pytest.raises(ConfigError, match="num_continuous"):
        symmetry_transforms(continuous=[((0, 0, 1), (0, 0, 0))], num_continuous=0)
    with pytest.raises(ShapeError):
        symmetry_transforms(continuous=[((0, 0, 1), (0, 0))])


@pytest.mark.parametrize("group", [C4, D2], ids=["C4_offset", "D2"])
def test_canonical_pose_is_invariant_under_the_symmetries(group: list[np.ndarray]) -> None:
    sym = symmetry_transforms(np.stack(group))
    rot = _random_rotations(64, seed=1)
    t = torch.randn(64, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref_r, ref_t, ref_i = canonical_pose(rot, t, sym)
    # the result is an equivalent pose: (R R_s, t + R t_s) for the returned index
    torch.testing.assert_close(ref_r, rot @ sym.rotations[ref_i])
    torch.testing.assert_close(ref_t, t + (rot @ sym.translations[ref_i][..., None])[..., 0])
    # ... whose rotation is the closest to the identity among the equivalents
    traces = torch.diagonal(rot[:, None] @ sym.rotations, dim1=-2, dim2=-1).sum(-1)
    torch.testing.assert_close(torch.diagonal(ref_r, dim1=-2, dim2=-1).sum(-1),
                               traces.amax(-1))
    for s in range(sym.num):
        r_s = rot @ sym.rotations[s]
        t_s = t + (rot @ sym.translations[s][..., None])[..., 0]
        got_r, got_t, _ = canonical_pose(r_s, t_s, sym)
        torch.testing.assert_close(got_r, ref_r)
        torch.testing.assert_close(got_t, ref_t)


def test_canonical_pose_of_a_continuous_symmetry_and_a_reference() -> None:
    sym = symmetry_transforms(continuous=[((0, 0, 1), (0, 0, 0))], num_continuous=36)
    rot = _random_rotations(32, seed=3)
    t = torch.zeros(32, 3, dtype=torch.float64)
    ref_r, _, _ = canonical_pose(rot, t, sym)
    for s in (1, 7, 20):
        got_r, _, _ = canonical_pose(rot @ sym.rotations[s], t, sym)
        torch.testing.assert_close(got_r, ref_r)
    # a reference rotation: the pick is the equivalent closest to it (the identity's pick for
    # rotations premultiplied by the reference's inverse)
    reference = _rot((1, 0, 0), 0.7)
    got_r, _, got_i = canonical_pose(rot, t, sym, reference=reference)
    _, _, want_i = canonical_pose(reference.T @ rot, t, sym)
    assert torch.equal(got_i, want_i)
    # no symmetry: the pose itself
    same_r, same_t, idx = canonical_pose(rot, t + 1.0, symmetry_transforms())
    assert torch.equal(same_r, rot) and torch.equal(same_t, t + 1.0) and not idx.any()


@pytest.mark.parametrize("name", OBJECT_NAMES)
def test_generator_models_map_onto_themselves(name: str) -> None:
    obj = make_object(name)
    entries = _symmetry_entries(obj)
    sym = symmetry_transforms(
        np.asarray(entries.get("symmetries_discrete", []), dtype=np.float64).reshape(-1, 4, 4),
        [(s["axis"], s["offset"]) for s in entries.get("symmetries_continuous", [])],
    )
    assert (sym.num > 1) == bool(obj.symmetric)
    vertices = obj.vertices.detach().double()
    moved = vertices @ sym.rotations.transpose(-1, -2) + sym.translations[:, None]  # (S, V, 3)
    # every moved vertex lies on the model surface: within 0.5 mm of a vertex for the
    # discrete symmetries; for the can, rotating about its axis keeps radius and height
    diameter = float(torch.cdist(vertices, vertices).max())
    if obj.symmetry_order == 0:
        axis = torch.tensor(obj.symmetry_axis, dtype=torch.float64)
        height = moved @ axis
        radius = (moved - height[..., None] * axis).norm(dim=-1)
        torch.testing.assert_close(height, (vertices @ axis).expand_as(height))
        torch.testing.assert_close(radius, radius[:1].expand_as(radius))
    else:
        nearest = torch.cdist(moved, vertices).amin(-1)
        assert float(nearest.max()) < 5e-4 * max(diameter, 1.0)
    # the texture is invariant too: the vertex colours move with the vertices
    if obj.symmetry_order >= 2:
        idx = torch.cdist(moved, vertices).argmin(-1)  # (S, V)
        colors = obj.vertex_colors.detach().double()
        torch.testing.assert_close(colors[idx], colors.expand(sym.num, -1, -1),
                                   atol=0.05, rtol=0)
