"""The lifecycle node machinery shared by the detector and the pose estimator.

:class:`EstimatorNode` is glue only: parameters (:mod:`epropnp_ros.params`) -> pipeline
(:mod:`epropnp_ros.pipeline`) -> messages. ``on_configure`` loads the model (never random
weights) and creates the publishers, ``on_activate`` the subscriptions and the worker thread.
The executor thread only pairs image and camera info by stamp (:mod:`epropnp_ros.pairing`)
into a single-slot mailbox; the worker takes the newest frame (stale ones are dropped and
counted), so a slow model never blocks the executor.

Path of one frame (worker thread, :meth:`EstimatorNode.process_frame`):

1. :mod:`~epropnp_ros.images` decodes the image, :mod:`~epropnp_ros.camera_model` validates
   the CameraInfo; :func:`~epropnp_ros.pipeline.intrinsics_from_camera` makes its intrinsics.
2. The pipeline checks the image against them, runs the network and solves the poses.
3. :mod:`~epropnp_ros.detections` and :mod:`~epropnp_ros.poses` build the Detection3DArray,
   the best PoseWithCovarianceStamped, the PoseArray of samples and the TF message;
   :mod:`~epropnp_ros.markers` builds the MarkerArray in one batched call. All carry the
   image's header.

Topics (relative: remap them): in ``image`` (or ``<image>/compressed``: remapping ``image``
moves it too), ``camera_info``
(sensor-data QoS, overridable with ``qos_overrides.<topic>.subscription.<policy>``); out
``detections``, ``objects`` (``autoware_perception_msgs/DetectedObjects``: the same objects
with their velocity, :mod:`epropnp_ros.autoware`), ``detection_attributes`` (the detector),
``pose``, ``pose_samples``, ``markers``, ``/tf`` (parameter ``publish_tf``),
``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``, one status named after the node, in
every lifecycle state: :mod:`epropnp_ros.nodes.diagnostics`; level rules and keys in
:mod:`epropnp_ros.health`). Bad input never
stops the node: each case is counted in the diagnostics and logged at most every
``warn_throttle`` seconds per kind; the next good frame is processed.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar

import numpy as np
import torch
from autoware_perception_msgs.msg import DetectedObjects
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.timer import Timer
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Classification, Detection3DArray
from visualization_msgs.msg import MarkerArray

from epropnp_ros.autoware import attribute_classification, detected_objects
from epropnp_ros.camera_model import CameraModel, camera_info_to_model
from epropnp_ros.detections import ObjectPose3D, detection3d_array, tf_message
from epropnp_ros.errors import (
    ConversionError,
    ImageSizeError,
    ImageTooLargeError,
    PipelineInputError,
)
from epropnp_ros.health import Snapshot
from epropnp_ros.images import check_image_size, compressed_to_rgb, image_to_rgb
from epropnp_ros.markers import MarkerStyle, detection_markers
from epropnp_ros.messages import stamp_to_ns
from epropnp_ros.nodes.diagnostics import DIAGNOSTICS_QOS, LATENCY_WINDOW, NodeDiagnostics
from epropnp_ros.pairing import LatestSlot, Pair, StampPairer
from epropnp_ros.params import CommonParams, param_specs, params_from_values, validate_change
from epropnp_ros.pipeline import Intrinsics, ObjectEstimates, intrinsics_from_camera
from epropnp_ros.poses import pose_array, pose_with_covariance_stamped

ParamsT = TypeVar("ParamsT", bound=CommonParams)
PipelineT = TypeVar("PipelineT")
OutputT = TypeVar("OutputT", bound=ObjectEstimates)

#: Output topics' QoS: reliable, volatile, a few messages deep.
OUTPUT_QOS = QoSProfile(
    depth=5, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)
#: ``/tf`` QoS of tf2_ros's broadcaster (reliable, volatile, depth 100).
TF_QOS = QoSProfile(
    depth=100, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
#: Images (and camera infos) that may wait for their partner; the time bound is the
#: ``camera_info_max_delay`` parameter (at 30 Hz, 3 s of images).
PAIRING_MAX_PENDING = 96


class PublishedPoses(Protocol):
    """Poses of ``M`` published objects: ``pose (M, dim)``, ``covariance (M, D, D)``,
    ``samples (M, S, dim)``, ``scores (M,)`` (e.g. :class:`ObjectEstimates`)."""

    @property
    def pose(self) -> np.ndarray: ...

    @property
    def covariance(self) -> np.ndarray: ...

    @property
    def samples(self) -> np.ndarray: ...

    @property
    def scores(self) -> np.ndarray: ...


class Frame(NamedTuple):
    """A paired frame waiting for the worker.

    Attributes:
        image: the image message (``Image`` or ``CompressedImage``).
        info: the ``CameraInfo`` paired with it.
        received: ``time.monotonic()`` when the image arrived (latency reference).
    """

    image: Any
    info: Any
    received: float


class EstimatorNode(LifecycleNode, NodeDiagnostics, ABC, Generic[ParamsT, PipelineT, OutputT]):
    """Base of the detector and pose-estimator lifecycle nodes (see the module docstring).

    Subclasses set :attr:`PARAMS` and :attr:`CHECKPOINT_KIND` and implement
    :meth:`load_pipeline`, :meth:`apply_live_params`, :meth:`run_pipeline`, :meth:`objects`
    (and optionally :meth:`create_extra_inputs`, :meth:`marker_class_names`). A node with
    other inputs (the rig detector: many cameras, capture slots) replaces
    :meth:`create_inputs`, :meth:`process_item` and :meth:`inputs_stopped`, and publishes
    through :meth:`publish_objects`.

    Args:
        node_name: the node's default name.
        **kwargs: passed to ``LifecycleNode`` (e.g. ``context``, ``parameter_overrides``).
    """

    PARAMS: ClassVar[type[CommonParams]]
    #: Whether the node publishes ``detection_attributes`` (its objects carry attributes).
    PUBLISHES_ATTRIBUTES: ClassVar[bool] = False
    #: What the ``checkpoint`` parameter must name (for the error when it is empty).
    CHECKPOINT_KIND: ClassVar[str]

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._specs = {s.name: s for s in param_specs(self.PARAMS)}
        for spec in self._specs.values():
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            self.declare_parameter(spec.name, default, spec.descriptor())
        self.params: ParamsT = self._read_params()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)

        self.pipeline: PipelineT | None = None
        self._lock = threading.Lock()
        self._slot: LatestSlot[Any] = LatestSlot()
        self._slot.close()
        self._pairer: StampPairer[tuple[Any, float], Any] | None = None
        self._paired_seen = self._unpaired_seen = self._infos_unpaired_seen = 0
        self._worker: threading.Thread | None = None
        self._inputs: list[Any] = []
        self._outputs: dict[str, Any] = {}
        self._lc_state = "unconfigured"
        self._configure_failed = False
        self._consecutive_failures = 0
        self._last_input = time.monotonic()
        self._history: deque[tuple[float, Snapshot]] = deque()
        self._warned: dict[str, float] = {}
        self._latency_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._last_timings: dict[str, float] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "images_received", "camera_infos_received", "frames_paired", "frames_processed",
                "frames_dropped_stale", "images_unpaired", "camera_infos_unpaired",
                "bad_image", "image_too_large", "bad_camera_info", "size_mismatch",
                "pipeline_errors",
                "failed_solves", "objects_published",
            ),
            0,
        )
        # Diagnostics go out in every lifecycle state (a failed configure is an ERROR status).
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self._diag_timer = self.create_timer(
            self.params.diagnostics_period, self.publish_diagnostics
        )

    # --- to implement --------------------------------------------------------------------
    @abstractmethod
    def load_pipeline(self, params: ParamsT) -> PipelineT:
        """Build the pipeline from ``params.checkpoint`` (not empty; raise with a clear message
        when the model cannot load)."""

    @abstractmethod
    def apply_live_params(self, pipeline: PipelineT, params: ParamsT) -> None:
        """Push live parameters into the pipeline (called after every accepted change)."""

    @abstractmethod
    def run_pipeline(
        self, pipeline: PipelineT, rgb: np.ndarray, intrinsics: Intrinsics, header: Header,
        params: ParamsT,
    ) -> OutputT:
        """Run the pipeline on one decoded frame."""

    @abstractmethod
    def objects(self, output: OutputT) -> list[ObjectPose3D]:
        """The published objects of a pipeline output."""

    def create_extra_inputs(self, params: ParamsT) -> list[Any]:
        """Extra subscriptions created in ``on_activate`` (e.g. regions of interest)."""
        return []

    def create_inputs(self, params: ParamsT) -> list[Any]:
        """The subscriptions (and timers) created in ``on_activate``, destroyed when the inputs
        stop: by default one camera's image and camera info, paired by stamp into
        :class:`Frame` items for :meth:`process_item`, and :meth:`create_extra_inputs`."""
        self._pairer = StampPairer(
            tolerance_ns=round(params.pairing_tolerance * 1e9),
            latest_info=params.use_latest_camera_info,
            max_pending=PAIRING_MAX_PENDING,
            max_wait_ns=round(params.camera_info_max_delay * 1e9),
        )
        self._paired_seen = self._unpaired_seen = self._infos_unpaired_seen = 0
        overrides = QoSOverridingOptions.with_default_policies
        if params.image_transport == "compressed":
            # image_transport's convention: <image topic>/compressed, so that a remap of
            # ``image`` moves the compressed topic too (an explicit ``image/compressed`` remap
            # still applies).
            image_sub = self.create_subscription(
                CompressedImage, self.resolve_topic_name("image") + "/compressed",
                self._on_image, qos_profile_sensor_data, qos_overriding_options=overrides(),
            )
        else:
            image_sub = self.create_subscription(
                Image, "image", self._on_image, qos_profile_sensor_data,
                qos_overriding_options=overrides(),
            )
        info_sub = self.create_subscription(
            CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data,
            qos_overriding_options=overrides(),
        )
        return [image_sub, info_sub, *self.create_extra_inputs(params)]

    def process_item(self, item: Any) -> None:
        """Process one item the worker took from the newest-item slot (default: a paired
        :class:`Frame`, :meth:`process_frame`)."""
        self.process_frame(item)

    def inputs_stopped(self) -> None:
        """Called after the inputs stopped and the worker ended: drop (and count) what waits
        in the pairer."""
        if self._pairer is not None:
            self._pairer.clear()
            self._sync_pairing_counters(warn=False)

    def marker_class_names(self) -> tuple[str, ...]:
        """Class order of the marker palette."""
        return ()

    # --- parameters ----------------------------------------------------------------------
    def _value(self, name: str) -> Any:
        value = self.get_parameter(name).value
        return list(value) if isinstance(self._specs[name].default, tuple) else value

    def _read_params(self) -> ParamsT:
        values = {name: self._value(name) for name in self._specs}
        params = params_from_values(self.PARAMS, values, where=f"node {self.get_name()!r}")
        return params  # type: ignore[return-value]

    def _on_set_parameters(self, parameters: Sequence[Parameter[Any]]) -> SetParametersResult:
        changes = {
            p.name: list(p.value) if p.name in self._specs
            and isinstance(self._specs[p.name].default, tuple) else p.value
            for p in parameters
        }
        reason = validate_change(self.params, changes)
        if reason is not None:
            self.get_logger().warning(f"rejected parameter change: {reason}")
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, parameters: Sequence[Parameter[Any]]) -> None:
        if not any(p.name in self._specs for p in parameters):
            return
        self.params = self._read_params()
        if self.pipeline is not None:
            self.apply_live_params(self.pipeline, self.params)

    # --- lifecycle -----------------------------------------------------------------------
    def _load(self, params: ParamsT) -> PipelineT:
        if not params.checkpoint:
            raise FileNotFoundError(
                f"parameter 'checkpoint' is empty: set it to a {self.CHECKPOINT_KIND} "
                "checkpoint (the node never runs with random weights)"
            )
        return self.load_pipeline(params)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self.params = self._read_params()
        if params.torch_threads > 0:
            torch.set_num_threads(params.torch_threads)
        try:
            self.pipeline = self._load(params)
        except Exception as exc:  # any load failure fails the transition
            self.get_logger().error(f"configure failed: cannot load the model: {exc}")
            self.pipeline = None
            self._configure_failed = True
            return TransitionCallbackReturn.FAILURE
        self._configure_failed = False
        pubs = self._outputs
        outputs: list[tuple[str, type]] = [
            ("detections", Detection3DArray), ("objects", DetectedObjects),
            ("pose", PoseWithCovarianceStamped), ("pose_samples", PoseArray),
            ("markers", MarkerArray),
        ]
        if self.PUBLISHES_ATTRIBUTES:
            outputs.append(("detection_attributes", Classification))
        for name, msg_type in outputs:
            pubs[name] = self.create_lifecycle_publisher(
                msg_type, name, OUTPUT_QOS,
                qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            )
        if params.publish_tf:
            pubs["tf"] = self.create_lifecycle_publisher(TFMessage, "/tf", TF_QOS)
        self._lc_state = "inactive"
        # The model, torch and the message modules are hundreds of thousands of long-lived
        # objects; every frame allocates thousands of message objects, and each full garbage
        # collection would walk them all (a latency spike every few frames). Freeze them out
        # of the collector (the frame's own garbage is still collected).
        gc.collect()
        gc.freeze()
        self.get_logger().info(f"configured ({type(self.pipeline).__name__} on {params.device})")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._inputs = self.create_inputs(self.params)
        self._last_input = time.monotonic()
        self._consecutive_failures = 0
        self._slot.reopen()
        self._worker = threading.Thread(target=self._work, name="epropnp-inference", daemon=True)
        self._worker.start()
        self._lc_state = "active"
        self.get_logger().info("activated")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._lc_state = "inactive"
        self.get_logger().info("deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._lc_state = "unconfigured"
        self.get_logger().info("cleaned up")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        self._lc_state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_inputs()
        self._release()
        self._lc_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_inputs(self) -> None:
        for entity in self._inputs:
            if isinstance(entity, Timer):
                self.destroy_timer(entity)
            else:
                self.destroy_subscription(entity)
        self._inputs = []
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            if self._worker.is_alive():
                self.get_logger().error("inference worker did not stop within 30 s")
            self._worker = None
        # Frames waiting in the slot or the pairer are dropped, and counted as such.
        self.counters["frames_dropped_stale"] = self._slot.dropped
        self.inputs_stopped()

    def _release(self) -> None:
        for pub in self._outputs.values():
            self.destroy_lifecycle_publisher(pub)
        self._outputs = {}
        self.pipeline = None
        gc.unfreeze()  # the released model may sit in reference cycles: let them be collected

    @property
    def lifecycle_state(self) -> str:
        """Label of the current lifecycle state, as this node tracks it."""
        return self._lc_state

    # --- input callbacks (executor thread) -----------------------------------------------
    def _on_image(self, msg: Any) -> None:
        pairer = self._pairer
        if pairer is None:
            return
        if not self.admit_image(msg):
            return
        pair = pairer.add_image(stamp_to_ns(msg.header.stamp), (msg, time.monotonic()))
        self._sync_pairing_counters()
        if pair is not None:
            self._offer(pair)

    def admit_image(self, msg: Any) -> bool:
        """Count an arriving image; ``False`` (counted as ``image_too_large``, warned) for one
        over ``max_image_pixels``, refused before it waits for pairing or is decoded (a
        compressed one by its header; an unreadable header is left to the decode, which says
        why)."""
        self.counters["images_received"] += 1
        self._last_input = time.monotonic()
        try:
            check_image_size(msg, self.params.max_image_pixels)
        except ImageTooLargeError as exc:
            self.counters["image_too_large"] += 1
            self.warn("image_too_large", f"skipping image: {exc}")
            return False
        except ConversionError:
            pass
        return True

    def _on_camera_info(self, msg: Any) -> None:
        pairer = self._pairer
        if pairer is None:
            return
        self.counters["camera_infos_received"] += 1
        pair = pairer.add_info(stamp_to_ns(msg.header.stamp), msg)
        self._sync_pairing_counters()
        if pair is not None:
            self._offer(pair)

    def _sync_pairing_counters(self, warn: bool = True) -> None:
        if self._pairer is None:
            return
        c = self._pairer.counters
        new_unpaired = c.images_unpaired - self._unpaired_seen
        self._unpaired_seen = c.images_unpaired
        self.counters["frames_paired"] += c.paired - self._paired_seen
        self._paired_seen = c.paired
        self.counters["images_unpaired"] += new_unpaired
        self.counters["camera_infos_unpaired"] += c.infos_unpaired - self._infos_unpaired_seen
        self._infos_unpaired_seen = c.infos_unpaired
        if warn and new_unpaired > 0:
            self.warn(
                "no_camera_info",
                f"{new_unpaired} image(s) dropped without a CameraInfo of the same stamp "
                f"(pairing_tolerance={self.params.pairing_tolerance} s); is 'camera_info' "
                "published?",
            )

    def _offer(self, pair: Pair[tuple[Any, float], Any]) -> None:
        (image, received), info = pair.image, pair.info
        self._slot.put(Frame(image, info, received))
        # The slot's drop count changes only in this (executor) thread: put, close.
        self.counters["frames_dropped_stale"] = self._slot.dropped

    # --- worker thread -------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            frame = self._slot.take(timeout=None)
            if frame is None:
                return
            try:
                self.process_item(frame)
                self._consecutive_failures = 0
            except Exception as exc:  # the worker must survive anything
                if not self.context.ok():
                    return  # shutting down (Ctrl-C): publishing fails, nothing to report
                self.counters["pipeline_errors"] += 1
                self._consecutive_failures += 1
                self.warn("pipeline_error", f"frame failed: {type(exc).__name__}: {exc}",
                          level=logging.ERROR)

    def process_frame(self, frame: Frame) -> None:
        """Decode, validate, run the model and publish one paired frame (worker thread; the
        path of one frame in the module docstring)."""
        pipeline, params = self.pipeline, self.params
        if pipeline is None:
            raise RuntimeError("no pipeline: the node is not configured")
        decoded = self._decode(frame)
        if decoded is None:
            return
        rgb, camera = decoded
        header = Header(frame_id=frame.image.header.frame_id or camera.frame_id,
                        stamp=frame.image.header.stamp)
        try:
            intrinsics = intrinsics_from_camera(camera, params.rectified)
            output = self.run_pipeline(pipeline, rgb, intrinsics, header, params)
        except (PipelineInputError, ConversionError) as exc:
            self._refused(exc)
            return
        start = time.monotonic()
        self.publish(header, output, params)
        end = time.monotonic()
        with self._lock:
            self._latency_ms.append(1000.0 * (end - frame.received))
            self._last_timings = dict(output.timings, publish=1000.0 * (end - start))
        self.counters["frames_processed"] += 1
        self.counters["failed_solves"] += int(output.num_failed)

    def decode_pixels(self, frame: Frame) -> np.ndarray | ConversionError:
        """The frame's ``(H, W, 3) uint8`` RGB pixels, or the reason they cannot be read (no
        side effect: safe to call from several threads)."""
        try:
            limit = self.params.max_image_pixels
            if isinstance(frame.image, CompressedImage):
                return compressed_to_rgb(frame.image, limit)
            return image_to_rgb(frame.image, limit)
        except ConversionError as exc:
            return exc

    def _decode(self, frame: Frame, pixels: np.ndarray | ConversionError | None = None
                ) -> tuple[np.ndarray, CameraModel] | None:
        """``(rgb (H, W, 3) uint8, camera)`` of a frame, or ``None`` (counted and warned) when
        the image or its CameraInfo cannot be read; ``pixels``: :meth:`decode_pixels` of the
        frame when done already."""
        rgb = self.decode_pixels(frame) if pixels is None else pixels
        if isinstance(rgb, ConversionError):
            self.counters["bad_image"] += 1
            self.warn("bad_image", f"skipping image: {rgb}")
            return None
        try:
            camera = camera_info_to_model(frame.info)
        except ConversionError as exc:
            self.counters["bad_camera_info"] += 1
            self.warn("bad_camera_info", f"skipping frame, invalid CameraInfo: {exc}")
            return None
        return rgb, camera

    def _refused(self, exc: Exception) -> None:
        """Count and warn about a frame the pipeline refused: an image of another size than
        its calibration as ``size_mismatch``, any other refusal as ``bad_image``."""
        if isinstance(exc, ImageSizeError):
            self.counters["size_mismatch"] += 1
            self.warn("size_mismatch", f"skipping frame: {exc}")
        else:
            self.counters["bad_image"] += 1
            self.warn("bad_input", f"skipping frame: {exc}")

    def publish(self, header: Header, output: OutputT, params: ParamsT) -> None:
        """Publish every output message of one frame (all with ``header``)."""
        if self._outputs:
            self.publish_objects(header, self.objects(output), output, params)

    def publish_objects(
        self, header: Header, objects: list[ObjectPose3D], output: PublishedPoses,
        params: ParamsT,
    ) -> None:
        """Publish ``objects`` and their poses, covariances and samples ``output`` (one frame's
        or one fused slot's; all with ``header``)."""
        pubs = self._outputs
        pubs["detections"].publish(detection3d_array(header, objects))
        pubs["objects"].publish(detected_objects(header, objects))
        if "detection_attributes" in pubs:
            pubs["detection_attributes"].publish(attribute_classification(header, objects))
        if objects:
            best = int(np.argmax(output.scores))
            pubs["pose"].publish(
                pose_with_covariance_stamped(header, output.pose[best], output.covariance[best])
            )
        samples = output.samples
        pubs["pose_samples"].publish(pose_array(header, samples.reshape(-1, samples.shape[-1])))
        if params.publish_markers:
            style = MarkerStyle(lifetime_s=params.marker_lifetime,
                                class_names=self.marker_class_names())
            per_object = list(samples) if samples.shape[1] else None
            pubs["markers"].publish(detection_markers(header, objects, per_object, style))
        if "tf" in pubs and objects:
            pubs["tf"].publish(
                tf_message(header, objects, child_frame_prefix=params.tf_child_prefix)
            )
        self.counters["objects_published"] += len(objects)
