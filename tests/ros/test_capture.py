"""Capture slots of a rig (ROS-free): complete slots, the deadline, late and silent cameras,
newest-slot-wins."""

from __future__ import annotations

import pytest

from epropnp_lib.errors import ConfigError
from epropnp_ros.capture import SlotAssembler

MS = 1_000_000


def test_complete_slot_is_emitted_at_once() -> None:
    asm: SlotAssembler[str] = SlotAssembler(3, tolerance_ns=5 * MS, deadline=0.2)
    assert asm.add(0, 1000 * MS, "a0", now=0.0) == []
    assert asm.add(2, 1003 * MS, "c0", now=0.01) == []
    [slot] = asm.add(1, 998 * MS, "b0", now=0.02)
    assert slot.complete and slot.frames == ("a0", "b0", "c0") and slot.missing == ()
    assert slot.stamp_ns == 1000 * MS and slot.opened == 0.0
    assert asm.open_slots() == 0 and asm.counters.complete == 1


def test_silent_camera_slot_expires_at_deadline_and_is_counted() -> None:
    asm: SlotAssembler[str] = SlotAssembler(3, tolerance_ns=5 * MS, deadline=0.2)
    asm.add(0, 1000 * MS, "a0", now=0.0)
    asm.add(1, 1000 * MS, "b0", now=0.05)
    assert asm.next_deadline() == pytest.approx(0.2)
    assert asm.expire(now=0.19) == []
    [slot] = asm.expire(now=0.2)
    assert not slot.complete and slot.frames == ("a0", "b0", None) and slot.missing == (2,)
    assert asm.counters.expired == 1 and asm.counters.silent == [0, 0, 1]
    assert asm.next_deadline() is None
    # The silent camera's frame arriving after its slot went is late: dropped and counted.
    assert asm.add(2, 1001 * MS, "c0", now=0.3) == []
    assert asm.counters.late == [0, 0, 1]
    # The next cycle is unaffected.
    asm.add(0, 1100 * MS, "a1", now=0.31)
    asm.add(1, 1100 * MS, "b1", now=0.31)
    [slot] = asm.add(2, 1100 * MS, "c1", now=0.32)
    assert slot.complete and slot.frames == ("a1", "b1", "c1")


def test_newer_complete_slot_supersedes_older_open_ones() -> None:
    asm: SlotAssembler[str] = SlotAssembler(2, tolerance_ns=1 * MS, deadline=1.0)
    asm.add(0, 100 * MS, "a0", now=0.0)  # camera 1 of this cycle never comes
    asm.add(0, 200 * MS, "a1", now=0.1)
    [slot] = asm.add(1, 200 * MS, "b1", now=0.1)
    assert slot.frames == ("a1", "b1")
    assert asm.counters.superseded == 1 and asm.open_slots() == 0
    # A frame of the dropped, older cycle is late now.
    assert asm.add(1, 100 * MS, "b0", now=0.2) == []
    assert asm.counters.late == [0, 1]


def test_same_camera_twice_in_a_slot_replaces_and_open_slots_are_bounded() -> None:
    asm: SlotAssembler[str] = SlotAssembler(2, tolerance_ns=10 * MS, deadline=1.0, max_open=2)
    asm.add(0, 100 * MS, "a0", now=0.0)
    asm.add(0, 105 * MS, "a0'", now=0.0)
    assert asm.counters.replaced == [1, 0]
    asm.add(0, 200 * MS, "a1", now=0.0)
    asm.add(0, 300 * MS, "a2", now=0.0)
    assert asm.open_slots() == 2 and asm.counters.superseded == 1
    [slot] = asm.add(1, 300 * MS, "b2", now=0.0)
    assert slot.frames == ("a2", "b2")


def test_invalid_settings_raise() -> None:
    with pytest.raises(ConfigError):
        SlotAssembler(0, 0, 0.1)
    with pytest.raises(ConfigError):
        SlotAssembler(2, -1, 0.1)
    with pytest.raises(ConfigError):
        SlotAssembler(2, 0, 0.0)
    with pytest.raises(ConfigError):
        SlotAssembler(2, 0, 0.1).add(2, 0, "x", now=0.0)
