"""Tests of the deformable correspondence network (epropnp_lib.nets.deformable)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from epropnp_lib.dataclass_io import from_dict, to_dict
from epropnp_lib.epropnp import MonteCarloConfig
from epropnp_lib.errors import ConfigError, DTypeError, ShapeError
from epropnp_lib.geometry.boxes import CameraBoxes
from epropnp_lib.geometry.camera import pixel_affine, project
from epropnp_lib.geometry.pose import Pose4DoF
from epropnp_lib.nets.backbone import BackboneConfig
from epropnp_lib.nets.checkpoint import CheckpointError, save_checkpoint
from epropnp_lib.nets.dcn import DeformConv2d
from epropnp_lib.nets.deformable import (
    CHECKPOINT_KIND,
    DeformableCheckpointError,
    DeformableCorrespondenceNet,
    DeformableLossConfig,
    DeformableNetConfig,
    small_config,
)
from epropnp_lib.nets.deformable.inference import take_solution
from epropnp_lib.nets.deformable.loss import pose_determined
from epropnp_lib.pnp.solver import SolveStatus, solve_pnp

H, W = 96, 160
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_config(**overrides: object) -> DeformableNetConfig:
    """A network small enough for unit tests on one CPU core."""
    base: dict[str, object] = dict(
        backbone=BackboneConfig(depth=18, base_width=8),
        fpn_channels=16,
        head_channels=16,
        embed_dim=16,
        num_heads=2,
        num_points=4,
        point_hidden=16,
        input_scale=1.0,
        monte_carlo=MonteCarloConfig(num_iterations=2, num_samples=32),
        loss=DeformableLossConfig(max_pose_queries=8),
    )
    base.update(overrides)
    return small_config(**base)


def camera(batch: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    k = torch.tensor([[120.0, 0.0, 79.5], [0.0, 120.0, 47.5], [0.0, 0.0, 1.0]], dtype=dtype)
    return k.expand(batch, 3, 3).clone()


def make_boxes(centers: list[list[float]], labels: list[int] | None = None,
               yaw: float = 0.3) -> CameraBoxes:
    m = len(centers)
    return CameraBoxes(
        center=torch.tensor(centers, dtype=torch.float32).view(m, 3),
        size=torch.tensor([[1.9, 4.6, 1.7]] * m).view(m, 3),
        yaw=torch.full((m,), yaw),
        labels=torch.tensor(labels if labels is not None else [0] * m, dtype=torch.long),
        velocity=torch.tensor([[1.0, -2.0]] * m).view(m, 2),
        attributes=torch.full((m,), 5, dtype=torch.long),
        scores=torch.ones(m),
    )


def scene() -> tuple[torch.Tensor, torch.Tensor, list[CameraBoxes]]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, H, W, generator=gen)
    targets = [make_boxes([[0.0, 0.5, 12.0], [-3.0, 0.5, 20.0]], [0, 5]),
               make_boxes([[2.0, 0.5, 15.0]], [1])]
    return images, camera(2), targets


# --- configuration ------------------------------------------------------------------------------
def test_config_round_trip_and_validation() -> None:
    cfg = DeformableNetConfig()
    assert cfg.num_correspondences == 64
    assert from_dict(DeformableNetConfig, to_dict(cfg)) == cfg
    small = small_config()
    assert from_dict(DeformableNetConfig, to_dict(small)) == small
    with pytest.raises(ConfigError, match="regress_edges"):
        DeformableNetConfig(regress_edges=(10.0, 5.0, 20.0, 30.0))
    with pytest.raises(ConfigError, match="class_mean_sizes"):
        DeformableNetConfig(num_classes=3)
    with pytest.raises(ConfigError, match="divisible"):
        DeformableNetConfig(embed_dim=30, num_heads=8)
    with pytest.raises(ConfigError, match="solve_iterations"):
        DeformableNetConfig(solve_iterations=-1)
    # Checkpoints written before a field existed load with its default.
    old = to_dict(cfg)
    del old["solve_iterations"]
    assert from_dict(DeformableNetConfig, old).solve_iterations == 12
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(DeformableNetConfig, {"bogus": 1})
    with pytest.raises(ConfigError, match="max_pose_queries"):
        DeformableLossConfig(max_pose_queries=0)


# --- training -----------------------------------------------------------------------------------
def test_loss_terms_finite_and_counted() -> None:
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config(loss=DeformableLossConfig(
        max_pose_queries=8, coord_weight=1.0)))
    images, cam, targets = scene()
    out = net.loss(images, cam, targets, torch.Generator().manual_seed(1))
    assert out.num_positive > 8 and out.num_pose_queries == 8
    for name in ("total", "cls", "offset", "kl", "reg", "size", "score3d", "velocity",
                 "attribute", "coord"):
        value = getattr(out, name)
        assert value.dim() == 0 and torch.isfinite(value), name
    assert out.velocity > 0 and out.attribute > 0 and out.coord > 0
    # An image without boxes only has the classification term.
    empty = net.loss(images[:1], cam[:1], [CameraBoxes.empty()])
    assert empty.num_positive == 0 and empty.kl == 0 and empty.total > 0
    # ... and still reaches every parameter (zero gradients where unused; DDP needs them).
    net.zero_grad(set_to_none=True)
    empty.total.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="targets"):
        net.loss(images, cam, targets[:1])


def test_loss_under_bfloat16_autocast_solves_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixed precision (CPU bfloat16 autocast): the network runs in bfloat16, the PnP solve and
    the Monte Carlo KL in float32, and every term is finite with gradients for all weights."""
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config(loss=DeformableLossConfig(max_pose_queries=8)))
    images, cam, targets = scene()
    seen: list[torch.dtype] = []
    layer_forward = type(net.epropnp).forward

    def spy(self: torch.nn.Module, x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor,
            *args: object, **kwargs: object) -> object:
        seen.extend([x3d.dtype, x2d.dtype, w2d.dtype, torch.get_autocast_dtype("cpu")
                     if torch.is_autocast_enabled("cpu") else torch.float32])
        return layer_forward(self, x3d, x2d, w2d, *args, **kwargs)

    monkeypatch.setattr(type(net.epropnp), "forward", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = net.forward_dense(*net.preprocess(images, cam)[:2])
        out = net.loss(images, cam, targets, torch.Generator().manual_seed(1))
    assert dense.cls_logits.dtype == torch.bfloat16
    assert seen == [torch.float32] * 4  # float32 inputs, autocast off inside
    for name in ("total", "kl", "reg", "size", "score3d"):
        assert torch.isfinite(getattr(out, name)), name
    out.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in net.parameters() if p.requires_grad)


def test_kl_gradients_reach_points_weights_and_backbone() -> None:
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config())
    images, cam, targets = scene()
    x, k, _ = net.preprocess(images, cam)
    dense = net.forward_dense(x, k)
    b_idx = torch.tensor([0, 0, 1])
    l_idx = torch.tensor([10, 50, 70])
    gt = CameraBoxes(*(torch.cat(f) for f in zip(targets[0], targets[1], strict=True)))
    out = net.decode_queries(dense, b_idx, l_idx, gt.labels)
    for t in (out.x2d, out.x3d, out.w2d):
        t.retain_grad()
    res = net.epropnp(out.x3d, out.x2d, out.w2d, out.cam_mats, pose_target=gt.pose4(),
                      pose_init=gt.pose4(), generator=torch.Generator().manual_seed(0))
    net.kl_loss(res).backward()
    for name, t in (("x2d", out.x2d), ("x3d", out.x3d), ("w2d", out.w2d)):
        assert t.grad is not None and t.grad.abs().sum() > 0, name
    assert net.backbone.conv1.weight.grad is not None
    assert net.backbone.conv1.weight.grad.abs().sum() > 0
    grad = net.attention.sampling_offsets.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_adam_steps_lower_the_total_loss() -> None:
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config())
    images, cam, targets = scene()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    totals, kls = [], []
    for _ in range(10):
        # The same Monte Carlo samples at every step: the loss changes only with the weights.
        out = net.loss(images, cam, targets, torch.Generator().manual_seed(0))
        opt.zero_grad()
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 35.0)
        opt.step()
        totals.append(out.total.item())
        kls.append(out.kl.item())
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) / 3 < 0.85 * totals[0], totals
    assert sum(kls[-3:]) / 3 < kls[0], kls


def test_dcn_network_forward_backward() -> None:
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config(dcn_stages=(3, 4)))
    dcn = [m for m in net.modules() if isinstance(m, DeformConv2d)]
    assert len(dcn) == 4  # 2 blocks in each of the two ResNet-18 stages
    images, cam, targets = scene()
    out = net.loss(images, cam, targets, torch.Generator().manual_seed(0))
    out.total.backward()
    grad = dcn[-1].offset.weight.grad
    assert grad is not None and torch.isfinite(grad).all()


# --- inference ----------------------------------------------------------------------------------
def check_detections(dets: list, n_points: int, num_samples: int) -> int:
    total = 0
    for d in dets:
        m = d.boxes.num_boxes
        total += m
        d.boxes.validate()
        assert d.covariance.shape == (m, 4, 4)
        assert d.x2d.shape == (m, n_points, 2) and d.w2d.shape == (m, n_points, 2)
        assert d.x3d.shape == (m, n_points, 3)
        assert torch.isfinite(d.boxes.center).all() and torch.isfinite(d.covariance).all()
        torch.testing.assert_close(d.covariance, d.covariance.transpose(-1, -2))
        assert ((d.boxes.scores >= 0) & (d.boxes.scores <= 1)).all()
        assert ((d.boxes.labels >= 0) & (d.boxes.labels < 10)).all()
        assert (d.boxes.size > 0).all() and (d.w2d >= 0).all()
        if num_samples:
            assert d.pose_samples is not None and d.pose_samples.shape == (num_samples, m, 4)
    return total


def test_detect_on_random_weights() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(score_threshold=0.0, pre_nms_top_k=4, input_scale=0.5)
    net = DeformableCorrespondenceNet(cfg).eval()
    images, cam, _ = scene()
    dets = net.detect(images, cam, num_pose_samples=5, generator=torch.Generator().manual_seed(0))
    assert len(dets) == 2
    assert check_detections(dets, cfg.num_correspondences, 5) > 0
    # 2D points come back in the original image's pixels (around the image, not half of it).
    x2d = torch.cat([d.x2d for d in dets])
    assert x2d[..., 0].amax() > 0.5 * W
    # uint8 images of the same content (resized as uint8, then scaled to [0, 1]) give the
    # same network input up to quantisation (1 / 255 before the normalisation by ~0.225).
    as_uint8 = (images * 255).round().to(torch.uint8)
    x_float, k_float, _ = net.preprocess(as_uint8.float() / 255, cam)
    x_uint8, k_uint8, _ = net.preprocess(as_uint8, cam)
    assert x_uint8.dtype == torch.float32 and x_uint8.shape == (2, 3, H // 2, W // 2)
    torch.testing.assert_close(x_uint8, x_float, atol=0.03, rtol=0)
    torch.testing.assert_close(k_uint8, k_float)
    assert check_detections(net.detect(as_uint8, cam), cfg.num_correspondences, 0) > 0


def test_detect_is_predict_solve_select_samples() -> None:
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config(score_threshold=0.0, pre_nms_top_k=4,
                                                  input_scale=0.5, max_detections=3)).eval()
    images, cam, _ = scene()
    dets = net.detect(images, cam, num_pose_samples=4, generator=torch.Generator().manual_seed(1))
    q = net.predict(images, cam)
    assert q.num_images == 2 and q.num_queries > 0
    assert q.x3d.shape == (q.num_queries, 8, 3) and q.cam_mats.shape == (q.num_queries, 3, 3)
    sol = net.solve(q.x3d, q.x2d, q.w2d, q.cam_mats)
    kept = net.select(q, sol)
    gen = torch.Generator().manual_seed(1)
    for d, sel in zip(dets, kept, strict=True):
        assert 0 < sel.numel() <= 3
        assert torch.equal(q.image_index[sel], torch.full_like(sel, int(q.image_index[sel[0]])))
        torch.testing.assert_close(d.boxes.center, sol.pose[sel, :3], rtol=0, atol=0)
        torch.testing.assert_close(d.covariance, sol.covariance[sel], rtol=0, atol=0)
        torch.testing.assert_close(d.boxes.scores, q.scores[sel], rtol=0, atol=0)
        samples = net.pose_samples(q.x3d[sel], q.x2d[sel], q.w2d[sel], q.cam_mats[sel],
                                   take_solution(sol, sel), 4, gen)
        torch.testing.assert_close(d.pose_samples, samples, rtol=0, atol=0)
        # 2D points back in image pixels: the inverse of the resize affine.
        x2d_net = (d.x2d + 0.5) * 0.5 - 0.5
        torch.testing.assert_close(x2d_net, q.x2d[sel])


def test_detect_at_a_likelihood_temperature() -> None:
    """A calibrated detect: the same detections, T x the covariance, and the samples of the
    tempered likelihood (pose_samples of the tempered weights and solution)."""
    from epropnp_lib.pnp.cost import tempered_weights
    from epropnp_lib.pnp.solver import temper_solution

    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config(score_threshold=0.0, pre_nms_top_k=4,
                                                  max_detections=3)).eval()
    images, cam, _ = scene()
    cold = net.detect(images, cam)
    hot = net.detect(images, cam, num_pose_samples=4, generator=torch.Generator().manual_seed(1),
                     likelihood_temperature=5.0)
    q = net.predict(images, cam)
    sol = net.solve(q.x3d, q.x2d, q.w2d, q.cam_mats)
    gen = torch.Generator().manual_seed(1)
    for c, h, sel in zip(cold, hot, net.select(q, sol), strict=True):
        assert torch.equal(c.boxes.center, h.boxes.center)
        assert torch.equal(c.boxes.scores, h.boxes.scores)
        torch.testing.assert_close(h.covariance, 5.0 * c.covariance, rtol=1e-6, atol=0)
        samples = net.pose_samples(q.x3d[sel], q.x2d[sel], tempered_weights(q.w2d[sel], 5.0),
                                   q.cam_mats[sel], take_solution(temper_solution(sol, 5.0), sel),
                                   4, gen)
        torch.testing.assert_close(h.pose_samples, samples, rtol=0, atol=0)


def test_predict_arguments_never_rewrite_the_config() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(score_threshold=0.0, pre_nms_top_k=6)
    net = DeformableCorrespondenceNet(cfg).eval()
    images, cam, _ = scene()
    q = net.predict(images, cam, score_threshold=0.0058, input_scale=0.5)
    assert net.config is cfg
    assert 0 < q.num_queries < net.predict(images, cam, input_scale=0.5).num_queries
    assert bool((q.scores >= 0.0058).all())
    torch.testing.assert_close(q.affines[0], pixel_affine(0.5, (-0.5, -0.5)).float())
    torch.testing.assert_close(q.cam_mats, q.affines[q.image_index] @ cam[q.image_index])
    net.config = dataclasses.replace(cfg, score_threshold=0.0058, input_scale=0.5)
    ref = net.predict(images, cam)
    for name, a, b in zip(q._fields, q, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(ConfigError, match="score_threshold"):
        net.predict(images, cam, score_threshold=1.0)
    with pytest.raises(ConfigError, match="input_scale"):
        net.predict(images, cam, input_scale=0.0)


def test_multi_start_solve_and_pose_samples() -> None:
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config()).eval()
    gen = torch.Generator().manual_seed(0)
    # Exact correspondences of known poses (points of a car-sized box).
    q, n = 6, 8
    pose = torch.cat((torch.rand(q, 1, generator=gen) * 4 - 2, torch.full((q, 1), 0.5),
                      torch.rand(q, 1, generator=gen) * 20 + 8,
                      torch.rand(q, 1, generator=gen) * 6 - 3), dim=-1)
    x3d = (torch.rand(q, n, 3, generator=gen) - 0.5) * torch.tensor([4.6, 1.7, 1.9])
    cam = camera(q)
    x_cam = x3d @ Pose4DoF.rotation(pose).transpose(-1, -2) + pose[:, None, :3]
    x2d = project(x_cam, cam).x2d
    w2d = torch.ones(q, n, 2)
    sol = net.solve(x3d, x2d, w2d, cam)
    torch.testing.assert_close(sol.pose, Pose4DoF.canonical(pose), atol=1e-3, rtol=0)
    # Random correspondences: the multi-start optimum is never worse than the single start
    # (the closed-form start is one of its five).
    x3d_r = torch.randn(q, n, 3, generator=gen)
    x2d_r = torch.rand(q, n, 2, generator=gen) * torch.tensor([W, H])
    multi = net.solve(x3d_r, x2d_r, w2d, cam)
    # ... with the same iteration budget (the inference limit, config.solve_iterations).
    budget = dataclasses.replace(net.epropnp.config.solver,
                                 max_iterations=net.config.solve_iterations)
    single = solve_pnp(x3d_r, x2d_r, w2d, cam, dof=4, config=budget)
    assert int(multi.iterations.max()) <= net.config.solve_iterations
    ok = single.status <= SolveStatus.MAX_ITERATIONS
    assert (multi.status[ok] <= SolveStatus.MAX_ITERATIONS).all()
    assert (multi.cost[ok] <= single.cost[ok] * (1 + 1e-4) + 1e-6).all()
    noisy = x2d + 0.5 * torch.randn(q, n, 2, generator=gen)
    sol = net.solve(x3d, noisy, w2d, cam)
    samples = net.pose_samples(x3d, noisy, w2d, cam, sol, 64, gen)
    assert samples.shape == (64, q, 4) and torch.isfinite(samples).all()
    # The samples sit around the optimum, at the scale of its Laplace covariance.
    sigma = sol.covariance.diagonal(dim1=-2, dim2=-1)[:, :3].sqrt()
    assert ((samples[..., :3].median(0).values - sol.pose[:, :3]).abs() < 3 * sigma).all()


def test_detect_empty_results() -> None:
    torch.manual_seed(0)
    # Random weights: the class prior (0.01) keeps every location below the threshold.
    net = DeformableCorrespondenceNet(tiny_config(score_threshold=0.5)).eval()
    images, cam, _ = scene()
    dets = net.detect(images, cam, num_pose_samples=3)
    assert [d.boxes.num_boxes for d in dets] == [0, 0]
    assert check_detections(dets, 8, 3) == 0
    assert dets[0].boxes.center.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_detect_preserves_dtype_and_device(device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config(score_threshold=0.0, pre_nms_top_k=2))
    net = net.to(device=device, dtype=dtype).eval()
    images, cam, _ = scene()
    dets = net.detect(images[:1].to(device, dtype), cam[:1].to(device, dtype))
    d = dets[0]
    assert d.boxes.num_boxes > 0
    for t in (d.boxes.center, d.boxes.size, d.covariance, d.x2d, d.x3d, d.w2d):
        assert t.dtype == dtype and t.device.type == device


def test_input_validation() -> None:
    net = DeformableCorrespondenceNet(tiny_config()).eval()
    with pytest.raises(ShapeError, match="images"):
        net.detect(torch.rand(1, 4, H, W), camera(1))
    with pytest.raises(ShapeError, match="cam_mats"):
        net.detect(torch.rand(2, 3, H, W), camera(1))
    with pytest.raises(DTypeError, match="images"):
        net.detect(torch.zeros(1, 3, H, W, dtype=torch.int32), camera(1))
    bad = camera(1)
    bad[0, 0, 0] = torch.nan
    with pytest.raises(DTypeError, match="NaN"):
        net.detect(torch.rand(1, 3, H, W), bad)


# --- checkpoints --------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = DeformableCorrespondenceNet(tiny_config(score_threshold=0.0, pre_nms_top_k=3)).eval()
    with torch.no_grad():
        net.kl_loss.norm_factor.fill_(3.5)
    path = tmp_path / "det.ckpt"
    net.save(path, extra={"epoch": 2})
    loaded = DeformableCorrespondenceNet.from_checkpoint(path).eval()
    assert loaded.config == net.config
    assert float(loaded.kl_loss.norm_factor) == 3.5
    images, cam, _ = scene()
    a, b = net.detect(images, cam), loaded.detect(images, cam)
    for da, db in zip(a, b, strict=True):
        torch.testing.assert_close(da.boxes.center, db.boxes.center)
        torch.testing.assert_close(da.x3d, db.x3d)


def test_checkpoint_errors(tmp_path: Path) -> None:
    net = DeformableCorrespondenceNet(tiny_config())
    good = tmp_path / "good.ckpt"
    net.save(good)
    # Truncated file.
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.ckpt"):
        DeformableCorrespondenceNet.from_checkpoint(truncated)
    # Missing file.
    with pytest.raises(CheckpointError, match="not found"):
        DeformableCorrespondenceNet.from_checkpoint(tmp_path / "nope.ckpt")
    # Another kind of checkpoint.
    other = tmp_path / "other.ckpt"
    save_checkpoint(other, kind="dense_correspondence_net", config={}, state_dict={})
    with pytest.raises(CheckpointError, match="dense_correspondence_net"):
        DeformableCorrespondenceNet.from_checkpoint(other)
    # A config the network rejects.
    bad_cfg = tmp_path / "bad_cfg.ckpt"
    save_checkpoint(bad_cfg, kind=CHECKPOINT_KIND, config={"embed_dim": "wide"},
                    state_dict=net.state_dict())
    with pytest.raises(DeformableCheckpointError, match="embed_dim"):
        DeformableCorrespondenceNet.from_checkpoint(bad_cfg)
    # Tensors that do not fit the stored config.
    wider = dataclasses.replace(net.config, embed_dim=32)
    mismatch = tmp_path / "mismatch.ckpt"
    save_checkpoint(mismatch, kind=CHECKPOINT_KIND, config=to_dict(wider),
                    state_dict=net.state_dict())
    with pytest.raises(DeformableCheckpointError, match="wrong shape"):
        DeformableCorrespondenceNet.from_checkpoint(mismatch)


def test_regulariser_leaves_out_queries_whose_pose_is_undetermined() -> None:
    # At initialisation the NOC are near zero: depth and yaw are unobservable, and the one-step
    # pose's gradient would dwarf every other term under gradient clipping.
    images, cam, targets = scene()

    def reg_gradient(loss_cfg: DeformableLossConfig) -> tuple[float, float]:
        torch.manual_seed(0)
        net = DeformableCorrespondenceNet(tiny_config(loss=loss_cfg))
        out = net.loss(images, cam, targets, torch.Generator().manual_seed(1))
        out.reg.backward()
        norm = sum(float(p.grad.norm()) ** 2 for p in net.parameters() if p.grad is not None)
        kl_net = DeformableCorrespondenceNet(tiny_config(loss=loss_cfg))
        kl_net.load_state_dict(net.state_dict())
        kl = kl_net.loss(images, cam, targets, torch.Generator().manual_seed(1)).kl
        kl.backward()
        kl_norm = sum(float(p.grad.norm()) ** 2 for p in kl_net.parameters()
                      if p.grad is not None)
        return norm ** 0.5, kl_norm ** 0.5

    every, kl_norm = reg_gradient(DeformableLossConfig(max_pose_queries=8))
    assert every > 100 * kl_norm  # what the limits are for
    gated, _ = reg_gradient(DeformableLossConfig(max_pose_queries=8, reg_max_position_std=1.0,
                                                 reg_max_yaw_std=0.5))
    assert gated < kl_norm
    with pytest.raises(ConfigError, match="reg_max"):
        DeformableLossConfig(reg_max_yaw_std=0.0)


def testpose_determined_queries_follow_the_covariance() -> None:
    cov = torch.diag_embed(torch.tensor([[0.25, 0.25, 0.81, 0.04],     # std 0.5 0.5 0.9 0.2
                                         [0.25, 0.25, 1.44, 0.04],     # z std 1.2 m
                                         [0.25, 0.25, 0.25, 0.36],     # yaw std 0.6 rad
                                         [0.25, 0.25, 0.25, 0.04]]))   # invalid solve
    cov = torch.cat((cov, torch.full((1, 4, 4), torch.nan)))           # degenerate
    valid = torch.tensor([True, True, True, False, True])
    lc = DeformableLossConfig(reg_max_position_std=1.0, reg_max_yaw_std=0.5)
    assert pose_determined(valid, cov, lc).tolist() == [True, False, False, False, False]
    assert torch.equal(pose_determined(valid, cov, DeformableLossConfig()), valid)
