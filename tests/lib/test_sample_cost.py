"""The fused many-pose cost equals the generic cost, values and gradients (float64)."""

from __future__ import annotations

import pytest
import torch

from epropnp_lib.geometry.pose import Pose4DoF, Pose6DoF, PoseSpace
from epropnp_lib.pnp.cost import HuberConfig, evaluate_cost
from epropnp_lib.pnp.problems import random_problems
from epropnp_lib.pnp.sample_cost import sample_cost


@pytest.mark.parametrize("space", [Pose6DoF, Pose4DoF])
@pytest.mark.parametrize("huber", [None, HuberConfig(), HuberConfig(relative_delta=0.01)])
def test_sample_cost_matches_generic_cost_and_gradients(
    space: type[PoseSpace], huber: HuberConfig | None
) -> None:
    gen = torch.Generator().manual_seed(0)
    p = random_problems(3, 9, dof=space.tangent_dim, noise_std=2.0, dtype=torch.float64,
                        generator=gen)
    k = p.cam_mats.clone()
    k[:, 0, 1] = 3.0  # skew
    noise = 0.2 * torch.randn((5,) + p.pose.shape, generator=gen, dtype=torch.float64)
    poses = p.pose + noise
    poses[1, 0, 2] = -0.5  # some points at/behind the camera: depth clamping
    w2d = p.w2d * (0.5 + torch.rand(p.w2d.shape, generator=gen, dtype=torch.float64))

    # The threshold is a constant of the cost (detached): fix it from the unperturbed inputs.
    delta = None if huber is None else huber.threshold(p.x2d, w2d)

    def generic(x3d: torch.Tensor, x2d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return evaluate_cost(space, poses, x3d, x2d, w, k, delta).cost

    def fused(x3d: torch.Tensor, x2d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return sample_cost(space, poses, x3d, x2d, w, k, delta)

    args = tuple(t.clone().requires_grad_() for t in (p.x3d, p.x2d, w2d))
    a, b = generic(*args), fused(*args)
    assert a.shape == b.shape == (5, 3)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-9)
    upstream = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    ga = torch.autograd.grad((a * upstream).sum(), args)
    gb = torch.autograd.grad((b * upstream).sum(), args)
    for x, y in zip(ga, gb, strict=True):
        assert torch.allclose(x, y, rtol=1e-8, atol=1e-9)
    # Finite differences are meaningless next to the clamped depth (costs ~1e10): check the
    # remaining poses against numerical derivatives.
    poses = poses[2:]
    assert torch.autograd.gradcheck(fused, args)


@pytest.mark.parametrize("save", [True, False])
def test_saved_and_recomputed_residuals_agree_and_backward_twice(
    save: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both backward strategies give the same gradient, also on a second backward
    (``retain_graph``), where the saved residuals have been consumed and are recomputed."""
    import epropnp_lib.pnp.sample_cost as module

    monkeypatch.setattr(module, "SAVE_RESIDUALS", save)
    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 64)  # several chunks, split over samples too
    gen = torch.Generator().manual_seed(3)
    p = random_problems(3, 20, noise_std=2.0, dtype=torch.float64, generator=gen)
    poses = p.pose + 0.05 * torch.randn((7,) + p.pose.shape, generator=gen, dtype=torch.float64)
    delta = HuberConfig(relative_delta=0.05).threshold(p.x2d, p.w2d)
    args = tuple(t.clone().requires_grad_() for t in (p.x3d, p.x2d, p.w2d))
    cost = sample_cost(Pose6DoF, poses, *args, p.cam_mats, delta)
    ref = evaluate_cost(Pose6DoF, poses, *args, p.cam_mats, delta).cost
    assert torch.allclose(cost, ref)
    up = torch.randn(cost.shape, generator=gen, dtype=torch.float64)
    expected = torch.autograd.grad((ref * up).sum(), args)
    first = torch.autograd.grad((cost * up).sum(), args, retain_graph=True)
    second = torch.autograd.grad((cost * up).sum(), args)
    for e, a, b in zip(expected, first, second, strict=True):
        assert torch.allclose(e, a) and torch.allclose(e, b)
