"""A small TF buffer (ROS-free): ``/tf_static`` and ``/tf`` transforms, looked up through chains
of frames at a time.

``tf2_ros`` has no wheel, so the nodes keep their own buffer, the same code in a venv and on a
distro. :meth:`TransformBuffer.add_message` reads the fields of a ``tf2_msgs/TFMessage`` (any
object with them, e.g. a ``rosbags`` message): each ``TransformStamped`` is the transform
``header.frame_id`` (parent) <- ``child_frame_id`` (child), i.e.
``x_parent = R x_child + t`` (:class:`~epropnp_lib.geometry.rigid.RigidTransform`).

* Static transforms (``/tf_static``, transient local) hold at every time; a new one for a child
  replaces the old one.
* Dynamic transforms (``/tf``) keep a history per child, bounded by ``cache_time`` seconds
  behind the newest stamp and by ``max_history`` entries. A lookup at time ``t`` between two
  stamps interpolates (linear translation, slerp rotation); outside the history it takes the
  nearest entry when it is at most ``tolerance`` seconds away, else it raises
  :class:`~epropnp_ros.errors.TransformLookupError`. Time 0 means the newest of each transform
  (tf2's convention).
* A child has one parent; a transform that gives it another parent starts its history anew.

:meth:`TransformBuffer.lookup` walks both frames up to their common ancestor and composes the
chain; it is thread-safe (the executor adds, the worker looks up). Stamps are integer ns.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.rigid import RigidTransform, interpolate_transforms
from epropnp_ros.errors import TransformLookupError
from epropnp_ros.messages import stamp_to_ns

__all__ = ["TransformBuffer"]

#: Longest chain of frames a lookup walks (a guard against cycles in the tree).
MAX_DEPTH = 64


@dataclass
class _Edge:
    """The transforms parent <- child of one child frame (history sorted by stamp)."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    transforms: list[RigidTransform] = field(default_factory=list)


def transform_from_msg(msg: Any) -> RigidTransform:
    """The :class:`RigidTransform` of a ``geometry_msgs/Transform`` (quaternion ``x, y, z, w``
    reordered here; normalised). ``ValueError`` for non-finite values or a zero quaternion."""
    r, t = msg.rotation, msg.translation
    q = torch.tensor([float(r.w), float(r.x), float(r.y), float(r.z)], dtype=torch.float64)
    p = torch.tensor([float(t.x), float(t.y), float(t.z)], dtype=torch.float64)
    norm = float(q.norm())
    if not (torch.isfinite(q).all() and torch.isfinite(p).all()) or not norm > 1e-9:
        raise ValueError("non-finite translation or rotation, or a zero quaternion")
    return RigidTransform(q / norm, p)


class TransformBuffer:
    """Transforms between frames from ``/tf_static`` and ``/tf`` (see the module docstring).

    Args:
        cache_time: seconds of ``/tf`` history kept behind each transform's newest stamp.
        tolerance: largest distance in seconds from a lookup time to the nearest stamp of a
            dynamic transform when the time lies outside its history.
        max_history: most entries kept per dynamic transform.

    Raises:
        ConfigError: on a negative time or a non-positive history length.
    """

    def __init__(self, cache_time: float = 10.0, tolerance: float = 0.1,
                 max_history: int = 1000) -> None:
        if not (math.isfinite(cache_time) and cache_time >= 0):
            raise ConfigError(f"cache_time must be >= 0 s, got {cache_time}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ConfigError(f"tolerance must be >= 0 s, got {tolerance}")
        if max_history < 1:
            raise ConfigError(f"max_history must be >= 1, got {max_history}")
        self.cache_ns = round(cache_time * 1e9)
        self.tolerance_ns = round(tolerance * 1e9)
        self.max_history = int(max_history)
        self._edges: dict[str, _Edge] = {}
        self._lock = threading.Lock()
        #: Transforms refused by :meth:`add_message` (non-finite, zero quaternion, no frame ids,
        #: a frame its own parent).
        self.rejected = 0

    # --- input ------------------------------------------------------------------------------
    def add_message(self, msg: Any, static: bool) -> int:
        """Add every ``TransformStamped`` of a ``TFMessage`` (``static``: from ``/tf_static``);
        returns how many were accepted (the others are counted in :attr:`rejected`)."""
        return self.add_transforms(msg.transforms, static)

    def add_transforms(self, transforms: Iterable[Any], static: bool) -> int:
        """Add ``TransformStamped`` messages (see :meth:`add_message`)."""
        accepted = 0
        for ts in transforms:
            parent, child = _strip(ts.header.frame_id), _strip(ts.child_frame_id)
            try:
                tf = transform_from_msg(ts.transform)
            except ValueError:
                tf = None
            if tf is None or not parent or not child or parent == child:
                self.rejected += 1
                continue
            self.set_transform(parent, child, stamp_to_ns(ts.header.stamp), tf, static)
            accepted += 1
        return accepted

    def set_transform(self, parent: str, child: str, stamp_ns: int, tf: RigidTransform,
                      static: bool) -> None:
        """Store ``tf`` (parent <- child) at ``stamp_ns``."""
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static or static:
                edge = self._edges[child] = _Edge(parent, static)
            i = bisect.bisect_right(edge.stamps, stamp_ns)
            if i > 0 and edge.stamps[i - 1] == stamp_ns:
                edge.transforms[i - 1] = tf
                return
            edge.stamps.insert(i, stamp_ns)
            edge.transforms.insert(i, tf)
            oldest = edge.stamps[-1] - self.cache_ns
            drop = max(bisect.bisect_left(edge.stamps, oldest),
                       len(edge.stamps) - self.max_history)
            if drop > 0:
                del edge.stamps[:drop], edge.transforms[:drop]

    def clear(self) -> None:
        """Forget every transform."""
        with self._lock:
            self._edges.clear()

    def frames(self) -> set[str]:
        """Every frame known (parents and children)."""
        with self._lock:
            return set(self._edges) | {e.parent for e in self._edges.values()}

    # --- lookup -----------------------------------------------------------------------------
    def lookup(self, target: str, source: str, stamp_ns: int = 0) -> RigidTransform:
        """The transform target <- source at ``stamp_ns`` (0: the newest), composed through
        their common ancestor.

        Raises:
            TransformLookupError: the frames are not connected, or a dynamic transform on the
                chain has no entry within the tolerance of ``stamp_ns``.
        """
        target, source = _strip(target), _strip(source)
        if target == source:
            return RigidTransform.identity()
        with self._lock:
            up_source = self._chain(source)
            up_target = self._chain(target)
            frames_t = [f for f, _ in up_target]
            common = next((i for i, (f, _) in enumerate(up_source) if f in frames_t), None)
            if common is None:
                raise TransformLookupError(
                    f"no transform from {source!r} to {target!r}: the frames are not connected "
                    f"(known frames: {', '.join(sorted(self._known())) or 'none'})"
                )
            j = frames_t.index(up_source[common][0])
            root_from_source = self._compose(up_source[:common], stamp_ns)
            root_from_target = self._compose(up_target[:j], stamp_ns)
        return root_from_target.inverse().compose(root_from_source)

    def can_transform(self, target: str, source: str, stamp_ns: int = 0) -> bool:
        """Whether :meth:`lookup` would succeed."""
        try:
            self.lookup(target, source, stamp_ns)
        except TransformLookupError:
            return False
        return True

    # --- internals (lock held) --------------------------------------------------------------
    def _known(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def _chain(self, frame: str) -> list[tuple[str, _Edge | None]]:
        """``[(frame, its edge), (parent, its edge), ..., (root, None)]``."""
        chain: list[tuple[str, _Edge | None]] = []
        seen = set()
        while frame not in seen and len(chain) < MAX_DEPTH:
            seen.add(frame)
            edge = self._edges.get(frame)
            chain.append((frame, edge))
            if edge is None:
                break
            frame = edge.parent
        return chain

    def _compose(self, chain: list[tuple[str, _Edge | None]], stamp_ns: int) -> RigidTransform:
        """ancestor <- frame of the chain's first frame (``chain`` up to, not including, the
        ancestor)."""
        out = RigidTransform.identity()
        for child, edge in chain:
            if edge is not None:  # always: every frame below the ancestor has a parent
                out = self._at(child, edge, stamp_ns).compose(out)
        return out

    def _at(self, child: str, edge: _Edge, stamp_ns: int) -> RigidTransform:
        if edge.static or stamp_ns == 0:
            return edge.transforms[-1]
        stamps = edge.stamps
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return edge.transforms[i]
        if 0 < i < len(stamps):
            s = (stamp_ns - stamps[i - 1]) / (stamps[i] - stamps[i - 1])
            return interpolate_transforms(edge.transforms[i - 1], edge.transforms[i], s)
        nearest = 0 if i == 0 else len(stamps) - 1
        gap = abs(stamps[nearest] - stamp_ns)
        if gap > self.tolerance_ns:
            raise TransformLookupError(
                f"transform {edge.parent!r} <- {child!r} is not known at {stamp_ns} ns: its "
                f"history spans [{stamps[0]}, {stamps[-1]}] ns, {gap / 1e9:.3f} s away "
                f"(tolerance {self.tolerance_ns / 1e9:.3f} s)"
            )
        return edge.transforms[nearest]


def _strip(frame_id: str) -> str:
    """tf2 ignores a leading slash in frame ids."""
    return str(frame_id).lstrip("/")
