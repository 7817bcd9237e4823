"""Capture slots of a camera rig (ROS-free): the frames of one capture cycle, one per camera.

A frame (any object, the nodes keep the paired image and camera info) joins the open slot
whose reference stamp (its first frame's) lies within ``tolerance`` of its own; otherwise it
opens a new slot. A slot is emitted when every camera has a frame in it (*complete*) or when
``deadline`` seconds have passed since its first frame arrived (*expired*, with the cameras
still missing counted as silent), so a late or silent camera never blocks the others.

Newest wins: emitting a slot drops every older open slot (counted as superseded), and a frame
whose stamp is not newer than the last emitted slot (plus the tolerance) is late: dropped and
counted for its camera. The nodes hand emitted slots to a
:class:`~epropnp_ros.pairing.LatestSlot`, which drops an emitted slot the worker has not
taken yet. At most ``max_open`` slots are open (the oldest is dropped, counted as superseded).

Not thread-safe: the nodes call it from the executor thread only (callbacks and a timer).
Stamps are integer ns; times (``now``) are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from epropnp_lib.errors import ConfigError

__all__ = ["CaptureSlot", "SlotAssembler", "SlotCounters"]

ItemT = TypeVar("ItemT")


class CaptureSlot(NamedTuple, Generic[ItemT]):
    """The frames of one capture cycle.

    Attributes:
        stamp_ns: the reference stamp (the slot's first frame).
        frames: one entry per camera (camera order), ``None`` where no frame arrived.
        opened: ``time.monotonic()`` when the first frame arrived.
        complete: every camera has a frame (``False``: emitted at the deadline).
    """

    stamp_ns: int
    frames: tuple[ItemT | None, ...]
    opened: float
    complete: bool

    @property
    def missing(self) -> tuple[int, ...]:
        """Indices of the cameras without a frame."""
        return tuple(i for i, f in enumerate(self.frames) if f is None)


@dataclass
class SlotCounters:
    """Counters of :class:`SlotAssembler` (monotonic; per-camera lists in camera order).

    Attributes:
        complete: slots emitted with every camera.
        expired: slots emitted at the deadline, some camera missing.
        superseded: open slots dropped because a newer slot was emitted (or too many were open).
        silent: per camera, emitted slots without its frame.
        late: per camera, frames that arrived after their slot was emitted (dropped).
        replaced: per camera, frames replaced by another of the same camera in the same slot.
    """

    num_cameras: int
    complete: int = 0
    expired: int = 0
    superseded: int = 0
    silent: list[int] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    replaced: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("silent", "late", "replaced"):
            if not getattr(self, name):
                setattr(self, name, [0] * self.num_cameras)


class _Open(Generic[ItemT]):
    __slots__ = ("frames", "opened", "stamp_ns")

    def __init__(self, stamp_ns: int, num_cameras: int, opened: float) -> None:
        self.stamp_ns = stamp_ns
        self.frames: list[ItemT | None] = [None] * num_cameras
        self.opened = opened


class SlotAssembler(Generic[ItemT]):
    """Groups the frames of ``num_cameras`` cameras into capture slots (module docstring).

    Args:
        num_cameras: cameras of the rig (``>= 1``).
        tolerance_ns: largest ``|stamp - slot stamp|`` (ns) of a frame in a slot.
        deadline: seconds after a slot's first frame at which it is emitted incomplete.
        max_open: most slots open at once (``>= 1``).

    Raises:
        ConfigError: on a value out of range.
    """

    def __init__(self, num_cameras: int, tolerance_ns: int, deadline: float,
                 max_open: int = 4) -> None:
        if num_cameras < 1:
            raise ConfigError(f"a rig needs at least one camera, got {num_cameras}")
        if tolerance_ns < 0:
            raise ConfigError(f"slot tolerance must be >= 0 ns, got {tolerance_ns}")
        if not (math.isfinite(deadline) and deadline > 0):
            raise ConfigError(f"slot deadline must be > 0 s, got {deadline}")
        if max_open < 1:
            raise ConfigError(f"max_open must be >= 1, got {max_open}")
        self.num_cameras = int(num_cameras)
        self.tolerance_ns = int(tolerance_ns)
        self.deadline = float(deadline)
        self.max_open = int(max_open)
        self.counters = SlotCounters(self.num_cameras)
        self._open: list[_Open[ItemT]] = []  # sorted by stamp
        self._last_emitted: int | None = None

    def add(self, camera: int, stamp_ns: int, item: ItemT, now: float) -> list[CaptureSlot[ItemT]]:
        """Offer camera ``camera``'s frame stamped ``stamp_ns``; returns the slot it completes
        (``[]`` if none)."""
        if not 0 <= camera < self.num_cameras:
            raise ConfigError(f"camera index {camera} outside [0, {self.num_cameras})")
        c = self.counters
        if self._last_emitted is not None and stamp_ns <= self._last_emitted + self.tolerance_ns:
            c.late[camera] += 1
            return []
        slot = self._slot_for(stamp_ns, now)
        if slot.frames[camera] is not None:
            c.replaced[camera] += 1
        slot.frames[camera] = item
        if all(f is not None for f in slot.frames):
            return [self._emit(slot)]
        return []

    def expire(self, now: float) -> list[CaptureSlot[ItemT]]:
        """Emit the open slots whose deadline has passed (oldest first)."""
        out = []
        for slot in [s for s in self._open if now - s.opened >= self.deadline]:
            if slot in self._open:  # not dropped by an earlier emission of this call
                out.append(self._emit(slot))
        return out

    def next_deadline(self) -> float | None:
        """The ``time.monotonic()`` of the earliest deadline of an open slot (``None``: none
        open)."""
        return min((s.opened + self.deadline for s in self._open), default=None)

    def open_slots(self) -> int:
        """Slots open now."""
        return len(self._open)

    def clear(self) -> None:
        """Drop every open slot (counted as superseded) and forget the last emitted stamp."""
        self.counters.superseded += len(self._open)
        self._open.clear()
        self._last_emitted = None

    # --- internals ------------------------------------------------------------------------------
    def _slot_for(self, stamp_ns: int, now: float) -> _Open[ItemT]:
        best = min(self._open, key=lambda s: abs(s.stamp_ns - stamp_ns), default=None)
        if best is not None and abs(best.stamp_ns - stamp_ns) <= self.tolerance_ns:
            return best
        slot: _Open[ItemT] = _Open(stamp_ns, self.num_cameras, now)
        self._open.append(slot)
        self._open.sort(key=lambda s: s.stamp_ns)
        while len(self._open) > self.max_open:
            self._open.pop(0)
            self.counters.superseded += 1
        return slot

    def _emit(self, slot: _Open[ItemT]) -> CaptureSlot[ItemT]:
        c = self.counters
        older = [s for s in self._open if s.stamp_ns < slot.stamp_ns]
        c.superseded += len(older)
        self._open = [s for s in self._open if s.stamp_ns > slot.stamp_ns]
        self._last_emitted = slot.stamp_ns
        out = CaptureSlot(slot.stamp_ns, tuple(slot.frames), slot.opened,
                          all(f is not None for f in slot.frames))
        if out.complete:
            c.complete += 1
        else:
            c.expired += 1
            for i in out.missing:
                c.silent[i] += 1
        return out
