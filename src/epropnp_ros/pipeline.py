"""The ROS-free inference pipelines of the nodes: one RGB image and its camera in, poses with
covariance and posterior samples out (numpy, camera frame).

:class:`~epropnp_ros.detector_pipeline.DetectorPipeline` (deformable correspondence network,
4DoF, nuScenes classes, whole image resized; its own module) and :class:`PoseEstimatorPipeline`
(dense correspondence network, 6DoF, one object, square crops) both predict correspondences in
network pixels, map them to undistorted image pixels when the camera is distorted
(:func:`to_image_frame`), and solve each object once (the pose estimator: the
correspondences of all the crops of its region, in image pixels, as one problem).  This
module holds the shared pieces (intrinsics, outputs, input checks, stage timing) and the
pose estimator.
Bad input raises :class:`~epropnp_ros.errors.PipelineInputError`; a missing or malformed
checkpoint the network's ``CheckpointError`` -- never random weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import NamedTuple, Protocol

import cv2
import numpy as np
import torch

from epropnp_lib.data.bop import BopConfig
from epropnp_lib.epropnp import EProPnP6DoF
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.camera import image_points, pixel_affine
from epropnp_lib.nets.checkpoint import CALIBRATION_KEY, stored_temperature
from epropnp_lib.nets.dense import (
    DenseCheckpointError,
    DenseCorrespondenceNet,
    pool_views,
    solve_correspondences,
    stored_weight_temperature,
    training_crop_scale,
)
from epropnp_lib.pnp.cost import check_temperature, tempered_weights
from epropnp_lib.pnp.solver import PnPSolution, SolveStatus
from epropnp_ros.camera_model import CameraModel, undistort_points
from epropnp_ros.errors import ImageSizeError, PipelineInputError

logger = logging.getLogger(__name__)

#: Undistortion of pixels: ``(N, 2)`` distorted pixels -> ``(N, 2)`` pixels of the pinhole camera.
UndistortFn = Callable[[np.ndarray], np.ndarray]


class Intrinsics(NamedTuple):
    """Camera of one image as the pipelines need it.

    Attributes:
        cam_mat: ``(3, 3)`` pinhole intrinsics the poses are solved with.
        undistort: maps ``(N, 2)`` raw image pixels to pixels of ``cam_mat`` (``None`` for an
            undistorted / rectified image).
        width, height: image size of the calibration (0: unknown, not checked).
    """

    cam_mat: np.ndarray
    undistort: UndistortFn | None
    width: int
    height: int


class ObjectEstimates(Protocol):
    """What the nodes publish, common to :class:`DetectorOutput` (``dim = 4``, ``D = 4``) and
    :class:`PoseOutput` (``dim = 7``, ``D = 6``); ``M`` objects, ``S`` samples each."""

    @property
    def pose(self) -> np.ndarray: ...  # (M, dim)

    @property
    def covariance(self) -> np.ndarray: ...  # (M, D, D) library tangent covariance

    @property
    def samples(self) -> np.ndarray: ...  # (M, S, dim)

    @property
    def scores(self) -> np.ndarray: ...  # (M,)

    @property
    def class_ids(self) -> tuple[str, ...]: ...  # M names

    @property
    def timings(self) -> dict[str, float]: ...  # ms per stage

    @property
    def num_failed(self) -> int: ...


class DetectorOutput(NamedTuple):
    """Detections of one image (``M`` objects, ``S`` samples each; numpy, camera frame).

    Attributes:
        pose: ``(M, 4)`` (x, y, z, yaw about the camera y axis), the box centre.
        covariance: ``(M, 4, 4)`` library covariance over (tx, ty, tz, yaw).
        samples: ``(M, S, 4)`` equally-weighted posterior samples.
        scores: ``(M,)`` detection scores.
        class_ids: ``M`` class names.
        boxes: the :class:`~epropnp_lib.geometry.boxes.CameraBoxes` (CPU) of the kept detections
            (``center`` and ``yaw`` = ``pose``).
        timings: milliseconds per stage (``preprocess``, ``network``, ``pnp``, ``sampling``,
            ``postprocess``, ``total``).
        num_failed: detections dropped because their PnP solve failed: 0, since the network's
            ``select`` leaves the candidates whose solve failed out before the NMS.
    """

    pose: np.ndarray
    covariance: np.ndarray
    samples: np.ndarray
    scores: np.ndarray
    class_ids: tuple[str, ...]
    boxes: CameraBoxes
    timings: dict[str, float]
    num_failed: int


class PoseOutput(NamedTuple):
    """6DoF poses of the regions of one image (``M`` objects, ``S`` samples each).

    Attributes:
        pose: ``(M, 7)`` (t, q_wxyz).
        covariance: ``(M, 6, 6)`` library covariance (= ROS order, fixed axes).
        samples: ``(M, S, 7)``.
        scores: ``(M,)`` score of the region each pose came from (1 for configured regions).
        class_ids: ``M`` times the configured object class.
        size: ``(M, 3)`` extents of the object's box along its own axes
            (``2 * object_extent`` each: the network's coordinate cube).
        rois: ``(M, 4)`` regions (x, y, width, height) in image pixels, before padding.
        timings: milliseconds per stage.
        num_failed: regions dropped because their PnP solve failed.
        object_ids: ``M`` ids of the regions each pose came from (``roi_ids`` of
            :meth:`PoseEstimatorPipeline.process`; empty when none were given).
    """

    pose: np.ndarray
    covariance: np.ndarray
    samples: np.ndarray
    scores: np.ndarray
    class_ids: tuple[str, ...]
    size: np.ndarray
    rois: np.ndarray
    timings: dict[str, float]
    num_failed: int
    object_ids: tuple[str, ...] = ()


def intrinsics_from_camera(camera: CameraModel, rectified: bool) -> Intrinsics:
    """:class:`Intrinsics` of images described by ``camera`` (a validated CameraInfo).

    Poses are solved with ``camera.pinhole_matrix`` (``P[:, :3]``). Image pixels are mapped to
    that camera by :func:`epropnp_ros.camera_model.undistort_points` (undistortion with K and
    D for raw images; only binning/ROI for rectified ones), skipped when it is the identity.
    """
    cam = camera.pinhole_matrix
    plain = camera.binning_x == camera.binning_y == 1 and camera.roi[:2] == (0, 0)
    if rectified:
        identity = plain
    else:
        identity = (
            plain and not camera.is_distorted and np.allclose(camera.k, cam)
            and np.allclose(camera.r, np.eye(3))
        )
    undistort = None if identity else partial(undistort_points, camera, rectified=rectified)
    height, width = camera.image_size
    return Intrinsics(cam, undistort, width, height)


# --- input checks and geometry ---------------------------------------------------------------
def check_image(rgb: np.ndarray, intrinsics: Intrinsics) -> tuple[int, int]:
    """Validate ``rgb: (H, W, 3) uint8`` against ``intrinsics``; returns ``(H, W)``.

    Raises:
        PipelineInputError: wrong shape/dtype, empty image, non-finite or singular intrinsics;
            :class:`~epropnp_ros.errors.ImageSizeError` (a subclass) for an image size different
            from the calibration's (when that is known).
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 \
            or rgb.shape[2] != 3:
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise PipelineInputError(f"image must be (H, W, 3) uint8 RGB, got {desc}")
    h, w = rgb.shape[:2]
    if h == 0 or w == 0:
        raise PipelineInputError(f"image is empty ({w}x{h})")
    k = np.asarray(intrinsics.cam_mat, dtype=np.float64)
    if k.shape != (3, 3) or not np.isfinite(k).all() or k[0, 0] <= 0 or k[1, 1] <= 0:
        raise PipelineInputError(f"intrinsics must be a finite (3, 3) matrix with fx, fy > 0: {k}")
    if intrinsics.width and intrinsics.height and (intrinsics.width, intrinsics.height) != (w, h):
        raise ImageSizeError(
            f"image is {w}x{h} but the camera info says {intrinsics.width}x{intrinsics.height}"
        )
    return h, w


def crop_affine(roi: Sequence[float], padding: float, crop_size: int) -> np.ndarray:
    """Affine ``(3, 3)`` of a square crop around ``roi = (x, y, w, h)`` (pixels, padded by
    ``padding`` about its centre) resized to ``crop_size`` pixels (pixel-centre convention:
    image pixel centre ``u + 0.5`` maps to crop ``s * (u + 0.5 - x0)``)."""
    x, y, w, h = (float(v) for v in roi)
    side = max(w, h, 1.0) * padding
    x0, y0 = x + 0.5 * w - 0.5 * side, y + 0.5 * h - 0.5 * side
    return pixel_affine(crop_size / side, (x0 - 0.5, y0 - 0.5)).numpy()


def warp_crops(rgb: np.ndarray, affines: Sequence[np.ndarray], crop_size: int) -> np.ndarray:
    """``(M, S, S, 3)`` uint8 crops of ``rgb`` under each affine (bilinear, black outside)."""
    out = np.zeros((len(affines), crop_size, crop_size, 3), dtype=np.uint8)
    for i, a in enumerate(affines):
        out[i] = cv2.warpAffine(
            rgb, a[:2], (crop_size, crop_size), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
        )
    return out


def to_image_frame(
    x2d: torch.Tensor, w2d: torch.Tensor, affines: torch.Tensor, undistort: UndistortFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network-pixel correspondences to undistorted image pixels, for a distorted camera: the
    points are mapped back to raw image pixels, undistorted to the pinhole camera the poses
    are solved with, and the weights scaled by ``s``, so that the cost is unchanged by the
    change of pixel units.

    Args:
        x2d: ``(B, N, 2)`` points in network pixels.
        w2d: ``(B, N, 2)`` their weights.
        affines: ``(B, 3, 3)`` network-from-image affines (``diag(s, s, 1)`` plus translation).
        undistort: raw image pixels ``(N, 2)`` -> pinhole pixels.

    Returns:
        ``(x2d_img, w2d_img)``, both ``(B, N, 2)``: undistorted pixels and weights times ``s``
        (a residual of one network pixel is ``1 / s`` image pixels).
    """
    scale = affines[:, None, [0, 1], [0, 1]]  # (B, 1, 2)
    raw = image_points(x2d, affines)
    flat = raw.detach().reshape(-1, 2).cpu().double().numpy()
    und = np.asarray(undistort(flat), dtype=np.float64).reshape(raw.shape)
    return torch.as_tensor(und, dtype=x2d.dtype, device=x2d.device), w2d * scale


def rgb_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 in [0, 1] on ``device``."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


class StageTimer:
    """Per-stage wall-clock timings in ms (synchronising CUDA so that the numbers are real)."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._t0 = self._last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self._cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.ms[name] = self.ms.get(name, 0.0) + 1000.0 * (now - self._last)
        self._last = now

    def total(self) -> dict[str, float]:
        self.ms["total"] = 1000.0 * (time.perf_counter() - self._t0)
        return self.ms


def resolve_device(name: str) -> torch.device:
    """``torch.device`` for ``'cpu'`` / ``'cuda'``; ``ConfigError`` when CUDA is asked for but
    absent (the node then refuses to configure, with this reason)."""
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False")
    return torch.device(name)


def _valid(sol: PnPSolution) -> torch.Tensor:
    """``(B,)`` bool: usable solves with a finite covariance."""
    finite = torch.isfinite(sol.covariance).flatten(1).all(1) & torch.isfinite(sol.pose).all(1)
    return (sol.status <= SolveStatus.MAX_ITERATIONS) & finite


def _kept(
    sol: PnPSolution | None, samples: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(keep (B,), pose (M, 7), covariance (M, 6, 6), samples (M, S, 7))`` of the valid 6DoF
    solves, as float64 numpy."""
    if sol is None:
        return np.zeros(0, bool), np.zeros((0, 7)), np.zeros((0, 6, 6)), np.zeros((0, 0, 7))
    valid = _valid(sol)
    pose = sol.pose[valid].double().cpu().numpy()
    cov = sol.covariance[valid].double().cpu().numpy()
    if samples is None:
        smp = np.zeros((len(pose), 0, 7))
    else:
        smp = samples[:, valid].transpose(0, 1).double().cpu().numpy()
    return valid.cpu().numpy(), pose, cov, smp


def _solve_and_sample(
    layer: EProPnP6DoF,
    problems: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    num_samples: int,
    generator: torch.Generator,
    timer: StageTimer,
    sample_iterations: int,
    multi_start: bool,
) -> tuple[PnPSolution, torch.Tensor | None]:
    """Solve the ``(B,)`` problems ``(x3d, x2d, w2d, cam_mats)`` (pose, covariance, status;
    :func:`~epropnp_lib.nets.dense.solve_correspondences`, optionally multi-start) and draw
    ``(S, B, dim)`` samples (``sample_iterations`` AMIS iterations)."""
    x3d, x2d, w2d, cam_mats = problems
    sol = solve_correspondences(layer, x3d, x2d, w2d, cam_mats, multi_start=multi_start)
    timer.lap("pnp")
    samples = None
    if num_samples > 0 and x3d.shape[0] > 0:
        samples = layer.posterior_samples(x3d, x2d, w2d, cam_mats, num_samples, generator,
                                          solution=sol, num_iterations=sample_iterations)
    timer.lap("sampling")
    return sol, samples


#: Default AMIS iterations of the published samples.  Training uses the paper's T = 4 (the
#: loss needs an accurate normaliser); resampling a few dozen equally weighted poses for
#: display needs less: T = 2 (256 samples with K' = 128, the second proposal fitted to the
#: first) halves the sampling cost per frame.
SAMPLE_ITERATIONS = 2


def check_sampling(num_samples: int, sample_iterations: int) -> None:
    """The sampling settings both pipelines share."""
    if num_samples < 0:
        raise ConfigError(f"num_samples must be >= 0, got {num_samples}")
    if not 1 <= sample_iterations <= 8:
        raise ConfigError(f"sample_iterations must be in [1, 8], got {sample_iterations}")


# --- pose estimator (dense net, 6DoF) --------------------------------------------------------
#: Region padding of a network whose checkpoint does not say what it was trained with: the
#: training default (``BopConfig.crop_scale``, CDPN's 1.5).
DEFAULT_TRAINING_PADDING = BopConfig().crop_scale

#: Offsets of the crops of one region in units of the shift times its width and height, in the
#: order :attr:`PoseEstimatorSettings.roi_crops` takes them: the region, its four sides, its
#: four corners.
CROP_OFFSETS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))


def shifted_rois(rois: np.ndarray, num: int, shift: float) -> np.ndarray:
    """``(M, num, 4)`` regions ``(x, y, w, h)``: each of ``rois: (M, 4)`` moved by the first
    ``num`` of :data:`CROP_OFFSETS` times ``shift`` of its width and height."""
    offsets = np.asarray(CROP_OFFSETS[:num], dtype=np.float64) * shift  # (num, 2)
    out = np.repeat(np.asarray(rois, dtype=np.float64)[:, None], num, axis=1)
    out[..., :2] += offsets * out[..., 2:]
    return out


@dataclass(frozen=True)
class PoseEstimatorSettings:
    """Live settings of :class:`PoseEstimatorPipeline`.

    Attributes:
        num_samples: posterior samples per object (0: none).
        sample_iterations: AMIS iterations the samples are resampled from (:data:
            `SAMPLE_ITERATIONS`).
        roi_padding: scale of each region about its centre before cropping (>= 1); ``None``:
            the crop scale the network was trained with
            (:attr:`PoseEstimatorPipeline.training_padding`).
        object_class: class name of the estimates.
        seed: seed of the sampling generator (used when the pipeline is built).
        multi_start: the PnP solve also starts from the solver's rotation hypotheses and keeps
            the optimum of least cost (:func:`~epropnp_lib.nets.dense.predict_pose`, as the
            training evaluation solves); ``False``: the closed-form start alone.
        roi_crops: crops per region, 1 to 9 (:func:`shifted_rois`): the region, then copies
            moved by ``roi_crop_shift`` of its size to its four sides, then to its four
            corners.  Their correspondences are solved as one problem
            (:func:`~epropnp_lib.nets.dense.pool_views`), so that the network's dependence on
            where the region happens to sit averages out (models/README.md).
        roi_crop_shift: the move of the shifted crops, as a fraction of the region's width and
            height.
        likelihood_temperature: ``T`` of the likelihood ``exp(-cost / T)`` the poses are
            solved and sampled from (the pose is the same for any ``T``; the covariance is
            ``T`` times the Laplace covariance of ``T = 1``); ``None``: the calibration stored
            in the checkpoint (:attr:`PoseEstimatorPipeline.stored_temperature`), else 1.
        weight_temperature: ``tau`` of the network's weight Softmax (its logits divided by
            ``tau``; ``tau > 1`` spreads the weights over more cells,
            :meth:`~epropnp_lib.nets.dense.DenseCorrespondenceNet.forward`); ``None``: the
            calibration stored in the checkpoint (:attr:`PoseEstimatorPipeline.
            stored_weight_temperature`), else 1.
    """

    num_samples: int = 32
    sample_iterations: int = SAMPLE_ITERATIONS
    roi_padding: float | None = None
    object_class: str = "object"
    seed: int = 0
    multi_start: bool = True
    roi_crops: int = 5
    roi_crop_shift: float = 0.05
    likelihood_temperature: float | None = None
    weight_temperature: float | None = None

    def __post_init__(self) -> None:
        check_sampling(self.num_samples, self.sample_iterations)
        if not 1 <= self.roi_crops <= len(CROP_OFFSETS):
            raise ConfigError(f"roi_crops must be in [1, {len(CROP_OFFSETS)}], got "
                              f"{self.roi_crops}")
        if not 0.0 <= self.roi_crop_shift <= 0.5:
            raise ConfigError(f"roi_crop_shift must be in [0, 0.5], got {self.roi_crop_shift}")
        if self.likelihood_temperature is not None:
            check_temperature(self.likelihood_temperature)
        if self.weight_temperature is not None:
            check_temperature(self.weight_temperature, "weight_temperature")
        if self.roi_padding is not None and not (math.isfinite(self.roi_padding)
                                                 and self.roi_padding >= 1.0):
            raise ConfigError(f"roi_padding must be >= 1 (or None), got {self.roi_padding}")


class PoseEstimatorPipeline:
    """Regions of an image -> 6DoF poses with covariance and samples (dense network).

    Args:
        net: the dense network (eval mode is set here).
        device: where it runs.
        settings: :class:`PoseEstimatorSettings` (replace :attr:`settings` to change them live).
        training_padding: the crop scale the network was trained with, used when
            ``settings.roi_padding`` is ``None`` (default :data:`DEFAULT_TRAINING_PADDING`).
        stored_temperature: the likelihood temperature the checkpoint was calibrated with,
            used when ``settings.likelihood_temperature`` is ``None`` (default 1).
        stored_weight_temperature: the weight temperature the checkpoint was calibrated
            with, used when ``settings.weight_temperature`` is ``None`` (default 1).
    """

    def __init__(
        self,
        net: DenseCorrespondenceNet,
        device: torch.device,
        settings: PoseEstimatorSettings | None = None,
        training_padding: float | None = None,
        stored_temperature: float | None = None,
        stored_weight_temperature: float | None = None,
    ) -> None:
        self.net = net.to(device).eval()
        self.device = device
        self.settings = settings or PoseEstimatorSettings()
        self.training_padding = (DEFAULT_TRAINING_PADDING if training_padding is None
                                 else float(training_padding))
        self.stored_temperature = 1.0 if stored_temperature is None else float(stored_temperature)
        self.stored_weight_temperature = (1.0 if stored_weight_temperature is None
                                          else float(stored_weight_temperature))
        check_temperature(self.stored_weight_temperature, "weight_temperature")
        self.crop_size = int(net.config.crop_size)
        self.object_extent = float(net.config.object_extent)
        self.generator = torch.Generator(device=device).manual_seed(self.settings.seed)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "cpu", settings: PoseEstimatorSettings | None = None
    ) -> PoseEstimatorPipeline:
        """Load a dense-network checkpoint (``CheckpointError`` naming the file when it is
        missing, malformed or of another kind; ``ConfigError`` for an unavailable device); the
        training padding is the crop scale stored in it (:func:`~epropnp_lib.nets.dense.
        training_crop_scale`), else :data:`DEFAULT_TRAINING_PADDING`; the likelihood
        temperature is its calibration (:func:`~epropnp_lib.nets.checkpoint.stored_temperature`),
        else 1, and so is the weight temperature (:func:`~epropnp_lib.nets.dense.
        stored_weight_temperature`)."""
        dev = resolve_device(device)
        net, extra = DenseCorrespondenceNet.from_checkpoint(path, map_location=dev)
        stored = training_crop_scale(extra, path)
        pipe = cls(net, dev, settings, stored,
                   stored_temperature(extra, path, DenseCheckpointError),
                   stored_weight_temperature(extra, path))
        logger.info("loaded dense correspondence net from %s on %s; trained on crops of %g x "
                    "the box (%s); likelihood temperature %g, weight temperature %g (%s)",
                    path, dev, pipe.training_padding,
                    "stored in the checkpoint" if stored is not None else "training default",
                    pipe.stored_temperature, pipe.stored_weight_temperature,
                    "calibrated" if CALIBRATION_KEY in extra else "uncalibrated")
        return pipe

    @property
    def likelihood_temperature(self) -> float:
        """The temperature the poses are solved and sampled with: ``settings.
        likelihood_temperature``, else the checkpoint's calibration."""
        t = self.settings.likelihood_temperature
        return self.stored_temperature if t is None else t

    @property
    def weight_temperature(self) -> float:
        """The temperature of the network's weight Softmax: ``settings.weight_temperature``,
        else the checkpoint's calibration."""
        t = self.settings.weight_temperature
        return self.stored_weight_temperature if t is None else t

    @property
    def roi_padding(self) -> float:
        """The padding the regions are cropped with: ``settings.roi_padding``, else the
        training padding."""
        padding = self.settings.roi_padding
        return self.training_padding if padding is None else padding

    def process(
        self,
        rgb: np.ndarray,
        intrinsics: Intrinsics,
        rois: np.ndarray | None = None,
        roi_scores: np.ndarray | None = None,
        roi_ids: Sequence[str] = (),
    ) -> PoseOutput:
        """Poses of the objects in ``rois`` of one image.

        Args:
            rgb: ``(H, W, 3)`` uint8 RGB.
            intrinsics: the image's :class:`Intrinsics`.
            rois: ``(M, 4)`` regions (x, y, width, height) in pixels; ``None``: the whole image.
            roi_scores: ``(M,)`` scores of the regions (default 1).
            roi_ids: ``M`` ids of the regions (e.g. their Detection2D ids), carried to
                :attr:`PoseOutput.object_ids`; empty: none.

        Returns:
            :class:`PoseOutput` (``M`` minus the failed solves).
        """
        h, w = check_image(rgb, intrinsics)
        cfg = self.settings
        timer = StageTimer(self.device)
        if rois is None:
            rois = np.array([[0.0, 0.0, w, h]])
        rois = np.asarray(rois, dtype=np.float64).reshape(-1, 4)
        scores = np.ones(len(rois)) if roi_scores is None else np.asarray(roi_scores, np.float64)
        padding = self.roi_padding
        views = cfg.roi_crops
        affines = [crop_affine(r, padding, self.crop_size)
                   for r in shifted_rois(rois, views, cfg.roi_crop_shift).reshape(-1, 4)]
        crops = warp_crops(rgb, affines, self.crop_size)
        a = torch.as_tensor(np.stack(affines) if affines else np.zeros((0, 3, 3)),
                            dtype=torch.float32, device=self.device)
        k_img = torch.as_tensor(intrinsics.cam_mat, dtype=torch.float32, device=self.device)
        images = rgb_to_tensor(crops, self.device)
        timer.lap("preprocess")
        ids = tuple(roi_ids)
        if ids and len(ids) != len(rois):
            raise PipelineInputError(f"{len(ids)} roi_ids for {len(rois)} regions")
        if len(rois) == 0:
            return self._output(None, None, rois, scores, timer, ids)
        with torch.inference_mode():
            out = self.net(images, a @ k_img, self.weight_temperature)
        timer.lap("network")
        # The crops' correspondences in the pixels of the (undistorted) image, where the crops
        # of one region meet; the weights scaled by the crops' zoom, so the cost is unchanged.
        if intrinsics.undistort is not None:
            x2d, w2d = to_image_frame(out.x2d, out.w2d, a, intrinsics.undistort)
        else:
            x2d, w2d = image_points(out.x2d, a), out.w2d * a[:, None, [0, 1], [0, 1]]
        x3d, x2d, w2d = pool_views(out.x3d, x2d, w2d, views)
        w2d = tempered_weights(w2d, self.likelihood_temperature)
        sol, samples = _solve_and_sample(
            self.net.pnp, (x3d, x2d, w2d, k_img.expand(len(rois), 3, 3)), cfg.num_samples,
            self.generator, timer, cfg.sample_iterations, cfg.multi_start,
        )
        return self._output(sol, samples, rois, scores, timer, ids)

    def _output(
        self,
        sol: PnPSolution | None,
        samples: torch.Tensor | None,
        rois: np.ndarray,
        scores: np.ndarray,
        timer: StageTimer,
        ids: tuple[str, ...],
    ) -> PoseOutput:
        keep, pose, cov, smp = _kept(sol, samples)
        m = len(pose)
        return PoseOutput(
            pose=pose, covariance=cov, samples=smp, scores=scores[keep],
            class_ids=(self.settings.object_class,) * m,
            size=np.full((m, 3), 2.0 * self.object_extent), rois=rois[keep],
            timings=timer.total(), num_failed=int(len(keep) - keep.sum()),
            object_ids=tuple(i for i, k in zip(ids, keep, strict=True) if k) if ids else (),
        )
