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
@pytest.mark.parametrize("chunk", [1 << 18, 45])
def test_sample_cost_matches_generic_cost_and_gradients(
    space: type[PoseSpace], huber: HuberConfig | None, chunk: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``chunk = 45`` (5 samples x 9 points) every problem is a chunk of its own: the
    first, with a point behind the camera, takes the direct backward, the others the
    summed one; with the default all problems share one chunk (direct)."""
    import epropnp_lib.pnp.sample_cost as module

    monkeypatch.setattr(module, "CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(0)
    p = random_problems(3, 9, dof=space.tangent_dim, noise_std=2.0, dtype=torch.float64,
                        generator=gen)
    k = p.cam_mats.clone()
    k[:, 0, 1] = 3.0  # skew
    noise = 0.2 * torch.randn((5,) + p.pose.shape, generator=gen, dtype=torch.float64)
    poses = p.pose + noise
    poses[1, 0, 2] = -0.5  # some points at/behind the camera: depth clamping
    w2d = p.w2d * (0.5 + torch.rand(p.w2d.shape, generator=gen, dtype=torch.float64))
    w2d[2, 4, 1] = 0.0  # a zero weight: its gradient is still defined

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


def test_chunks_over_samples_and_backward_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks split over the samples of a problem (one of them with a clamped depth) sum to
    the generic gradient, also on a second backward (``retain_graph``)."""
    import epropnp_lib.pnp.sample_cost as module

    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 64)  # 3 samples of 20 points per chunk
    gen = torch.Generator().manual_seed(3)
    p = random_problems(3, 20, noise_std=2.0, dtype=torch.float64, generator=gen)
    poses = p.pose + 0.05 * torch.randn((7,) + p.pose.shape, generator=gen, dtype=torch.float64)
    poses[4, 1, 2] = 0.3  # a point behind the camera in the second chunk of problem 1
    delta = HuberConfig(relative_delta=0.05).threshold(p.x2d, p.w2d)
    x3d, x2d, w2d = (t.clone().requires_grad_() for t in (p.x3d, p.x2d, p.w2d))
    args = (x3d, x2d, w2d)
    cost = sample_cost(Pose6DoF, poses, x3d, x2d, w2d, p.cam_mats, delta)
    ref = evaluate_cost(Pose6DoF, poses, x3d, x2d, w2d, p.cam_mats, delta).cost
    assert torch.allclose(cost, ref)
    up = torch.randn(cost.shape, generator=gen, dtype=torch.float64)
    expected = torch.autograd.grad((ref * up).sum(), args)
    first = torch.autograd.grad((cost * up).sum(), args, retain_graph=True)
    second = torch.autograd.grad((cost * up).sum(), args)
    for e, a, b in zip(expected, first, second, strict=True):
        assert torch.allclose(e, a) and torch.allclose(e, b)


def test_zero_threshold_gives_zero_cost_and_gradient() -> None:
    """``delta = 0`` (e.g. all weights zero) makes the Huber cost vanish identically: zero
    values and gradients, never NaN, while the other problems are unaffected."""
    gen = torch.Generator().manual_seed(5)
    p = random_problems(2, 12, noise_std=1.0, dtype=torch.float64, generator=gen)
    poses = p.pose + 0.02 * torch.randn((4,) + p.pose.shape, generator=gen, dtype=torch.float64)
    delta = HuberConfig().threshold(p.x2d, p.w2d)
    assert delta is not None
    delta[0] = 0.0
    x3d, x2d, w2d = (t.clone().requires_grad_() for t in (p.x3d, p.x2d, p.w2d))
    args = (x3d, x2d, w2d)
    cost = sample_cost(Pose6DoF, poses, x3d, x2d, w2d, p.cam_mats, delta)
    ref = evaluate_cost(Pose6DoF, poses[:, 1:], x3d[1:], x2d[1:], w2d[1:], p.cam_mats[1:],
                        delta[1:]).cost
    assert torch.equal(cost[:, 0], torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(cost[:, 1:], ref)
    grads = torch.autograd.grad(cost.sum(), args)
    for g in grads:
        assert torch.isfinite(g).all() and torch.equal(g[0], torch.zeros_like(g[0]))
