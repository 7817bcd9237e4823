"""Tests of the dense correspondence network and its losses (epropnp_lib.nets.dense,
epropnp_lib.nets.dense_loss)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from epropnp_lib.dataclass_io import to_dict
from epropnp_lib.epropnp import EProPnP6DoF, MonteCarloConfig
from epropnp_lib.errors import ConfigError, ShapeError
from epropnp_lib.nets.backbone import BackboneConfig
from epropnp_lib.nets.checkpoint import CheckpointError, save_checkpoint
from epropnp_lib.nets.dense import (
    CHECKPOINT_KIND,
    DenseCheckpointError,
    DenseCorrespondenceNet,
    DenseNetConfig,
    WeightNormalization,
    pool_views,
    solve_correspondences,
)
from epropnp_lib.nets.dense_loss import (
    DenseLossConfig,
    DenseNetLoss,
    PoseLossKind,
    TrainingInit,
    implicit_pose,
    masked_coordinate_loss,
    training_init,
)
from epropnp_lib.pnp.cost import NO_KERNEL
from epropnp_lib.pnp.problems import random_problems
from epropnp_lib.pnp.solver import SolverConfig, SolveStatus, solve_pnp

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CROP = 64


def tiny_config(**kw: object) -> DenseNetConfig:
    base = DenseNetConfig(
        backbone=BackboneConfig(depth=18, base_width=8), crop_size=CROP, output_stride=8,
        head_channels=16, skip_connections=True, object_extent=0.1, init_weight_scale=8.0,
        monte_carlo=MonteCarloConfig(num_iterations=2, num_samples=32),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def crop_camera(batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    k = torch.tensor([[120.0, 0.0, 31.5], [0.0, 120.0, 31.5], [0.0, 0.0, 1.0]], dtype=dtype)
    return k.expand(batch, 3, 3).clone()


def target_poses(batch: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    pose = torch.zeros(batch, 7, dtype=dtype)
    pose[:, 2] = 0.6
    pose[:, 3] = 1.0
    return pose


def images(batch: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(batch, 3, CROP, CROP, generator=torch.Generator().manual_seed(seed),
                      dtype=dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtype_device(device: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    net = DenseCorrespondenceNet(tiny_config()).to(device=device, dtype=dtype)
    out = net(images(2, dtype=dtype).to(device), crop_camera(2, dtype).to(device))
    h = CROP // 8
    assert out.x3d.shape == (2, h * h, 3)
    assert out.x2d.shape == (2, h * h, 2) and out.w2d.shape == (2, h * h, 2)
    assert out.scale.shape == (2, 2)
    assert out.coord_map.shape == (2, 3, h, h) and out.weight_map.shape == (2, 2, h, h)
    for t in (out.x3d, out.x2d, out.w2d, out.scale, out.coord_map, out.weight_map):
        assert t.dtype == dtype and t.device.type == device
    # Spatial Softmax: each weight channel sums to one over the map; w2d = softmax * scale.
    sums = out.weight_map.flatten(2).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    torch.testing.assert_close(out.w2d.sum(1), out.scale)
    assert out.indices is None
    # The 2D points are the crop pixels of the cell centres (stride 8: 3.5, 11.5, ...).
    assert float(out.x2d[0, 0, 0]) == pytest.approx(3.5)
    assert float(out.x2d[0, 1, 0] - out.x2d[0, 0, 0]) == pytest.approx(8.0)
    assert float(out.x2d[0, h, 1] - out.x2d[0, 0, 1]) == pytest.approx(8.0)


def test_top_k_points_and_exp_weights() -> None:
    torch.manual_seed(0)
    net = DenseCorrespondenceNet(tiny_config(num_points=20))
    out = net(images(2), crop_camera(2))
    assert out.x3d.shape == (2, 20, 3) and out.indices is not None
    assert out.indices.shape == (2, 20)
    flat = out.coord_map.flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.x3d, flat.gather(1, out.indices[..., None].expand(-1, -1, 3)))
    net_exp = DenseCorrespondenceNet(tiny_config(weight_normalization=WeightNormalization.EXP))
    out = net_exp(images(2), crop_camera(2))
    # exp without the denominator: the map no longer sums to one (64 cells of ~exp(0)).
    assert float(out.weight_map.detach().flatten(2).sum(-1).min()) > 10.0


@pytest.mark.parametrize("normalization", list(WeightNormalization))
def test_weight_temperature_divides_the_logits(normalization: WeightNormalization) -> None:
    """``tau`` divides the weight logits before their normalisation: the same coordinates,
    logits and scale; tau = 1 is the default; a large tau spreads the Softmax towards
    uniform; and it is the same function of the logits as the default forward."""
    torch.manual_seed(0)
    net = DenseCorrespondenceNet(tiny_config(weight_normalization=normalization)).eval()
    with torch.no_grad():
        net.head[-1].weight[3:].mul_(30.0)  # sharp logits, so that tempering shows
        base = net(images(2), crop_camera(2))
        same = net(images(2), crop_camera(2), weight_temperature=1.0)
        warm = net(images(2), crop_camera(2), weight_temperature=2.5)
        hot = net(images(2), crop_camera(2), weight_temperature=1e4)
    torch.testing.assert_close(same.w2d, base.w2d, rtol=0, atol=0)
    for out in (warm, hot):
        torch.testing.assert_close(out.x3d, base.x3d)
        torch.testing.assert_close(out.weight_logits, base.weight_logits)
        torch.testing.assert_close(out.scale, base.scale)
    logits = base.weight_logits.flatten(2) / 2.5
    if normalization is WeightNormalization.SPATIAL_SOFTMAX:
        expected = logits.softmax(-1)
        cells = logits.shape[-1]
        torch.testing.assert_close(hot.weight_map.flatten(2),
                                   torch.full_like(expected, 1.0 / cells), atol=1e-4, rtol=0)
        # Flatter: the largest weight falls, the smallest rises.
        assert bool((warm.weight_map.amax((2, 3)) < base.weight_map.amax((2, 3))).all())
        assert bool((warm.weight_map.amin((2, 3)) > base.weight_map.amin((2, 3))).all())
    else:
        expected = logits.clamp(max=30.0).exp()
    torch.testing.assert_close(warm.weight_map.flatten(2), expected)
    torch.testing.assert_close(warm.w2d, expected.transpose(1, 2) * warm.scale[:, None, :])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="weight_temperature"):
            net(images(1), crop_camera(1), weight_temperature=bad)


def test_bad_inputs_and_configs() -> None:
    net = DenseCorrespondenceNet(tiny_config())
    with pytest.raises(ShapeError):
        net(torch.rand(2, 3, 32, 32), crop_camera(2))
    with pytest.raises(ShapeError):
        net(images(2), crop_camera(3))
    with pytest.raises(ConfigError):
        tiny_config(crop_size=48)
    with pytest.raises(ConfigError):
        tiny_config(output_stride=2)
    with pytest.raises(ConfigError):
        tiny_config(num_points=3)
    with pytest.raises(ConfigError):
        DenseLossConfig(coord_weight=-1.0)


def _grad_norm(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


@pytest.mark.parametrize("kind", list(PoseLossKind))
def test_gradients_reach_heads_and_backbone(kind: PoseLossKind) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(loss=DenseLossConfig(pose_loss=kind))
    net = DenseCorrespondenceNet(cfg)
    loss_fn = net.make_loss()
    out = net(images(4), crop_camera(4))
    losses = loss_fn(net.pnp, out, target_poses(4), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(losses.total)
    losses.total.backward()
    final = net.head[-1]
    assert isinstance(final, torch.nn.Conv2d) and final.weight.grad is not None
    coord_grad = float(final.weight.grad[:3].abs().sum())
    weight_grad = float(final.weight.grad[3:].abs().sum())
    assert coord_grad > 0, "no gradient reaches the coordinate channels"
    if kind is not PoseLossKind.IMPLICIT or float(losses.valid_fraction) > 0:
        assert weight_grad > 0, "no gradient reaches the weight channels"
        assert _grad_norm(net.scale_head) > 0, "no gradient reaches the global weight scale"
    assert float(net.backbone.conv1.weight.grad.abs().sum()) > 0  # type: ignore[union-attr]


def test_detached_weights_get_no_pose_gradient() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(loss=DenseLossConfig(detach_weights=True))
    net = DenseCorrespondenceNet(cfg)
    out = net(images(4), crop_camera(4))
    losses = net.make_loss()(net.pnp, out, target_poses(4),
                             generator=torch.Generator().manual_seed(0))
    losses.total.backward()
    final = net.head[-1]
    assert isinstance(final, torch.nn.Conv2d) and final.weight.grad is not None
    assert float(final.weight.grad[:3].abs().sum()) > 0
    assert float(final.weight.grad[3:].abs().sum()) == 0.0
    assert _grad_norm(net.scale_head) == 0.0


def test_adam_steps_lower_the_kl_loss() -> None:
    torch.manual_seed(0)
    net = DenseCorrespondenceNet(tiny_config())
    loss_fn = net.make_loss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    imgs, cams, poses = images(4, seed=1), crop_camera(4), target_poses(4)
    values = []
    for _ in range(12):
        out = net(imgs, cams)
        losses = loss_fn(net.pnp, out, poses, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        losses.total.backward()
        opt.step()
        values.append(float(losses.pose.detach()))
    assert min(values[-3:]) < values[0] - 0.1 * abs(values[0]), values


def test_no_pose_term_skips_the_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pose_weight`` and ``reg_weight`` both 0: no PnP solve (no result, pose and reg 0), the
    same coordinate and mask losses, and gradients still reach the coordinates."""
    torch.manual_seed(0)
    cfg = tiny_config(loss=DenseLossConfig(pose_weight=0.0, reg_weight=0.0, coord_weight=1.0,
                                           mask_weight=1.0))
    net = DenseCorrespondenceNet(cfg)
    out = net(images(2), crop_camera(2))
    coords, mask = torch.zeros(2, 3, 8, 8), torch.ones(2, 1, 8, 8)
    full = DenseNetLoss(replace(cfg.loss, pose_weight=0.02, reg_weight=0.1),
                        coord_scale=cfg.object_extent)(
        net.pnp, out, target_poses(2), coords, mask, generator=torch.Generator().manual_seed(0))

    def no_solve(*args: object, **kwargs: object) -> None:
        raise AssertionError("the PnP layer ran")

    monkeypatch.setattr(type(net.pnp), "forward", no_solve)
    monkeypatch.setattr(type(net.pnp), "solve", no_solve)
    losses = net.make_loss()(net.pnp, out, target_poses(2), coords, mask)
    assert losses.result is None
    assert float(losses.pose) == 0.0 and float(losses.reg) == 0.0
    assert float(losses.valid_fraction) == 1.0
    torch.testing.assert_close(losses.coord, full.coord)
    torch.testing.assert_close(losses.mask, full.mask)
    torch.testing.assert_close(losses.total, losses.coord + losses.mask)
    losses.total.backward()
    final = net.head[-1]
    assert isinstance(final, torch.nn.Conv2d) and final.weight.grad is not None
    assert float(final.weight.grad[:3].abs().sum()) > 0


def test_coordinate_and_mask_losses() -> None:
    coords = torch.randn(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, 1:3, 1:3] = 1
    assert float(masked_coordinate_loss(coords, coords, mask)) == 0.0
    shifted = coords + 0.5 * (1 - mask)  # errors only outside the mask do not count
    assert float(masked_coordinate_loss(shifted, coords, mask)) == 0.0
    assert float(masked_coordinate_loss(coords + 0.1, coords, mask, scale=0.1)) == \
        pytest.approx(3.0, rel=1e-5)
    torch.manual_seed(0)
    cfg = tiny_config(loss=DenseLossConfig(coord_weight=1.0, mask_weight=1.0))
    net = DenseCorrespondenceNet(cfg)
    out = net(images(2), crop_camera(2))
    loss_fn = net.make_loss()
    with pytest.raises(ConfigError):
        loss_fn(net.pnp, out, target_poses(2))
    m = torch.ones(2, 1, 8, 8)
    losses = loss_fn(net.pnp, out, target_poses(2), torch.zeros(2, 3, 8, 8), m,
                     generator=torch.Generator().manual_seed(0))
    assert float(losses.coord.detach()) > 0 and float(losses.mask.detach()) > 0
    assert float(losses.total.detach()) == pytest.approx(
        float((losses.pose + losses.coord + losses.mask).detach()), rel=1e-5)


def test_implicit_pose_gradient_is_the_implicit_function_theorem() -> None:
    """d y*/d x2d through ``implicit_pose`` equals finite differences of the LM solution."""
    # Noise-free problem: the residuals vanish at y*, so the Gauss-Newton Hessian is the exact
    # Hessian and the implicit-function-theorem derivative is exact.  Plain squared cost (the
    # adaptive Huber threshold would move with x2d in the finite differences), tight tolerance.
    p = random_problems(1, 12, noise_std=0.0, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(3))
    solver = SolverConfig(huber=NO_KERNEL, tolerance=1e-14, max_iterations=50)
    layer = EProPnP6DoF(MonteCarloConfig(num_iterations=1, num_samples=8, solver=solver))
    x2d = p.x2d.clone().requires_grad_(True)
    res = layer(p.x3d, x2d, p.w2d, p.cam_mats, generator=torch.Generator().manual_seed(0))
    assert int(res.status[0]) == SolveStatus.CONVERGED
    pose = implicit_pose(res)
    torch.testing.assert_close(pose.detach(), res.pose)  # the value is y* itself
    probe = torch.tensor([1.0, -2.0, 0.5, 0.3, 0.7, -0.4, 0.2], dtype=torch.float64)
    (grad,) = torch.autograd.grad((pose[0] * probe).sum(), x2d)
    eps = 1e-6
    fd = torch.zeros_like(grad)
    for i in range(12):
        for j in range(2):
            plus, minus = p.x2d.clone(), p.x2d.clone()
            plus[0, i, j] += eps
            minus[0, i, j] -= eps
            diff = (solve_pnp(p.x3d, plus, p.w2d, p.cam_mats, config=solver).pose[0]
                    - solve_pnp(p.x3d, minus, p.w2d, p.cam_mats, config=solver).pose[0])
            fd[0, i, j] = (diff * probe).sum() / (2 * eps)
    assert float((grad - fd).norm()) < 1e-3 * float(fd.norm())


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = DenseCorrespondenceNet(tiny_config()).eval()
    path = tmp_path / "net.pt"
    net.save(path, extra={"step": 7})
    loaded, extra = DenseCorrespondenceNet.from_checkpoint(path)
    assert extra["step"] == 7 and loaded.config == net.config
    loaded.eval()
    x, k = images(2), crop_camera(2)
    torch.testing.assert_close(loaded(x, k).x3d, net(x, k).x3d)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        DenseCorrespondenceNet.from_checkpoint(truncated)
    other = tmp_path / "other.pt"
    save_checkpoint(other, kind="something_else", config={}, state_dict={})
    with pytest.raises(CheckpointError, match="something_else"):
        DenseCorrespondenceNet.from_checkpoint(other)
    bad_cfg = tmp_path / "bad_cfg.pt"
    cfg = to_dict(net.config)
    cfg["head_width"] = 3
    save_checkpoint(bad_cfg, kind=CHECKPOINT_KIND, config=cfg, state_dict=net.state_dict())
    with pytest.raises(DenseCheckpointError, match="head_width"):
        DenseCorrespondenceNet.from_checkpoint(bad_cfg)
    mismatch = tmp_path / "mismatch.pt"
    wider = to_dict(replace(net.config, head_channels=24))
    save_checkpoint(mismatch, kind=CHECKPOINT_KIND, config=wider, state_dict=net.state_dict())
    with pytest.raises(DenseCheckpointError, match="do not match"):
        DenseCorrespondenceNet.from_checkpoint(mismatch)


def test_loss_config_modes_are_distinct() -> None:
    torch.manual_seed(0)
    net = DenseCorrespondenceNet(tiny_config())
    out = net(images(2), crop_camera(2))
    values = {}
    for kind in PoseLossKind:
        loss_fn = DenseNetLoss(DenseLossConfig(pose_loss=kind))
        losses = loss_fn(net.pnp, out, target_poses(2), generator=torch.Generator().manual_seed(0))
        values[kind] = float(losses.pose.detach())
        assert (losses.result is None) == (kind is PoseLossKind.REPROJECTION)
    assert len(set(values.values())) == 3


def test_random_training_subset_and_training_init() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(loss=DenseLossConfig(train_points=10))
    net = DenseCorrespondenceNet(cfg)
    out = net(images(2), crop_camera(2))
    losses = net.make_loss()(net.pnp, out, target_poses(2),
                             generator=torch.Generator().manual_seed(0))
    assert losses.result is not None and torch.isfinite(losses.total)
    losses.total.backward()
    final = net.head[-1]
    assert isinstance(final, torch.nn.Conv2d) and final.weight.grad is not None
    assert float(final.weight.grad[:3].abs().sum()) > 0
    with pytest.raises(ConfigError):
        DenseLossConfig(train_points=3)
    # Solver starts: the best of target and closed form never has a higher cost than either.
    p = random_problems(4, 16, noise_std=2.0, generator=torch.Generator().manual_seed(1))
    layer = EProPnP6DoF()
    far = p.pose.clone()
    far[:, 3:] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # a start 180 degrees away
    assert training_init(layer, TrainingInit.CLOSED_FORM, p.x3d, p.x2d, p.w2d, p.cam_mats,
                         far) is None
    target = training_init(layer, TrainingInit.TARGET, p.x3d, p.x2d, p.w2d, p.cam_mats, far)
    assert target is not None and torch.equal(target, far)
    best = training_init(layer, TrainingInit.BEST, p.x3d, p.x2d, p.w2d, p.cam_mats, far)
    assert best is not None
    cost_best = layer.solve(p.x3d, p.x2d, p.w2d, p.cam_mats, pose_init=best).cost
    cost_free = layer.solve(p.x3d, p.x2d, p.w2d, p.cam_mats).cost
    assert bool((cost_best <= cost_free * (1 + 1e-4) + 1e-6).all())


def test_pooled_views_are_one_problem_per_object() -> None:
    """K crops of each object become one problem of K N correspondences; K copies of the same
    correspondences give the pose and covariance of one copy (the pooled cost is the mean of
    the crops' costs), and two different halves of a problem pooled equal the whole."""
    p = random_problems(6, 32, noise_std=1.0, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    layer = EProPnP6DoF()
    one = solve_correspondences(layer, p.x3d, p.x2d, p.w2d, p.cam_mats)
    rep = [t.repeat_interleave(3, dim=0) for t in (p.x3d, p.x2d, p.w2d)]
    x3d, x2d, w2d = pool_views(*rep, 3)
    assert x3d.shape == (6, 96, 3) and x2d.shape == w2d.shape == (6, 96, 2)
    torch.testing.assert_close(w2d[:, :32], p.w2d / 3**0.5)
    pooled = solve_correspondences(layer, x3d, x2d, w2d, p.cam_mats)
    assert bool((pooled.status == SolveStatus.CONVERGED).all())
    torch.testing.assert_close(pooled.pose, one.pose, atol=1e-7, rtol=0)
    torch.testing.assert_close(pooled.covariance, one.covariance, rtol=1e-6, atol=1e-12)
    # Views of different points: the halves of each problem, weights scaled back by sqrt(2).
    halves = [t.reshape(6, 2, 16, -1).flatten(0, 1) for t in (p.x3d, p.x2d, p.w2d * 2**0.5)]
    x3d, x2d, w2d = pool_views(*halves, 2)
    torch.testing.assert_close(x3d, p.x3d)
    torch.testing.assert_close(w2d, p.w2d)
    with pytest.raises(ConfigError, match="num_views"):
        pool_views(p.x3d, p.x2d, p.w2d, 4)
