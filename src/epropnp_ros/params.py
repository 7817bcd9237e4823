"""Node parameters: validated dataclasses and their ROS parameter descriptors (ROS-free core).

Each node's parameters are one frozen dataclass (:class:`DetectorParams`,
:class:`PoseEstimatorParams`). Every field carries its description and its allowed range or
choices in the field metadata; :func:`param_specs` turns them into :class:`ParamSpec` objects,
which the nodes declare with :meth:`ParamSpec.descriptor` (a ``rcl_interfaces/ParameterDescriptor``
with description, ``floating_point_range`` / ``integer_range`` and ``additional_constraints``).
``__post_init__`` rejects out-of-range values with :class:`~epropnp_lib.errors.ConfigError`;
the nodes call :func:`validate_change` from their set-parameters callback and return its reason
in the ``SetParametersResult``, so an out-of-range ``ros2 param set`` is refused with a reason.

Which parameters take effect when (documented in each description):

* load-time (``checkpoint``, ``device``, ``torch_threads``): read in ``on_configure``;
* subscription-time (topics' transport, pairing, QoS overrides): read in ``on_activate``;
* everything else is live: read for every frame.

ROS parameter types are strict: a float parameter must be written with a decimal point in YAML
(``0.0``, not ``0``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from epropnp_lib.dataclass_io import from_dict
from epropnp_lib.errors import ConfigError

ParamValue = bool | int | float | str | tuple[int, ...] | tuple[float, ...] | tuple[str, ...]
P = TypeVar("P", bound="CommonParams")

DEVICES = ("cpu", "cuda")
TRANSPORTS = ("raw", "compressed")


def _p(
    default: Any,
    description: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with the parameter's description and range in its metadata."""
    meta = {"description": description, "range": (lo, hi), "choices": choices}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamSpec:
    """One declared ROS parameter.

    Attributes:
        name: parameter name.
        default: default value (its Python type is the parameter type; tuples are arrays).
        description: what it does and when it takes effect.
        lo, hi: inclusive numeric range (``None``: unbounded on that side).
        choices: allowed string values (empty: any string).
    """

    name: str
    default: ParamValue
    description: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> str | None:
        """``None`` when ``value`` is allowed, else the reason why not."""
        if isinstance(self.default, bool):
            return None if isinstance(value, bool) else f"{self.name} must be a bool"
        if isinstance(self.default, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"{self.name} must be a number, got {value!r}"
            if isinstance(self.default, int) and not isinstance(value, int):
                return f"{self.name} must be an integer, got {value!r}"
            if not math.isfinite(value):
                return f"{self.name} must be finite, got {value!r}"
            if self.lo is not None and value < self.lo:
                return f"{self.name}={value!r} is below its minimum {self.lo!r}"
            if self.hi is not None and value > self.hi:
                return f"{self.name}={value!r} is above its maximum {self.hi!r}"
            return None
        if isinstance(self.default, str):
            if not isinstance(value, str):
                return f"{self.name} must be a string, got {value!r}"
            if self.choices and value not in self.choices:
                return f"{self.name}={value!r} is not one of {', '.join(self.choices)}"
            return None
        # arrays
        if not isinstance(value, Sequence) or isinstance(value, str):
            return f"{self.name} must be an array, got {value!r}"
        if self.default and isinstance(self.default[0], str):
            if not value or not all(isinstance(v, str) and v for v in value):
                return f"{self.name} must be a non-empty array of non-empty strings, got {value!r}"
            if len(set(value)) != len(value):
                return f"{self.name} must not repeat an entry, got {list(value)!r}"
            return None
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                return f"{self.name} must hold finite numbers, got {list(value)!r}"
            if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
                return f"{self.name} entries must lie in [{self.lo}, {self.hi}], got {v!r}"
        return None

    def descriptor(self) -> Any:
        """The ``rcl_interfaces/msg/ParameterDescriptor`` declaring this parameter (needs the
        ROS message packages; imported here so the rest of the module stays ROS-free)."""
        from rcl_interfaces.msg import (
            FloatingPointRange,
            IntegerRange,
            ParameterDescriptor,
        )

        desc = ParameterDescriptor(name=self.name, description=self.description)
        scalar_num = isinstance(self.default, int | float) and not isinstance(self.default, bool)
        if scalar_num and self.lo is not None and self.hi is not None:
            if isinstance(self.default, int):
                desc.integer_range = [
                    IntegerRange(from_value=int(self.lo), to_value=int(self.hi), step=1)
                ]
            else:
                desc.floating_point_range = [
                    FloatingPointRange(from_value=float(self.lo), to_value=float(self.hi), step=0.0)
                ]
        constraints = []
        if self.choices:
            constraints.append("one of: " + ", ".join(self.choices))
        if isinstance(self.default, tuple) and (self.lo is not None or self.hi is not None):
            constraints.append(f"each entry in [{self.lo}, {self.hi}]")
        if scalar_num and (self.lo is None) != (self.hi is None):
            constraints.append(f">= {self.lo}" if self.lo is not None else f"<= {self.hi}")
        desc.additional_constraints = "; ".join(constraints)
        return desc


@dataclass(frozen=True)
class CommonParams:
    """Parameters shared by the detector and the pose estimator (see each field's description)."""

    checkpoint: str = _p(
        "",
        "Path of the model checkpoint (epropnp_lib.nets.checkpoint format). Required: "
        "configure fails without a valid one (never random weights). Read in on_configure.",
    )
    device: str = _p(
        "cpu", "Inference device. Read in on_configure.", choices=DEVICES
    )
    torch_threads: int = _p(
        0, "torch intra-op threads on CPU (0: leave torch's default). Read in on_configure.",
        lo=0, hi=256,
    )
    autostart: bool = _p(
        False,
        "Console entry point only: configure and activate the lifecycle node at start-up "
        "(there is no lifecycle manager in a plain venv).",
    )
    image_transport: str = _p(
        "raw",
        "'raw': subscribe sensor_msgs/Image on 'image'; 'compressed': "
        "sensor_msgs/CompressedImage on '<image>/compressed' (image_transport's name: a remap of "
        "'image' moves it too). Read in on_activate.",
        choices=TRANSPORTS,
    )
    pairing_tolerance: float = _p(
        0.0,
        "Largest |stamp(CameraInfo) - stamp(Image)| in seconds for the two to pair (0: equal "
        "stamps). Read in on_activate.",
        lo=0.0, hi=1.0,
    )
    use_latest_camera_info: bool = _p(
        False,
        "Pair each image with the newest CameraInfo whatever its stamp (drivers that publish "
        "the calibration rarely). Read in on_activate.",
    )
    camera_info_max_delay: float = _p(
        3.0,
        "Longest time in seconds an image waits (by stamp, behind the newest image) for its "
        "CameraInfo, which DDS may deliver late; older unpaired images are dropped and counted. "
        "Read in on_activate.",
        lo=0.0, hi=30.0,
    )
    max_image_pixels: int = _p(
        16_777_216,
        "Largest width x height of an input image; larger ones (a compressed image by the size "
        "its header declares, before decoding) are refused and counted as image_too_large.",
        lo=1, hi=2**31 - 1,
    )
    rectified: bool = _p(
        False,
        "The images are rectified (image_proc's image_rect): their pixels already belong to "
        "the camera P, no distortion is applied. Otherwise (image_raw) the network's 2D points "
        "are undistorted with K and D. Poses are solved with P[:, :3] in both cases.",
    )
    num_posterior_samples: int = _p(
        32, "Equally-weighted pose samples per object on the 'pose_samples' PoseArray (0: none).",
        lo=0, hi=1024,
    )
    posterior_iterations: int = _p(
        2, "AMIS iterations the published samples are resampled from (K' = 128 samples each; "
        "training uses the paper's 4, publishing needs fewer).",
        lo=1, hi=8,
    )
    likelihood_temperature: float = _p(
        0.0,
        "Temperature T of the likelihood exp(-cost / T) the covariances and posterior samples "
        "are published from: the covariance is T times the Laplace covariance, the pose the "
        "same. 0.0: the calibration stored in the checkpoint (epropnp-detector-calibrate, "
        "epropnp-pose-calibrate; 1 without one).",
        lo=0.0, hi=1000.0,
    )
    publish_markers: bool = _p(True, "Publish the 'markers' MarkerArray.")
    publish_tf: bool = _p(
        False, "Broadcast one TF frame per object on /tf. Read in on_configure."
    )
    tf_child_prefix: str = _p(
        "epropnp_object_", "Prefix of the per-object TF child frame ids (followed by the index)."
    )
    marker_lifetime: float = _p(
        0.5, "Lifetime of the markers in seconds (0: forever).", lo=0.0, hi=60.0
    )
    diagnostics_period: float = _p(
        1.0, "Period in seconds of the node's status on '/diagnostics' (DiagnosticArray). Read "
        "at start-up.",
        lo=0.05, hi=60.0,
    )
    diagnostics_drop_warn_fraction: float = _p(
        0.5, "The status is WARN when more than this fraction of the images of the last 10 s "
        "were dropped (stale, unpaired, unreadable, refused or failed).",
        lo=0.0, hi=1.0,
    )
    diagnostics_input_timeout: float = _p(
        5.0, "The status of an active node is WARN after this many seconds without an image.",
        lo=0.1, hi=3600.0,
    )
    diagnostics_error_after_failures: int = _p(
        3, "The status is ERROR after this many consecutive frames failed in the pipeline.",
        lo=1, hi=1000,
    )
    warn_throttle: float = _p(
        5.0, "Least seconds between two warnings of the same kind (bad input).", lo=0.0, hi=3600.0
    )
    seed: int = _p(
        0, "Seed of the torch.Generator of the posterior sampling (reproducible output).",
        lo=0, hi=2**31 - 1,
    )

    def __post_init__(self) -> None:
        for spec in param_specs(type(self)):
            reason = spec.check(getattr(self, spec.name))
            if reason is not None:
                raise ConfigError(reason)


@dataclass(frozen=True)
class DetectorParams(CommonParams):
    """Parameters of the ``detector`` node (deformable correspondence network, 4DoF)."""

    num_posterior_samples: int = _p(
        64, "Equally-weighted pose samples per object on the 'pose_samples' PoseArray (0: none). "
        "The detector's heading posterior is often bimodal (front and back): 64 samples from "
        "4 AMIS iterations estimate it well enough for its calibration (models/README.md).",
        lo=0, hi=1024,
    )
    posterior_iterations: int = _p(
        4, "AMIS iterations the published samples are resampled from (K' = 128 samples each; "
        "the paper's 4).",
        lo=1, hi=8,
    )
    score_threshold: float = _p(
        0.15,
        "Least detection score (class score x 3D localisation score) that is published. "
        "0.15 suits the bundled demo detector (models/README.md); lower it when scoring.",
        lo=0.0, hi=1.0,
    )
    max_detections: int = _p(50, "Most detections published per image.", lo=1, hi=1000)
    input_scale: float = _p(
        0.0,
        "Resize factor applied to the image before the network (intrinsics scaled to match; "
        "< 1 trades accuracy for speed); 0: the checkpoint's own setting.",
        lo=0.0, hi=4.0,
    )


@dataclass(frozen=True)
class PoseEstimatorParams(CommonParams):
    """Parameters of the ``pose_estimator`` node (dense correspondence network, 6DoF)."""

    object_class: str = _p(
        "object", "class_id of the published hypotheses (the object the checkpoint was trained on)."
    )
    use_roi_topic: bool = _p(
        True,
        "Take regions of interest from the 'rois' vision_msgs/Detection2DArray (the newest one "
        "within roi_max_age of the image). Read in on_activate.",
    )
    roi_max_age: float = _p(
        0.5, "Largest age in seconds of a Detection2DArray relative to the image.", lo=0.0, hi=60.0
    )
    roi_class: str = _p(
        "", "Use only Detection2D results with this class_id ('' = any)."
    )
    default_roi: tuple[int, ...] = _p(
        (0, 0, 0, 0),
        "Region [x, y, width, height] in pixels used without a Detection2DArray "
        "([0, 0, 0, 0]: the whole image).",
        lo=0, hi=100000,
    )
    roi_padding: float = _p(
        0.0,
        "Scale of the region (about its centre) before cropping, >= 1; 0.0: the crop scale the "
        "checkpoint was trained with (stored in it; 1.5, the training default, when it is not).",
        lo=0.0, hi=4.0,
    )
    max_objects: int = _p(10, "Most regions processed per image.", lo=1, hi=100)
    min_score: float = _p(
        0.0, "Least Detection2D score of a region that is processed.", lo=0.0, hi=1.0
    )
    min_roi_size: int = _p(
        8, "Least width and height in pixels of a region that is processed (smaller ones are "
        "counted in rois_too_small and skipped).", lo=1, hi=10000,
    )
    multi_start: bool = _p(
        True,
        "Also start the PnP solve from the solver's rotation hypotheses and keep the optimum of "
        "least cost (as the training evaluation solves; about 1 ms per region on one CPU "
        "thread); false: the closed-form start alone.",
    )
    roi_crops: int = _p(
        5,
        "Crops per region, solved as one problem: the region, then copies moved by "
        "roi_crop_shift to its four sides, then to its four corners. The network's dependence "
        "on where the region sits averages out (models/README.md); each crop costs one more "
        "network pass. 1: the region alone.",
        lo=1, hi=9,
    )
    roi_crop_shift: float = _p(
        0.05, "Move of the shifted crops, as a fraction of the region's width and height.",
        lo=0.0, hi=0.5,
    )
    weight_temperature: float = _p(
        0.0,
        "Temperature of the network's weight Softmax over the map cells (the weight logits "
        "divided by it; > 1 spreads the weights over more cells). 0.0: the calibration stored "
        "in the checkpoint (epropnp-pose-calibrate; 1, as trained, without one).",
        lo=0.0, hi=100.0,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.default_roi) != 4:
            raise ConfigError(
                "default_roi must have 4 entries [x, y, width, height], "
                f"got {list(self.default_roi)}"
            )
        if 0.0 < self.roi_padding < 1.0:
            raise ConfigError(
                f"roi_padding must be 0.0 (the checkpoint's) or >= 1, got {self.roi_padding}")


#: The six cameras of a nuScenes car, as the bag converter names their topics.
NUSCENES_RIG = ("/cam_front", "/cam_front_right", "/cam_back_right", "/cam_back",
                "/cam_back_left", "/cam_front_left")


@dataclass(frozen=True)
class RigDetectorParams(DetectorParams):
    """Parameters of the ``rig_detector`` node: the detector's, plus the rig's cameras, the
    frame the detections are fused in, the capture slots and the TF buffer."""

    cameras: tuple[str, ...] = _p(
        NUSCENES_RIG,
        "Camera namespaces of the rig: each gives <ns>/image_raw (or <ns>/image_raw/compressed "
        "with image_transport 'compressed') and <ns>/camera_info. Read in on_configure.",
    )
    target_frame: str = _p(
        "base_link",
        "Frame of the fused outputs (z up: the cross-camera NMS works in its x-y plane). Each "
        "camera's detections are moved into it through /tf_static and /tf at the image stamp.",
    )
    slot_tolerance: float = _p(
        0.05,
        "Largest difference in seconds between the stamps of the frames of one capture slot "
        "(and the first frame's); below half the frame period. The nuScenes cameras fire "
        "over about 42 ms of each cycle. Read in on_activate.",
        lo=0.0, hi=1.0,
    )
    slot_deadline: float = _p(
        0.25,
        "Seconds after a slot's first frame at which it is processed without the cameras still "
        "missing (counted as silent). Read in on_activate.",
        lo=0.01, hi=10.0,
    )
    fusion_nms_iou: float = _p(
        0.3,
        "IoU of the class-aware bird's-eye-view NMS across cameras (duplicates in overlapping "
        "views).",
        lo=0.0, hi=1.0,
    )
    tf_tolerance: float = _p(
        0.1,
        "Largest distance in seconds from an image stamp to the nearest /tf entry when the stamp "
        "lies outside the /tf history (inside it, transforms are interpolated).",
        lo=0.0, hi=60.0,
    )
    tf_timeout: float = _p(
        0.1,
        "Longest wait in seconds for a transform still unknown when a slot is processed (one "
        "published just before the image may arrive just after it).",
        lo=0.0, hi=10.0,
    )
    tf_cache_time: float = _p(
        10.0, "Seconds of /tf history kept. Read in on_configure.", lo=0.0, hi=3600.0
    )
    per_camera_outputs: bool = _p(
        False,
        "Also publish each camera's detections and posterior samples in its optical frame on "
        "<ns>/detections and <ns>/pose_samples. Read in on_configure.",
    )


def param_specs(cls: type[CommonParams]) -> tuple[ParamSpec, ...]:
    """The :class:`ParamSpec` of every field of ``cls`` (in field order)."""
    specs = []
    for f in dataclasses.fields(cls):
        lo, hi = f.metadata["range"]
        default: ParamValue = f.default  # type: ignore[assignment]  # every field has one
        specs.append(
            ParamSpec(f.name, default, f.metadata["description"], lo, hi, f.metadata["choices"])
        )
    return tuple(specs)


def params_from_values(cls: type[P], values: Mapping[str, Any], *, where: str = "parameters") -> P:
    """Build ``cls`` from parameter values (arrays may be lists); ``ConfigError`` names the bad
    key and ``where``."""
    return from_dict(cls, dict(values), where=where)


def validate_change(current: P, changes: Mapping[str, Any]) -> str | None:
    """``None`` when ``current`` with ``changes`` applied is valid, else the reason.

    Unknown names are allowed (other parameters of the node, e.g. QoS overrides, are checked by
    rclpy itself).
    """
    known = {f.name for f in dataclasses.fields(current)}
    mine = {k: v for k, v in changes.items() if k in known}
    if not mine:
        return None
    try:
        values = {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
        values.update(mine)
        params_from_values(type(current), values)
    except ConfigError as exc:
        return str(exc)
    return None
