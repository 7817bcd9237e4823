"""The ROS-free inference pipelines (no DDS): geometry of crops and resizes, undistortion,
outputs of the detector and pose-estimator pipelines, settings, errors.

The networks are small and explicitly initialised from a fixed seed (``torch.random.fork_rng``
+ ``manual_seed``): test fixtures for the plumbing, not trained models.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from epropnp_lib.data.bop import BopConfig
from epropnp_lib.epropnp import EProPnP6DoF
from epropnp_lib.errors import ConfigError
from epropnp_lib.geometry.rotations import quat_to_matrix
from epropnp_lib.nets.checkpoint import CALIBRATION_KEY, CheckpointError
from epropnp_lib.nets.deformable import (
    DeformableCheckpointError,
    DeformableCorrespondenceNet,
    small_config,
)
from epropnp_lib.nets.dense import (
    TRAINING_DATA_KEY,
    DenseCheckpointError,
    DenseCorrespondenceNet,
)
from epropnp_lib.pnp.solver import PnPSolution
from epropnp_ros.camera_model import CameraModel
from epropnp_ros.detector_pipeline import DetectorPipeline, DetectorSettings
from epropnp_ros.errors import ImageSizeError, PipelineInputError
from epropnp_ros.pipeline import (
    DEFAULT_TRAINING_PADDING,
    DetectorOutput,
    Intrinsics,
    PoseEstimatorPipeline,
    PoseEstimatorSettings,
    PoseOutput,
    check_image,
    crop_affine,
    intrinsics_from_camera,
    shifted_rois,
    to_image_frame,
    warp_crops,
)

K = np.array([[150.0, 0.0, 80.0], [0.0, 150.0, 60.0], [0.0, 0.0, 1.0]])
W, H = 160, 120


def _camera(d: tuple[float, ...] = (0.0,) * 5, binning: int = 1) -> CameraModel:
    return CameraModel(
        k=K.copy(), d=np.asarray(d, dtype=np.float64), distortion_model="plumb_bob",
        r=np.eye(3), p=np.hstack((K, np.zeros((3, 1)))), width=W * binning,
        height=H * binning, frame_id="cam", binning_x=binning, binning_y=binning,
    )


def _image(seed: int = 1) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (H, W, 3), generator=g, dtype=torch.uint8).numpy()


@pytest.fixture(scope="module")
def detector_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DeformableCorrespondenceNet(
            small_config(score_threshold=0.0, pre_nms_top_k=4, max_detections=4,
                         input_scale=1.0)
        )
    path = tmp_path_factory.mktemp("pipeline") / "detector.ckpt"
    net.save(path)
    return path


@pytest.fixture
def dense_ckpt(dense_fixture_checkpoint: Path) -> Path:
    """The shared dense test fixture (conftest.make_dense_checkpoint)."""
    return dense_fixture_checkpoint


# --- geometry --------------------------------------------------------------------------------
def test_crop_affine_maps_roi_to_centred_square() -> None:
    a = crop_affine((40.0, 20.0, 40.0, 20.0), padding=1.0, crop_size=64)
    # The ROI centre (pixel-centre convention: 40 + 20 - 0.5 = 59.5) maps to the crop centre.
    centre = a @ np.array([59.5, 29.5, 1.0])
    np.testing.assert_allclose(centre[:2], [31.5, 31.5])
    assert a[0, 0] == a[1, 1] == pytest.approx(64 / 40)  # the longer side fills the crop
    padded = crop_affine((40.0, 20.0, 40.0, 20.0), padding=2.0, crop_size=64)
    assert padded[0, 0] == pytest.approx(a[0, 0] / 2)


def test_warp_crops_puts_pixels_where_the_affine_says() -> None:
    img = np.zeros((H, W, 3), dtype=np.uint8)
    img[50, 70] = 255  # (u, v) = (70, 50)
    a = crop_affine((60.0, 40.0, 32.0, 32.0), padding=1.0, crop_size=64)  # scale 2
    crop = warp_crops(img, [a], 64)[0]
    expected = a @ np.array([70.0, 50.0, 1.0])
    v, u = np.unravel_index(np.argmax(crop[..., 0].astype(float)), crop.shape[:2])
    assert abs(u - expected[0]) <= 1.0 and abs(v - expected[1]) <= 1.0
    # Intrinsics of the crop: projecting with A @ K equals mapping the projection by A.
    x = np.array([0.3, -0.2, 2.0])
    uv = K @ x / x[2]
    np.testing.assert_allclose((a @ K) @ x / x[2], a @ uv)


def _problem(n: int = 40) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Object points (n, 3), a pose (7,) and per-point weights (n, 2)."""
    g = torch.Generator().manual_seed(3)
    x3d = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 0.4
    pose = torch.tensor([0.05, -0.03, 1.5, 0.96, 0.1, 0.2, 0.15], dtype=torch.float64)
    pose[3:] /= pose[3:].norm()
    w2d = 0.5 + torch.rand(n, 2, generator=g, dtype=torch.float64)
    return x3d, pose, w2d


def _project(x3d: torch.Tensor, pose: torch.Tensor, cam: np.ndarray) -> torch.Tensor:
    xc = x3d @ quat_to_matrix(pose[3:]).T + pose[:3]
    uvw = xc @ torch.as_tensor(cam).T
    return uvw[:, :2] / uvw[:, 2:]


def test_crop_frame_and_image_frame_give_the_same_solution() -> None:
    """Weights times s make the cost independent of the pixel units: same pose and covariance
    whether solved in crop pixels (A @ K) or mapped back to image pixels (K)."""
    x3d, pose, w2d = _problem()
    g = torch.Generator().manual_seed(4)
    x2d_img = _project(x3d, pose, K) + 0.5 * torch.randn(len(x3d), 2, generator=g,
                                                         dtype=torch.float64)
    a = torch.as_tensor(crop_affine((50.0, 30.0, 60.0, 60.0), 1.2, 64))
    x2d_crop = x2d_img @ a[:2, :2].T + a[:2, 2]
    layer = EProPnP6DoF()
    sol_crop = layer.solve(x3d[None], x2d_crop[None], w2d[None], (a @ torch.as_tensor(K))[None])
    x2d_back, w2d_back = to_image_frame(x2d_crop[None], w2d[None], a[None], lambda p: p)
    np.testing.assert_allclose(x2d_back[0].numpy(), x2d_img.numpy(), atol=1e-9)
    sol_img = layer.solve(x3d[None], x2d_back, w2d_back, torch.as_tensor(K)[None])
    torch.testing.assert_close(sol_img.pose, sol_crop.pose, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(sol_img.covariance, sol_crop.covariance, atol=1e-9, rtol=1e-5)


def test_undistortion_recovers_the_pose_that_raw_pixels_miss() -> None:
    d = (-0.3, 0.12, 0.001, -0.002, 0.0)
    cam = _camera(d)
    intr = intrinsics_from_camera(cam, rectified=False)
    assert intr.undistort is not None
    x3d, pose, w2d = _problem()
    xc = (x3d @ quat_to_matrix(pose[3:]).T + pose[:3]).numpy()
    raw, _ = cv2.projectPoints(xc, np.zeros(3), np.zeros(3), K, np.asarray(d))
    raw_t = torch.as_tensor(raw.reshape(-1, 2))
    ident = torch.eye(3, dtype=torch.float64)[None]
    und, w_und = to_image_frame(raw_t[None], w2d[None], ident, intr.undistort)
    layer = EProPnP6DoF()
    k = torch.as_tensor(intr.cam_mat)[None]
    good = layer.solve(x3d[None], und, w_und, k).pose[0]
    naive = layer.solve(x3d[None], raw_t[None], w2d[None], k).pose[0]
    assert (good[:3] - pose[:3]).norm() < 1e-4
    assert (naive[:3] - pose[:3]).norm() > 100 * (good[:3] - pose[:3]).norm()


def test_intrinsics_from_camera() -> None:
    plain = intrinsics_from_camera(_camera(), rectified=False)
    assert plain.undistort is None and (plain.width, plain.height) == (W, H)
    np.testing.assert_array_equal(plain.cam_mat, K)
    assert intrinsics_from_camera(_camera(), rectified=True).undistort is None
    # A rectified but binned image still needs its pixels mapped (binning undone).
    binned = intrinsics_from_camera(_camera(binning=2), rectified=True)
    assert binned.undistort is not None and (binned.width, binned.height) == (W, H)
    np.testing.assert_allclose(binned.undistort(np.array([[10.0, 20.0]])), [[20.0, 40.0]])


def test_check_image_rejects_bad_input() -> None:
    intr = Intrinsics(K, None, W, H)
    assert check_image(_image(), intr) == (H, W)
    with pytest.raises(PipelineInputError, match="uint8"):
        check_image(_image().astype(np.float32), intr)
    with pytest.raises(PipelineInputError, match="empty"):
        check_image(np.zeros((0, W, 3), np.uint8), intr)
    with pytest.raises(ImageSizeError, match="camera info says"):
        check_image(np.zeros((H // 2, W, 3), np.uint8), intr)
    bad_k = K.copy()
    bad_k[0, 0] = math.nan
    with pytest.raises(PipelineInputError, match="finite"):
        check_image(_image(), Intrinsics(bad_k, None, W, H))


# --- detector pipeline -----------------------------------------------------------------------
def test_detector_pipeline_outputs(detector_ckpt: Path) -> None:
    settings = DetectorSettings(score_threshold=0.0, max_detections=3, num_samples=8, seed=5)
    pipe = DetectorPipeline.from_checkpoint(detector_ckpt, "cpu", settings)
    out = pipe.process(_image(), Intrinsics(K, None, W, H))
    m = len(out.pose)
    assert 1 <= m <= 3
    assert out.pose.shape == (m, 4) and out.covariance.shape == (m, 4, 4)
    assert out.samples.shape == (m, 8, 4)
    assert np.all(np.diff(out.scores) <= 0)
    assert len(out.class_ids) == m and out.boxes.num_boxes == m
    np.testing.assert_allclose(out.covariance, out.covariance.transpose(0, 2, 1))
    assert np.all(np.linalg.eigvalsh(out.covariance) > 0)
    np.testing.assert_allclose(out.pose[:, :3], out.boxes.center.double().numpy())
    assert set(out.timings) >= {"preprocess", "network", "total"}
    # Same seed, same frame: the same samples; live settings take effect at once.
    again = DetectorPipeline.from_checkpoint(detector_ckpt, "cpu", settings)
    np.testing.assert_array_equal(again.process(_image(), Intrinsics(K, None, W, H)).samples,
                                  out.samples)
    pipe.settings = dataclasses.replace(settings, score_threshold=1.0)
    assert len(pipe.process(_image(), Intrinsics(K, None, W, H)).pose) == 0


def test_detector_likelihood_temperature(detector_ckpt: Path, tmp_path: Path) -> None:
    """T changes only what is published of the posterior: the same detections and poses,
    T x the covariance, samples of the wider posterior; the checkpoint's calibration is the
    default, a setting overrides it, and a bad stored value names the file."""
    def run(path: Path, t: float | None) -> DetectorOutput:
        settings = DetectorSettings(score_threshold=0.0, max_detections=4, num_samples=64,
                                    likelihood_temperature=t)
        return DetectorPipeline.from_checkpoint(path, "cpu", settings).process(
            _image(), Intrinsics(K, None, W, H))

    base = run(detector_ckpt, None)
    assert DetectorPipeline.from_checkpoint(detector_ckpt).likelihood_temperature == 1.0
    hot = run(detector_ckpt, 9.0)
    assert len(base.pose) > 0
    np.testing.assert_array_equal(hot.pose, base.pose)
    np.testing.assert_array_equal(hot.scores, base.scores)
    assert hot.class_ids == base.class_ids
    np.testing.assert_allclose(hot.covariance, 9.0 * base.covariance, rtol=1e-6)
    # Samples of the tempered posterior spread about 3x as far from the pose.
    spread = [np.median(np.abs(o.samples[..., :3] - o.pose[:, None, :3])) for o in (base, hot)]
    assert 1.5 * spread[0] < spread[1] < 6.0 * spread[0]
    net, extra = DeformableCorrespondenceNet.load(detector_ckpt)
    calibrated = tmp_path / "calibrated.ckpt"
    net.save(calibrated, extra={**extra, CALIBRATION_KEY: {"likelihood_temperature": 9.0}})
    assert DetectorPipeline.from_checkpoint(calibrated).likelihood_temperature == 9.0
    np.testing.assert_array_equal(run(calibrated, None).covariance, hot.covariance)
    np.testing.assert_array_equal(run(calibrated, 1.0).covariance, base.covariance)
    bad = tmp_path / "bad.ckpt"
    net.save(bad, extra={CALIBRATION_KEY: {"likelihood_temperature": "hot"}})
    with pytest.raises(DeformableCheckpointError, match="bad.ckpt.*likelihood_temperature"):
        DetectorPipeline.from_checkpoint(bad)
    with pytest.raises(ConfigError, match="temperature"):
        DetectorSettings(likelihood_temperature=0.0)


def test_detector_live_settings_never_rewrite_the_network(detector_ckpt: Path) -> None:
    """input_scale 0 keeps the checkpoint's factor, a positive value replaces it, and a live
    score threshold raises the network's floor: as call arguments, the same detections as a
    network whose config says so, and the network's config stays the checkpoint's."""
    settings = DetectorSettings(score_threshold=0.0065, max_detections=3, num_samples=4,
                                input_scale=0.5)
    pipe = DetectorPipeline.from_checkpoint(detector_ckpt, "cpu", settings)
    stored = pipe.net.config
    out = pipe.process(_image(), Intrinsics(K, None, W, H))
    assert pipe.net.config is stored and stored.input_scale == 1.0
    assert stored.score_threshold == 0.0
    native = DeformableCorrespondenceNet.from_checkpoint(detector_ckpt)
    native.config = dataclasses.replace(stored, input_scale=0.5, score_threshold=0.0065)
    ref = DetectorPipeline(native, torch.device("cpu"),
                           dataclasses.replace(settings, input_scale=0.0)).process(
        _image(), Intrinsics(K, None, W, H))
    assert len(out.pose) > 0
    for name in ("pose", "covariance", "samples", "scores"):
        np.testing.assert_array_equal(getattr(out, name), getattr(ref, name))


def test_detector_pipeline_with_distortion_resolves(detector_ckpt: Path) -> None:
    settings = DetectorSettings(score_threshold=0.0, max_detections=3, num_samples=4)
    pipe = DetectorPipeline.from_checkpoint(detector_ckpt, "cpu", settings)
    intr = intrinsics_from_camera(_camera((-0.2, 0.05, 0.0, 0.0, 0.0)), rectified=False)
    out = pipe.process(_image(), intr)
    m = len(out.pose)
    assert m + out.num_failed >= 1
    assert "pnp" in out.timings and "sampling" in out.timings
    assert out.samples.shape == (m, 4, 4)
    assert np.all(np.isfinite(out.pose)) and np.all(np.isfinite(out.covariance))


def test_distorted_detections_are_solved_once(
    detector_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A distorted camera's candidates are solved once, with undistorted image pixels and the
    pinhole intrinsics: the output is that solve's selected detections."""
    settings = DetectorSettings(score_threshold=0.0, max_detections=4, num_samples=0)
    pipe = DetectorPipeline.from_checkpoint(detector_ckpt, "cpu", settings)
    intr = intrinsics_from_camera(_camera((-0.2, 0.05, 0.0, 0.0, 0.0)), rectified=False)
    assert intr.undistort is not None
    net = pipe.net
    solve = net.solve
    calls: list[int] = []

    def counted(*args: torch.Tensor) -> PnPSolution:
        calls.append(args[0].shape[0])
        return solve(*args)

    monkeypatch.setattr(net, "solve", counted)
    out = pipe.process(_image(), intr)
    assert len(calls) == 1 and len(out.pose) > 0
    # The same single solve, step by step.
    image = torch.from_numpy(_image()).permute(2, 0, 1)[None]
    k_img = torch.as_tensor(intr.cam_mat, dtype=torch.float32)
    q = net.predict(image, k_img[None], score_threshold=0.0)
    assert calls[0] == q.num_queries  # every candidate, in one batch
    x2d, w2d = to_image_frame(q.x2d, q.w2d, q.affines[q.image_index], intr.undistort)
    sol = solve(q.x3d, x2d, w2d, k_img.expand(q.num_queries, 3, 3))
    [kept] = net.select(q, sol)
    np.testing.assert_array_equal(out.pose[:, :3], sol.pose[kept, :3].double().numpy())
    np.testing.assert_array_equal(out.covariance, sol.covariance[kept].double().numpy())


def test_checkpoint_errors_name_the_file(tmp_path: Path, dense_ckpt: Path) -> None:
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointError, match="nope.ckpt"):
        DetectorPipeline.from_checkpoint(missing)
    with pytest.raises(CheckpointError, match="dense_fixture.ckpt"):
        DetectorPipeline.from_checkpoint(dense_ckpt)  # a checkpoint of another kind
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        PoseEstimatorPipeline.from_checkpoint(garbage)
    with pytest.raises(ConfigError, match="device"):
        PoseEstimatorPipeline.from_checkpoint(dense_ckpt, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="cuda"):
            PoseEstimatorPipeline.from_checkpoint(dense_ckpt, device="cuda")
    else:
        assert PoseEstimatorPipeline.from_checkpoint(dense_ckpt, "cuda").device.type == "cuda"


# --- pose-estimator pipeline -----------------------------------------------------------------
def test_pose_estimator_pipeline_outputs(dense_ckpt: Path) -> None:
    settings = PoseEstimatorSettings(num_samples=6, roi_padding=1.2, object_class="duck")
    pipe = PoseEstimatorPipeline.from_checkpoint(dense_ckpt, "cpu", settings)
    rois = np.array([[10.0, 10.0, 50.0, 40.0], [80.0, 30.0, 60.0, 60.0]])
    out = pipe.process(_image(), Intrinsics(K, None, W, H), rois, np.array([0.9, 0.4]))
    m = len(out.pose)
    assert m == 2 and out.num_failed == 0
    assert out.pose.shape == (m, 7) and out.covariance.shape == (m, 6, 6)
    assert out.samples.shape == (m, 6, 7)
    np.testing.assert_allclose(np.linalg.norm(out.pose[:, 3:], axis=1), 1.0, rtol=1e-6)
    assert out.class_ids == ("duck",) * m
    np.testing.assert_allclose(out.size, 0.2)
    assert out.rois.shape == (m, 4) and out.scores.shape == (m,)
    # No region: the whole image; an empty set of regions: nothing.
    whole = pipe.process(_image(), Intrinsics(K, None, W, H))
    assert len(whole.pose) + whole.num_failed == 1
    if len(whole.pose):
        np.testing.assert_array_equal(whole.rois[0], [0, 0, W, H])
    empty = pipe.process(_image(), Intrinsics(K, None, W, H), np.zeros((0, 4)))
    assert empty.pose.shape == (0, 7) and empty.samples.shape[0] == 0


def _crop_scales(pipe: PoseEstimatorPipeline, rois: np.ndarray) -> np.ndarray:
    """``(M,)`` crop pixels per image pixel of the crops the network is given for ``rois`` (the
    same for all the crops of a region)."""
    seen: list[torch.Tensor] = []
    hook = pipe.net.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
    try:
        pipe.process(_image(), Intrinsics(K, None, W, H), rois)
    finally:
        hook.remove()
    scales = (seen[0][:, 0, 0] / K[0, 0]).double().numpy().reshape(len(rois), -1)
    assert scales.shape[1] == pipe.settings.roi_crops
    np.testing.assert_array_equal(scales, scales[:, :1].repeat(scales.shape[1], 1))
    return scales[:, 0]


def test_pose_estimator_crops_with_the_checkpoints_training_padding(
        dense_ckpt: Path, tmp_path: Path) -> None:
    """A network trained on crops of ``p`` times the box is given crops of ``p`` times the
    region; an explicit ``roi_padding`` still wins; an older checkpoint gets the default."""
    net, _ = DenseCorrespondenceNet.from_checkpoint(dense_ckpt)
    rois = np.array([[10.0, 10.0, 50.0, 40.0], [80.0, 30.0, 30.0, 60.0]])
    longer = rois[:, 2:].max(1)
    trained = tmp_path / "trained.ckpt"
    net.save(trained, extra={TRAINING_DATA_KEY: {"crop_scale": 1.8, "crop_size": 64}})
    pipe = PoseEstimatorPipeline.from_checkpoint(trained)
    assert pipe.training_padding == pipe.roi_padding == 1.8
    np.testing.assert_allclose(_crop_scales(pipe, rois), 64 / (1.8 * longer), rtol=1e-6)
    pipe.settings = PoseEstimatorSettings(roi_padding=1.25)
    assert pipe.roi_padding == 1.25
    np.testing.assert_allclose(_crop_scales(pipe, rois), 64 / (1.25 * longer), rtol=1e-6)
    old = PoseEstimatorPipeline.from_checkpoint(dense_ckpt)  # no training data stored
    assert old.roi_padding == DEFAULT_TRAINING_PADDING == BopConfig().crop_scale == 1.5
    bad = tmp_path / "bad.ckpt"
    net.save(bad, extra={TRAINING_DATA_KEY: {"crop_scale": "wide"}})
    with pytest.raises(DenseCheckpointError, match="bad.ckpt: extra.bop.crop_scale"):
        PoseEstimatorPipeline.from_checkpoint(bad)


@pytest.mark.parametrize("multi_start", [True, False])
def test_pose_estimator_solves_as_the_training_evaluation(dense_ckpt: Path,
                                                         multi_start: bool) -> None:
    """With one crop per region, the node's solve is :meth:`DenseCorrespondenceNet.
    predict_pose` on the same crops (in the image's pixels instead of the crop's), with or
    without the multi-start."""
    settings = PoseEstimatorSettings(num_samples=0, multi_start=multi_start, roi_crops=1)
    pipe = PoseEstimatorPipeline.from_checkpoint(dense_ckpt, "cpu", settings)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = pipe.net.register_forward_pre_hook(
        lambda _m, args: seen.append((args[0].clone(), args[1].clone())))
    rois = np.array([[10.0, 10.0, 50.0, 40.0], [80.0, 30.0, 60.0, 60.0], [40.0, 50.0, 30.0, 30.0]])
    out = pipe.process(_image(), Intrinsics(K, None, W, H), rois)
    hook.remove()
    _, sol = pipe.net.predict_pose(*seen[0], multi_start=multi_start)
    assert out.num_failed == 0
    q_out, q_ref = out.pose[:, 3:], sol.pose[:, 3:].double().numpy()
    np.testing.assert_allclose(out.pose[:, :3], sol.pose[:, :3].double().numpy(), atol=1e-6)
    np.testing.assert_allclose(np.abs((q_out * q_ref).sum(1)), 1.0, atol=1e-6)


def test_shifted_rois_move_each_region_by_a_fraction_of_its_size() -> None:
    rois = np.array([[10.0, 20.0, 40.0, 20.0], [0.0, 0.0, 10.0, 30.0]])
    out = shifted_rois(rois, 5, 0.1)
    assert out.shape == (2, 5, 4)
    np.testing.assert_array_equal(out[:, 0], rois)  # the region itself first
    np.testing.assert_array_equal(out[..., 2:], np.repeat(rois[:, None, 2:], 5, axis=1))
    moves = (out[..., :2] - rois[:, None, :2]) / (0.1 * rois[:, None, 2:])
    np.testing.assert_allclose(moves[0], [[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], atol=1e-12)
    np.testing.assert_allclose(moves[1], moves[0], atol=1e-12)
    assert shifted_rois(np.zeros((0, 4)), 5, 0.1).shape == (0, 5, 4)


def test_pose_estimator_solves_the_crops_of_a_region_as_one_problem(dense_ckpt: Path) -> None:
    """``roi_crops`` crops per region go through the network (moved as ``shifted_rois``
    says); their correspondences make one problem per region.  Copies of the same crop
    (``roi_crop_shift`` 0) count as one observation: the pose and covariance of one crop."""
    rois = np.array([[10.0, 10.0, 50.0, 40.0], [80.0, 30.0, 60.0, 60.0]])
    seen: list[torch.Tensor] = []

    def run(crops: int, shift: float = 0.05) -> PoseOutput:
        settings = PoseEstimatorSettings(num_samples=0, roi_crops=crops, roi_crop_shift=shift)
        pipe = PoseEstimatorPipeline.from_checkpoint(dense_ckpt, "cpu", settings)
        hook = pipe.net.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
        try:
            return pipe.process(_image(), Intrinsics(K, None, W, H), rois)
        finally:
            hook.remove()

    one = run(1)
    same = run(5, 0.0)
    assert seen[1].shape[0] == 5 * len(rois)
    assert one.num_failed == same.num_failed == 0
    # Equal up to where the solver stops (its tolerance; the untrained network's problems are
    # poorly conditioned); tests/lib/test_dense_net.py checks the pooling on well-posed ones.
    np.testing.assert_allclose(same.pose, one.pose, atol=2e-3)
    np.testing.assert_allclose(same.covariance, one.covariance,
                               rtol=2e-2, atol=1e-3 * np.abs(one.covariance).max())
    moved = run(3, 0.1)
    # The crops' principal points move by the shift (in crop pixels: times the crop's zoom).
    cams = seen[2].reshape(len(rois), 3, 3, 3)
    zoom = cams[:, 0, 0, 0] / K[0, 0]
    centre_shift = cams[:, 1, :2, 2] - cams[:, 0, :2, 2]
    np.testing.assert_allclose(centre_shift[:, 0].numpy(),
                               (-0.1 * rois[:, 2] * zoom.double().numpy()), rtol=1e-4)
    np.testing.assert_allclose(centre_shift[:, 1].numpy(), 0.0, atol=1e-3)
    assert moved.pose.shape == (2, 7) and np.isfinite(moved.covariance).all()


def test_likelihood_temperature_widens_the_covariance_not_the_pose(
        dense_ckpt: Path, tmp_path: Path) -> None:
    """``exp(-cost / T)``: the same pose, ``T`` times the covariance; a checkpoint's stored
    calibration is the default, an explicit setting wins, a malformed one is refused."""
    rois = np.array([[10.0, 10.0, 50.0, 40.0], [80.0, 30.0, 60.0, 60.0]])

    def run(path: Path, temperature: float | None) -> PoseOutput:
        settings = PoseEstimatorSettings(num_samples=0, likelihood_temperature=temperature)
        return PoseEstimatorPipeline.from_checkpoint(path, "cpu", settings).process(
            _image(), Intrinsics(K, None, W, H), rois)

    base = run(dense_ckpt, None)
    assert PoseEstimatorPipeline.from_checkpoint(dense_ckpt).likelihood_temperature == 1.0
    hot = run(dense_ckpt, 4.0)
    np.testing.assert_allclose(hot.pose, base.pose, atol=1e-5)
    np.testing.assert_allclose(hot.covariance, 4.0 * base.covariance,
                               rtol=1e-3, atol=1e-6 * np.abs(base.covariance).max())
    net, extra = DenseCorrespondenceNet.from_checkpoint(dense_ckpt)
    calibrated = tmp_path / "calibrated.ckpt"
    net.save(calibrated, extra={**extra, CALIBRATION_KEY: {"likelihood_temperature": 4.0}})
    assert PoseEstimatorPipeline.from_checkpoint(calibrated).likelihood_temperature == 4.0
    np.testing.assert_allclose(run(calibrated, None).covariance, hot.covariance, rtol=1e-6)
    np.testing.assert_allclose(run(calibrated, 1.0).covariance, base.covariance, rtol=1e-6)
    bad = tmp_path / "bad.ckpt"
    net.save(bad, extra={CALIBRATION_KEY: {"likelihood_temperature": -1.0}})
    with pytest.raises(DenseCheckpointError, match="likelihood_temperature"):
        PoseEstimatorPipeline.from_checkpoint(bad)


def test_weight_temperature_is_the_checkpoints_unless_set(
        dense_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The network runs at the weight temperature stored in the checkpoint's calibration (1
    without one); an explicit setting wins; a malformed stored value is refused."""
    seen: list[float] = []
    forward = DenseCorrespondenceNet.forward

    def spy(self: DenseCorrespondenceNet, images: torch.Tensor, cams: torch.Tensor,
            weight_temperature: float = 1.0) -> Any:
        seen.append(weight_temperature)
        return forward(self, images, cams, weight_temperature)

    monkeypatch.setattr(DenseCorrespondenceNet, "forward", spy)
    rois = np.array([[10.0, 10.0, 50.0, 40.0]])

    def run(path: Path, tau: float | None) -> PoseOutput:
        settings = PoseEstimatorSettings(num_samples=0, weight_temperature=tau)
        return PoseEstimatorPipeline.from_checkpoint(path, "cpu", settings).process(
            _image(), Intrinsics(K, None, W, H), rois)

    base = run(dense_ckpt, None)
    net, extra = DenseCorrespondenceNet.from_checkpoint(dense_ckpt)
    calibrated = tmp_path / "calibrated.ckpt"
    net.save(calibrated, extra={**extra, CALIBRATION_KEY: {"weight_temperature": 3.0}})
    assert PoseEstimatorPipeline.from_checkpoint(calibrated).weight_temperature == 3.0
    warm = run(calibrated, None)
    again = run(calibrated, 1.0)
    assert seen == [1.0, 3.0, 1.0]
    np.testing.assert_allclose(again.pose, base.pose, rtol=1e-6)
    assert not np.allclose(warm.covariance, base.covariance)
    bad = tmp_path / "bad.ckpt"
    net.save(bad, extra={CALIBRATION_KEY: {"weight_temperature": 0.0}})
    with pytest.raises(DenseCheckpointError, match="weight_temperature"):
        PoseEstimatorPipeline.from_checkpoint(bad)


def test_settings_validate() -> None:
    with pytest.raises(ConfigError, match="score_threshold"):
        DetectorSettings(score_threshold=2.0)
    with pytest.raises(ConfigError, match="input_scale"):
        DetectorSettings(input_scale=-1.0)
    with pytest.raises(ConfigError, match="roi_padding"):
        PoseEstimatorSettings(roi_padding=0.5)
    with pytest.raises(ConfigError, match="num_samples"):
        PoseEstimatorSettings(num_samples=-1)
    with pytest.raises(ConfigError, match="sample_iterations"):
        PoseEstimatorSettings(sample_iterations=0)
    with pytest.raises(ConfigError, match="roi_crops"):
        PoseEstimatorSettings(roi_crops=10)
    with pytest.raises(ConfigError, match="roi_crop_shift"):
        PoseEstimatorSettings(roi_crop_shift=-0.1)
    with pytest.raises(ConfigError, match="likelihood_temperature"):
        PoseEstimatorSettings(likelihood_temperature=0.0)
    with pytest.raises(ConfigError, match="weight_temperature"):
        PoseEstimatorSettings(weight_temperature=-1.0)
    with pytest.raises(ConfigError, match="sample_iterations"):
        DetectorSettings(sample_iterations=9)


def test_batch_of_cameras_is_one_solve_with_each_image_as_alone(
    detector_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rig's batch (two images of one size, one of another, distorted): one network forward
    per size, one PnP solve over every image's queries, and each image's detections as if it
    were processed alone (a repeated image gives the same detections twice)."""
    settings = DetectorSettings(score_threshold=0.0, max_detections=4, num_samples=3)
    pipe = DetectorPipeline.from_checkpoint(detector_ckpt, "cpu", settings)
    plain = intrinsics_from_camera(_camera(), rectified=False)
    small_k = K.copy()
    small_k[:2] *= 0.5
    small_cam = CameraModel(
        k=small_k, d=np.array([-0.2, 0.05, 0.0, 0.0, 0.0]), distortion_model="plumb_bob",
        r=np.eye(3), p=np.hstack((small_k, np.zeros((3, 1)))), width=W // 2, height=H // 2,
        frame_id="cam_small")
    small = intrinsics_from_camera(small_cam, rectified=False)
    a, b = _image(1), np.ascontiguousarray(_image(2)[::2, ::2])
    net = pipe.net
    solve, predict = net.solve, net.predict
    solved: list[int] = []
    forwards: list[int] = []
    monkeypatch.setattr(net, "solve", lambda *t: solved.append(t[0].shape[0]) or solve(*t))
    monkeypatch.setattr(net, "predict",
                        lambda im, *r, **kw: forwards.append(im.shape[0]) or predict(im, *r, **kw))
    outs = pipe.process_batch([a, b, a], [plain, small, plain])
    assert sorted(forwards) == [1, 2] and len(solved) == 1
    pipe.generator.manual_seed(0)
    singles = [pipe.process(img, intr) for img, intr in ((a, plain), (b, small))]
    assert solved[0] == 2 * solved[1] + solved[2]  # every image's queries, in one solve
    for out, single in zip((outs[0], outs[1]), singles, strict=True):
        assert out.class_ids == single.class_ids
        np.testing.assert_allclose(out.scores, single.scores, rtol=1e-5)
        # Batched convolutions round differently: the same solve, to the solver tolerance.
        np.testing.assert_allclose(out.pose, single.pose, rtol=1e-2, atol=1e-2)
    np.testing.assert_array_equal(outs[0].pose, outs[2].pose)
    assert outs[0].samples.shape == (len(outs[0].pose), 3, 4)
    assert pipe.process_batch([], []) == []
