"""Image/CameraInfo pairing by stamp and the newest-frame slot (ROS-free, no DDS)."""

from __future__ import annotations

import threading
import time

import pytest

from epropnp_lib.errors import ConfigError
from epropnp_ros.pairing import LatestSlot, StampPairer

MS = 1_000_000


def test_exact_stamps_pair_in_either_order() -> None:
    pairer: StampPairer[str, str] = StampPairer(tolerance_ns=0)
    assert pairer.add_image(100 * MS, "img0") is None
    pair = pairer.add_info(100 * MS, "info0")
    assert pair is not None
    assert (pair.stamp_ns, pair.image, pair.info, pair.skew_ns) == (100 * MS, "img0", "info0", 0)
    assert pairer.add_info(200 * MS, "info1") is None
    pair = pairer.add_image(200 * MS, "img1")
    assert pair is not None and (pair.image, pair.info) == ("img1", "info1")
    assert pairer.pending() == (0, 0)
    assert pairer.counters.paired == 2
    assert pairer.counters.images_unpaired == pairer.counters.infos_unpaired == 0


def test_tolerance_picks_closest_and_rejects_far() -> None:
    pairer: StampPairer[str, str] = StampPairer(tolerance_ns=5 * MS)
    pairer.add_info(96 * MS, "far")  # 4 ms away from the image
    pairer.add_info(102 * MS, "near")  # 2 ms away
    pair = pairer.add_image(100 * MS, "img")
    assert pair is not None and pair.info == "near" and pair.skew_ns == 2 * MS
    # "far" is older than the pair: superseded and counted.
    assert pairer.pending() == (0, 0)
    assert pairer.counters.infos_unpaired == 1
    # 6 ms apart is beyond 5 ms.
    assert pairer.add_image(200 * MS, "img2") is None
    assert pairer.add_info(206 * MS, "info2") is None
    assert pairer.pending() == (1, 1)


def test_zero_tolerance_never_pairs_different_stamps() -> None:
    pairer: StampPairer[str, str] = StampPairer(tolerance_ns=0)
    assert pairer.add_image(100, "img") is None
    assert pairer.add_info(101, "info") is None
    assert pairer.counters.paired == 0
    # Clearing (the inputs stop) drops the buffered messages and counts them.
    pairer.clear()
    assert pairer.pending() == (0, 0)
    assert (pairer.counters.images_unpaired, pairer.counters.infos_unpaired) == (1, 1)


def test_buffers_are_bounded_and_evictions_counted() -> None:
    pairer: StampPairer[int, str] = StampPairer(tolerance_ns=0, max_pending=3)
    for i in range(10):
        assert pairer.add_image(i * MS, i) is None
    assert pairer.pending() == (3, 0)
    assert pairer.counters.images_unpaired == 7
    # The newest image pairs; the two older buffered ones are superseded.
    pair = pairer.add_info(9 * MS, "info")
    assert pair is not None and pair.image == 9
    assert pairer.counters.images_unpaired == 9
    assert pairer.pending() == (0, 0)


def test_late_infos_pair_every_image_within_the_wait_bound() -> None:
    """Camera infos arriving up to ``max_wait_ns`` after their images (by stamp) pair every
    image; an image older than the bound behind the newest image is dropped and counted."""
    pairer: StampPairer[int, str] = StampPairer(
        tolerance_ns=0, max_pending=96, max_wait_ns=3000 * MS)
    pairs = []
    for i in range(40):  # 10 Hz images, each info 2.5 s (25 frames) late
        assert pairer.add_image(i * 100 * MS, i) is None
        if i >= 25:
            pair = pairer.add_info((i - 25) * 100 * MS, f"info{i - 25}")
            assert pair is not None
            pairs.append(pair.image)
    assert pairs == list(range(15)) and pairer.counters.images_unpaired == 0
    # With infos 3.5 s late, images leave the buffer at 3 s: counted, never paired.
    late: StampPairer[int, str] = StampPairer(tolerance_ns=0, max_pending=96,
                                               max_wait_ns=3000 * MS)
    for i in range(40):
        late.add_image(i * 100 * MS, i)
    assert late.add_info(0, "info0") is None
    assert late.counters.images_unpaired == 9  # stamps 0..0.8 s are > 3 s behind 3.9 s
    assert late.pending()[0] == 31


def test_latest_info_mode_ignores_stamps() -> None:
    pairer: StampPairer[str, str] = StampPairer(tolerance_ns=0, latest_info=True)
    assert pairer.add_image(5 * MS, "early") is None  # no calibration yet: waits
    pair = pairer.add_info(1 * MS, "calib")
    assert pair is not None and pair.image == "early" and pair.skew_ns == -4 * MS
    pair = pairer.add_image(1000 * MS, "later")
    assert pair is not None and (pair.image, pair.info) == ("later", "calib")
    pairer.add_info(2000 * MS, "calib2")
    pair = pairer.add_image(1001 * MS, "later2")
    assert pair is not None and pair.info == "calib2"
    assert pairer.counters.paired == 3


def test_invalid_configuration_is_rejected() -> None:
    with pytest.raises(ConfigError, match="tolerance"):
        StampPairer(tolerance_ns=-1)
    with pytest.raises(ConfigError, match="max_pending"):
        StampPairer(tolerance_ns=0, max_pending=0)
    with pytest.raises(ConfigError, match="max_wait_ns"):
        StampPairer(tolerance_ns=0, max_wait_ns=-1)


def test_slot_keeps_newest_and_counts_drops() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take(timeout=0.0) is None
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take(timeout=0.0) == 3
    assert slot.take(timeout=0.0) is None
    assert (slot.dropped, slot.taken) == (2, 1)
    slot.put(4)
    assert slot.clear() is True and slot.dropped == 3
    slot.put(5)
    slot.close()  # the waiting item is dropped, and counted
    assert slot.dropped == 4 and slot.take(timeout=0.0) is None


def test_slot_close_wakes_a_blocked_consumer() -> None:
    slot: LatestSlot[int] = LatestSlot()
    result: list[int | None] = []
    consumer = threading.Thread(target=lambda: result.append(slot.take(timeout=30.0)))
    consumer.start()
    t0 = time.monotonic()
    slot.close()
    consumer.join(timeout=10.0)
    assert not consumer.is_alive()
    assert result == [None]
    assert time.monotonic() - t0 < 5.0
    assert slot.put(1) is True and slot.take(timeout=0.0) is None  # closed: dropped
    slot.reopen()
    slot.put(2)
    assert slot.take(timeout=0.0) == 2


def test_slow_consumer_sees_only_newest_frames() -> None:
    """A producer faster than the consumer: no backlog, every frame is taken or dropped."""
    slot: LatestSlot[int] = LatestSlot()
    seen: list[int] = []
    done = threading.Event()

    def consume() -> None:
        while True:
            item = slot.take(timeout=5.0)
            if item is None:
                return
            seen.append(item)
            if item == 199:
                done.set()
                return
            time.sleep(0.002)  # the "model": slower than the producer

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(200):
        slot.put(i)
    assert done.wait(timeout=10.0), f"newest frame never consumed; saw {seen[-5:]}"
    consumer.join(timeout=10.0)
    assert seen == sorted(seen) and seen[-1] == 199
    assert slot.taken + slot.dropped == 200
    assert slot.dropped > 0
