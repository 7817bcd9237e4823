"""Image / CameraInfo pairing by stamp and the single-slot "newest frame" handoff (ROS-free).

Two small, thread-safe building blocks of the nodes, testable without a ROS graph:

* :class:`StampPairer` pairs each image with the camera info of the same stamp (within a
  tolerance), the job ``message_filters.ApproximateTimeSynchronizer`` does on a ROS distro
  (``message_filters`` is not available as a wheel). Buffers are bounded; whatever is left
  unpaired and older than a pair is dropped and counted.
* :class:`LatestSlot` is a one-element mailbox between the executor's callbacks (producer) and the
  inference worker thread (consumer): ``put`` replaces a frame the worker has not taken yet (the
  replaced, stale frame is counted as dropped), ``take`` blocks until a frame is there. A slow
  model therefore never builds a queue of latency: the worker always gets the newest frame.

Stamps are integer nanoseconds (``sec * 10**9 + nanosec``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from epropnp_lib.errors import ConfigError

ImageT = TypeVar("ImageT")
InfoT = TypeVar("InfoT")
ItemT = TypeVar("ItemT")


class Pair(NamedTuple, Generic[ImageT, InfoT]):
    """An image and the camera info paired with it.

    Attributes:
        stamp_ns: the image's stamp (ns).
        image: the image (any object; the nodes keep the ROS message).
        info: the camera info paired with it.
        skew_ns: ``info stamp - image stamp`` (ns).
    """

    stamp_ns: int
    image: ImageT
    info: InfoT
    skew_ns: int


@dataclass
class PairingCounters:
    """Counters of :class:`StampPairer` (monotonic, since construction).

    Attributes:
        paired: pairs produced.
        images_unpaired: images dropped without a camera info (evicted from a full buffer or
            older than a later pair).
        infos_unpaired: camera infos dropped without an image (same rules).
    """

    paired: int = 0
    images_unpaired: int = 0
    infos_unpaired: int = 0


class StampPairer(Generic[ImageT, InfoT]):
    """Pairs images with camera infos whose stamps differ by at most ``tolerance_ns``.

    Each arriving message is matched against the buffered messages of the other kind; the
    closest stamp within the tolerance wins. When a pair is made, every buffered message of
    either kind with an older stamp than the pair's can no longer be paired usefully (the newer
    frame supersedes it) and is dropped (counted). Unmatched messages wait in a buffer of at most
    ``max_pending`` entries per kind (oldest evicted first, counted); with ``max_wait_ns`` an
    image also waits at most that long behind the newest image's stamp (DDS can deliver a
    camera info seconds after its image: the bound says how late it may be).

    With ``latest_info=True`` the stamps are ignored for camera infos: each image is paired with
    the newest camera info received so far (for drivers that publish the calibration rarely or
    with unrelated stamps). The tolerance is then unused.

    Thread-safe: ``add_image`` / ``add_info`` may be called from different threads.

    Args:
        tolerance_ns: largest ``|info stamp - image stamp|`` (ns, ``>= 0``) of a pair.
        max_pending: buffered messages per kind (``>= 1``).
        latest_info: pair each image with the newest camera info, whatever its stamp.
        max_wait_ns: longest wait of an image, by stamp behind the newest image (``None``: only
            ``max_pending`` bounds the wait).

    Raises:
        ConfigError: on a negative tolerance or wait, or a non-positive buffer size.
    """

    def __init__(self, tolerance_ns: int, max_pending: int = 8, latest_info: bool = False,
                 max_wait_ns: int | None = None):
        if tolerance_ns < 0:
            raise ConfigError(f"pairing tolerance must be >= 0 ns, got {tolerance_ns}")
        if max_pending < 1:
            raise ConfigError(f"max_pending must be >= 1, got {max_pending}")
        if max_wait_ns is not None and max_wait_ns < 0:
            raise ConfigError(f"max_wait_ns must be >= 0, got {max_wait_ns}")
        self.tolerance_ns = int(tolerance_ns)
        self.max_pending = int(max_pending)
        self.max_wait_ns = max_wait_ns
        self.latest_info = bool(latest_info)
        self.counters = PairingCounters()
        self._images: deque[tuple[int, ImageT]] = deque()
        self._infos: deque[tuple[int, InfoT]] = deque()
        self._lock = threading.Lock()

    def add_image(self, stamp_ns: int, image: ImageT) -> Pair[ImageT, InfoT] | None:
        """Offer an image; returns its pair when a camera info matches, else ``None``."""
        with self._lock:
            if self.latest_info:
                if not self._infos:
                    self._push(self._images, stamp_ns, image, images=True)
                    return None
                info_stamp, info = self._infos[-1]
                self._drop_older(self._images, stamp_ns + 1, images=True)
                self.counters.paired += 1
                return Pair(stamp_ns, image, info, info_stamp - stamp_ns)
            idx = self._closest(self._infos, stamp_ns)
            if idx is None:
                self._push(self._images, stamp_ns, image, images=True)
                return None
            info_stamp, info = self._infos[idx]
            return self._make_pair(stamp_ns, image, info_stamp, info)

    def add_info(self, stamp_ns: int, info: InfoT) -> Pair[ImageT, InfoT] | None:
        """Offer a camera info; returns a pair when a buffered image matches, else ``None``.

        With ``latest_info=True`` the info replaces the previous one and pairs with the newest
        image still waiting for a camera info (if any).
        """
        with self._lock:
            if self.latest_info:
                self._infos.clear()
                self._infos.append((stamp_ns, info))
                if not self._images:
                    return None
                image_stamp, image = self._images[-1]
                self._drop_older(self._images, image_stamp + 1, images=True, skip=image)
                self.counters.paired += 1
                return Pair(image_stamp, image, info, stamp_ns - image_stamp)
            idx = self._closest(self._images, stamp_ns)
            if idx is None:
                self._push(self._infos, stamp_ns, info, images=False)
                return None
            image_stamp, image = self._images[idx]
            return self._make_pair(image_stamp, image, stamp_ns, info)

    def pending(self) -> tuple[int, int]:
        """``(images, infos)`` currently buffered."""
        with self._lock:
            return len(self._images), len(self._infos)

    def clear(self) -> None:
        """Drop every buffered message, counted as unpaired (e.g. when the inputs stop)."""
        with self._lock:
            self.counters.images_unpaired += len(self._images)
            self.counters.infos_unpaired += len(self._infos)
            self._images.clear()
            self._infos.clear()

    # --- internals (called with the lock held) -------------------------------------------------
    def _closest(self, buf: Iterable[tuple[int, object]], stamp_ns: int) -> int | None:
        best, best_dist = None, self.tolerance_ns + 1
        for i, (s, _) in enumerate(buf):
            dist = abs(s - stamp_ns)
            if dist < best_dist:
                best, best_dist = i, dist
        return best

    def _make_pair(
        self, image_stamp: int, image: ImageT, info_stamp: int, info: InfoT
    ) -> Pair[ImageT, InfoT]:
        # Everything up to and including the pair's own stamps is consumed or superseded.
        self._drop_older(self._images, image_stamp + 1, images=True, skip=image)
        self._drop_older(self._infos, info_stamp + 1, images=False, skip=info)
        self.counters.paired += 1
        return Pair(image_stamp, image, info, info_stamp - image_stamp)

    def _drop_older(
        self,
        buf: deque[tuple[int, ImageT]] | deque[tuple[int, InfoT]],
        before_ns: int,
        *,
        images: bool,
        skip: object = None,
    ) -> None:
        """Remove entries stamped before ``before_ns``; count them unless it is ``skip`` (the
        paired message itself)."""
        kept = [(s, m) for s, m in buf if s >= before_ns]
        removed = [m for s, m in buf if s < before_ns and m is not skip]
        buf.clear()
        buf.extend(kept)  # type: ignore[arg-type]
        if images:
            self.counters.images_unpaired += len(removed)
        else:
            self.counters.infos_unpaired += len(removed)

    def _push(
        self,
        buf: deque[tuple[int, ImageT]] | deque[tuple[int, InfoT]],
        stamp_ns: int,
        msg: object,
        *,
        images: bool,
    ) -> None:
        buf.append((stamp_ns, msg))  # type: ignore[arg-type]
        if images and self.max_wait_ns is not None:
            newest = max(s for s, _ in buf)
            while buf and buf[0][0] < newest - self.max_wait_ns:
                buf.popleft()
                self.counters.images_unpaired += 1
        while len(buf) > self.max_pending:
            buf.popleft()
            if images:
                self.counters.images_unpaired += 1
            else:
                self.counters.infos_unpaired += 1


class LatestSlot(Generic[ItemT]):
    """A thread-safe single-slot mailbox that always holds the newest item.

    ``put`` never blocks: an item still in the slot is replaced and counted in :attr:`dropped`.
    ``take`` blocks (up to a timeout) until an item is there, removes and returns it. After
    :meth:`close`, ``take`` returns ``None`` at once and ``put`` is ignored (counted as dropped).
    Every item put is either taken or counted in :attr:`dropped`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: ItemT | None = None
        self._full = False
        self._closed = False
        #: Items replaced before the consumer took them (or offered after close).
        self.dropped = 0
        #: Items handed to the consumer.
        self.taken = 0

    def put(self, item: ItemT) -> bool:
        """Store ``item``; ``True`` when it replaced an item nobody had taken (a drop)."""
        with self._cond:
            if self._closed:
                self.dropped += 1
                return True
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> ItemT | None:
        """The newest item (removed from the slot), or ``None`` on timeout or after close."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._full or self._closed, timeout=timeout):
                return None
            if self._closed or not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            self.taken += 1
            return item

    def clear(self) -> bool:
        """Discard a waiting item (counted as dropped); ``True`` if there was one."""
        with self._cond:
            had = self._full
            if had:
                self.dropped += 1
            self._item, self._full = None, False
            return had

    def close(self) -> None:
        """Wake every waiting ``take`` (which returns ``None``); an item still in the slot and
        later puts are dropped (counted)."""
        with self._cond:
            if self._full:
                self.dropped += 1
            self._closed = True
            self._item, self._full = None, False
            self._cond.notify_all()

    def reopen(self) -> None:
        """Accept items again after :meth:`close`."""
        with self._cond:
            self._closed = False

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (and not undone by :meth:`reopen`)."""
        with self._cond:
            return self._closed
