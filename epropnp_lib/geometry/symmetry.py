"""Symmetries of rigid objects (the BOP ``models_info.json`` description) and the canonical
pose of a symmetric object.

A symmetry ``(R_s, t_s)`` maps the model onto itself: ``{R_s x + t_s} = {x}``.  A pose
``(R, t)`` (object to camera, :mod:`epropnp_lib.conventions`) and the pose
``(R R_s, t + R t_s)`` then show the same object in the same place: they are *equivalent*.

BOP lists ``symmetries_discrete`` (``4 x 4`` rigid transforms, the identity not included) and
``symmetries_continuous`` (an ``axis`` through the point ``offset``, invariant under every
rotation about it).  :func:`symmetry_transforms` makes the finite set of all of them, the
continuous ones discretised into ``num_continuous`` rotations by multiples of ``360 /
num_continuous`` degrees (each composed with each discrete one, the identity first), as
``rotations (S, 3, 3)`` and ``translations (S, 3)``.  The set is closed under composition when
the discrete symmetries form a group (BOP's do) and there is at most one continuous axis, so a
pose's equivalents are the same set whichever equivalent one starts from.

:func:`canonical_pose` picks, among the equivalents of a pose, the one whose rotation is
closest to a reference (the identity by default): a function of the pose's equivalence class,
i.e. of what the camera sees, so that a network can regress it.  For a continuous symmetry the
pick is within ``180 / num_continuous`` degrees of the continuous optimum.

Translations are in the unit of the input (BOP files store millimetres; the readers of
:mod:`epropnp_lib.data.bop` convert to metres).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from epropnp_lib.checks import check_shape
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.rotations import quat_exp, quat_to_matrix

__all__ = [
    "DEFAULT_CONTINUOUS_STEPS",
    "Symmetries",
    "canonical_pose",
    "symmetry_transforms",
]

#: Rotations a continuous symmetry is discretised into (10 degree steps).
DEFAULT_CONTINUOUS_STEPS = 36

_TOL = 1e-6


class Symmetries(NamedTuple):
    """A finite set of rigid symmetries ``x -> R_s x + t_s``, the identity first.

    Attributes:
        rotations: ``(S, 3, 3)``.
        translations: ``(S, 3)``.
    """

    rotations: torch.Tensor
    translations: torch.Tensor

    @property
    def num(self) -> int:
        """``S``, the number of symmetries (the identity included)."""
        return int(self.rotations.shape[0])

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Symmetries:
        """The same set in ``dtype`` (on ``device``)."""
        return Symmetries(self.rotations.to(device=device, dtype=dtype),
                          self.translations.to(device=device, dtype=dtype))


def _rotation_about(axis: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """``(n, 3, 3)`` rotations by ``angles: (n,)`` about the unit ``axis: (3,)``."""
    return quat_to_matrix(quat_exp(angles[:, None] * axis[None]))


def symmetry_transforms(
    discrete: np.ndarray | torch.Tensor | Sequence[Sequence[Sequence[float]]] = (),
    continuous: Sequence[tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]] = (),
    num_continuous: int = DEFAULT_CONTINUOUS_STEPS,
    dtype: torch.dtype = torch.float64,
) -> Symmetries:
    """All symmetries of an object, the identity first (see the module docstring).

    Args:
        discrete: ``(K, 4, 4)`` rigid transforms ``[[R, t], [0, 1]]`` (``K`` may be 0); an
            identity among them is not repeated.
        continuous: ``(axis (3,), offset (3,))`` per continuous symmetry: every rotation about
            ``axis`` through the point ``offset``.
        num_continuous: rotations per continuous symmetry (the identity included), >= 1.
        dtype: floating dtype of the result.

    Returns:
        :class:`Symmetries` with ``S = (K + 1) * num_continuous ** len(continuous)`` elements
        (fewer when ``discrete`` repeats the identity).

    Raises:
        ShapeError: ``discrete`` is not ``(K, 4, 4)`` or an axis/offset not ``(3,)``.
        ConfigError: a discrete rotation is not a rotation, an axis is zero, or
            ``num_continuous < 1``.
    """
    if num_continuous < 1:
        raise ConfigError(f"num_continuous must be >= 1, got {num_continuous}")
    arr = np.asarray(discrete, dtype=np.float64)
    disc = torch.as_tensor(arr.reshape(0, 4, 4) if arr.size == 0 else arr)
    check_shape(disc, ["K", 4, 4], "symmetries_discrete")
    rot, trans = disc[:, :3, :3], disc[:, :3, 3]
    eye = torch.eye(3, dtype=torch.float64)
    if len(rot):
        ortho = (rot @ rot.transpose(-1, -2) - eye).abs().amax((-1, -2))
        bad = (ortho > 1e-4) | ((torch.linalg.det(rot) - 1.0).abs() > 1e-4)
        if bool(bad.any()):
            raise ConfigError(f"symmetries_discrete[{int(bad.nonzero()[0, 0])}] is not a "
                              "rotation (R R^T != I or det R != 1)")
        is_identity = ((rot - eye).abs().amax((-1, -2)) < _TOL) & (trans.abs().amax(-1) < _TOL)
        rot, trans = rot[~is_identity], trans[~is_identity]
    rot = torch.cat((eye[None], rot))
    trans = torch.cat((torch.zeros(1, 3, dtype=torch.float64), trans))
    angles = torch.arange(num_continuous, dtype=torch.float64) * (2.0 * math.pi / num_continuous)
    for i, (axis_in, offset_in) in enumerate(continuous):
        axis = torch.as_tensor(np.asarray(axis_in, dtype=np.float64))
        offset = torch.as_tensor(np.asarray(offset_in, dtype=np.float64))
        check_shape(axis, [3], f"symmetries_continuous[{i}].axis")
        check_shape(offset, [3], f"symmetries_continuous[{i}].offset")
        norm = float(axis.norm())
        if not norm > 1e-9:
            raise ConfigError(f"symmetries_continuous[{i}].axis is zero")
        rc = _rotation_about(axis / norm, angles)  # (n, 3, 3)
        tc = offset - rc @ offset  # rotation about the line through offset
        # x -> Rc (R x + t) + tc, continuous step outer, previous set inner
        rot = (rc[:, None] @ rot[None]).reshape(-1, 3, 3)
        trans = ((rc[:, None] @ trans[None, ..., None])[..., 0] + tc[:, None]).reshape(-1, 3)
    return Symmetries(rot.to(dtype), trans.to(dtype))


def canonical_pose(
    rotation: torch.Tensor,
    translation: torch.Tensor,
    symmetries: Symmetries,
    reference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The equivalent pose ``(R R_s, t + R t_s)`` whose rotation is closest to ``reference``
    (largest ``trace(reference^T R R_s)``, i.e. smallest angle), over ``symmetries``.

    The result depends on the equivalence class of the input only (applying any element of a
    closed symmetry set to the input gives the same output), except on the measure-zero set
    where two equivalents are equally close (the first in the set's order is taken).

    Args:
        rotation: ``(..., 3, 3)`` object-to-camera rotations.
        translation: ``(..., 3)`` translations.
        symmetries: the object's :class:`Symmetries` (``(S, 3, 3)``, ``(S, 3)``).
        reference: reference rotation(s), ``(3, 3)`` or one per pose ``(..., 3, 3)``
            (default identity).

    Returns:
        ``(rotation (..., 3, 3), translation (..., 3), index (...,) int64)``: the canonical
        pose and the index of the symmetry applied.
    """
    dims = check_shape(rotation, ["*", 3, 3], "rotation")
    check_shape(translation, ["*", 3], "translation", dims)
    sym = symmetries.to(rotation.dtype, rotation.device)
    cand = rotation[..., None, :, :] @ sym.rotations  # (..., S, 3, 3)
    if reference is None:
        score = torch.diagonal(cand, dim1=-2, dim2=-1).sum(-1)  # (..., S)
    else:
        check_shape(reference, ["*", 3, 3], "reference")
        score = (cand * reference.to(cand)[..., None, :, :]).sum((-2, -1))
    index = score.argmax(-1)  # first maximum
    rot = torch.gather(cand, -3, index[..., None, None, None].expand(*index.shape, 1, 3, 3))
    t_s = sym.translations[index]  # (..., 3)
    trans = translation + (rotation @ t_s[..., None])[..., 0]
    return rot[..., 0, :, :], trans, index
