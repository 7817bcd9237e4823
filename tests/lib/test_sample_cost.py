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
