"""``rig_detector`` lifecycle node: the detector for a whole camera rig, fused in one frame.

One model in memory for ``N`` cameras (parameter ``cameras``: namespaces ``<ns>``, each giving
``<ns>/image_raw`` or ``<ns>/image_raw/compressed`` and ``<ns>/camera_info``). Per camera the
executor pairs image and camera info by stamp (:class:`~epropnp_ros.pairing.StampPairer`); the
pairs of one capture cycle form a slot (:mod:`epropnp_ros.capture`), handed to the worker when
every camera arrived or at ``slot_deadline`` (a timer), the newest slot winning under load.

Path of one slot (worker thread, :meth:`RigDetectorNode.process_item`):

1. each frame is decoded and checked (bad input: counted, warned, that camera left out), and
   its transform ``target_frame`` <- camera frame looked up at the image stamp in the node's
   TF buffer (:mod:`epropnp_ros.tf_buffer`, fed by ``/tf_static`` and ``/tf``); a camera
   without a transform is counted (``missing_transform``), warned about, and its detections are
   not fused (never published in a wrong frame);
2. one batched network forward and one PnP solve over every query of the slot's images
   (:meth:`~epropnp_ros.detector_pipeline.DetectorPipeline.process_batch`);
3. detections, covariances and samples moved into ``target_frame`` and fused with a
   class-aware bird's-eye-view NMS across cameras (:mod:`epropnp_ros.fusion`);
4. published with header (``target_frame``, the slot's stamp): ``detections``
   (Detection3DArray, covariance filled), ``pose``, ``pose_samples``, ``markers``
   (and ``/tf``), as the single-camera detector; with ``per_camera_outputs`` also each camera's
   detections and posterior samples in its optical frame on ``<ns>/detections`` and
   ``<ns>/pose_samples``.

Parameters: :class:`epropnp_ros.params.RigDetectorParams` (``config/rig.yaml``). Everything
else (lifecycle, worker, throttled warnings, counters, diagnostics) is
:class:`~epropnp_ros.nodes.base.EstimatorNode`'s; :meth:`RigDetectorNode.diagnostics` adds the
rig's counters per camera.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple, cast

import numpy as np
from geometry_msgs.msg import PoseArray
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from epropnp_lib.data.nuscenes import NUSCENES_ATTRIBUTES
from epropnp_lib.geometry.rigid import RigidTransform
from epropnp_ros.capture import CaptureSlot, SlotAssembler
from epropnp_ros.detections import detection3d_array
from epropnp_ros.errors import ConversionError, PipelineInputError, TransformLookupError
from epropnp_ros.fusion import fuse, fused_objects, to_target_frame
from epropnp_ros.health import Snapshot
from epropnp_ros.messages import ns_to_stamp, stamp_to_ns
from epropnp_ros.nodes.base import OUTPUT_QOS, PAIRING_MAX_PENDING, TF_QOS, Frame
from epropnp_ros.nodes.detector import DetectorNode
from epropnp_ros.nodes.runner import run
from epropnp_ros.pairing import Pair, StampPairer
from epropnp_ros.params import RigDetectorParams
from epropnp_ros.pipeline import Intrinsics, check_image, intrinsics_from_camera
from epropnp_ros.poses import pose_array
from epropnp_ros.tf_buffer import TransformBuffer

NODE_NAME = "rig_detector"
#: Threads decoding a slot's images (the machines this runs on have a few cores).
DECODE_THREADS = 2

#: ``/tf_static`` QoS of tf2_ros's static listener (reliable, transient local, depth 100).
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Counters of each camera (diagnostics ``rig.cameras.<ns>``).
CAMERA_COUNTERS = ("images_received", "camera_infos_received", "frames_paired",
                   "images_unpaired", "frames_late", "frames_silent", "frames_replaced",
                   "missing_transform", "frames_skipped")


class _Input(NamedTuple):
    """One camera's frame of a slot, decoded and checked."""

    camera: int
    rgb: np.ndarray
    intrinsics: Intrinsics
    header: Header
    transform: RigidTransform | None


class RigDetectorNode(DetectorNode):
    """The rig detector lifecycle node (module docstring); ``**kwargs`` go to
    :class:`~epropnp_ros.nodes.base.EstimatorNode`."""

    PARAMS = RigDetectorParams

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.tf_buffer = TransformBuffer()
        #: Decodes a slot's images in parallel (created with the node, shut down with it).
        self._decoder = ThreadPoolExecutor(max_workers=DECODE_THREADS,
                                           thread_name_prefix="epropnp-decode")
        self._cameras: tuple[str, ...] = ()
        self._pairers: list[StampPairer[tuple[Any, float], Any]] = []
        self._camera_seen: list[tuple[int, int]] = []  # (paired, unpaired) synced per camera
        self._assembler: SlotAssembler[Frame] | None = None
        self.camera_counters: dict[str, dict[str, int]] = {}
        self.counters.update(dict.fromkeys(
            ("slots_processed", "slots_complete", "slots_expired", "slots_dropped",
             "frames_late", "frames_silent", "missing_transform", "tf_rejected"), 0))

    def destroy_node(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)
        super().destroy_node()

    @property
    def rig_params(self) -> RigDetectorParams:
        """The node's parameters (:class:`~epropnp_ros.params.RigDetectorParams`)."""
        return cast(RigDetectorParams, self.params)

    # --- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_configure(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        p = self.rig_params
        self._cameras = p.cameras
        self.camera_counters = {ns: dict.fromkeys(CAMERA_COUNTERS, 0) for ns in p.cameras}
        self.tf_buffer = TransformBuffer(cache_time=p.tf_cache_time, tolerance=p.tf_tolerance)
        if p.per_camera_outputs:
            for i, ns in enumerate(p.cameras):
                for key, msg_type, topic in ((f"camera{i}", Detection3DArray, "detections"),
                                             (f"camera{i}_samples", PoseArray, "pose_samples")):
                    self._outputs[key] = self.create_lifecycle_publisher(
                        msg_type, f"{ns}/{topic}", OUTPUT_QOS,
                        qos_overriding_options=QoSOverridingOptions.with_default_policies(),
                    )
        self.get_logger().info(
            f"rig of {len(p.cameras)} cameras ({', '.join(p.cameras)}) fused in "
            f"{p.target_frame!r}")
        return result

    def create_inputs(self, params: Any) -> list[Any]:
        p = cast(RigDetectorParams, params)
        n = len(self._cameras)
        self._pairers = [
            StampPairer(tolerance_ns=round(p.pairing_tolerance * 1e9),
                        latest_info=p.use_latest_camera_info, max_pending=PAIRING_MAX_PENDING,
                        max_wait_ns=round(p.camera_info_max_delay * 1e9))
            for _ in range(n)
        ]
        self._camera_seen = [(0, 0)] * n
        self._assembler = SlotAssembler(n, round(p.slot_tolerance * 1e9), p.slot_deadline)
        overrides = QoSOverridingOptions.with_default_policies
        inputs: list[Any] = []
        for i, ns in enumerate(self._cameras):
            if p.image_transport == "compressed":
                image_type, topic = CompressedImage, f"{ns}/image_raw/compressed"
            else:
                image_type, topic = Image, f"{ns}/image_raw"
            inputs.append(self.create_subscription(
                image_type, topic, partial(self._on_rig_image, i), qos_profile_sensor_data,
                qos_overriding_options=overrides()))
            inputs.append(self.create_subscription(
                CameraInfo, f"{ns}/camera_info", partial(self._on_rig_info, i),
                qos_profile_sensor_data, qos_overriding_options=overrides()))
        inputs.append(self.create_subscription(
            TFMessage, "/tf_static", partial(self._on_tf, True), TF_STATIC_QOS))
        inputs.append(self.create_subscription(
            TFMessage, "/tf", partial(self._on_tf, False), TF_QOS))
        period = min(max(p.slot_deadline / 4.0, 0.005), 0.05)
        inputs.append(self.create_timer(period, self._expire_slots))
        return inputs

    def inputs_stopped(self) -> None:
        for i, pairer in enumerate(self._pairers):
            pairer.clear()
            self._sync_camera_pairing(i)
        if self._assembler is not None:
            self._assembler.clear()
            self._sync_slot_counters()

    # --- input callbacks (executor thread) -----------------------------------------------
    def _camera(self, i: int) -> dict[str, int]:
        return self.camera_counters[self._cameras[i]]

    def _on_rig_image(self, i: int, msg: Any) -> None:
        if i >= len(self._pairers):
            return
        self._camera(i)["images_received"] += 1
        if not self.admit_image(msg):
            return
        pair = self._pairers[i].add_image(stamp_to_ns(msg.header.stamp), (msg, time.monotonic()))
        self._sync_camera_pairing(i)
        if pair is not None:
            self._assemble(i, pair)

    def _on_rig_info(self, i: int, msg: Any) -> None:
        if i >= len(self._pairers):
            return
        self.counters["camera_infos_received"] += 1
        self._camera(i)["camera_infos_received"] += 1
        pair = self._pairers[i].add_info(stamp_to_ns(msg.header.stamp), msg)
        self._sync_camera_pairing(i)
        if pair is not None:
            self._assemble(i, pair)

    def _on_tf(self, static: bool, msg: Any) -> None:
        self.tf_buffer.add_message(msg, static)
        self.counters["tf_rejected"] = self.tf_buffer.rejected

    def _sync_camera_pairing(self, i: int) -> None:
        c = self._pairers[i].counters
        seen_paired, seen_unpaired = self._camera_seen[i]
        self._camera_seen[i] = (c.paired, c.images_unpaired)
        new_paired, new_unpaired = c.paired - seen_paired, c.images_unpaired - seen_unpaired
        cam = self._camera(i)
        cam["frames_paired"] += new_paired
        cam["images_unpaired"] += new_unpaired
        self.counters["frames_paired"] += new_paired
        self.counters["images_unpaired"] += new_unpaired
        if new_unpaired > 0:
            self.warn("no_camera_info",
                      f"camera {self._cameras[i]}: {new_unpaired} image(s) dropped without a "
                      f"CameraInfo of the same stamp (pairing_tolerance="
                      f"{self.params.pairing_tolerance} s)")

    def _assemble(self, i: int, pair: Pair[tuple[Any, float], Any]) -> None:
        if self._assembler is None:
            return
        (image, received), info = pair.image, pair.info
        for slot in self._assembler.add(i, pair.stamp_ns, Frame(image, info, received),
                                        time.monotonic()):
            self._offer_slot(slot)
        self._sync_slot_counters()

    def _expire_slots(self) -> None:
        if self._assembler is None:
            return
        for slot in self._assembler.expire(time.monotonic()):
            self._offer_slot(slot)
        self._sync_slot_counters()

    def _offer_slot(self, slot: CaptureSlot[Frame]) -> None:
        self._slot.put(slot)
        if not slot.complete:
            silent = ", ".join(self._cameras[i] for i in slot.missing)
            self.warn("slots_expired",
                      f"slot {slot.stamp_ns} ns processed at the deadline "
                      f"({self.rig_params.slot_deadline} s) without {silent}")

    def _sync_slot_counters(self) -> None:
        if self._assembler is None:
            return
        c = self._assembler.counters
        for i, ns in enumerate(self._cameras):
            cam = self.camera_counters[ns]
            cam["frames_late"], cam["frames_silent"] = c.late[i], c.silent[i]
            cam["frames_replaced"] = c.replaced[i]
        self.counters.update(
            slots_complete=c.complete, slots_expired=c.expired, frames_late=sum(c.late),
            frames_silent=sum(c.silent), frames_dropped_stale=self._slot.dropped,
            slots_dropped=c.superseded + self._slot.dropped,
        )

    # --- worker thread -------------------------------------------------------------------
    def process_item(self, item: Any) -> None:
        """Decode, look up the transforms, run the batched model, fuse and publish one slot
        (worker thread; the path of one slot in the module docstring)."""
        slot = cast(CaptureSlot[Frame], item)
        pipeline, p = self.pipeline, self.rig_params
        if pipeline is None:
            raise RuntimeError("no pipeline: the node is not configured")
        self.tf_buffer.tolerance_ns = round(p.tf_tolerance * 1e9)
        present = [(i, f) for i, f in enumerate(slot.frames) if f is not None]
        # The cameras' images decode in parallel (OpenCV releases the GIL).
        pixels = list(self._decoder.map(self.decode_pixels, [f for _, f in present]))
        inputs = [x for (i, f), px in zip(present, pixels, strict=True)
                  for x in [self._prepare(i, f, px, p)] if x is not None]
        outputs = pipeline.process_batch([x.rgb for x in inputs],
                                         [x.intrinsics for x in inputs])
        parts = [to_target_frame(out, x.transform, x.camera, NUSCENES_ATTRIBUTES)
                 for x, out in zip(inputs, outputs, strict=True) if x.transform is not None]
        # max_detections holds per image, as in the single-camera detector.
        fused = fuse(parts, p.fusion_nms_iou, p.max_detections * max(1, len(inputs)))
        header = Header(frame_id=p.target_frame, stamp=ns_to_stamp(slot.stamp_ns))
        start = time.monotonic()
        if self._outputs:
            self.publish_objects(header, fused_objects(fused), fused, p)
            for x, out in zip(inputs, outputs, strict=True):
                pub = self._outputs.get(f"camera{x.camera}")
                if pub is not None:
                    pub.publish(detection3d_array(x.header, self.objects(out)))
                    self._outputs[f"camera{x.camera}_samples"].publish(
                        pose_array(x.header, out.samples.reshape(-1, 4)))
        end = time.monotonic()
        received = min(f.received for f in slot.frames if f is not None)
        with self._lock:
            self._latency_ms.append(1000.0 * (end - received))
            timings = outputs[0].timings if outputs else {}
            self._last_timings = dict(timings, publish=1000.0 * (end - start))
        self.counters["frames_processed"] += len(inputs)
        self.counters["slots_processed"] += 1

    def _prepare(self, i: int, frame: Frame, pixels: np.ndarray | ConversionError,
                 p: RigDetectorParams) -> _Input | None:
        """Camera ``i``'s frame (its decoded ``pixels``) checked, with its transform into the
        target frame (``None`` where missing); ``None`` (counted, warned) when it cannot be used
        at all."""
        cam = self._camera(i)
        decoded = self._decode(frame, pixels)
        if decoded is None:
            cam["frames_skipped"] += 1
            return None
        rgb, camera = decoded
        header = Header(frame_id=frame.image.header.frame_id or camera.frame_id,
                        stamp=frame.image.header.stamp)
        try:
            intrinsics = intrinsics_from_camera(camera, p.rectified)
            check_image(rgb, intrinsics)
        except (PipelineInputError, ConversionError) as exc:
            cam["frames_skipped"] += 1
            self._refused(exc)
            return None
        transform = None
        try:
            transform = self.tf_buffer.wait_lookup(p.target_frame, header.frame_id,
                                                   stamp_to_ns(header.stamp), p.tf_timeout)
        except TransformLookupError as exc:
            cam["missing_transform"] += 1
            self.counters["missing_transform"] += 1
            self.warn("missing_transform",
                      f"camera {self._cameras[i]}: its detections are left out of the fused "
                      f"output: {exc}")
            if f"camera{i}" not in self._outputs:
                return None
        return _Input(i, rgb, intrinsics, header, transform)

    # --- diagnostics -----------------------------------------------------------------------
    def diagnostics(self) -> Snapshot:
        """:meth:`EstimatorNode.diagnostics <epropnp_ros.nodes.base.EstimatorNode.diagnostics>`
        (its ``counters`` also count slots processed / complete / expired / dropped, late and
        silent frames, missing transforms and refused TF entries) plus, as dotted keys,
        ``rig.target_frame``, ``rig.open_slots``, ``rig.tf_frames`` (the frames the TF buffer
        knows, comma-separated) and per camera namespace ``rig.cameras.<ns>.<counter>`` (images
        and camera infos received, frames paired, unpaired images, late, silent (absent from an
        emitted slot), replaced within a slot, missing transform, skipped as bad input)."""
        assembler = self._assembler
        extra = {
            "rig.target_frame": self.rig_params.target_frame,
            "rig.open_slots": str(assembler.open_slots() if assembler is not None else 0),
            "rig.tf_frames": ",".join(sorted(self.tf_buffer.frames())),
        }
        for ns, counters in self.camera_counters.items():
            extra.update({f"rig.cameras.{ns}.{k}": str(v) for k, v in counters.items()})
        return dataclasses.replace(super().diagnostics(), extra=extra)


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point ``rig_detector_node``: ``--ros-args --params-file config/rig.yaml``
    (``-p autostart:=true`` configures and activates at start-up)."""
    return run(lambda: RigDetectorNode(), args)


if __name__ == "__main__":
    sys.exit(main())
