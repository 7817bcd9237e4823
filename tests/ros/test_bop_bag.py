"""BOP → rosbag2 conversion: topics, images, regions of interest, ground truth, /tf_static, and
the atomic output; the bag is read back with rosbags and compared with the BOP reader's view of
a generated, format-faithful mini LineMOD."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def bop_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from epropnp_lib.generators.bop import generate_bop_lm

    root = tmp_path_factory.mktemp("bop")
    generate_bop_lm(root, num_scenes=2, images_per_scene=2, objects=["lblock", "eggbox"],
                    image_size=(96, 72), seed=5, split="test")
    return root


def _read_all(path: Path) -> list[tuple[str, int, Any]]:
    from rosbags.highlevel import AnyReader

    from epropnp_ros.bag_writing import typestore

    with AnyReader([path], default_typestore=typestore()) as reader:
        return [(c.topic, t, reader.deserialize(raw, c.msgtype))
                for c, t, raw in reader.messages()]


def _dataset(root: Path) -> Any:
    from epropnp_lib.data.bop import BopConfig, BopDataset

    return BopDataset(root, "test", config=BopConfig(crop_size=0, render_coords=False,
                                                     min_visib_fract=0.1))


def test_bag_carries_images_rois_ground_truth_and_tf(bop_root: Path, tmp_path: Path,
                                                     ros_runtime: None) -> None:
    from epropnp_lib.geometry.rotations import quat_to_matrix
    from epropnp_ros.bop_bag import BopBagConfig, convert, instance_id
    from epropnp_ros.messages import stamp_to_ns

    summary = convert(BopBagConfig(root=str(bop_root), output=str(tmp_path / "bag"), jitter=0.0))
    data = _dataset(bop_root)
    messages = _read_all(summary.path)
    counts = Counter(topic for topic, _, _ in messages)
    assert summary.num_images == 4 and counts == {
        "/camera/camera_info": 4, "/camera/image_raw/compressed": 4, "/camera/rois": 4,
        "/ground_truth/detections": 4, "/tf_static": 1}
    # Every stamp's messages in the order camera_info, rois, image, ground truth.
    order = [topic for topic, _, _ in messages if topic != "/tf_static"]
    assert order[:4] == ["/camera/camera_info", "/camera/rois", "/camera/image_raw/compressed",
                         "/ground_truth/detections"]
    assert all(stamp_to_ns(m.header.stamp) == t for _, t, m in messages if hasattr(m, "header"))

    [tf] = [m for topic, _, m in messages if topic == "/tf_static"]
    [link] = tf.transforms
    assert (link.header.frame_id, link.child_frame_id) == ("base_link", "camera_optical_frame")

    by_id = {instance_id(i.scene_id, i.im_id, i.gt_id): i for i in data.instances}
    gts = [m for topic, _, m in messages if topic == "/ground_truth/detections"]
    rois = [m for topic, _, m in messages if topic == "/camera/rois"]
    seen = set()
    for gt, roi in zip(gts, rois, strict=True):
        assert [d.id for d in gt.detections] == [d.id for d in roi.detections]
        for det3, det2 in zip(gt.detections, roi.detections, strict=True):
            inst = by_id[det3.id]
            seen.add(det3.id)
            name = data.model(inst.obj_id).name
            assert det3.results[0].hypothesis.class_id == name == \
                det2.results[0].hypothesis.class_id
            p = det3.results[0].pose.pose
            assert np.allclose([p.position.x, p.position.y, p.position.z], inst.t, atol=1e-9)
            q = p.orientation
            rot = quat_to_matrix(torch.tensor([q.w, q.x, q.y, q.z], dtype=torch.float64)).numpy()
            assert np.allclose(rot, inst.R, atol=1e-9)
            # jitter 0: the region is the visible box's pixels (BOP: centres x .. x + w)
            x, y, w, h = inst.info.bbox_visib
            b = det2.bbox
            assert (b.center.position.x, b.center.position.y, b.size_x, b.size_y) == \
                pytest.approx((x + 0.5 * (w + 1), y + 0.5 * (h + 1), w + 1, h + 1))
    assert seen == set(by_id)

    infos = [m for topic, _, m in messages if topic == "/camera/camera_info"]
    assert all((m.width, m.height) == (96, 72) and np.allclose(m.k.reshape(3, 3),
                                                               data.camera.cam_mats)
               for m in infos)
    images = [m for topic, _, m in messages if topic == "/camera/image_raw/compressed"]
    first = data.instances[0]
    assert images[0].format == "png"
    assert bytes(images[0].data) == data.image_path(first.scene_id, first.im_id).read_bytes()


def test_jitter_is_seeded_per_instance_and_raw_images_decode(
    bop_root: Path, tmp_path: Path, ros_runtime: None
) -> None:
    import cv2

    from epropnp_ros.bop_bag import BopBagConfig, convert

    def regions(bag: Path) -> dict[str, tuple[float, ...]]:
        return {d.id: (d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x,
                       d.bbox.size_y)
                for topic, _, m in _read_all(bag) if topic == "/camera/rois"
                for d in m.detections}

    whole = convert(BopBagConfig(root=str(bop_root), output=str(tmp_path / "a"), jitter=0.1))
    part = convert(BopBagConfig(root=str(bop_root), output=str(tmp_path / "b"), jitter=0.1,
                                scenes=(2,), image_format="raw"))
    exact = convert(BopBagConfig(root=str(bop_root), output=str(tmp_path / "c"), jitter=0.0))
    reseeded = convert(BopBagConfig(root=str(bop_root), output=str(tmp_path / "d"),
                                    jitter=0.1, seed=1))
    a, b, c, d = (regions(s.path) for s in (whole, part, exact, reseeded))
    assert b and all(a[k] == b[k] for k in b)  # a subset of scenes: the same regions
    assert all(a[k] != c[k] and a[k] != d[k] for k in a)
    # 0.1 relative noise: the regions stay near the boxes
    assert all(abs(a[k][0] - c[k][0]) < 0.6 * c[k][2] for k in a)

    data = _dataset(bop_root)
    [raw] = [m for topic, _, m in _read_all(part.path) if topic == "/camera/image_raw"][:1]
    assert raw.encoding == "rgb8"
    inst = next(i for i in data.instances if i.scene_id == 2)
    bgr = cv2.imread(str(data.image_path(2, inst.im_id)))
    assert np.array_equal(raw.data.reshape(72, 96, 3), bgr[:, :, ::-1])


def test_errors_and_atomic_output(bop_root: Path, tmp_path: Path, ros_runtime: None) -> None:
    from epropnp_lib.errors import ConfigError
    from epropnp_ros.bop_bag import BopBagConfig, convert, main
    from epropnp_ros.errors import BagConversionError

    out = tmp_path / "bag"
    out.mkdir()
    with pytest.raises(BagConversionError, match="exists"):
        convert(BopBagConfig(root=str(bop_root), output=str(out)))
    with pytest.raises(BagConversionError, match="split folder not found"):
        convert(BopBagConfig(root=str(bop_root), output=str(tmp_path / "x"), split="val"))
    with pytest.raises(ConfigError, match="jitter"):
        BopBagConfig(root="r", output="o", jitter=-1.0)
    assert main(["--root", str(tmp_path / "none"), "--out", str(tmp_path / "y")]) == 2
    assert main(["--root", str(bop_root), "--out", str(tmp_path / "z"), "--quiet",
                 "--scenes", "1"]) == 0
    assert (tmp_path / "z" / "metadata.yaml").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_the_nodes_crop_of_an_exact_region_is_the_training_crop() -> None:
    """A region of the bag (jitter 0) cropped by the pose_estimator pipeline with
    ``roi_padding = crop_scale`` is the crop the BOP reader trains on."""
    from epropnp_lib.data.bop import crop_transform
    from epropnp_ros.bop_bag import jittered_roi
    from epropnp_ros.pipeline import crop_affine

    for box in ((10, 20, 30, 12), (0, 0, 5, 40), (100, 50, 64, 64)):
        roi = jittered_roi(box, 0.0, 0, 1, 0, 0)
        np.testing.assert_allclose(crop_affine(roi, 1.5, 64), crop_transform(box, 64, 1.5),
                                   atol=1e-9)
