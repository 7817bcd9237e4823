"""Writing rosbag2 files without a ROS install: message builders, QoS, atomic output.

The bag converters (:mod:`epropnp_ros.nuscenes_bag`, :mod:`epropnp_ros.bop_bag`) describe a bag
as :class:`BagEvent` s (stamp, tie-break order, topic, a function building the message) and hand
them to :func:`write_bag`, which serialises them with ``rosbags`` (the types of ROS 2 Kilted plus
the :data:`EXTRA_INTERFACES` from their installed ``.msg`` files: :func:`typestore`) into a
hidden staging directory ``.<name>.partial-<pid>`` beside the output and renames it into place
only when complete; staging directories of killed runs are removed by the next run. Quaternions
given to :class:`MessageBuilder` are ``(w, x, y, z)`` (library and nuScenes order); ROS fields
are filled by name. Stamps are integer nanoseconds.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np
from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from tqdm import tqdm

from epropnp_ros.errors import BagConversionError
from epropnp_ros.messages import ns_to_stamp

__all__ = [
    "EXTRA_INTERFACES",
    "TF_STATIC_TOPIC",
    "TF_TOPIC",
    "BagEvent",
    "MessageBuilder",
    "bind",
    "remove_stale_partials",
    "typestore",
    "write_bag",
]

LOGGER = logging.getLogger(__name__)

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"


class BagEvent(NamedTuple):
    """One message of a bag: written in ``(stamp_ns, order, topic)`` order."""

    stamp_ns: int
    order: int  # ties at one stamp (e.g. TF before camera_info before images)
    topic: str
    build: Callable[[], Any]


def bind(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``fn(*args)`` deferred (a :attr:`BagEvent.build`)."""
    return lambda: fn(*args)


#: Interface packages beyond Kilted's stock types, read from their installed .msg files.
EXTRA_INTERFACES = ("vision_msgs", "autoware_perception_msgs")


def typestore(packages: Sequence[str] = EXTRA_INTERFACES) -> Any:
    """rosbags typestore: Kilted's stock types plus ``packages`` from their .msg files."""
    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for package in packages:
        try:
            share = Path(get_package_share_directory(package))
        except PackageNotFoundError as exc:
            raise BagConversionError(
                f"{package} is not installed (on a venv: run tools/setup_env.sh; on a distro: "
                f"install ros-$ROS_DISTRO-{package.replace('_', '-')})"
            ) from exc
        for f in sorted((share / "msg").glob("*.msg")):
            types.update(get_types_from_msg(f.read_text(), f"{package}/msg/{f.stem}"))
    store.register(types)
    return store


class MessageBuilder:
    """Builds messages of a rosbags typestore (:func:`typestore`)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.t = store.types

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        stamp = ns_to_stamp(stamp_ns, self.t["builtin_interfaces/msg/Time"])
        return self.t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def vector3(self, xyz: Sequence[float], type_name: str = "geometry_msgs/msg/Vector3") -> Any:
        x, y, z = (float(v) for v in xyz)
        return self.t[type_name](x=x, y=y, z=z)

    def quaternion(self, wxyz: Sequence[float]) -> Any:
        w, x, y, z = (float(v) for v in wxyz)  # (w, x, y, z) -> ROS fields
        return self.t["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)

    def pose(self, translation: Sequence[float], wxyz: Sequence[float]) -> Any:
        return self.t["geometry_msgs/msg/Pose"](
            position=self.vector3(translation, "geometry_msgs/msg/Point"),
            orientation=self.quaternion(wxyz),
        )

    def transform(self, stamp_ns: int, parent: str, child: str, record: dict[str, Any]) -> Any:
        """``parent`` -> ``child`` with ``record["translation"]`` and ``record["rotation"]``
        (w, x, y, z)."""
        tf = self.t["geometry_msgs/msg/Transform"](
            translation=self.vector3(record["translation"]),
            rotation=self.quaternion(record["rotation"]),
        )
        return self.t["geometry_msgs/msg/TransformStamped"](
            header=self.header(stamp_ns, parent), child_frame_id=child, transform=tf
        )

    def tf_message(self, transforms: list[Any]) -> Any:
        return self.t["tf2_msgs/msg/TFMessage"](transforms=transforms)

    def camera_info(
        self, stamp_ns: int, frame: str, width: int, height: int,
        intrinsic: Sequence[Sequence[float]],
    ) -> Any:
        """CameraInfo of an undistorted pinhole camera ``intrinsic: (3, 3)`` (D = 0, P = [K|0])."""
        k = np.asarray(intrinsic, dtype=np.float64)
        if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
            raise BagConversionError(f"invalid camera_intrinsic for {frame}: {intrinsic!r}")
        roi = self.t["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        )
        return self.t["sensor_msgs/msg/CameraInfo"](
            header=self.header(stamp_ns, frame),
            height=int(height),
            width=int(width),
            distortion_model="plumb_bob",
            d=np.zeros(5),
            k=k.reshape(-1),
            r=np.eye(3).reshape(-1),
            p=np.concatenate([k, np.zeros((3, 1))], axis=1).reshape(-1),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def image(self, stamp_ns: int, frame: str, path: Path, image_format: str) -> Any:
        """The image file ``path`` as ``CompressedImage`` (its bytes as stored, format from the
        suffix) or, for ``image_format='raw'``, a decoded ``rgb8`` ``Image``."""
        if not path.is_file():
            raise BagConversionError(f"image file missing: {path}")
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        header = self.header(stamp_ns, frame)
        if image_format == "compressed":
            fmt = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix[1:]
            return self.t["sensor_msgs/msg/CompressedImage"](header=header, format=fmt, data=data)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            raise BagConversionError(f"cannot decode image file {path}")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        return self.t["sensor_msgs/msg/Image"](
            header=header,
            height=int(rgb.shape[0]),
            width=int(rgb.shape[1]),
            encoding="rgb8",
            is_bigendian=0,
            step=int(rgb.shape[1] * 3),
            data=rgb.reshape(-1),
        )


def qos(transient_local: bool) -> list[Any]:
    """Offered QoS of a recorded topic: reliable, keep last 10 (transient local depth 1 for
    ``/tf_static``-like latched topics)."""
    never = QosTime(sec=0x7FFFFFFF, nsec=0xFFFFFFFF)
    return [
        Qos(
            history=QosHistory.KEEP_LAST,
            depth=1 if transient_local else 10,
            reliability=QosReliability.RELIABLE,
            durability=(
                QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE
            ),
            deadline=never,
            lifespan=never,
            liveliness=QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=never,
            avoid_ros_namespace_conventions=False,
        )
    ]


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(output: Path) -> None:
    """Remove the staging directories ``.<name>.partial-<pid>`` of ``output`` left by runs whose
    process no longer lives (killed conversions); a live run's is left alone."""
    prefix = f".{output.name}.partial-"
    for path in output.parent.glob(prefix + "*"):
        pid = path.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            LOGGER.info("removing %s, left by a conversion that no longer runs", path)
            shutil.rmtree(path, ignore_errors=True)


def write_bag(
    output: Path,
    events: Sequence[BagEvent],
    store: Any,
    topic_type: Callable[[str], str],
    *,
    storage: Literal["mcap", "sqlite3"] = "mcap",
    latched: frozenset[str] = frozenset({TF_STATIC_TOPIC}),
    progress: bool = False,
) -> dict[str, int]:
    """Write ``events`` (already in order) as the bag ``output``, atomically (module docstring).

    Args:
        output: bag directory to create; its parent is created.
        events: the messages.
        store: the typestore the messages are built with.
        topic_type: message type of a topic (``"sensor_msgs/msg/Image"``).
        storage: ``mcap`` or ``sqlite3``.
        latched: topics offered transient local.
        progress: show a progress bar.

    Returns:
        ``{topic: message count}``, sorted by topic.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(output)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    bag_dir = staging / output.name
    counts: Counter[str] = Counter()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    try:
        with Writer(bag_dir, version=8, storage_plugin=plugin) as writer:
            connections: dict[str, Any] = {}
            iterator: Any = tqdm(events, desc=output.name, unit="msg") if progress else events
            for event in iterator:
                if event.topic not in connections:
                    connections[event.topic] = writer.add_connection(
                        event.topic, topic_type(event.topic), typestore=store,
                        offered_qos_profiles=qos(event.topic in latched),
                    )
                data = store.serialize_cdr(event.build(), topic_type(event.topic))
                writer.write(connections[event.topic], event.stamp_ns, data)
                counts[event.topic] += 1
        os.replace(bag_dir, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOGGER.info("wrote %s: %d messages on %d topics", output, sum(counts.values()), len(counts))
    return dict(sorted(counts.items()))
